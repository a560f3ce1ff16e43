"""A first-party router or CLI command whose import fails must fail the app or CLI loudly: it
used to be skipped under ``suppress(ModuleNotFoundError)``, so a missing dependency made routes
and commands vanish without a word."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_with_missing(target: str, missing: str) -> subprocess.CompletedProcess[str]:
    # ``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError, as an
    # uninstalled dependency would.
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{missing!r}] = None
        import {target}
        print("imported")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(("target", "missing"), [
    ("agent_manager.web.app", "agent_manager.web.routers.terminals"),
    ("agent_manager.web.app", "agent_manager.web.pages"),
    ("agent_manager.cli", "wsproto"),  # what `agent-manager shell` needs
    ("agent_manager.cli", "agent_manager.cli.orchestrate"),
])
def test_a_failing_first_party_import_is_not_swallowed(target: str, missing: str) -> None:
    result = _import_with_missing(target, missing)
    assert result.returncode != 0 and "imported" not in result.stdout
    assert "ModuleNotFoundError" in result.stderr or "ImportError" in result.stderr, result.stderr


def test_every_router_is_mounted(tmp_path: Path) -> None:
    """The control case: with nothing missing, the app has every router's routes."""
    from agent_manager.settings import Settings
    from agent_manager.web.app import create_app

    paths = set(create_app(Settings(home=tmp_path / "home", auth=False)).openapi()["paths"])
    for path in ("/api/plans", "/api/orchestrations", "/api/users", "/api/files", "/api/terminals",
                 "/api/projects", "/api/sandboxes", "/api/runs", "/api/conversations", "/api/settings",
                 "/api/agents", "/metrics"):
        assert any(p == path or p.startswith(path + "/") for p in paths), path
