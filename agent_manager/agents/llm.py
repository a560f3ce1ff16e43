"""Simon Willison's ``llm`` via ``llm prompt [-m MODEL]``, answer as plain text on stdout.

Source: simonw/llm ``llm/cli.py``: the ``prompt`` command (also the group's default) reads
the prompt from stdin when stdin is not a terminal (``read_prompt``) and, without a prompt
argument, uses it verbatim. The subcommand is named explicitly so the click
``DefaultGroup`` never has to guess.

Prompt passing: stdin — click would treat an argv prompt that starts with ``-`` as an
option, and simonw/llm#871 notes ``--`` is not accepted for the default command.
"""

from __future__ import annotations

from .base import AgentKind, Gateway, Invocation, safe_value


class LlmKind(AgentKind):
    name = "llm"
    title = "llm"
    description = "Simon Willison's llm CLI, plain-text output"
    default_command = "llm"
    install_hint = "pipx install llm"
    supports_resume = False  # `--cid` exists, but the plain output never reports the id

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command), "prompt"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        argv += args
        env: dict[str, str] = {}
        if gateway:  # llm's OpenAI models use the openai SDK, which reads these
            env["OPENAI_BASE_URL"] = gateway.base_url
            if gateway.api_key:
                env["OPENAI_API_KEY"] = gateway.api_key
        return Invocation(argv=argv, stdin=prompt.encode(), env=env)
