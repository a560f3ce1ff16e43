"""The web UI: one HTML shell plus static ES modules, served behind the auth middleware.

There is no build step. ``index.html`` loads ``/static/app.js``, a small hash router that
imports ``/static/pages/<name>.js`` on demand. ``/ui/pages.json`` lists the page modules that
exist, so the router can say "not available" for a page another developer has not shipped
yet without provoking a 404 (and a console error) in the browser.

The shell is sent with a strict Content-Security-Policy: the UI never needs inline script,
``eval`` or a foreign origin, so agent output that somehow reached the DOM as HTML still
could not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from agent_manager.web import responses as api

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
SHELL_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}


class _Static(StaticFiles):
    """Static files that browsers revalidate (cheap 304s), so an upgrade is picked up at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def available_pages() -> list[str]:
    return sorted(p.stem for p in (STATIC / "pages").glob("*.js"))


def install(app: FastAPI) -> None:
    """Mount ``/static`` and serve the UI shell at ``/``."""
    app.mount("/static", _Static(directory=STATIC), name="static")

    @app.get("/", tags=["ui"], response_class=HTMLResponse, responses=api.HTML)
    async def index() -> FileResponse:
        """The web UI."""
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=SHELL_HEADERS)

    @app.get("/index.html", tags=["ui"], response_class=HTMLResponse, responses=api.HTML)
    async def index_file() -> FileResponse:
        """The web UI (its file name)."""
        return await index()

    @app.get("/favicon.ico", tags=["ui"], response_class=Response, responses=api.SVG)
    async def favicon() -> FileResponse:
        # Browsers ask for it on every page, the login page included (an open path).
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    @app.get("/ui/pages.json", tags=["ui"], response_model=api.PageList)
    async def pages() -> JSONResponse:
        """The UI's page modules that exist (the UI's router asks)."""
        return JSONResponse({"pages": available_pages()}, headers={"Cache-Control": "no-cache"})
