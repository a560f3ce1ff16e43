# Two commands matter on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test lint screenshots bench install

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/agent-manager serve

test:
	./scripts/test.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check agent_manager tests bench
	$(VENV)/bin/mypy

screenshots: $(VENV)/.installed
	$(PY) scripts/screenshots.py screenshots

bench: $(VENV)/.installed
	$(PY) bench/stream.py
