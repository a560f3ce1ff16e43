"""``agent-manager plan GOAL``: ask the planner agent for a draft plan (nothing runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from agent_manager.cli.client import Client
from agent_manager.cli.follow import Stopped, cancel_then_exit, cancelling_signals


@click.command("plan")
@click.argument("goal")
@click.option("--planner", default=None, help="Planner agent (default: the default_planner setting).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Write the plan here (YAML; JSON if the name ends in .json) instead of printing it.")
@click.pass_obj
def command(obj: dict[str, Any], goal: str, planner: str | None, output: str | None) -> None:
    """Turn GOAL into a draft plan with the planner agent; review it, then `agent-manager orchestrate`."""
    client = Client(obj)
    body = {"goal": goal, **({"planner": planner} if planner else {})}
    try:
        with cancelling_signals():
            # Ending us closes the connection, and the service then cancels the planner run.
            draft = client.request("POST", "/api/plans", json=body)
    except (KeyboardInterrupt, Stopped) as exc:
        click.echo("\nstopped: the service cancels the planner run", err=True)
        cancel_then_exit(exc, None)
    checked = client.request("POST", "/api/plans/validate", json={"plan": draft["plan"]})
    plan = checked["plan"] or draft["plan"]
    if output and output.endswith(".json"):
        text = json.dumps(plan, indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=100)
    if output:
        Path(output).write_text(text)
        steps = len(plan.get("steps", []))
        click.echo(f"wrote {output}: plan {plan.get('name')!r} with {steps} step(s); "
                   f"run it with `agent-manager orchestrate {output}`", err=True)
    else:
        click.echo(text, nl=False)
