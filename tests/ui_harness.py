"""The browser harness shared by the UI tests (registered as a pytest plugin in conftest).

A real headless Chromium (the system one) against a real server on port 0. Every session
collects console errors and uncaught page errors, and the ``ui``/``phone`` fixtures fail the
test on any. The only exception is Chromium's own network log line for an HTTP error status
that a test provokes on purpose (e.g. the 422 of an invalid agent name): Chromium prints
"Failed to load resource" for every 4xx fetch and no page can prevent it, so a test must
declare such a status first (``ui.expected_statuses``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import LiveServer
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
RESOURCE_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class UI:
    page: Page
    server: LiveServer
    api: httpx.Client
    errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def go(self, route: str) -> None:
        self.page.goto(f"{self.server.url}/#{route}")

    def agent(self, name: str, **fields: Any) -> dict[str, Any]:
        response = self.api.post("/api/agents", json={"name": name, **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def run(self, agent: str, prompt: str) -> dict[str, Any]:
        response = self.api.post("/api/runs", json={"agent": agent, "prompt": prompt})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def status(self, run_id: str) -> str:
        return str(self.api.get(f"/api/runs/{run_id}").json()["status"])

    def wait_run(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api.get(f"/api/runs/{run_id}").json()
            if run["status"] not in ("queued", "running"):
                return dict(run)
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not finish")

    def unexpected_errors(self) -> list[str]:
        out = []
        for error in self.errors:
            match = RESOURCE_ERROR.search(error)
            if match and int(match.group(1)) in self.expected_statuses:
                continue
            out.append(error)
        return out


def open_ui(browser: Browser, server: LiveServer, viewport: dict[str, int] | None = None) -> UI:
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    api = httpx.Client(base_url=server.url, headers=server.headers, timeout=15)
    ui = UI(page, server, api)
    page.on("console", lambda m: ui.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: ui.errors.append(f"pageerror: {e}"))
    page.goto(f"{server.url}/login?token={server.token}")
    expect(page.locator("h1")).to_have_text("Dashboard")
    return ui


def _session(browser: Browser, server: LiveServer, viewport: dict[str, int] | None = None) -> Iterator[UI]:
    """A logged-in page for one test; fails the test on any unexpected console or page error."""
    session = open_ui(browser, server, viewport)
    try:
        yield session
    finally:
        session.page.context.close()
        session.api.close()
    assert session.unexpected_errors() == []


@pytest.fixture
def ui(browser: Browser, live_server: LiveServer) -> Iterator[UI]:
    yield from _session(browser, live_server)


@pytest.fixture(params=["desktop", "phone"])
def sized(request: pytest.FixtureRequest, browser: Browser, live_server: LiveServer) -> Iterator[UI]:
    """The test once at 1280x800 and once at a phone's 390x844."""
    yield from _session(browser, live_server, PHONE if request.param == "phone" else None)


def is_phone(ui: UI) -> bool:
    return (ui.page.viewport_size or {}).get("width", 1280) < 500


def accept_dialogs(ui: UI) -> None:
    ui.page.on("dialog", lambda dialog: dialog.accept())


@pytest.fixture
def phone(browser: Browser, live_server: LiveServer) -> Iterator[UI]:
    yield from _session(browser, live_server, PHONE)


def output_of(page: Page) -> str:
    """The whole raw output of the run view: the log only keeps the rows in view in the DOM, so
    this asks the log for its text instead of reading the page."""
    return str(page.locator("[data-testid=output]").evaluate("el => el.logText ? el.logText() : el.innerText"))
