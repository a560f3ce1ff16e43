"""``agent-manager serve`` and ``agent-manager token``."""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import click

from agent_manager.errors import AgentManagerError
from agent_manager.settings import load_settings
from agent_manager.web.auth import ensure_token, is_loopback


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8765; 0 picks a free one).")
@click.option("--no-auth", is_flag=True, default=False, help="Turn authentication off (loopback only).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_obj
def serve(obj: dict[str, Any], host: str | None, port: int | None, no_auth: bool, log_level: str) -> None:
    """Start the service (web UI and API)."""
    import uvicorn

    from agent_manager.web.app import create_app

    overrides: dict[str, Any] = {"home": obj.get("home"), "host": host, "port": port}
    if no_auth:
        overrides["auth"] = False
    try:
        settings = load_settings(overrides)
    except AgentManagerError as exc:
        raise click.ClickException(exc.message) from exc
    if not settings.auth and not is_loopback(settings.host):
        raise click.ClickException(
            f"refusing to serve {settings.host} without authentication: anyone who reaches it could run "
            "commands. Remove --no-auth / AGENT_MANAGER_AUTH=off, or bind --host 127.0.0.1.")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from agent_manager.service import check_data_dir
        check_data_dir(settings)
        token, created = ensure_token(settings.token_path) if settings.auth else (None, False)
        app = create_app(settings)
    except AgentManagerError as exc:
        raise click.ClickException(exc.message) from exc
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from exc
    bound_port = sock.getsockname()[1]
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{shown_host}:{bound_port}"
    click.echo(f"Agent Manager listening on {base}", err=False)
    if created and token:
        click.echo(f"First start: open {base}/login?token={token} to log in (shown once; "
                   f"the token is kept in {settings.token_path}).")
    elif token:
        click.echo(f"Log in with the token in {settings.token_path} (`agent-manager token` prints it).")
    if not is_loopback(settings.host):
        click.echo("Reachable from other machines: add the host name clients use to allowed_hosts "
                   "(AGENT_MANAGER_ALLOWED_HOSTS), and put TLS in front (see docs/security.md).")
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


@click.command()
@click.pass_obj
def token(obj: dict[str, Any]) -> None:
    """Print the admin token (from the 0600 file in the data directory)."""
    settings = load_settings({"home": obj.get("home")})
    if not settings.token_path.exists():
        raise click.ClickException("no token yet: start the service once with `agent-manager serve`")
    click.echo(settings.token_path.read_text().strip())
