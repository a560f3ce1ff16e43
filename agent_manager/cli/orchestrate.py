"""``agent-manager orchestrate PLAN.yaml``: run a plan and show its progress live."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from agent_manager.cli.client import Client
from agent_manager.cli.follow import Stopped, cancel_then_exit, cancelling_signals, held_stops
from agent_manager.cli.follow import follow as follow_events

MARKS = {"succeeded": ("✓", "green"), "failed": ("✗", "red"), "skipped": ("-", "yellow"),
         "cancelled": ("■", "yellow")}


def follow(client: Client, orch_id: str, total: int, quiet: bool) -> None:
    """Print one line per step start/finish until the orchestration finishes (reconnecting on
    drops, see ``cli.follow``)."""
    done = 0

    def show(event: str, data: dict[str, Any]) -> None:
        nonlocal done
        if event == "step.finished":
            done += 1
        if not quiet:
            _print(event, data, done, total)

    follow_events(client, f"/api/orchestrations/{orch_id}/events", f"orchestration {orch_id}",
                  "orchestration.finished", show)


def _print(event: str, data: dict[str, Any], done: int, total: int) -> None:
    progress = f"[{done}/{total}]"
    if event == "step.started":
        where = data.get("backend") or "?"
        run = f", run {data['run_id']}" if data.get("run_id") else ""
        again = f" (attempt {data['attempt']})" if data.get("attempt", 1) > 1 else ""
        click.echo(f"{progress} ▶ {data['step']} started on {where}{run}{again}", err=True)
    elif event == "step.retrying":
        click.echo(click.style(f"{progress} ↻ {data['step']} failed ({data.get('error')}); retrying in "
                               f"{data['delay_s']:g} s", fg="yellow"), err=True)
    elif event == "step.finished":
        mark, colour = MARKS.get(data["status"], ("?", "white"))
        took = f" in {data['duration_s']:.1f} s" if data.get("duration_s") is not None else ""
        why = f": {data['error']}" if data.get("error") and data["status"] != "succeeded" else ""
        click.echo(click.style(f"{progress} {mark} {data['step']} {data['status']}{took}{why}", fg=colour),
                   err=True)
    elif event == "orchestration.resumed":
        click.echo(f"resumed: re-running {', '.join(data['rerun'])}", err=True)


@click.command("orchestrate")
@click.argument("plan_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the final state (with per-step times) as JSON.")
@click.option("--project", default=None, help="Run on this project: a branch per step, one result branch.")
@click.option("--base", default=None, help="Branch or commit to start from (default: the project's base).")
@click.pass_obj
def command(obj: dict[str, Any], plan_file: str, as_json: bool, project: str | None, base: str | None) -> None:
    """Run the plan in PLAN_FILE (YAML or JSON); exits non-zero if any step did not succeed.

    Ctrl-C, SIGTERM and SIGHUP (a closed terminal, `timeout`) cancel the orchestration.
    """
    client = Client(obj)
    text = Path(plan_file).read_text()
    body = {"yaml": text, **({"project": project} if project else {}), **({"base": base} if base else {})}
    orch: dict[str, Any] = {}
    try:
        with cancelling_signals():  # Ctrl-C, SIGTERM, SIGHUP: cancel the orchestration, as `run` does
            with held_stops():  # its answer holds the id to cancel
                orch = client.request("POST", "/api/orchestrations", json=body)
            total = orch["counts"]["total"]
            if not as_json:
                click.echo(f"orchestration {orch['id']} ({orch['name']}): {total} step(s), at most "
                           f"{orch['max_parallel']} at once", err=True)
            follow(client, orch["id"], total, quiet=as_json)
    except (KeyboardInterrupt, Stopped) as exc:
        orch_id = orch.get("id")
        cancel_then_exit(exc, (lambda: client.request("POST", f"/api/orchestrations/{orch_id}/cancel"))
                         if orch_id else None)
    final = client.request("GET", f"/api/orchestrations/{orch['id']}")
    if as_json:
        click.echo(json.dumps(final, indent=2, ensure_ascii=False))
    else:
        counts = final["counts"]
        summary = ", ".join(f"{counts[k]} {k}" for k in ("succeeded", "failed", "skipped", "cancelled", "pending")
                            if counts.get(k))
        colour = "green" if final["status"] == "succeeded" else "red"
        where = final["workspace"]["branch"] if final.get("workspace") else final["workspace_dir"]
        click.echo(click.style(f"{final['status']}: {summary} (workspace {where})", fg=colour), err=True)
        if final.get("workspace"):
            from agent_manager.cli.projects import print_stat

            print_stat(client, f"/api/orchestrations/{orch['id']}/diff")
    sys.exit({"succeeded": 0, "cancelled": 130}.get(final["status"], 1))
