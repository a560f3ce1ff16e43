"""``/docs``: Swagger UI served from the package itself, so it works offline.

FastAPI's default page loads Swagger UI from a CDN; a service used on a laptop without
network, or behind a strict proxy, showed a blank page. The assets are vendored in
``web/swagger/`` (from the ``swagger-ui-dist`` npm package) and the page runs no inline script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from agent_manager.web import responses as api

ASSETS = Path(__file__).parent / "swagger"
ASSETS_URL = "/docs-assets"
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API docs</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/init.js"></script>
</body>
</html>
"""
# Swagger UI sets inline styles on elements; scripts stay 'self' only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets (create the app with ``docs_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    page = PAGE.format(title=app.title, assets=ASSETS_URL)

    @app.get("/docs", tags=["ui"], response_class=HTMLResponse, responses=api.HTML)
    async def docs() -> HTMLResponse:
        """This API, browsable (Swagger UI)."""
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})
