"""Login CSRF (session fixation by link), in a real Chromium against a real server.

A page on another site links (or redirects) to ``/login?token=<the attacker's own user token>``.
If the service took it, the victim's browser — the admin's, say — would be silently logged
into the attacker's account and what the victim types next (prompts, secrets pasted into a
chat) would land where the attacker reads it. The same URL typed or pasted into the address
bar, or opened from a terminal, must keep working: that is how the first-start URL is used.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import LiveServer
from playwright.sync_api import Browser


@pytest.fixture
def attacker_site() -> Iterator[tuple[str, list[str]]]:
    """A page on another site (``localhost`` vs the service's ``127.0.0.1``) that follows
    whatever link the test puts in ``link[0]`` as soon as it loads."""
    link = [""]

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = (f'<!doctype html><a id="a" href="{link[0]}">win</a>'
                    '<script>document.getElementById("a").click()</script>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/", link
    finally:
        server.shutdown()
        server.server_close()


def test_a_login_link_from_another_site_does_not_switch_the_session(
        live_server: LiveServer, browser: Browser, attacker_site: tuple[str, list[str]]) -> None:
    admin = {"Authorization": f"Bearer {live_server.token}"}
    mallory = httpx.post(f"{live_server.url}/api/users", json={"name": "mallory"}, headers=admin).json()
    page_url, link = attacker_site
    link[0] = f"{live_server.url}/login?token={mallory['token']}"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/login?token={live_server.token}")  # typed: works
        me = page.request.get(f"{live_server.url}/api/users/me").json()
        assert me["name"] == "admin"

        page.goto(page_url)
        page.wait_for_url(f"{live_server.url}/**")
        me = page.request.get(f"{live_server.url}/api/users/me").json()
        assert me["name"] == "admin"  # still the admin's own session, not mallory's
        assert "came from another site" in page.content()

        # The same link typed into the address bar is the user's own choice: it works.
        page.goto(link[0])
        assert page.request.get(f"{live_server.url}/api/users/me").json()["name"] == "mallory"
    finally:
        context.close()
