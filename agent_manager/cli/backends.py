"""``agent-manager backends`` and ``agent-manager kinds``: what the service has installed.

Asks the running service (``GET /api/backends``, ``GET /api/kinds``), not this process's own
registry: the service is what runs things, and it says why a backend cannot run now.
"""

from __future__ import annotations

from typing import Any

import click

from agent_manager.cli.client import Client, print_list


def _backend_line(item: dict[str, Any]) -> str:
    state = "available" if item["available"] else f"unavailable: {item['reason']}"
    origin = "" if item["builtin"] else f"  [{item['plugin'] or 'plugin'}]"
    return f"{item['name']:<12} {','.join(item['capabilities']) or '-':<16} {state}{origin}"


@click.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def command(obj: dict[str, Any], as_json: bool) -> None:
    """Installed backends, their capabilities, and whether each can run now (and why not)."""
    print_list(Client(obj).request("GET", "/api/backends"), as_json, "No backends.", _backend_line)


def _kind_line(item: dict[str, Any]) -> str:
    command = item["default_command"] or "(any command)"
    found = {True: "", False: "  (not on PATH)", None: ""}[item["available"]]
    origin = "" if item["builtin"] else f"  [{item['plugin'] or 'plugin'}]"
    return f"{item['name']:<12} {command:<14} {item['title']}{found}{origin}"


@click.command("kinds")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def kinds(obj: dict[str, Any], as_json: bool) -> None:
    """Installed agent kinds and their default commands."""
    print_list(Client(obj).request("GET", "/api/kinds"), as_json, "No kinds.", _kind_line)
