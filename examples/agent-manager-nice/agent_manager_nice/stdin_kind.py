"""The ``stdin`` agent kind: any program, the prompt written to its standard input.

For programs that read their task from stdin (``cat``, ``wc -w``, a script). The prompt
never touches argv, so it can be as long as memory allows and can never look like a flag.
The output is read as plain text, like the built-in kind for any program.
"""

from __future__ import annotations

from agent_manager.agents.base import AgentKind, Gateway, Invocation


class StdinKind(AgentKind):
    name = "stdin"
    title = "any program, prompt on stdin"
    description = "Runs the agent's command with its args; the prompt is written to the program's standard input"
    default_command = ""
    install_hint = "any executable on PATH that reads its task from stdin; give its name as `command`"

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None, gateway: Gateway | None = None) -> Invocation:
        return Invocation(argv=[self.executable(command), *args], stdin=prompt.encode())
