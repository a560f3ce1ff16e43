"""aider (``aider-chat``) in one-shot mode: ``aider --message=PROMPT``, plain text output.

Source: Aider-AI/aider ``aider/args.py`` (configargparse): ``--message/--msg/-m`` "Specify
a single message to send the LLM, process reply then exit"; ``--no-pretty`` turns off
colour/markdown rendering; ``--yes-always`` answers every confirmation with yes.

Prompt passing: the single token ``--message=<prompt>``. argparse splits ``--opt=value`` at
the first ``=`` and takes the rest verbatim, so a prompt like ``--yes-always`` stays text;
``["--message", prompt]`` would fail (or worse) for prompts starting with ``-``.
"""

from __future__ import annotations

from .base import AgentKind, Invocation, safe_value


class AiderKind(AgentKind):
    name = "aider"
    default_command = "aider"
    install_hint = "python -m pip install aider-install && aider-install"
    supports_resume = False  # aider keeps chat history per directory, not per session id
    auto_approve_flags = frozenset({"--yes-always", "--yes"})

    def build(self, command: str, args: list[str], prompt: str, model: str | None = None,
              resume_id: str | None = None) -> Invocation:
        argv = [self.executable(command), "--no-pretty"]
        if model:
            argv.append(f"--model={safe_value(model)}")
        argv += args
        argv.append(f"--message={prompt}")
        return Invocation(argv=argv)
