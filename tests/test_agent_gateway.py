"""An agent's own model gateway (``api_base`` / ``api_key``) and ``agents detect``'s search.

The gateway key is a secret: masked by the API, kept when the mask is sent back, given to
the CLI only in its environment (never argv), and never to another agent. Each kind turns
the gateway into its CLI's own mechanism; tests/test_real_clis.py proves those work against
the real CLIs, this file proves the plumbing around them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FAKES_BIN, LiveServer
from helpers import events, wait_run

from agent_manager.models import MASK

KEY = "sk-gateway-secret-0123456789"
DUMP = """#!/usr/bin/env python3
import hashlib, json, os, sys
def show(name, value):
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest() if "KEY" in name else value
env = {k: show(k, v) for k, v in os.environ.items()}
print(json.dumps({"argv": sys.argv[1:], "env": env}))
"""
# What each kind must put in the CLI's environment (besides the key) for a gateway.
EXPECTED_ENV = {
    "claude": {"ANTHROPIC_BASE_URL": "http://gw.example:8080", "DISABLE_AUTOUPDATER": "1"},
    "gemini": {"GOOGLE_GEMINI_BASE_URL": "http://gw.example:8080", "GEMINI_CLI_TRUST_WORKSPACE": "true"},
    "codex": {},
    "opencode": {"OPENCODE_DISABLE_AUTOUPDATE": "1"},
    "aider": {},
    "generic": {"AGENT_MANAGER_API_BASE": "http://gw.example:8080"},
}
KEY_ENV = {"claude": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY", "codex": "AGENT_MANAGER_GATEWAY_API_KEY",
           "opencode": "AGENT_MANAGER_GATEWAY_API_KEY", "aider": "OPENAI_API_KEY", "generic": "AGENT_MANAGER_API_KEY"}


def sha(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


async def test_key_is_masked_kept_and_clearable(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/agents", json={"name": "gw", "kind": "claude", "api_base": "https://gw.example/a",
                                               "api_key": KEY, "env": {"X": "1"}})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert agent["api_base"] == "https://gw.example/a" and agent["api_key"] == MASK
    assert agent["env"] == {"X": "1"} and KEY not in r.text
    listed = await client.get("/api/agents")
    assert KEY not in listed.text and "@api" not in listed.text
    r = await client.patch("/api/agents/gw", json={"api_key": MASK, "env": {"X": "2"}})
    assert r.status_code == 200 and r.json()["api_key"] == MASK and r.json()["env"] == {"X": "2"}
    r = await client.patch("/api/agents/gw", json={"api_base": ""})
    assert r.json()["api_base"] is None and r.json()["api_key"] == MASK
    r = await client.patch("/api/agents/gw", json={"api_key": ""})
    assert r.json()["api_key"] is None


@pytest.mark.parametrize("bad", ["ftp://x", "javascript:alert(1)", "http://a b", "http://x\n", "gw.example"])
async def test_api_base_must_be_an_http_url(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.post("/api/agents", json={"name": "gw", "kind": "claude", "api_base": bad})
    assert r.status_code == 422 and r.json()["error"]["code"]


@pytest.mark.parametrize("kind", list(EXPECTED_ENV))
async def test_gateway_reaches_the_cli_in_its_own_mechanism(client: httpx.AsyncClient, tmp_path: Path,
                                                             kind: str) -> None:
    dump = tmp_path / "dump"
    dump.write_text(DUMP)
    dump.chmod(0o755)
    await client.post("/api/agents", json={"name": "other", "kind": "generic", "command": str(dump),
                                           "env": {"OTHER_KEY": "other-secret"}})
    r = await client.post("/api/agents", json={"name": "gw", "kind": kind, "command": str(dump),
                                               "api_base": "http://gw.example:8080", "api_key": KEY,
                                               "model": "m1"})
    assert r.status_code == 201, r.text
    run = (await client.post("/api/runs", json={"agent": "gw", "prompt": "hi"})).json()
    final = await wait_run(client, run["id"])
    evs = await events(client, final["id"])
    out = "".join(e["data"]["text"] for e in evs if e["type"] == "output" and e["data"]["stream"] == "stdout")
    seen: dict[str, Any] = json.loads(out.strip().splitlines()[0])
    assert not any(KEY in a for a in seen["argv"]), seen["argv"]
    assert seen["env"][KEY_ENV[kind]] == sha(KEY)
    for name, value in EXPECTED_ENV[kind].items():
        assert seen["env"][name] == value
    assert "OTHER_KEY" not in seen["env"]
    assert KEY not in json.dumps(evs) and KEY not in json.dumps(final)
    if kind == "codex":
        assert 'model_providers.agent_manager_gateway.base_url="http://gw.example:8080"' in seen["argv"]
    if kind == "aider":
        assert "--openai-api-base=http://gw.example:8080" in seen["argv"] and "--model=openai/m1" in seen["argv"]
    if kind == "opencode":
        config = json.loads(seen["env"]["OPENCODE_CONFIG_CONTENT"])
        assert config["model"] == "gateway/m1"
        assert config["provider"]["gateway"]["options"]["baseURL"] == "http://gw.example:8080"
    if kind == "gemini":
        settings = Path(seen["env"]["GEMINI_CLI_SYSTEM_SETTINGS_PATH"])
        assert json.loads(settings.read_text())["security"]["auth"]["selectedType"] == "gemini-api-key"


async def test_agent_env_overrides_what_the_kind_sets(client: httpx.AsyncClient, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.write_text(DUMP)
    dump.chmod(0o755)
    await client.post("/api/agents", json={"name": "g", "kind": "gemini", "command": str(dump),
                                           "env": {"GEMINI_CLI_TRUST_WORKSPACE": "false"}})
    run = (await client.post("/api/runs", json={"agent": "g", "prompt": "hi"})).json()
    final = await wait_run(client, run["id"])
    out = "".join(e["data"]["text"] for e in await events(client, final["id"]) if e["type"] == "output")
    assert json.loads(out.splitlines()[0])["env"]["GEMINI_CLI_TRUST_WORKSPACE"] == "false"


def test_detect_finds_npm_global_and_local_bin(live_server: LiveServer, tmp_path: Path) -> None:
    home, prefix = tmp_path / "user", tmp_path / "npm-global"
    (home / ".local" / "bin").mkdir(parents=True)
    (prefix / "bin").mkdir(parents=True)
    for src, dest in ((FAKES_BIN / "aider", home / ".local" / "bin" / "aider"),
                      (FAKES_BIN / "opencode", prefix / "bin" / "opencode")):
        dest.write_bytes(src.read_bytes())
        dest.chmod(0o755)
    env = {"AGENT_MANAGER_HOME": str(live_server.home), "AGENT_MANAGER_URL": live_server.url,
           "PATH": "/usr/bin:/bin", "HOME": str(home), "NPM_CONFIG_PREFIX": str(prefix)}
    out = subprocess.run([sys.executable, "-m", "agent_manager", "agents", "detect"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    agents = {a["name"]: a for a in httpx.get(f"{live_server.url}/api/agents", headers=live_server.headers).json()}
    assert agents["aider"]["command"] == str(home / ".local" / "bin" / "aider")
    assert agents["opencode"]["command"] == str(prefix / "bin" / "opencode")
    assert agents["aider"]["available"] and agents["opencode"]["available"]


def test_install_hints_are_commands() -> None:
    from agent_manager.agents import KINDS
    assert KINDS["claude"].install_hint == "npm install -g @anthropic-ai/claude-code"
    assert KINDS["codex"].install_hint == "npm install -g @openai/codex"
    assert KINDS["gemini"].install_hint == "npm install -g @google/gemini-cli"
    assert KINDS["opencode"].install_hint == "npm install -g opencode-ai"
    for kind in KINDS.values():
        assert "(" not in kind.install_hint or kind.name == "generic", kind.install_hint


async def test_aider_prompt_is_text_on_every_path(client: httpx.AsyncClient) -> None:
    """Runs, chat messages and plan steps all reach aider with `/…` as text, never a command."""
    agent = {"name": "aid", "kind": "aider", "command": str(FAKES_BIN / "argv-dump")}
    assert (await client.post("/api/agents", json=agent)).status_code == 201
    run_ids = [(await client.post("/api/runs", json={"agent": "aid", "prompt": "/run touch A"})).json()["id"]]
    conv = (await client.post("/api/conversations", json={"title": "t", "agent": "aid"})).json()
    posted = await client.post(f"/api/conversations/{conv['id']}/messages", json={"content": "/run touch A"})
    run_ids.append(posted.json()["run"]["id"])
    plan = {"name": "p", "steps": [{"id": "s", "agent": "aid", "prompt": "/run touch A"}]}
    orch = (await client.post("/api/orchestrations", json={"plan": plan})).json()
    for _ in range(500):
        step = (await client.get(f"/api/orchestrations/{orch['id']}")).json()["steps"][0]
        if step.get("run_id"):
            run_ids.append(step["run_id"])
            break
        await asyncio.sleep(0.02)
    assert len(run_ids) == 3
    for run_id in run_ids:
        final = await wait_run(client, run_id)
        out = "".join(e["data"]["text"] for e in await events(client, run_id) if e["type"] == "output")
        seen = json.loads(out.strip().splitlines()[0])
        assert seen["argv"][-1] == "--message= /run touch A", (final, seen["argv"])
        assert set(seen["stdin"]) == {"n", "\n"}  # every question answered no


@pytest.mark.parametrize("base", ['http://gw/a"b', "http://gw/a\\b", "http://gw/'x'=1", "http://gw/#]"])
def test_codex_gateway_override_stays_one_toml_string(base: str) -> None:
    """The base URL goes into a `-c key=value` TOML value: quotes cannot end it early."""
    import tomllib

    from agent_manager.agents import KINDS
    from agent_manager.agents.base import Gateway
    argv = KINDS["codex"].build("", [], "p", gateway=Gateway(base, "k")).argv
    item = next(a for a in argv if a.startswith("model_providers.agent_manager_gateway.base_url="))
    key, _, value = item.partition("=")
    assert tomllib.loads(f"v = {value}")["v"] == base
