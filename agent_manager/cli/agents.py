"""``agent-manager agents list|add|show|remove|detect``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click

from agent_manager import plugins
from agent_manager.agents import DEFAULT_KIND
from agent_manager.cli.choices import backend_choice, kind_choice
from agent_manager.cli.client import Client, print_list


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
    def line(a: dict[str, Any]) -> str:
        state = "available" if a["available"] else f"missing ({a['install_hint']})"
        return f"{a['name']:<20} {a['kind']:<9} {a['command']:<24} {a['backend'] or 'auto':<8} {state}"

    print_list(Client(obj).request("GET", "/api/agents"), as_json, "No agents yet. Try `agent-manager agents detect`.",
               line)


@agents.command("add")
@click.argument("name")
@click.option("--kind", type=kind_choice(), default=DEFAULT_KIND, show_default=True)
@click.option("--command", "command", default=None, help="Executable (default: the kind's CLI).")
@click.option("--arg", "args", multiple=True, help="Extra argument (repeatable); '{prompt}' marks the prompt.")
@click.option("--env", "env", multiple=True, help="NAME=value (repeatable).")
@click.option("--model", default=None)
@click.option("--working-dir", default=None)
@click.option("--backend", type=backend_choice(allow_auto=False), default=None)
@click.option("--untrusted", is_flag=True, help="Treat this agent's runs as untrusted (isolated backend).")
@click.option("--timeout", "timeout_s", type=float, default=600, show_default=True)
@click.option("--api-base", default=None, help="Your model gateway's base URL for this CLI (see docs/agents.md).")
@click.option("--api-key", default=None, envvar="AGENT_MANAGER_AGENT_API_KEY",
              help="The gateway's key (better: set AGENT_MANAGER_AGENT_API_KEY, so it is not in your shell history).")
@click.pass_obj
def add(obj: dict[str, Any], name: str, kind: str, command: str | None, args: tuple[str, ...],
        env: tuple[str, ...], model: str | None, working_dir: str | None, backend: str | None,
        untrusted: bool, timeout_s: float, api_base: str | None, api_key: str | None) -> None:
    body = {"name": name, "kind": kind, "command": command, "args": list(args), "env": _env_pairs(env),
            "model": model, "working_dir": working_dir, "backend": backend, "trusted": not untrusted,
            "timeout_s": timeout_s, "api_base": api_base, "api_key": api_key}
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


def _npm_global_bin() -> Path | None:
    """Where ``npm install -g`` puts executables: ``$(npm prefix -g)/bin``."""
    npm = shutil.which("npm")
    if not npm:
        return None
    try:
        out = subprocess.run([npm, "prefix", "-g"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    prefix = out.stdout.strip()
    return Path(prefix) / "bin" if out.returncode == 0 and prefix else None


def search_dirs() -> list[str]:
    """PATH, then npm's global bin and ~/.local/bin (pip --user, pipx, aider-install), which
    are often not on the PATH of a fresh shell or of the service."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    extra = [_npm_global_bin(), Path.home() / ".local" / "bin"]
    return dirs + [str(d) for d in extra if d is not None and str(d) not in dirs]


def find_cli(command: str, dirs: list[str]) -> tuple[str, bool] | None:
    """(path, whether it is on PATH) of ``command``, searching ``dirs`` in order."""
    on_path = set(os.environ.get("PATH", "").split(os.pathsep))
    for d in dirs:
        found = shutil.which(command, path=d)
        if found:
            return found, d in on_path
    return None


@agents.command("detect")
@click.pass_obj
def detect(obj: dict[str, Any]) -> None:
    """Register every known agent CLI found on PATH, in npm's global bin or in ~/.local/bin
    (skipping names already taken). One found off PATH is registered by its full path."""
    client = Client(obj)
    existing = {a["name"] for a in client.request("GET", "/api/agents")}
    dirs = search_dirs()
    found = 0
    for name, kind in sorted(plugins.kinds().items()):
        hit = find_cli(kind.default_command, dirs) if kind.default_command else None
        if hit is None:
            continue
        found += 1
        path, on_path = hit
        if name in existing:
            click.echo(f"{name}: already registered")
            continue
        body: dict[str, Any] = {"name": name, "kind": name}
        if not on_path:
            body["command"] = path
        client.request("POST", "/api/agents", json=body)
        click.echo(f"{name}: registered ({path})")
    if not found:
        click.echo("No known agent CLI found on PATH, in npm's global bin or in ~/.local/bin. Install one:")
        for k, v in sorted(plugins.kinds().items()):
            if v.default_command:
                click.echo(f"  {k}: {v.install_hint}")
