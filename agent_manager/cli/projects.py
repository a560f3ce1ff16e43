"""``agent-manager projects add|list|remove`` and ``agent-manager runs diff|merge|discard``."""

from __future__ import annotations

import sys
from typing import Any

import click

from agent_manager.cli.client import Client


@click.group("projects")
def command() -> None:
    """Git repositories agents work on (each run gets its own branch)."""


@command.command("add")
@click.argument("name")
@click.argument("source")
@click.option("--base", default=None, help="Default base branch (default: the repository's current one).")
@click.pass_obj
def add(obj: dict[str, Any], name: str, source: str, base: str | None) -> None:
    """Register SOURCE as project NAME: a local repository path, or a URL to clone."""
    import os

    url = "://" in source or source.startswith("git@")
    body: dict[str, Any] = {"name": name, ("git_url" if url else "path"): source if url else os.path.abspath(source)}
    if base:
        body["base"] = base
    project = Client(obj).request("POST", "/api/projects", json=body)
    click.echo(f"project {project['name']} added (base {project['default_base']})")


@command.command("list")
@click.pass_obj
def list_(obj: dict[str, Any]) -> None:
    """Projects with their base and number of open workspaces."""
    for p in Client(obj).request("GET", "/api/projects"):
        click.echo(f"{p['name']}\t{p['default_base']}\t{p['open_workspaces']} open\t{p['path'] or p['git_url']}")


@command.command("remove")
@click.argument("name")
@click.pass_obj
def remove(obj: dict[str, Any], name: str) -> None:
    """Forget project NAME and its workspaces (your repository is left as it is)."""
    Client(obj).request("DELETE", f"/api/projects/{name}")
    click.echo(f"project {name} removed")


def stat_line(ws: dict[str, Any] | None) -> str:
    if not ws:
        return ""
    return (f"{ws['branch']}: {ws['files_changed']} file(s) changed, {ws['insertions']} insertion(s)(+),"
            f" {ws['deletions']} deletion(s)(-) [{ws['state']}]")


def print_stat(client: Client, path: str) -> None:
    """The ``git diff --stat``-like summary of a workspace."""
    diff = client.request("GET", path)
    for f in diff["files"]:
        counts = "binary" if f["binary"] else f"+{f['insertions']} -{f['deletions']}"
        name = f"{f['old_path']} => {f['path']}" if f.get("old_path") else f["path"]
        click.echo(f" {f['status']:<9} {name}  {counts}")
    click.echo(stat_line(diff["workspace"]))


@click.group("runs")
def runs() -> None:
    """Review what a run on a project changed: diff, merge, discard."""


@runs.command("diff")
@click.argument("run_id")
@click.option("--stat", is_flag=True, help="Only the changed files and their +/- counts.")
@click.pass_obj
def diff(obj: dict[str, Any], run_id: str, stat: bool) -> None:
    """Print the run's patch (git apply takes it as is)."""
    client = Client(obj)
    if stat:
        print_stat(client, f"/api/runs/{run_id}/diff")
        return
    response = client.http.get(f"/api/runs/{run_id}/diff", headers={"Accept": "text/x-diff"})
    Client.check(response) if response.status_code >= 400 else None
    sys.stdout.write(response.text)


@runs.command("merge")
@click.argument("run_id")
@click.option("--squash", is_flag=True, help="One commit instead of a merge commit.")
@click.pass_obj
def merge(obj: dict[str, Any], run_id: str, squash: bool) -> None:
    """Merge the run's branch into its base branch (409: conflict or dirty checkout, nothing changed)."""
    ws = Client(obj).request("POST", f"/api/runs/{run_id}/merge", json={"strategy": "squash" if squash else "merge"})
    click.echo(f"merged {ws['branch']} into {ws['base']} ({ws['merged_commit'][:12]})")


@runs.command("discard")
@click.argument("run_id")
@click.pass_obj
def discard(obj: dict[str, Any], run_id: str) -> None:
    """Delete the run's worktree and branch."""
    ws = Client(obj).request("POST", f"/api/runs/{run_id}/discard")
    click.echo(f"discarded {ws['branch']}")
