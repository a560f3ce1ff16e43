"""The one error shape, the non-JSON media types, and the finishing touches of /openapi.json."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from agent_manager.web.auth import OPEN_PATHS


class ErrorBody(BaseModel):
    code: str = Field(..., description="stable, e.g. not_found, validation_failed, conflict, forbidden")
    message: str = Field(..., description="for people; names the field or the limit")
    details: list[dict[str, Any]] | dict[str, Any] | None = Field(
        ..., description="per-field problems ([{field, in?, message?}]; plan issues add step) or an object "
                         "such as {size, limit}; null when there is nothing more to say")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


ERROR_TEXT = {
    400: "Bad request (bad_request): a malformed header, path or body",
    401: "Not authenticated (unauthorized)",
    403: "Forbidden (forbidden): not the admin, a refused Host or Origin, or an isolation rule",
    404: "Not found (not_found), or not yours",
    409: "Conflict (conflict): the resource is in a state that does not allow this",
    413: "Too large (too_large): a body over max_request_bytes, or a file over its limit",
    422: "Invalid input (validation_failed, invalid_plan): details name each field",
    429: "Too many (too_many_requests): wrong tokens from this address, or a limit reached",
    499: "The client closed the request; nobody reads this answer (no body)",
    503: "A backend is unavailable (executor_unavailable), e.g. Daytona not configured or unreachable",
    507: "The disk is full (insufficient_storage); nothing was written",
}
# What the middleware can answer on any operation, before a route runs (web.auth, web.limits).
MIDDLEWARE_STATUSES = (400, 401, 403, 413, 429)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the errors a route itself can answer (the middleware's are added
    to every operation by ``install``)."""
    return {status: {"description": ERROR_TEXT[status], **({"model": ErrorResponse} if status != 499 else {})}
            for status in statuses}


def text(media_type: str, description: str, status: int = 200, **extra: Any) -> dict[int | str, dict[str, Any]]:
    """A non-JSON answer: a string body of ``media_type``."""
    return {status: {"description": description,
                     "content": {media_type: {"schema": {"type": "string", **extra}}}}}


# Before OpenAPI 3.2 (FastAPI writes 3.1) the schema of text/event-stream describes one event.
SSE_EVENT = {"type": "object", "required": ["id", "event", "data"], "properties": {
    "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's seq"},
    "event": {"type": "string", "description": "its type, e.g. run.output"},
    "data": {"type": "string", "contentMediaType": "application/json",
             "description": "its data object, with `at` (when it was stored)"}}}
SSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "The events as JSON; with Accept: text/event-stream, server-sent events (replayed, then live; "
                   "resumed after ?after= or Last-Event-ID; `: keepalive` comments in between)",
    "content": {"text/event-stream": {"schema": SSE_EVENT}}}}
DOWNLOAD = text("application/octet-stream", "With raw=true, the file's bytes as an attachment",
                format="binary")
PATCH = text("text/x-diff", "With format=patch or Accept: text/x-diff, the patch as an attachment")
PROMETHEUS = text("text/plain", "Prometheus text exposition format (version 0.0.4)")
RAW_OUTPUT = text("text/plain", "The run's output bytes (UTF-8) in event order, stdout and stderr interleaved "
                  "(or one of them with ?stream=); a live run is followed until it finishes, then the "
                  "response ends")
HTML = text("text/html", "An HTML page")
SVG = text("image/svg+xml", "The icon")


def redirect(to: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {303: {"description": f"{description}; redirects to {to}",
                  "headers": {"Location": {"schema": {"type": "string"}}}}}


def html_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Errors a browser-facing route answers with an HTML page (the login form and its message)."""
    return {status: {"description": ERROR_TEXT[status] + "; the login page with the message",
                     "content": {"text/html": {"schema": {"type": "string"}}}} for status in statuses}


LOGIN = {**HTML, **redirect("/", "Logged in: the session cookie is set (am_session, HttpOnly)"),
         **html_errors(400, 401, 429)}


def install(app: FastAPI) -> None:
    """Finish ``/openapi.json``: FastAPI documents its own 422 body (``{"detail": [...]}``), which
    this service never sends; every 422 is ``ErrorResponse``. The middleware's answers (auth,
    Host/Origin checks, the body limit, the wrong-token throttle) are added to every operation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}), ErrorResponse=error_schema)
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                answers = operation.setdefault("responses", {})
                if "422" in answers and "HTTPValidationError" in str(answers["422"]):
                    answers["422"] = {"description": ERROR_TEXT[422], "content": error_ref}
                for status in MIDDLEWARE_STATUSES:
                    if status in (401, 429) and path in OPEN_PATHS:  # no credentials asked there
                        continue
                    answer = answers.setdefault(str(status), {"description": ERROR_TEXT[status]})
                    answer.setdefault("content", {}).update(error_ref)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
