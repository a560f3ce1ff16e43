"""``agent-manager settings``: read and change the running service's settings from a shell.

Through the service (``GET``/``PATCH /api/settings``), never by editing ``config.toml`` here:
the service validates the value, applies it at once, writes the file and audits the change,
exactly as for the Settings page. A backend's own settings are ``section.field``
(``nice.niceness``, ``daytona.warm_pool``); secrets are shown as ``********``, never read back.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from agent_manager.cli.client import Client

# Answer keys that describe the settings rather than being settings.
META = ("mutable", "restart_required", "from_env", "sections", "section_info", "listening")


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Service settings by name, then each backend section's as ``section.field``."""
    flat = {k: v for k, v in data.items() if k not in META}
    for section, values in (data.get("sections") or {}).items():
        flat.update({f"{section}.{name}": value for name, value in values.items()})
    return flat


def _line(name: str, value: Any, data: dict[str, Any]) -> str:
    notes = []
    if name in (data.get("from_env") or {}):
        notes.append(f"set by {data['from_env'][name]}")
    elif name not in (data.get("mutable") or []):
        notes.append("restart to change")
    suffix = f"    # {', '.join(notes)}" if notes else ""
    return f"{name} = {json.dumps(value)}{suffix}"


def _value(text: str) -> Any:
    """JSON when it parses (``10``, ``true``, ``null`` to unset, ``["a", "b"]``), else the text as a
    string (``idle``); ``-`` reads the value from standard input (a secret kept out of argv)."""
    if text == "-":
        return sys.stdin.readline().rstrip("\n")
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.group("settings", invoke_without_command=True, short_help="Show or change the service's settings.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON.")
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    """Show the service's settings (a backend's own as section.field); `settings set` changes them."""
    if ctx.invoked_subcommand is not None:
        return
    data = Client(ctx.obj).request("GET", "/api/settings")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for name, value in _flatten(data).items():
        click.echo(_line(name, value, data))


@command.command("get", short_help="Print one setting's value as JSON.")
@click.argument("name")
@click.pass_obj
def get(obj: dict[str, Any], name: str) -> None:
    """Print one setting's value as JSON (e.g. `settings get nice.niceness`)."""
    flat = _flatten(Client(obj).request("GET", "/api/settings"))
    if name not in flat:
        raise click.ClickException(f"no setting {name!r}; `agent-manager settings` lists them")
    click.echo(json.dumps(flat[name]))


@command.command("set", short_help="Change settings: NAME=VALUE ... (applied at once).")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
@click.pass_obj
def set_(obj: dict[str, Any], assignments: tuple[str, ...]) -> None:
    """Change settings at once, e.g. `settings set nice.niceness=10 max_concurrent_runs=4`.

    VALUE is JSON when it parses (10, true, null to unset, ["a","b"]), else text; `-` reads it
    from standard input, so a secret stays out of the shell history: `settings set daytona.api_key=-`.
    """
    body: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"{item!r} is not NAME=VALUE")
        body[name.strip()] = _value(text)
    data = Client(obj).request("PATCH", "/api/settings", json=body)
    flat = _flatten(data)
    for name in body:
        click.echo(_line(name, flat.get(name), data))
