"""How client commands reach the running service: its URL and the admin token."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from agent_manager.errors import AgentManagerError
from agent_manager.instance import read_endpoint
from agent_manager.settings import Settings, load_settings

if TYPE_CHECKING:  # imported when a client is made: `serve` (every command module is imported) never needs it
    import httpx


def service_url(settings: Settings, given: str | None) -> str:
    """--url / AGENT_MANAGER_URL, else where the service on this data directory says it listens
    (whatever --port it got), else the configured host and port."""
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return (given or read_endpoint(settings.home) or f"http://{host}:{settings.port}").rstrip("/")


class Client:
    def __init__(self, ctx_obj: dict[str, Any]) -> None:
        import httpx

        try:
            settings = load_settings({"home": ctx_obj.get("home")}, sections=False)
        except AgentManagerError as exc:
            raise click.ClickException(exc.message) from exc
        self.url = service_url(settings, ctx_obj.get("url"))
        headers = {}
        token = os.environ.get("AGENT_MANAGER_TOKEN")
        self.token_from = "AGENT_MANAGER_TOKEN" if token else None
        if not token and settings.token_path.exists():
            token = settings.token_path.read_text().strip()
            self.token_from = str(settings.token_path)
        self.home = settings.home
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(30, read=None))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise click.ClickException(f"cannot reach the service at {self.url}: is `agent-manager serve` "
                                       "running?") from exc
        if response.status_code == 401:
            raise click.ClickException(self._unauthorized())
        return self.check(response)

    def _unauthorized(self) -> str:
        """A 401 here nearly always means the service at this URL belongs to another data
        directory (another user's, or started with --home): say that, not just "log in"."""
        fix = ("start client commands with the same data directory as the service (`agent-manager --home DIR "
               "...` / AGENT_MANAGER_HOME), or give its token in AGENT_MANAGER_TOKEN")
        if self.token_from is None:
            return (f"the service at {self.url} needs a token, and the data directory {self.home} has none "
                    f"(that service was started with another data directory): {fix}")
        return (f"the service at {self.url} refused the token from {self.token_from} (is it another data "
                f"directory's service?): {fix}")

    @staticmethod
    def check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise click.ClickException(f"{message} (HTTP {response.status_code})")
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def print_list(items: list[dict[str, Any]], as_json: bool, empty: str, line: Callable[[dict[str, Any]], str]) -> None:
    """A list command's output: the JSON as the API gave it (``--json``, for scripts), else one
    line per item, or ``empty`` when there is none."""
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(empty)
    for item in items:
        click.echo(line(item))
