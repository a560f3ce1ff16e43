"""The ``agent-manager`` command line: one module per command group."""

from __future__ import annotations

import click

from agent_manager import __version__
from agent_manager.cli import agents, backends, orchestrate, plan, projects, run, sandboxes, serve, settings, shell
from agent_manager.cli import runs as runs_prune


@click.group()
@click.version_option(__version__, prog_name="agent-manager")
@click.option("--home", type=click.Path(file_okay=False), default=None, envvar="AGENT_MANAGER_HOME",
              help="Data directory (default: the platform's user data dir).")
@click.option("--url", default=None, envvar="AGENT_MANAGER_URL",
              help="Service URL for client commands (default: the address the running service recorded "
                   "in the data directory, else http://<host>:<port> from settings).")
@click.pass_context
def main(ctx: click.Context, home: str | None, url: str | None) -> None:
    """Agent Manager: a control panel for command-line AI agents."""
    ctx.obj = {"home": home, "url": url}


main.add_command(serve.serve)
main.add_command(serve.token)
main.add_command(serve.url)
main.add_command(agents.agents)
main.add_command(run.run)
main.add_command(projects.command)
main.add_command(projects.runs)
projects.runs.add_command(runs_prune.prune)
projects.runs.add_command(runs_prune.output)
# Imported plainly: a command whose module fails to import breaks the CLI loudly, never vanishes.
for module in (plan, orchestrate, sandboxes, shell, backends, settings):
    main.add_command(module.command)
main.add_command(backends.kinds)
