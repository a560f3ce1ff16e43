#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs system packages (as root) and the
# Python environment when they are missing, then lints and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v slirp4netns >/dev/null || need+=(slirp4netns)
command -v chromium >/dev/null || need+=(chromium)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
fi

make -s install
# The real agent CLIs (pinned) that tests/test_real_clis.py drives; skipped when already there.
./scripts/install-agent-clis.sh
.venv/bin/ruff check agent_manager tests bench
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
