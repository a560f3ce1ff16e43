"""Who may talk to the service.

An admin token is generated on first start and kept in a 0600 file in the data directory —
never in argv or logs. The API takes it as ``Authorization: Bearer``; a browser exchanges it
once at ``/login`` for an HttpOnly, SameSite=Strict session cookie. Users created by the admin
log in the same way with their own tokens (``store.users``). The cookie names a session kept on
the server (``store.sessions``): logging out ends it, rotating a token or deleting a user ends
all of theirs, and it expires after ``session_max_age_s``. Independently of credentials, the Host
header must name this service (DNS-rebinding defence) and a cookie-authenticated state change
or WebSocket upgrade must come from our own origin (CSRF defence). There is no CORS: a foreign
page can never read a response.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_manager.errors import ConfigError
from agent_manager.settings import Settings
from agent_manager.store import sessions as session_store
from agent_manager.store import users as user_store
from agent_manager.web import revocation
from agent_manager.web.limits import FailureThrottle, client_key

COOKIE = "am_session"
OPEN_PATHS = frozenset({"/api/health", "/login", "/logout", "/favicon.ico"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~-]{16,256}$")
# A Host header is a name or a bracketed IPv6 address, and an optional port: nothing else.
# (``urlsplit`` alone reads ``evil.com@127.0.0.1`` as host 127.0.0.1, and ignores ", evil.com".)
HOST_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})))"
                     r"(?::[0-9]{1,5})?")
# Sent with every response: no framing (clickjacking), no MIME sniffing, and no Referer, so a
# ``/login?token=`` URL never travels to another site.
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer")]
# The login page is the one exception: a form posted from a ``no-referrer`` page carries
# ``Origin: null`` in Chromium, which the Origin check must refuse; ``same-origin`` keeps the
# Referer (and so the Origin) inside this service while still never sending it elsewhere.
LOGIN_REFERRER = (b"referrer-policy", b"same-origin")
LOGIN_HEADERS = {"Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
ADMIN = {"id": None, "name": "admin", "admin": True, "trusted": True}

Principal = dict[str, Any]
Authenticate = Callable[..., Principal | None]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_token(path: Path, *, write: bool = True) -> tuple[str, bool]:
    """The admin token, creating it (mode 0600) on first start. Returns (token, created).

    A token file others can read is tightened to 0600; one whose content is not a plausible
    token (too short, odd characters) is refused rather than silently trusted.
    """
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            if not TOKEN_RE.match(token):
                raise ConfigError(f"the token file {path} does not hold a valid token (16-256 characters of "
                                  "A-Z a-z 0-9 _ . ~ -); delete it to get a new one")
            return token, False
    token = secrets.token_urlsafe(32)
    if write:
        save_token(path, token)
    return token, True


def save_token(path: Path, token: str) -> None:
    """Write a new token file (0600). ``serve`` calls it only once start-up has succeeded, so a
    failed first start does not swallow the one-time login URL."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time comparison (never ``==`` on secrets)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def _header(scope: Scope, name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", []) if k == name]
    if len(values) != 1:
        return None if not values else ""  # a repeated header is refused (ambiguous credentials)
    return values[0].decode("latin-1")


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    found = [value for key, _, value in (part.strip().partition("=") for part in raw.split(";")) if key == name]
    return found[0] if len(found) == 1 else None


def _service(scope: Scope) -> Any:
    app = scope.get("app")
    state = getattr(app, "state", None)
    return getattr(state, "service", None)


def _same(now: Principal | None, then: Principal) -> bool:
    """Whether a connection's credentials still name the same principal with the same rights."""
    return now is not None and all(now.get(k) == then.get(k) for k in ("id", "admin", "trusted"))


def _as_principal(user: dict[str, Any]) -> Principal:
    return {"id": user["id"], "name": user["name"], "admin": user["admin"], "trusted": user["trusted"]}


def default_authenticate(db: Any, admin_token: str, value: str, cookie: bool = False,
                         max_age_s: float | None = None) -> Principal | None:
    """A user's bearer token, or a session cookie (the admin's or a user's) → principal, else None."""
    if cookie:
        return session_principal(db, admin_token, value, max_age_s)
    user = user_store.by_token(db, value)
    return _as_principal(user) if user is not None else None


def session_principal(db: Any, admin_token: str, value: str, max_age_s: float | None = None) -> Principal | None:
    """Whose live session the cookie names; None when it is unknown, ended, expired (also by a
    ``session_max_age_s`` lowered since the login), or its token has changed since the login
    (a rotated admin token too, after a restart)."""
    found = session_store.find(db, value, max_age_s)
    if found is None:
        return None
    if found.user_id is None:
        principal = dict(ADMIN) if tokens_match(found.credential, session_store.credential_of(admin_token)) else None
    else:
        material = user_store.session_material(db, found.user_id)
        principal = (_as_principal(material[0]) if material is not None and tokens_match(found.credential, material[1])
                     else None)
    if principal is not None:
        session_store.touch(db, found)
    return principal


class AuthMiddleware:
    """Pure ASGI so that streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, settings: Settings, token: str | None,
                 authenticate: Authenticate | None = None, throttle: FailureThrottle | None = None) -> None:
        self.app = app
        self.settings = settings
        self.throttle = throttle
        self.token = token
        # Optional override of how user credentials are checked: (value, cookie=False) -> principal | None.
        # Without one, the service's user store is asked — looked up per request, because the
        # service (and its database) starts after the app is built.
        self.authenticate = authenticate

    def allowed_host(self, host_header: str | None) -> bool:
        match = HOST_RE.fullmatch(host_header or "")
        if match is None:
            return False
        host = (match.group("v6") or match.group("name") or "").lower().rstrip(".")
        allowed = self.settings.allowed_hosts
        if is_loopback(host) or host in allowed or "*" in allowed:
            return True
        return bool(self.settings.host) and host == self.settings.host and self.settings.host not in ("0.0.0.0", "::")

    def _token(self, scope: Scope) -> str | None:
        """The admin token now: the app's (``rotate_admin_token`` replaces it) or the one given."""
        if self.token is None:
            return None  # authentication is off; a rotation cannot turn it on
        state = getattr(scope.get("app"), "state", None)
        current = getattr(state, "token", None) if state is not None else None
        return current if isinstance(current, str) and current else self.token

    def _user(self, scope: Scope, value: str, cookie: bool, token: str) -> Principal | None:
        svc = _service(scope)
        hook = self.authenticate or (svc.authenticate if svc is not None else None)
        if hook is not None:
            return hook(value, cookie=True) if cookie else hook(value)
        db = getattr(svc, "db", None)
        if db is None:
            return None
        return default_authenticate(db, token, value, cookie, self.settings.session_max_age_s)

    def principal(self, scope: Scope) -> tuple[Principal | None, str]:
        """(principal, how): how is "bearer", "cookie", "open" or "" when not authenticated."""
        token = self._token(scope)
        if token is None:
            return dict(ADMIN), "open"
        auth = _header(scope, b"authorization")
        if auth is not None:  # a (single) Authorization header decides alone; a bad one is not retried as cookie
            scheme, _, given = auth.partition(" ")
            given = given.strip()
            if scheme.lower() != "bearer" or not given:
                return None, ""
            if tokens_match(given, token):
                return dict(ADMIN), "bearer"
            user = self._user(scope, given, cookie=False, token=token)
            return (user, "bearer") if user is not None else (None, "")
        cookie = _cookie(scope, COOKIE)
        if cookie:
            user = self._user(scope, cookie, cookie=True, token=token)
            if user is not None:
                return user, "cookie"
        return None, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.allowed_host(_header(scope, b"host")):
            await _deny(scope, send, 403, "forbidden", "this Host is not allowed (DNS rebinding protection); "
                        "add it to allowed_hosts (AGENT_MANAGER_ALLOWED_HOSTS) if you reach the service under "
                        "that name")
            return
        path = scope.get("path", "")
        principal, how = self.principal(scope)
        if principal is None and path not in OPEN_PATHS:
            wait = 0.0
            if self.throttle is not None and _header(scope, b"authorization") is not None:
                wait = self.throttle.failed(client_key(scope))
            if wait:
                await _deny(scope, send, 429, "too_many_requests", "too many wrong tokens from this address; "
                            f"try again in {math.ceil(wait)} s", [(b"retry-after", str(math.ceil(wait)).encode())])
                return
            await _deny(scope, send, 401, "unauthorized", "authentication required: send 'Authorization: Bearer "
                        "<token>' or log in at /login with the token from the data directory")
            return
        method = scope.get("method", "GET")
        if (scope["type"] == "websocket" or method not in SAFE_METHODS) and how != "bearer":
            if not self.same_origin(scope, strict=how == "cookie"):
                await _deny(scope, send, 403, "forbidden", "cross-site request refused (Origin check)")
                return
        scope.setdefault("state", {})["principal"] = principal
        guard = None
        revocations = revocation.of(scope)
        if how in ("cookie", "bearer") and revocations is not None and principal is not None:
            then = principal
            # Long-lived connections re-check their credentials when any may have ended.
            guard = revocation.Guard(lambda: _same(self.principal(scope)[0], then), revocations)
            if scope["type"] == "websocket":
                receive, send = guard.websocket(receive, send)
            else:
                send = guard.http(send)
        inner = send

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await inner(message)

        try:
            await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)
        except (OSError, ClientDisconnect):
            if guard is None or not guard.revoked:
                raise  # ended by us (its credentials ended): nothing more to say

    def same_origin(self, scope: Scope, strict: bool) -> bool:
        """Origin must name this host. ``strict`` (cookie sessions): a request that carries
        neither Origin nor Fetch metadata is refused too; browsers always send one of them."""
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        if origin is not None:
            try:
                return bool(host) and urlsplit(origin).netloc == host
            except ValueError:
                return False
        fetch_site = _header(scope, b"sec-fetch-site")
        if fetch_site is not None:
            return fetch_site in ("same-origin", "none")
        # Not a browser (no Origin, no Fetch metadata): curl or a script, which CSRF cannot forge.
        return not strict


async def _deny(scope: Scope, send: Send, status: int, code: str, message: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + status})
        return
    accept = _header(scope, b"accept") or ""
    security = SECURITY_HEADERS
    if status == 401 and "text/html" in accept and not scope.get("path", "").startswith("/api/"):
        # A person in a browser: still a 401, but one they can act on.
        body = LOGIN_PAGE.format(error="").encode()
        content_type = b"text/html; charset=utf-8"
        security = [h for h in SECURITY_HEADERS if h[0] != LOGIN_REFERRER[0]] + [LOGIN_REFERRER]
    else:
        body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
        content_type = b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *security]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="agent-manager"'))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def login(app: Any, given: list[str], client: str = "?", secure: bool = False) -> Response:
    """Exchange a token (admin or user) for a session cookie. ``given`` are all values sent:
    more than one is refused, like a repeated credential header. Wrong tokens count towards
    the client's back-off (``web.limits``); a right one always works. ``secure``: the request
    came over https (directly or through a proxy uvicorn trusts), so the cookie never travels
    over plain http."""
    expected: str | None = app.state.token
    if expected is None:
        return RedirectResponse("/", status_code=303)
    if len(given) != 1:
        return HTMLResponse(LOGIN_PAGE.format(error="Send exactly one token."), status_code=400,
                            headers=LOGIN_HEADERS)
    token = given[0].strip()
    svc = app.state.service
    max_age = svc.settings.session_max_age_s
    if tokens_match(token, expected):
        value = session_store.create(svc.db, None, session_store.credential_of(expected), max_age)
    else:
        user = default_authenticate(svc.db, expected, token) if getattr(svc, "db", None) is not None else None
        if user is None:
            throttle: FailureThrottle | None = getattr(app.state, "throttle", None)
            wait = throttle.failed(client) if throttle is not None else 0.0
            if wait:
                return HTMLResponse(LOGIN_PAGE.format(error=html.escape(
                    f"Too many wrong tokens from this address; try again in {math.ceil(wait)} s.")),
                    status_code=429, headers={**LOGIN_HEADERS, "Retry-After": str(math.ceil(wait))})
            return HTMLResponse(LOGIN_PAGE.format(error=html.escape("That token is not valid.")), status_code=401,
                                headers=LOGIN_HEADERS)
        found = user_store.session_material(svc.db, user["id"])
        assert found is not None
        value = session_store.create(svc.db, user["id"], found[1], max_age)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, value, httponly=True, samesite="strict", path="/", max_age=int(max_age),
                        secure=secure)
    return response


def cross_site_login() -> Response:
    """The answer to ``GET /login?token=`` reached from another site (a link or redirect on a
    page the browser was showing). Accepting it would be login CSRF: a page could log your
    browser into the attacker's own account (its token in the link), so that what you type
    next — prompts, secrets in chats — lands where the attacker reads it. A URL pasted into the
    address bar or opened from a terminal arrives with ``Sec-Fetch-Site: none`` and works."""
    return HTMLResponse(LOGIN_PAGE.format(error=html.escape(
        "That login link came from another site, so it was not used. Paste your token here.")),
        status_code=403, headers=LOGIN_HEADERS)


def rotate_admin_token(app: Any) -> str:
    """A new admin token, at once: written to the token file (what the CLI reads), used by
    the running service from the next request on, and every admin session ends (each was
    opened with the old token). Returns the new token, to be shown once."""
    svc = app.state.service
    token = secrets.token_urlsafe(32)
    save_token(svc.settings.token_path, token)  # first: if this fails, nothing changed
    app.state.token = token
    session_store.end_user(svc.db, None)
    revocation.changed(app)  # and what the old token or those sessions have open ends too
    return token


def logout(app: Any, cookie_headers: list[str], secure: bool = False) -> Response:
    """End the session on the server (a copy of the cookie stops working too), then clear it.
    Every session cookie sent is ended, should a request carry more than one."""
    svc = app.state.service
    values = [value for raw in cookie_headers for key, _, value in (part.strip().partition("=")
                                                                    for part in raw.split(";")) if key == COOKIE]
    if getattr(svc, "db", None) is not None:
        for value in values:
            session_store.end(svc.db, value)
        revocation.changed(app)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)
    return response


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="color-scheme" content="light dark">
<title>Log in · Agent Manager</title><link rel="icon" href="/favicon.ico" type="image/svg+xml">
<style>:root{{--bg:#f6f7f9;--panel:#fff;--text:#1c2330;--muted:#5f6b7c;--border:#dde1e7;--accent:#3b5bdb;
--danger:#c92a2a}}@media (prefers-color-scheme:dark){{:root{{--bg:#0f1217;--panel:#171b22;--text:#e4e8ef;
--muted:#97a1b0;--border:#2a303b;--accent:#7b93ff;--danger:#ff6b6b}}}}
*{{box-sizing:border-box}}body{{margin:0;min-height:100vh;display:grid;place-items:center;padding:1rem;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--text)}}
main{{width:100%;max-width:26rem;background:var(--panel);border:1px solid var(--border);border-radius:12px;
padding:1.5rem}}h1{{font-size:1.35rem;margin:0 0 .6rem}}h1 span{{color:var(--accent)}}
p{{color:var(--muted);margin:.4rem 0 1rem}}code{{font-size:.9em}}
label{{font-weight:600;display:block;margin-bottom:.3rem}}
input{{width:100%;padding:.6rem;font:inherit;color:inherit;background:var(--panel);border:1px solid var(--border);
border-radius:8px}}input:focus-visible{{outline:3px solid #f59f00;outline-offset:2px}}
button{{margin-top:.9rem;width:100%;padding:.65rem 1.2rem;font:inherit;font-weight:600;border:0;border-radius:8px;
background:var(--accent);color:#fff;cursor:pointer}}.error{{color:var(--danger);font-weight:600;margin:0 0 .8rem}}
.error:empty{{display:none}}</style></head><body><main class="login"><h1><span aria-hidden="true">◆</span>
Agent Manager</h1>
<p>Paste your token. The admin token is in the file <code>admin-token</code> in the data directory
(<code>agent-manager token</code> prints it); users get theirs from the admin.</p>
<p class="error" role="alert" data-testid="login-error">{error}</p>
<form method="post" action="/login"><label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form></main></body></html>"""
