#!/usr/bin/env python3
"""Save a PNG of every UI page at desktop (1280×800) and phone (390×844) width.

    python scripts/screenshots.py OUTDIR        (``make screenshots`` → screenshots/)

Starts a real server on port 0 with a temporary data directory and the fake agent CLIs of
``tests/fakes/bin`` first on PATH, seeds a few agents, runs and a chat through the API, then
drives the system Chromium with Playwright. Console errors are printed (and make the exit
status 1), so this doubles as a smoke test of the UI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes" / "bin"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
COLOR_SCRIPT = ("import sys,time\n"
                "for i in range(6):\n"
                "    print(f'\\x1b[32mok\\x1b[0m step {i}: \\x1b[1mbuilding\\x1b[0m module_{i}', flush=True)\n"
                "print('\\x1b[33mwarning:\\x1b[0m 1 deprecated call', file=sys.stderr, flush=True)\n"
                "print('done')\n")


def start(home: Path) -> tuple[subprocess.Popen[str], str, str]:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(home), "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}",
           "FAKE_DELAY": "0.01"}
    proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "serve", "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            token = (home / "admin-token").read_text().strip()
            for _ in range(200):
                try:
                    if httpx.get(f"{match.group(1)}/api/health", timeout=1).status_code == 200:
                        return proc, match.group(1), token
                except httpx.HTTPError:
                    time.sleep(0.05)
            break
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def seed(api: httpx.Client) -> dict[str, Any]:
    def post(path: str, body: dict[str, Any]) -> Any:
        response = api.post(path, json=body)
        response.raise_for_status()
        return response.json()

    post("/api/agents", {"name": "claude", "kind": "claude", "env": {"ANTHROPIC_API_KEY": "sk-demo"}})
    post("/api/agents", {"name": "gemini", "kind": "gemini", "model": "gemini-2.5-pro", "backend": "sandbox",
                         "trusted": False})
    post("/api/agents", {"name": "builder", "kind": "generic", "command": "python3",
                         "args": ["-u", "-c", COLOR_SCRIPT]})
    post("/api/agents", {"name": "aider", "kind": "aider", "command": "aider-not-installed"})
    runs = [post("/api/runs", {"agent": "builder", "prompt": "build the project"}),
            post("/api/runs", {"agent": "claude", "prompt": "List the files, then summarise TOOL", "backend": "local"}),
            post("/api/runs", {"agent": "claude", "prompt": "This one FAIL s", "backend": "local"})]
    conv = post("/api/conversations", {"title": "Explain Python generators", "agent": "claude"})
    post(f"/api/conversations/{conv['id']}/messages", {"content": "Explain Python generators with `yield`"})
    for _ in range(100):
        items = api.get("/api/runs").json()["items"]
        if all(r["status"] not in ("queued", "running") for r in items):
            break
        time.sleep(0.1)
    post(f"/api/conversations/{conv['id']}/messages", {"content": "And show a **short** example"})
    plan = {"name": "release notes", "steps": [
        {"id": "collect", "agent": "claude", "prompt": "List the changes since the last tag"},
        {"id": "draft", "agent": "claude", "prompt": "Draft notes from:\n{{ steps.collect.output }}",
         "depends_on": ["collect"]},
        {"id": "translate", "agent": "claude", "prompt": "Translate them FAIL", "depends_on": ["draft"]},
        {"id": "publish", "agent": "builder", "prompt": "publish", "depends_on": ["translate"]},
        {"id": "save", "action": "write_file", "path": "NOTES.md", "content": "{{ steps.draft.output }}",
         "depends_on": ["draft"]}]}
    orch = post("/api/orchestrations", {"plan": plan})
    for _ in range(100):
        if api.get(f"/api/orchestrations/{orch['id']}").json()["status"] != "running":
            break
        time.sleep(0.1)
    time.sleep(1.0)
    post("/api/users", {"name": "robin", "trusted": True})
    post("/api/users", {"name": "sam-the-reviewer", "trusted": False})
    post("/api/plans/saved", {"name": "release-notes", "plan": plan})
    return {"run": runs[0]["id"], "tool_run": runs[1]["id"], "conv": conv["id"], "orch": orch["id"]}


def main(outdir: str) -> int:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="am-shots-") as tmp:
        proc, url, token = start(Path(tmp) / "home")
        try:
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            ids = seed(api)
            agent_id = api.get("/api/agents/claude").json()["id"]
            pages = {"dashboard": "#/", "agents": "#/agents", "agent-form": f"#/agents/{agent_id}",
                     "new-agent": "#/agents/new", "run": f"#/runs/{ids['run']}",
                     "run-tools": f"#/runs/{ids['tool_run']}",
                     "chat": f"#/chat/{ids['conv']}", "history": "#/history", "history-chats": "#/history?tab=chats",
                     "settings": "#/settings", "plans": "#/plans", "orchestration": f"#/orchestrations/{ids['orch']}",
                     "orchestration-step": f"#/orchestrations/{ids['orch']}?step=translate",
                     "plan-rerun": f"#/plans?from={ids['orch']}", "not-found": "#/no-such-page",
                     "files": "#/files", "users": "#/users", "projects": "#/projects"}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                for size, (width, height) in SIZES.items():
                    context = browser.new_context(viewport={"width": width, "height": height})
                    page = context.new_page()
                    where = ["login"]
                    page.on("console", lambda m, w=where: m.type == "error" and errors.append(f"{w[0]}: {m.text}"))
                    page.on("pageerror", lambda e, w=where: errors.append(f"{w[0]}: {e}"))
                    where[0] = "login page"  # its 401 is the point: Chromium logs it, not a problem
                    page.goto(f"{url}/")  # the login page a new browser gets
                    page.screenshot(path=str(out / f"login-{size}.png"), full_page=True)
                    where[0] = "login"
                    page.goto(f"{url}/login?token={token}")
                    for name, route in pages.items():
                        where[0] = f"{name} ({size})"
                        page.goto(f"{url}/{route}")
                        page.wait_for_load_state("networkidle")
                        page.wait_for_timeout(400)
                        page.screenshot(path=str(out / f"{name}-{size}.png"), full_page=True)
                        wide = page.evaluate("document.documentElement.scrollWidth")
                        if wide > width:
                            errors.append(f"{name} at {size}: page is {wide}px wide")
                    context.close()
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    errors = [e for e in errors if not e.startswith("login page: Failed to load resource")]
    for error in errors:
        print("UI problem:", error, file=sys.stderr)
    print(f"saved {len(list(out.glob('*.png')))} screenshots in {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1]))
