"""``agent-manager settings``: read and change the running service's settings from a shell,
a backend's own section included (``sandbox.memory_mb``), against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import LiveServer


def _cli(server: LiveServer, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(server.home), "AGENT_MANAGER_URL": server.url}
    return subprocess.run([sys.executable, "-m", "agent_manager", "settings", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_show_get_and_set_a_section_value(live_server: LiveServer) -> None:
    shown = _cli(live_server)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "sandbox.memory_mb = 2048" in lines and "max_concurrent_runs = 8" in lines
    assert any(line.startswith("port = ") and "restart to change" in line for line in lines)
    changed = _cli(live_server, "set", "sandbox.memory_mb=1024", "stall_kill=true", "allowed_hosts=[\"a.lan\"]")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines() == ["sandbox.memory_mb = 1024", "stall_kill = true",
                                           'allowed_hosts = ["a.lan"]']
    assert _cli(live_server, "get", "sandbox.memory_mb").stdout == "1024\n"
    assert "[sandbox]\nmemory_mb = 1024" in (live_server.home / "config.toml").read_text()


def test_bad_values_are_refused_with_the_apis_sentence(live_server: LiveServer) -> None:
    low = _cli(live_server, "set", "sandbox.memory_mb=1")
    assert low.returncode == 1 and "sandbox.memory_mb is 1, but it should be greater than or equal to 16" in low.stderr
    assert _cli(live_server, "get", "sandbox.memory_mb").stdout == "2048\n"
    assert "needs a restart" in _cli(live_server, "set", "port=1").stderr
    assert _cli(live_server, "set", "nothing").returncode == 2
    assert "no setting 'nope'" in _cli(live_server, "get", "nope").stderr


def test_a_secret_from_stdin_is_stored_and_never_shown(live_server: LiveServer) -> None:
    done = _cli(live_server, "set", "daytona.api_key=-", stdin="dtn-very-secret\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == 'daytona.api_key = "********"\n'
    assert "dtn-very-secret" not in _cli(live_server).stdout + _cli(live_server, "--json").stdout
    assert 'api_key = "dtn-very-secret"' in (live_server.home / "config.toml").read_text()
