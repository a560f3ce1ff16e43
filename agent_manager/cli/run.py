"""``agent-manager run AGENT PROMPT``: start a run and stream it to the terminal."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from agent_manager import plugins
from agent_manager.agents.base import PlainTextParser
from agent_manager.cli.choices import backend_choice
from agent_manager.cli.client import Client
from agent_manager.cli.follow import Stopped, cancel_then_exit, cancelling_signals, held_stops
from agent_manager.cli.follow import follow as follow_events

STATUS_EXIT = {"succeeded": 0, "cancelled": 130, "timed_out": 124, "interrupted": 1, "failed": 1}


def follow(client: Client, run_id: str, raw: bool, structured: bool) -> dict[str, Any]:
    """Print the run's events until it finishes (reconnecting on drops, see ``cli.follow``)."""
    return follow_events(client, f"/api/runs/{run_id}/events", f"run {run_id}", "run.finished",
                         lambda event, data: _print(event, data, raw, structured))


def _print(event: str, data: dict[str, Any], raw: bool, structured: bool) -> None:
    if event == "output" and (raw or not structured or data["stream"] == "stderr"):
        stream = sys.stdout if data["stream"] == "stdout" else sys.stderr
        stream.write(data["text"])
        stream.flush()
    elif event == "message" and structured and not raw:
        sys.stdout.write(data["text"] if data.get("delta") else data["text"] + "\n")
        sys.stdout.flush()
    elif event == "tool" and structured and not raw:
        click.echo(click.style(f"[tool] {data.get('name', '?')}", fg="cyan"), err=True)
    elif event in ("error", "run.stalled"):
        click.echo(click.style(f"[{event}] {data.get('message') or data}", fg="red"), err=True)


def _positive_seconds(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a number of seconds; give a positive finite number, e.g. 300")
    return value


@click.command()
@click.argument("agent")
@click.argument("prompt")
@click.option("--backend", type=backend_choice(), default=None)
@click.option("--conversation", "conversation_id", default=None, help="Continue this conversation.")
@click.option("--timeout", "timeout_s", type=float, default=None, callback=_positive_seconds,
              help="Seconds before the run is killed.")
@click.option("--raw", is_flag=True, help="Print the CLI's raw output instead of parsed messages.")
@click.option("--project", default=None, help="Work on this project, on a new branch am/<run id>.")
@click.option("--base", default=None, help="Branch or commit to start from (default: the project's base).")
@click.option("--detach", is_flag=True,
              help="Start the run, print its id and return; the run goes on in the service.")
@click.pass_obj
def run(obj: dict[str, Any], agent: str, prompt: str, backend: str | None, conversation_id: str | None,
        timeout_s: float | None, raw: bool, project: str | None, base: str | None, detach: bool) -> None:
    """Run AGENT with PROMPT, streaming its output; exits with the agent's exit code.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal, `timeout`) cancel the run; --detach does not wait.
    """
    client = Client(obj)
    info = client.request("GET", f"/api/agents/{agent}")
    kind = plugins.kinds().get(info["kind"])  # the server may have a plugin this CLI lacks: show raw output
    structured = kind is not None and not isinstance(kind.parser(), PlainTextParser)
    body = {"agent": agent, "prompt": prompt, "backend": backend, "conversation_id": conversation_id,
            "timeout_s": timeout_s, "project": project, "base": base}
    started: dict[str, Any] = {}
    if detach:
        started = client.request("POST", "/api/runs", json={k: v for k, v in body.items() if v is not None})
        click.echo(started["id"])  # stdout: just the id, for scripts
        click.echo(f"run {started['id']} started; watch it at {client.url}/#/runs/{started['id']}", err=True)
        return
    try:
        with cancelling_signals():
            with held_stops():  # its answer holds the id to cancel
                started = client.request("POST", "/api/runs", json={k: v for k, v in body.items() if v is not None})
            final = follow(client, started["id"], raw, structured)
    except (KeyboardInterrupt, Stopped) as exc:
        run_id = started.get("id")
        cancel_then_exit(exc, (lambda: client.request("POST", f"/api/runs/{run_id}/cancel")) if run_id else None)
    status = final["status"]
    if project:
        from agent_manager.cli.projects import print_stat

        click.echo("", err=True)
        print_stat(client, f"/api/runs/{started['id']}/diff")
    if status != "succeeded":
        click.echo(click.style(f"run {started['id']} {status}: {final.get('error') or ''}".rstrip(": "),
                               fg="red"), err=True)
    code = final.get("exit_code")
    if status == "failed" and isinstance(code, int) and code > 0:
        sys.exit(code)
    sys.exit(STATUS_EXIT.get(status, 1))
