"""``agent-manager shell [AGENT] [--run ID] [--backend B]``: this terminal, attached to a service terminal.

The local terminal is put in raw mode, so every key (Ctrl-C included) goes to the remote
program; a window-size change (SIGWINCH) is sent as a resize; Ctrl-] detaches and leaves the
remote terminal running (``--attach ID`` reattaches within the idle timeout). The exit code is
the remote program's.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import sys
import termios
import threading
import tty
from typing import Any

import click
import wsproto.events

from agent_manager.cli.choices import backend_choice
from agent_manager.cli.client import Client

DETACH = b"\x1d"  # Ctrl-]


def _size() -> list[int]:
    size = shutil.get_terminal_size((80, 24))
    return [size.columns, size.lines]


@click.command("shell")
@click.argument("agent", required=False)
@click.option("--run", "run_id", default=None, help="Open the shell in this run's workspace (and backend).")
@click.option("--project", default=None, help="Open the shell in this project's checkout.")
@click.option("--backend", type=backend_choice(), default=None)
@click.option("--attach", "attach_id", default=None, metavar="TERMINAL_ID", help="Reattach to an open terminal.")
@click.pass_obj
def command(obj: dict[str, Any], agent: str | None, run_id: str | None, project: str | None, backend: str | None,
          attach_id: str | None) -> None:
    """Open a terminal (a shell, or AGENT's CLI interactively) and attach this one to it. Ctrl-] detaches."""
    from httpx_ws import WebSocketDisconnect, connect_ws

    client = Client(obj)
    if attach_id is None:
        cols, rows = _size()
        body = {"agent": agent, "run_id": run_id, "project": project, "backend": backend, "cols": cols, "rows": rows}
        term = client.request("POST", "/api/terminals", json={k: v for k, v in body.items() if v is not None})
        attach_id = term["id"]
        click.echo(f"terminal {attach_id} on {term['backend']} ({term['route_reason']}); Ctrl-] detaches", err=True)
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin.fileno()) if interactive else None
    exit_code: int | None = None
    detached = False
    try:
        session: Any = connect_ws(f"/api/terminals/{attach_id}/ws", client.http, keepalive_ping_interval_seconds=20)
        with session as ws:
            if interactive:
                tty.setraw(sys.stdin.fileno(), termios.TCSANOW)  # TCSAFLUSH would drop keys typed meanwhile
                old_winch = signal.signal(signal.SIGWINCH, lambda *_: _resize(ws))
            _resize(ws)
            stop = threading.Event()
            threading.Thread(target=_pump_stdin, args=(ws, stop), daemon=True).start()
            try:
                while True:
                    try:
                        event = ws.receive(timeout=0.2)
                    except queue.Empty:
                        if stop.is_set():  # Ctrl-] (at the end of piped input we wait for the exit)
                            detached = True
                            break
                        continue
                    if isinstance(event, wsproto.events.BytesMessage):
                        os.write(sys.stdout.fileno(), bytes(event.data))
                    elif isinstance(event, wsproto.events.TextMessage):
                        message = json.loads(event.data)
                        if "exit" in message:
                            exit_code = message["exit"]
            except WebSocketDisconnect as exc:
                if exc.code == 4404:
                    raise click.ClickException(f"terminal {attach_id} not found (it may have ended)") from None
                if exc.code == 4001:
                    detached = True
            finally:
                if interactive:
                    signal.signal(signal.SIGWINCH, old_winch)
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    if detached:
        click.echo(f"\r\ndetached; reattach with: agent-manager shell --attach {attach_id}", err=True)
        return
    sys.exit(exit_code if isinstance(exit_code, int) and 0 <= exit_code < 256 else 1 if exit_code else 0)


def _resize(ws: Any) -> None:
    with contextlib.suppress(Exception):  # the server may already be closing (the terminal ended)
        ws.send_text(json.dumps({"resize": _size()}))


def _pump_stdin(ws: Any, stop: threading.Event) -> None:
    """Keystrokes to the socket until Ctrl-] (sets ``stop``) or EOF (a thread: reading a tty blocks)."""
    fd = sys.stdin.fileno()
    while not stop.is_set():
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:
            return
        if DETACH in data:
            before = data.split(DETACH, 1)[0]
            with contextlib.suppress(Exception):
                if before:
                    ws.send_bytes(before)
            stop.set()
            return
        try:
            ws.send_bytes(data)
        except Exception:
            return
