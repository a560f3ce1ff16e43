"""Any program that takes a prompt: ``command`` + ``args``, output read as plain text.

The prompt replaces an ``args`` element that is exactly ``{prompt}`` (every such element),
or else is appended as the last element. We do not know the program's parser, so no ``--``
is added: a user who needs one writes ``["--", "{prompt}"]``. The prompt is never
substituted inside a longer element, so it can never be spliced into a flag.
"""

from __future__ import annotations

from .base import PROMPT_TOKEN, AgentKind, Gateway, Invocation


class GenericKind(AgentKind):
    name = "generic"
    default_command = ""
    install_hint = "any executable on PATH; give its name as `command`"
    supports_resume = False

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command)]
        if PROMPT_TOKEN in args:
            argv += [prompt if a == PROMPT_TOKEN else a for a in args]
        else:
            argv += [*args, prompt]
        env: dict[str, str] = {}
        if gateway:  # for the program to read; we cannot know its own mechanism
            env["AGENT_MANAGER_API_BASE"] = gateway.base_url
            if gateway.api_key:
                env["AGENT_MANAGER_API_KEY"] = gateway.api_key
        return Invocation(argv=argv, env=env)
