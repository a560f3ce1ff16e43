"""Who may talk to the service.

An admin token is generated on first start and kept in a 0600 file in the data directory —
never in argv or logs. The API takes it as ``Authorization: Bearer``; a browser exchanges it
once at ``/login`` for an HttpOnly, SameSite=Strict session cookie. Independently of
credentials, the Host header must name this service (DNS-rebinding defence) and a
cookie-authenticated state change must come from our own origin (CSRF defence).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from agent_manager.settings import Settings

COOKIE = "am_session"
OPEN_PATHS = frozenset({"/api/health", "/login", "/favicon.ico"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_token(path: Path) -> tuple[str, bool]:
    """The admin token, creating it (mode 0600) on first start. Returns (token, created)."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def session_value(token: str) -> str:
    """The cookie value: derived from the token, so the token itself never sits in a cookie."""
    return hmac.new(token.encode(), b"agent-manager-session-v1", hashlib.sha256).hexdigest()


def tokens_match(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _header(scope: Scope, name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", []) if k == name]
    if len(values) != 1:
        return None if not values else ""  # a repeated credential header is refused
    return values[0].decode("latin-1")


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class AuthMiddleware:
    """Pure ASGI so that streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, settings: Settings, token: str | None,
                 authenticate: Any = None) -> None:
        self.app = app
        self.settings = settings
        self.token = token
        self.session = session_value(token) if token else None
        # Optional hook (users): bearer -> principal dict or None. The admin token always works.
        self.authenticate = authenticate

    def allowed_host(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        host = urlsplit("//" + host_header).hostname or ""
        if is_loopback(host) or host in self.settings.allowed_hosts:
            return True
        return bool(self.settings.host) and host == self.settings.host and self.settings.host not in ("0.0.0.0", "::")

    def principal(self, scope: Scope) -> tuple[dict[str, Any] | None, str]:
        """(principal, how): how is "bearer", "cookie" or "" when not authenticated."""
        if self.token is None:
            return {"id": None, "name": "admin", "admin": True, "trusted": True}, "open"
        auth = _header(scope, b"authorization")
        if auth and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
            if tokens_match(given, self.token):
                return {"id": None, "name": "admin", "admin": True, "trusted": True}, "bearer"
            if self.authenticate is not None:
                user = self.authenticate(given)
                if user is not None:
                    return user, "bearer"
            return None, ""
        cookie = _cookie(scope, COOKIE)
        if cookie and self.session and tokens_match(cookie, self.session):
            return {"id": None, "name": "admin", "admin": True, "trusted": True}, "cookie"
        if cookie and self.authenticate is not None:
            user = self.authenticate(cookie, cookie=True)
            if user is not None:
                return user, "cookie"
        return None, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.allowed_host(_header(scope, b"host")):
            await _deny(scope, send, 403, "forbidden", "this Host is not allowed (DNS rebinding protection); "
                        "add it to allowed_hosts if you reach the service under that name")
            return
        path = scope.get("path", "")
        principal, how = self.principal(scope)
        if principal is None and path not in OPEN_PATHS:
            await _deny(scope, send, 401, "unauthorized", "authentication required: send 'Authorization: Bearer "
                        "<token>' or log in at /login with the token from the data directory")
            return
        method = scope.get("method", "GET")
        if (scope["type"] == "websocket" or method not in SAFE_METHODS) and how in ("cookie", "open", ""):
            if not self.same_origin(scope):
                await _deny(scope, send, 403, "forbidden", "cross-site request refused (Origin check)")
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def same_origin(self, scope: Scope) -> bool:
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        if origin:
            return urlsplit(origin).netloc == host
        fetch_site = _header(scope, b"sec-fetch-site")
        if fetch_site:
            return fetch_site in ("same-origin", "none")
        # Not a browser (no Origin, no Fetch metadata): curl or a script, which CSRF cannot forge.
        return True


async def _deny(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + status})
        return
    accept = _header(scope, b"accept") or ""
    if status == 401 and "text/html" in accept and not scope.get("path", "").startswith("/api/"):
        # A person in a browser: still a 401, but one they can act on.
        body = LOGIN_PAGE.format(error="").encode()
        content_type = b"text/html; charset=utf-8"
    else:
        body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
        content_type = b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="agent-manager"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Agent Manager — log in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
input{{width:100%;padding:.6rem;font-size:1rem;box-sizing:border-box}}button{{margin-top:.8rem;padding:.6rem 1.2rem}}
.error{{color:#b00020}}</style></head><body><h1>Agent Manager</h1>
<p>Paste the admin token. It is in the file <code>admin-token</code> in the data directory
(<code>agent-manager token</code> prints it).</p><p class="error" role="alert">{error}</p>
<form method="post" action="/login"><label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form></body></html>"""
