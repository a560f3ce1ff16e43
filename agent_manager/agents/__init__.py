"""Agent kinds: one module per CLI. ``KINDS`` maps the kind name stored on an agent to it."""

from __future__ import annotations

from agent_manager.errors import ValidationFailed

from .aider import AiderKind
from .base import AgentKind, Invocation, OutputParser, ParsedEvent, PlainTextParser
from .claude import ClaudeKind
from .codex import CodexKind
from .gemini import GeminiKind
from .generic import GenericKind
from .llm import LlmKind
from .ollama import OllamaKind
from .opencode import OpencodeKind

KINDS: dict[str, AgentKind] = {
    k.name: k
    for k in (GeminiKind(), ClaudeKind(), CodexKind(), OllamaKind(), AiderKind(), OpencodeKind(),
              LlmKind(), GenericKind())
}


def get_kind(name: str) -> AgentKind:
    """The kind called ``name``; an unknown name is a validation error (422), not a crash."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown agent kind {name!r}; expected one of: {', '.join(KINDS)}") from None


__all__ = ["KINDS", "AgentKind", "Invocation", "OutputParser", "ParsedEvent", "PlainTextParser", "get_kind"]
