"""``agent-manager serve``, ``agent-manager token`` and ``agent-manager url``."""

from __future__ import annotations

import errno
import gc
import logging
import resource
import socket
import sys
import threading
from typing import Any

import click
import uvicorn

from agent_manager.errors import AgentManagerError
from agent_manager.instance import DataDirLock, write_endpoint
from agent_manager.settings import Settings, load_settings
from agent_manager.web.auth import ensure_token, is_loopback, save_token

# How long uvicorn waits for connections after runs were interrupted and streams ended.
STOP_GRACE_S = 3
# How long an idle keep-alive connection stays open. uvicorn's default (5 s) equals httpx's own
# idle expiry (5 s): a client sending its next request on a connection 5 s idle raced the
# server's close and got a reset (no answer, and a POST is not retried). Longer than clients
# keep theirs: the client closes first, or reuses a connection the server still holds.
KEEP_ALIVE_S = 65
# When the heap is frozen a second time: the Daytona SDK is imported in the background at start.
FREEZE_AGAIN_S = 5.0
# The soft limit on open files the service raises itself to (or to the hard limit, if lower).
OPEN_FILES = 65536


def freeze_heap(collect: bool) -> None:
    """Move what start-up built (modules, models, the app) out of the cyclic GC's reach.

    Why: with hundreds of runs in flight, each full collection also walked these hundreds of
    thousands of objects that never die: measured 180–750 ms pauses of the event loop during
    600 Daytona runs (the API's worst latencies), 40–230 ms once frozen. Frozen objects are
    still freed by reference counting; only cycles among them are never collected, so start-up
    garbage is collected first."""
    if collect:
        gc.collect()
    gc.freeze()


def raise_open_files_limit(target: int = OPEN_FILES) -> int:
    """Raise the soft limit on open files towards ``target`` (never past the hard limit);
    returns the soft limit now in force.

    Why: every run holds descriptors (its output pipes and a pidfd; on Daytona a connection
    for its create and a WebSocket for its logs), and so does every browser following one. A
    stock Linux session gives a process 1,024 (systemd's soft default; the hard one is far
    higher). With it, 373 of 2,000 runs on the Daytona emulator failed with "Too many open
    files" (``ulimit -Sn 1024; bench/scale.py --cases daytona --daytona-runs 2000``: 1,650
    descriptors open at once), and 276 of 600 local runs (``--cases api --api-runs 600``);
    none once raised. Raising one's own soft limit needs no privilege. Runs inherit it:
    65,536 rather than the hard limit (often 524,288 or more), because some programs close
    every possible descriptor at start, one call each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # a platform cap below the hard limit (macOS): keep what we have
            return soft
        return wanted
    return soft


def migrate(settings: Settings) -> None:
    """Bring the database up to date before the server starts: a migration that fails (a full
    disk, a database a newer release upgraded) stops ``serve`` with its one sentence, not with
    a traceback from the application's start-up. The service's own start finds nothing to do."""
    from agent_manager.store.database import Database
    db = Database(settings.db_path)
    try:
        db.migrate()
    finally:
        db.close()


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8765; 0 picks a free one).")
@click.option("--no-auth", is_flag=True, default=False, help="Turn authentication off (loopback only).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_obj
def serve(obj: dict[str, Any], host: str | None, port: int | None, no_auth: bool, log_level: str) -> None:
    """Start the service (web UI and API)."""
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
    if (limit := raise_open_files_limit()) < 4096:
        logging.getLogger("agent_manager").warning(
            "open files are limited to %d; a few hundred runs at once may fail with 'Too many open files': "
            "raise the hard limit (`ulimit -Hn` as root, or LimitNOFILE= in a systemd unit)", limit)
    try:
        from agent_manager.service import Service, check_data_dir, check_registry
        check_data_dir(settings)
        check_registry()
        # The lock first: a second service on this data directory is refused before it touches
        # anything (its start-up sweep would kill the first one's runs).
        lock = DataDirLock.acquire(settings.home)
        # A new token is written only once start-up has succeeded (see announce), so a crashed
        # first start does not swallow the one-time login URL.
        token, created = ensure_token(settings.token_path, write=False) if settings.auth else (None, False)
        migrate(settings)
        svc = Service(settings)
        svc.lock = lock
    except AgentManagerError as exc:
        raise click.ClickException(exc.message) from exc
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        # Listening now, not when uvicorn starts serving (after the lifespan start-up, which is
        # when "listening on" is printed): a client that acts on that line must not be refused.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:  # e.g. a second user's `make serve` on the default port
            hint = (": another program (perhaps another user's Agent Manager) listens there; choose another "
                    "port with `agent-manager serve --port N` (0 = any free one) or `port = N` in config.toml")
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}{hint}") from exc
    bound_port = sock.getsockname()[1]
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{shown_host}:{bound_port}"
    svc.address = base

    def announce() -> None:
        """Runs once the service has started: only now are the token and the endpoint written."""
        if created and token:
            save_token(settings.token_path, token)
        write_endpoint(settings.home, client_url(settings.host, bound_port))
        click.echo(f"Agent Manager listening on {base}")
        if created and token:
            click.echo(f"First start: open {base}/login?token={token} to log in (shown once; "
                       f"the token is kept in {settings.token_path}).")
        elif token:
            click.echo(f"Log in with the token in {settings.token_path} (`agent-manager token` prints it).")
        if not is_loopback(settings.host):
            click.echo("Reachable from other machines: add the host name clients use to allowed_hosts "
                       "(AGENT_MANAGER_ALLOWED_HOSTS), and put TLS in front (see docs/security.md).")
        sys.stdout.flush()
        freeze_heap(collect=True)
        again = threading.Timer(FREEZE_AGAIN_S, freeze_heap, kwargs={"collect": False})
        again.daemon = True
        again.start()

    app = create_app(settings, service=svc, token=token, on_started=announce)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=STOP_GRACE_S, timeout_keep_alive=KEEP_ALIVE_S)
    _Server(config, svc).run(sockets=[sock])


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached through loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """Stopping (SIGTERM, Ctrl-C) interrupts runs and ends SSE streams *before* uvicorn waits
    for open connections, so a browser watching a run cannot hold the stop up."""

    def __init__(self, config: uvicorn.Config, svc: Any) -> None:
        super().__init__(config)
        self.svc = svc

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.svc.interrupt()
        except Exception:  # stopping goes on whatever happened
            logging.getLogger("agent_manager").exception("interrupting runs at shutdown failed")
        await super().shutdown(sockets)


@click.command()
@click.option("--rotate", is_flag=True, default=False,
              help="Replace the admin token: the old one and every admin browser session stop working.")
@click.pass_obj
def token(obj: dict[str, Any], rotate: bool) -> None:
    """Print the admin token (from the 0600 file in the data directory)."""
    settings = load_settings({"home": obj.get("home")}, sections=False)
    if not settings.token_path.exists():
        raise click.ClickException("no token yet: start the service once with `agent-manager serve`")
    if rotate:
        click.echo(_rotate(obj, settings))
        return
    click.echo(settings.token_path.read_text().strip())


def _rotate(obj: dict[str, Any], settings: Any) -> str:
    """Through the running service when there is one (it switches at once and ends the admin
    sessions); else in the file, and the next start refuses the old token's sessions."""
    import secrets

    from agent_manager.instance import DataDirLock, read_endpoint

    if read_endpoint(settings.home) is not None:
        from agent_manager.cli.client import Client

        answer = Client(obj).request("POST", "/api/token/rotate")
        return str(answer["token"])
    try:
        lock = DataDirLock.acquire(settings.home)  # no service may start while the file changes
    except AgentManagerError as exc:
        raise click.ClickException(exc.message) from exc
    try:
        new = secrets.token_urlsafe(32)
        save_token(settings.token_path, new)
    finally:
        lock.release()
    return new


@click.command()
@click.pass_obj
def url(obj: dict[str, Any]) -> None:
    """Print the URL client commands use: the running service's own address, if one runs."""
    from agent_manager.cli.client import service_url

    try:
        settings = load_settings({"home": obj.get("home")}, sections=False)
    except AgentManagerError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(service_url(settings, obj.get("url")))
