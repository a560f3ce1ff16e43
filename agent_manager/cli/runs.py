"""``agent-manager runs prune`` (apply run retention by hand) and ``agent-manager runs output``
(a run's raw output, followed live): both join the ``runs`` group."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import click

from agent_manager.cli.client import Client

RESUMES = 5  # reconnections of `runs output` after a dropped stream


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


@click.command("output")
@click.argument("run_id")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]), default=None,
              help="Only this stream (default: both, in the order they were printed).")
@click.pass_obj
def output(obj: dict[str, Any], run_id: str, stream: str | None) -> None:
    """Print a run's output as the agent printed it; a running run is followed until it ends.
    A dropped connection resumes where it broke off (``?offset=`` the bytes already printed)."""
    import httpx

    client = Client(obj)
    out = sys.stdout.buffer
    printed = 0
    for attempt in range(RESUMES + 1):
        try:
            with client.http.stream("GET", f"/api/runs/{run_id}/output", params={
                    "offset": printed, **({"stream": stream} if stream else {})}) as response:
                if response.status_code >= 400:
                    response.read()
                    if response.status_code == 401:
                        raise click.ClickException(client._unauthorized())
                    client.check(response)
                for piece in response.iter_raw():
                    out.write(piece)
                    out.flush()
                    printed += len(piece)
            return
        except httpx.ConnectError as exc:
            raise click.ClickException(f"cannot reach the service at {client.url}: is `agent-manager serve` "
                                       "running?") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # dropped mid-body: resume
            if attempt == RESUMES:
                raise click.ClickException(f"the output stream broke off {RESUMES + 1} times: {exc}") from exc
            time.sleep(0.2 * (attempt + 1))
        except BrokenPipeError:  # `| head`: the reader is gone, which is not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return
