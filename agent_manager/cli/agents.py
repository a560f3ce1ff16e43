"""``agent-manager agents list|add|show|remove|detect``."""

from __future__ import annotations

import json
import shutil
from typing import Any

import click

from agent_manager.agents import KINDS
from agent_manager.cli.client import Client


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=value, got {item!r}", param_hint="--env")
        env[name] = value
    return env


@click.group()
def agents() -> None:
    """Register and manage agents."""


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_agents(obj: dict[str, Any], as_json: bool) -> None:
    items = Client(obj).request("GET", "/api/agents")
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("No agents yet. Try `agent-manager agents detect`.")
    for a in items:
        state = "available" if a["available"] else f"missing ({a['install_hint']})"
        click.echo(f"{a['name']:<20} {a['kind']:<9} {a['command']:<24} {a['backend'] or 'auto':<8} {state}")


@agents.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(sorted(KINDS)), default="generic", show_default=True)
@click.option("--command", "command", default=None, help="Executable (default: the kind's CLI).")
@click.option("--arg", "args", multiple=True, help="Extra argument (repeatable); '{prompt}' marks the prompt.")
@click.option("--env", "env", multiple=True, help="NAME=value (repeatable).")
@click.option("--model", default=None)
@click.option("--working-dir", default=None)
@click.option("--backend", type=click.Choice(["local", "sandbox", "daytona"]), default=None)
@click.option("--untrusted", is_flag=True, help="Treat this agent's runs as untrusted (isolated backend).")
@click.option("--timeout", "timeout_s", type=float, default=600, show_default=True)
@click.pass_obj
def add(obj: dict[str, Any], name: str, kind: str, command: str | None, args: tuple[str, ...],
        env: tuple[str, ...], model: str | None, working_dir: str | None, backend: str | None,
        untrusted: bool, timeout_s: float) -> None:
    body = {"name": name, "kind": kind, "command": command, "args": list(args), "env": _env_pairs(env),
            "model": model, "working_dir": working_dir, "backend": backend, "trusted": not untrusted,
            "timeout_s": timeout_s}
    agent = Client(obj).request("POST", "/api/agents", json=body)
    click.echo(f"added {agent['name']} ({agent['id']})")


@agents.command("show")
@click.argument("ref")
@click.pass_obj
def show(obj: dict[str, Any], ref: str) -> None:
    click.echo(json.dumps(Client(obj).request("GET", f"/api/agents/{ref}"), indent=2))


@agents.command("remove")
@click.argument("ref")
@click.pass_obj
def remove(obj: dict[str, Any], ref: str) -> None:
    Client(obj).request("DELETE", f"/api/agents/{ref}")
    click.echo(f"removed {ref}")


@agents.command("detect")
@click.pass_obj
def detect(obj: dict[str, Any]) -> None:
    """Register every known agent CLI found on PATH (skipping names already taken)."""
    client = Client(obj)
    existing = {a["name"] for a in client.request("GET", "/api/agents")}
    found = 0
    for name, kind in sorted(KINDS.items()):
        if not kind.default_command or not shutil.which(kind.default_command):
            continue
        found += 1
        if name in existing:
            click.echo(f"{name}: already registered")
            continue
        client.request("POST", "/api/agents", json={"name": name, "kind": name})
        click.echo(f"{name}: registered ({shutil.which(kind.default_command)})")
    if not found:
        click.echo("No known agent CLI found on PATH. Install one, e.g. "
                   + "; ".join(f"{k}: {v.install_hint}" for k, v in sorted(KINDS.items()) if v.install_hint))
