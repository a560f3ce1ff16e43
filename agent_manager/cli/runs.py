"""``agent-manager runs prune``: apply run retention by hand (joins the ``runs`` group)."""

from __future__ import annotations

import math
from typing import Any

import click

from agent_manager.cli.client import Client


def _days(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a number of days; give 0 or more, e.g. 30")
    return value


@click.command("prune")
@click.option("--older-than", "days", type=float, default=None, callback=_days,
              help="Delete finished runs older than this many days (default: run_retention_days).")
@click.pass_obj
def prune(obj: dict[str, Any], days: float | None) -> None:
    """Delete finished runs and their event logs older than --older-than days."""
    client = Client(obj)
    if days is None:
        days = client.request("GET", "/api/settings").get("run_retention_days") or None
        if not days:
            raise click.UsageError("give --older-than DAYS (run_retention_days is 0: keep everything)")
    result = client.request("POST", "/api/runs/prune", json={"older_than_days": days})
    click.echo(f"deleted {result['deleted']} run(s) that finished more than {days:g} days ago")
