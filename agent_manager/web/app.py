"""The ASGI application factory."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent_manager import __version__
from agent_manager.errors import AgentManagerError
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web import apidocs, auth, metrics, pages, revocation
from agent_manager.web import responses as api
from agent_manager.web.auth import LOGIN_PAGE, AuthMiddleware, ensure_token
from agent_manager.web.limits import BodyLimitMiddleware, FailureThrottle
from agent_manager.web.routers import (
    agents,
    conversations,
    files,
    orchestrations,
    plans,
    plugins,
    projects,
    runs,
    sandboxes,
    terminals,
    users,
    workspaces,
)
from agent_manager.web.routers import settings as settings_api

log = logging.getLogger("agent_manager.web")
# How long a thread may hold the GIL while another waits (CPython's default is 5 ms). The loop
# thread is busy under load, and each row a read-pool query steps through (and each step of
# the event writer) gives the GIL up and waits for it again: with 5 ms a 50-row page could
# wait a quarter of a second, and the writer's commits reach readers late.
GIL_SWITCH_INTERVAL_S = 0.0005
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
                422: "validation_failed", 429: "too_many_requests"}


LOCATIONS = ("body", "query", "path", "header", "cookie")


def _field(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    """(field, where): only the first element of a location says where (a query parameter
    may itself be called ``path`` or ``body``)."""
    items = list(loc)
    where = str(items.pop(0)) if items and items[0] in LOCATIONS else "body"
    return ".".join(str(p) for p in items) or where, where


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}}, status_code=status)


def _scrubbed(value: Any, scrub: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, scrub) for v in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AgentManagerError)
    async def _ours(request: Request, exc: AgentManagerError) -> JSONResponse:
        body = exc.to_json()
        svc = getattr(request.app.state, "service", None)
        if svc is not None:  # a backend's or SDK's words (e.g. why it is unavailable) may carry a key
            body = _scrubbed(body, svc.settings.scrub)
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # its loc is (body, <character offset>): not a field
                reason = (e.get("ctx") or {}).get("error") or "malformed"
                offset = e.get("loc", ("body", 0))[-1]
                message = f"the request body is not valid JSON ({reason} at character {offset})"
                return error_response(422, "validation_failed", message,
                                      [{"field": "body", "in": "body", "message": message}])
        details = []
        for e in exc.errors():
            name, where = _field(e.get("loc", ()))
            # pydantic prefixes a validator's own sentence with "Value error, ": not for users
            details.append({"field": name, "in": where, "message": str(e.get("msg", "")).removeprefix("Value error, ")})
        message = "; ".join((f"{d['field']}: " if d["in"] == "body" else f"{d['in']} parameter {d['field']}: ")
                            + d["message"] for d in details) or "invalid request"
        return error_response(422, "validation_failed", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # e.g. ?offset=10**30: SQLite integers are 64-bit
        return error_response(422, "validation_failed", "a number in the request is out of range")

    @app.exception_handler(UnicodeEncodeError)
    async def _surrogates(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON may carry lone surrogates ("\\ud800"), which are not text and cannot be stored
        return error_response(422, "validation_failed", "the request contains invalid text (a lone surrogate)")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; see the service log")


def create_app(settings: Settings, *, service: Service | None = None, token: str | None = None,
               on_started: Callable[[], None] | None = None) -> FastAPI:
    """``token``/``on_started`` come from ``serve``: it writes a new token file and announces
    the URL only after the service has started, from ``on_started``."""
    svc = service or Service(settings)
    if token is None and settings.auth:
        token = ensure_token(settings.token_path)[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, GIL_SWITCH_INTERVAL_S))
        try:
            await svc.start()
            if on_started is not None:
                on_started()
            try:
                yield
            finally:
                await svc.stop()
        finally:
            sys.setswitchinterval(switch)

    app = FastAPI(title="Agent Manager", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="A local control panel for command-line AI agents.")

    # First: routes are matched in order, and the health check (what monitors and load balancers
    # poll) went through every router's routes before it was found, most of its cost.
    @app.get("/api/health", tags=["service"], response_model=api.Health)
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    apidocs.install(app)
    api.install(app)
    app.state.service = svc
    app.state.token = token
    install_error_handlers(app)
    # Every router is imported plainly at the top: one that fails to import (a missing
    # dependency, a bug) stops the app from being built instead of its routes vanishing.
    for router in (agents.router, runs.router, conversations.router, settings_api.router, metrics.router,
                   sandboxes.router, projects.router, *workspaces.routers, plans.router, orchestrations.router,
                   users.router, files.router, terminals.router, plugins.router):
        app.include_router(router)
    pages.install(app)

    @app.get("/login", tags=["session"], response_model=None, response_class=HTMLResponse, responses=api.LOGIN)
    async def login(request: Request, token: str | None = None) -> Response:
        """The login page; with ``?token=`` exchange the token for a session cookie (a browser's way in)."""
        if token is not None:
            if request.headers.get("sec-fetch-site", "none") not in ("none", "same-origin"):
                return auth.cross_site_login()
            return auth.login(app, request.query_params.getlist("token"), _client(request), _https(request))
        return HTMLResponse(LOGIN_PAGE.format(error=""), headers=auth.LOGIN_HEADERS)

    @app.post("/login", tags=["session"], response_model=None, response_class=HTMLResponse, responses=api.LOGIN)
    async def login_form(request: Request, token: str = Form(...)) -> Response:
        """The login form: exchange the token for a session cookie."""
        return auth.login(app, [token], _client(request), _https(request))

    @app.post("/logout", tags=["session"], response_model=None, status_code=303, response_class=RedirectResponse,
              responses=api.redirect("/login", "The session cookie is deleted (and the session ended)"))
    async def logout(request: Request) -> Response:
        return auth.logout(app, request.headers.getlist("cookie"), _https(request))

    # The middleware finds user credentials through app.state.service at request time.
    app.state.throttle = throttle = FailureThrottle(lambda: settings.auth_failures_allowed)
    app.state.revocations = revocation.Revocations()
    app.add_middleware(AuthMiddleware, settings=settings, token=token, throttle=throttle)
    # outermost: before anything reads the body
    app.add_middleware(BodyLimitMiddleware, limit=lambda: settings.max_request_bytes)
    return app


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _https(request: Request) -> bool:
    """Whether the browser reached us over https: directly, or through a proxy whose
    ``X-Forwarded-Proto`` uvicorn trusts (``--forwarded-allow-ips``, loopback by default)."""
    return request.url.scheme == "https"
