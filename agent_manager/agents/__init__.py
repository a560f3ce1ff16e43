"""Agent kinds: one module per CLI. Which kinds exist is the registry's business (plugins.py):
the built-in ones register through the ``agent_manager.kinds`` entry point like any plugin."""

from __future__ import annotations

from agent_manager.plugins import DEFAULT_KIND

from .base import AgentKind, Invocation, OutputParser, ParsedEvent, PlainTextParser


def __getattr__(name: str) -> object:
    """``KINDS``: the installed kinds by name (the registry's, read when asked)."""
    if name == "KINDS":
        from agent_manager.plugins import kinds

        return kinds()
    raise AttributeError(name)


def get_kind(name: str) -> AgentKind:
    """The kind called ``name``; an unknown name is a validation error (422), not a crash."""
    from agent_manager.plugins import get_kind as registered

    return registered(name)


__all__ = ["DEFAULT_KIND", "KINDS", "AgentKind", "Invocation", "OutputParser", "ParsedEvent", "PlainTextParser",
           "get_kind"]
