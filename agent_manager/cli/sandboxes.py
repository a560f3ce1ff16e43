"""``agent-manager sandboxes list|gc``."""

from __future__ import annotations

from typing import Any

import click

from agent_manager.cli.client import Client, print_list


@click.group("sandboxes")
def command() -> None:
    """Sandboxes the backends run (local bubblewrap and Daytona)."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_sandboxes(obj: dict[str, Any], as_json: bool) -> None:
    def line(item: dict[str, Any]) -> str:
        use = "in use" if item.get("in_use") else "idle"
        return (f"{item['backend']:<8} {item['id']:<38} {item.get('state', ''):<10} {use:<7} "
                f"run={item.get('run') or '-'}")

    print_list(Client(obj).request("GET", "/api/sandboxes"), as_json, "No sandboxes.", line)


@command.command("gc")
@click.option("--all-instances", is_flag=True, help="Also sweep sandboxes of other Agent Manager instances.")
@click.pass_obj
def gc(obj: dict[str, Any], all_instances: bool) -> None:
    """Delete leftover Daytona sandboxes that no live run uses."""
    result = Client(obj).request("POST", "/api/sandboxes/gc", params={"all_instances": all_instances})
    click.echo(f"deleted {result['deleted']} sandbox(es)")
