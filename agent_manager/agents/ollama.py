"""Ollama via ``ollama run MODEL``, answer as plain text on stdout.

Source: ollama/ollama ``cmd/cmd.go`` ``RunHandler``: when stdin is not a terminal it reads
all of stdin and prepends it to the positional prompt words (``strings.Join(prompts, " ")``)
and runs non-interactively; when stdout is not a terminal it prints only the answer.

Prompt passing: stdin, with no prompt words in argv. That is the only way the prompt arrives
byte-identical: with an argv prompt ollama would still prepend whatever stdin holds (even an
empty ``/dev/null`` read gives a leading space), and cobra would read a leading ``-``
as a flag unless guarded.
"""

from __future__ import annotations

from agent_manager.errors import ValidationFailed

from .base import AgentKind, Gateway, Invocation, safe_value


class OllamaKind(AgentKind):
    name = "ollama"
    title = "Ollama"
    description = "ollama run with a local model, plain-text output"
    default_command = "ollama"
    install_hint = "curl -fsSL https://ollama.com/install.sh | sh"
    supports_resume = False  # each `ollama run` is a fresh conversation

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command), "run", *args]
        if model:
            argv.append(safe_value(model))  # positional: safe_value refuses a leading "-"
        elif not any(not a.startswith("-") for a in args):
            raise ValidationFailed("an ollama agent needs a model (set `model`, e.g. llama3.2)")
        env = {"OLLAMA_HOST": gateway.base_url} if gateway else {}  # the ollama server to use
        return Invocation(argv=argv, stdin=prompt.encode(), env=env)
