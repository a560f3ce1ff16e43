"""Canary secrets (notes C.7): agent env secrets of two agents, the Daytona key, the admin token
and user tokens. Run agents (one prints its whole environment), exercise the API broadly, then
grep every response, the service's log and the data directory's files for every canary: each
may appear only where it is meant to."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from conftest import start_server, stop_server

DUMP = ("import os, sys, time\n"
        "print('ENV', sorted(os.environ.items()), flush=True)\n"
        "for p in ('/proc/self/environ', f'/proc/{os.getppid()}/environ', '/proc/1/environ'):\n"
        "    try:\n"
        "        print(p, open(p, 'rb').read().replace(b'\\0', b' ').decode(errors='replace'), flush=True)\n"
        "    except OSError as exc:\n"
        "        print(p, exc, flush=True)\n"
        "print('ARGV', sys.argv, flush=True)\n"
        "time.sleep(float(os.environ.get('HOLD', '0')))\n")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


class Capture:
    """Every response seen: body and headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def add(self, what: str, r: httpx.Response) -> None:
        self.seen.append((what, r.text, "\n".join(f"{k}: {v}" for k, v in r.headers.items())))

    def strings(self) -> list[tuple[str, str]]:
        """(where, text): every JSON string value of JSON and SSE bodies; the whole text otherwise."""
        found: list[tuple[str, str]] = []
        for what, body, headers in self.seen:
            found.append((what + " [headers]", headers))
            try:
                found += [(what, s) for s in _strings(json.loads(body))]
                continue
            except ValueError:
                pass
            sse = [line[5:] for line in body.splitlines() if line.startswith("data:")]
            if sse:
                found += [(what, s) for data in sse for s in _strings(json.loads(data))]
            else:
                found.append((what, body))
        return found


def test_canaries_appear_only_where_intended(tmp_path: Path, fake_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    canary_a, canary_b, canary_dt = f"canary-A-{tag}", f"canary-B-{tag}", f"canary-DT-{tag}"
    home = tmp_path / "home"
    server = start_server(home)
    log: list[str] = []

    def pump() -> None:
        assert server.proc.stdout is not None
        log.extend(server.proc.stdout)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    cap = Capture()
    admin_token = server.token
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c:
            def get(path: str, **kw: Any) -> httpx.Response:
                r = c.get(path, **kw)
                cap.add(f"GET {path}", r)
                return r

            # a dead loopback URL: no test ever talks to the real Daytona
            r = c.patch("/api/settings", json={"daytona_api_key": canary_dt, "daytona_api_url": "http://127.0.0.1:9"})
            assert r.status_code == 200 and canary_dt not in r.text
            cap.add("PATCH settings", r)
            users = {}
            for name, trusted in (("u1", True), ("u2", False)):
                r = c.post("/api/users", json={"name": name, "trusted": trusted})
                users[name] = r.json()  # the one intended place for a user token
            u1 = {"Authorization": f"Bearer {users['u1']['token']}"}
            for name, env in (("leaky", {"API_KEY": canary_a, "PLAIN": "visible", "HOLD": "1"}),
                              ("other", {"SECRET_TOKEN": canary_b, "MY_PASSWORD": canary_b})):
                r = c.post("/api/agents", json={"name": name, "command": sys.executable, "args": ["-c", DUMP],
                                                "env": env})
                assert r.status_code == 201, r.text
                cap.add(f"POST agent {name}", r)
                assert canary_a not in r.text and canary_b not in r.text
            leaky_runs = [c.post("/api/runs", json={"agent": "leaky", "prompt": "p1"}).json(),
                          c.post("/api/runs", json={"agent": "leaky", "prompt": "p2"}, headers=u1).json()]
            other_runs = [c.post("/api/runs", json={"agent": "other", "prompt": "p3"}).json(),
                          c.post("/api/runs", json={"agent": "other", "prompt": "p4"}, headers=u1).json()]
            conv = c.post("/api/conversations", json={"title": "t", "agent": "leaky"}).json()
            posted = c.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hi"}).json()
            leaky_runs.append(posted["run"])
            # while the leaky runs hold (HOLD=1), nothing in any process's argv carries a canary
            time.sleep(0.5)
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    except OSError:
                        continue
                    for canary in (canary_a, canary_b, canary_dt, admin_token):
                        assert canary.encode() not in cmdline, f"canary in argv of pid {entry}"
            for run in [*leaky_runs, *other_runs]:
                deadline = time.monotonic() + 30
                while c.get(f"/api/runs/{run['id']}").json()["status"] in ("queued", "running"):
                    assert time.monotonic() < deadline
                    time.sleep(0.1)

            # the agent's own secret reached its own process, and only its own
            own_output = {}
            for run in [*leaky_runs, *other_runs]:
                evs = c.get(f"/api/runs/{run['id']}/events").json()
                own_output[run["id"]] = "".join(e["data"].get("text", "") for e in evs if e["type"] == "output")
            for run in leaky_runs:
                assert canary_a in own_output[run["id"]] and canary_b not in own_output[run["id"]]
            for run in other_runs:
                assert canary_b in own_output[run["id"]] and canary_a not in own_output[run["id"]]
            for text in own_output.values():
                assert canary_dt not in text and admin_token not in text
                assert users["u1"]["token"] not in text and users["u2"]["token"] not in text

            # exercise the API broadly
            ids = {"run_id": leaky_runs[0]["id"], "conv_id": conv["id"], "ref": "leaky", "user_id": users["u1"]["id"],
                   "orch_id": "orch_missing", "agent": "leaky"}
            spec = get("/openapi.json").json()
            for path, ops in spec["paths"].items():
                if "get" not in ops:
                    continue
                concrete = path
                for key, value in ids.items():
                    concrete = concrete.replace("{" + key + "}", value)
                concrete = concrete.replace("{id}", ids["run_id"])
                if "{" in concrete:
                    concrete = concrete.split("{")[0] + "x1"
                params = {"agent": "leaky"} if concrete == "/api/files" else None
                get(concrete, params=params)
            for run in [*leaky_runs, *other_runs]:
                get(f"/api/runs/{run['id']}")
                get(f"/api/runs/{run['id']}/events")
                get(f"/api/runs/{run['id']}/events", headers={"Accept": "text/event-stream"})
            for path in ("/api/agents/leaky", "/api/agents/other", "/api/settings", "/metrics", "/docs", "/redoc",
                         "/api/runs?q=ENV", "/api/conversations?q=hi", f"/api/conversations/{conv['id']}",
                         "/api/audit", "/api/users", "/", "/api/runs/run_nope", "/api/agents/nope",
                         "/api/runs?limit=0", "/api/files?agent=leaky&path=../x"):
                get(path)
            for method, path, body in (("POST", "/api/runs", {"agent": "nope", "prompt": "x"}),
                                       ("POST", "/api/runs", {"agent": "leaky"}),
                                       ("PATCH", "/api/agents/leaky", {"env": {"API_KEY": "********"}}),
                                       ("PATCH", "/api/settings", {"max_concurrent_runs": -1}),
                                       ("PATCH", "/api/settings", {"daytona_api_key": "********"}),
                                       ("POST", "/api/agents", {"name": "leaky", "command": "x"})):
                r = c.request(method, path, json=body)
                cap.add(f"{method} {path}", r)
            assert c.get("/api/agents/leaky").json()["env"]["API_KEY"] == "********"
            for who in (u1, {"Authorization": f"Bearer {users['u2']['token']}"}):
                for path in ("/api/agents", "/api/settings", "/api/runs", "/api/users/me"):
                    cap.add(f"GET {path} as user", c.get(path, headers=who))
            r = httpx.get(f"{server.url}/api/agents", headers={"Authorization": f"Bearer {admin_token[:-2]}zz"})
            cap.add("wrong token", r)
    finally:
        stop_server(server)
        pumper.join(5)

    leaky_ids = {r["id"] for r in leaky_runs}
    other_ids = {r["id"] for r in other_runs}
    allowed_a = [own_output[i] for i in leaky_ids]
    allowed_b = [own_output[i] for i in other_ids]
    everything = cap.strings()
    assert any(canary_a in text for _, text in everything)  # the check below is not vacuous
    for where, text in everything:
        for canary, allowed in ((canary_a, allowed_a), (canary_b, allowed_b)):
            if canary in text:  # only as (part of) that agent's own process output
                assert any(text in out for out in allowed), f"{canary} leaked in {where}: {text[:200]}"
        for canary in (canary_dt, admin_token, users["u1"]["token"], users["u2"]["token"]):
            assert canary not in text, f"a secret leaked in {where}"

    log_text = "".join(log)
    for canary in (canary_a, canary_b, canary_dt, users["u1"]["token"], users["u2"]["token"]):
        assert canary not in log_text, "a secret reached the service log"
    login_lines = [line for line in log if admin_token in line]
    assert len(login_lines) == 1 and "First start" in login_lines[0]  # the one-time login URL

    for path in home.rglob("*"):
        if not path.is_file() or path.suffix in (".db", ".db-wal", ".db-shm") or path.name.endswith(
                (".db-wal", ".db-shm")):
            continue
        data = path.read_bytes()
        for canary in (canary_a, canary_b, users["u1"]["token"], users["u2"]["token"]):
            assert canary.encode() not in data, f"secret in {path}"
        if admin_token.encode() in data:
            assert path.name == "admin-token"
        if canary_dt.encode() in data:
            assert path.name == "config.toml" and (path.stat().st_mode & 0o077) == 0
