"""Any program that takes a prompt: ``command`` + ``args``, output read as plain text.

The prompt replaces an ``args`` element that is exactly ``{prompt}`` (every such element),
or else is appended as the last element. An element that is exactly ``{prompt_file}`` becomes
the path of a file holding the prompt instead (for prompts too long for one argument); the
run layer writes that file in the workspace and fills in the path as the agent sees it.
We do not know the program's parser, so no ``--``
is added: a user who needs one writes ``["--", "{prompt}"]``. The prompt is never
substituted inside a longer element, so it can never be spliced into a flag.
"""

from __future__ import annotations

from .base import PROMPT_FILE_TOKEN, PROMPT_TOKEN, AgentKind, Gateway, Invocation


class GenericKind(AgentKind):
    name = "generic"
    title = "any program"
    description = "Any executable that takes a prompt; its output is read as plain text"
    default_command = ""
    install_hint = "any executable on PATH; give its name as `command`"
    supports_resume = False

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        argv = [self.executable(command)]
        file_at = tuple(i + 1 for i, a in enumerate(args) if a == PROMPT_FILE_TOKEN)
        if PROMPT_TOKEN in args or file_at:
            argv += [prompt if a == PROMPT_TOKEN else a for a in args]
        else:
            argv += [*args, prompt]
        env: dict[str, str] = {}
        if gateway:  # for the program to read; we cannot know its own mechanism
            env["AGENT_MANAGER_API_BASE"] = gateway.base_url
            if gateway.api_key:
                env["AGENT_MANAGER_API_KEY"] = gateway.api_key
        if file_at:
            return Invocation(argv=argv, env=env, prompt_file_at=file_at, prompt_file=prompt)
        return Invocation(argv=argv, env=env)
