# Two commands matter on a fresh machine: `make serve` and `make test`.
# `serve` installs only what the service needs at run time (plus the Daytona SDK, for that
# backend); `test` adds the development tools (pytest, Playwright, linters, ...).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test lint screenshots bench install runtime

# The runtime set: the package and its declared dependencies, plus the `daytona` extra.
$(VENV)/.runtime: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[daytona]'
	touch $@

# The development set, on top of the runtime one.
$(VENV)/.installed: $(VENV)/.runtime pyproject.toml
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

runtime: $(VENV)/.runtime

install: $(VENV)/.installed

serve: $(VENV)/.runtime
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
