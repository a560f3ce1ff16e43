"""How the run page's log view copes with a 100,000-line run, in a real Chromium.

    .venv/bin/python bench/ui_log.py            # defaults: --lines 100000

Starts a real server (temp home, the fake CLIs of tests/fakes/bin on PATH, like
scripts/screenshots.py), runs a generic agent that prints --lines coloured lines, waits for it
to finish, then opens its page in the system Chromium and measures, from navigation:
  - ``load_ms``: until the log says "N lines" (every event replayed over SSE, parsed, painted);
  - ``search_ms``: typing a query matching the last line until that row is the current match;
  - ``scroll_frame_ms``: mean time of 30 scroll-and-paint steps spread over the whole log;
  - ``dom_rows``: rows in the DOM (windowed: independent of the log's length);
  - ``heap_mb``: the page's JS heap after loading (performance.memory, Chromium only).
Goals: load ≤ 10 s, search ≤ 500 ms, a scroll frame ≤ 50 ms, fewer than 300 rows in the DOM.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from screenshots import CHROMIUM_ARGS, start  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    script = (f"import sys\nfor i in range({args.lines}):\n"
              "    sys.stdout.write(f'\\x1b[3{i % 8}mline {i}\\x1b[0m of the build output\\n')\n")
    with tempfile.TemporaryDirectory(prefix="am-bench-ui-") as tmp:
        proc, url, token = start(Path(tmp) / "home")
        try:
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            api.post("/api/agents", json={"name": "printer", "kind": "generic", "command": sys.executable,
                                          "args": ["-c", script], "backend": "local"}).raise_for_status()
            run = api.post("/api/runs", json={"agent": "printer", "prompt": "print"}).json()
            while api.get(f"/api/runs/{run['id']}").json()["status"] in ("queued", "running"):
                time.sleep(0.2)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.goto(f"{url}/login?token={token}")
                page.wait_for_selector("main h1")
                started = time.perf_counter()
                page.goto(f"{url}/#/runs/{run['id']}")
                page.get_by_test_id("log-lines").filter(has_text=f"{args.lines:,} lines").wait_for(timeout=120_000)
                load_ms = (time.perf_counter() - started) * 1000
                rows = page.locator("[data-testid=output] .log-row").count()
                heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0") / 1e6
                started = time.perf_counter()
                page.get_by_test_id("log-search").fill(f"line {args.lines - 1} ")
                page.locator(".log-row.current").filter(has_text=f"line {args.lines - 1} ").wait_for()
                search_ms = (time.perf_counter() - started) * 1000
                frame_ms = page.evaluate("""async () => {
                  const box = document.querySelector('[data-testid=output]');
                  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
                  const t = performance.now();
                  for (let k = 0; k < 30; k++) { box.scrollTop = (k / 30) * box.scrollHeight; await frame(); }
                  return (performance.now() - t) / 30;
                }""")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    goals = {"load_ms": 10_000, "search_ms": 500, "scroll_frame_ms": 50, "dom_rows": 300}
    figures = {"load_ms": round(load_ms), "search_ms": round(search_ms), "scroll_frame_ms": round(frame_ms, 1),
               "dom_rows": rows, "heap_mb": round(heap, 1)}
    passed = {k: figures[k] <= v for k, v in goals.items()}
    print(json.dumps({"params": {"lines": args.lines}, "nproc": os.cpu_count(), "goals": goals,
                      "figures": figures, "pass": passed, "all_pass": all(passed.values())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
