"""One error hierarchy with one root.

Each class carries its HTTP status and a stable ``code``; the web layer turns any of them
into the single JSON error shape ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any


class AgentManagerError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(AgentManagerError):
    status = 400
    code = "bad_request"


class ValidationFailed(AgentManagerError):
    status = 422
    code = "validation_failed"


class Unauthorized(AgentManagerError):
    status = 401
    code = "unauthorized"


class Forbidden(AgentManagerError):
    status = 403
    code = "forbidden"


class NotFound(AgentManagerError):
    status = 404
    code = "not_found"


class Conflict(AgentManagerError):
    status = 409
    code = "conflict"


class TooLarge(AgentManagerError):
    status = 413
    code = "too_large"


class TooManyRequests(AgentManagerError):
    status = 429
    code = "too_many_requests"


class InsufficientStorage(AgentManagerError):
    """The disk is full: nothing was written."""

    status = 507
    code = "insufficient_storage"


class ConfigError(AgentManagerError):
    """Bad settings or an unusable data directory: reported at start, not per request."""

    code = "config_error"


class ExecutorUnavailable(AgentManagerError):
    """The backend cannot run anything right now (no bwrap, no Daytona key, unreachable)."""

    status = 503
    code = "executor_unavailable"


class ExecutionError(AgentManagerError):
    """Starting or talking to a running execution failed."""

    code = "execution_error"
