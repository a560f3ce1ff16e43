"""Which backend runs a run, and why (DESIGN 4, "routing").

Order: an explicit backend on the run, then on the plan step, then on the agent; else the
service's execution mode; in ``auto`` mode untrusted input goes to an isolated backend,
heavy work to Daytona when configured, everything else to the host. The returned reason is
stored on the run and shown to the user, so it is written for people.

Why non-admin users never run as the service's own OS user: that user can read the data
directory (admin token, database, config.toml) and the service's environment. So a non-admin
user's run that lands on ``local`` runs as ``run_as_user`` (when the service is root and can
switch), and otherwise goes to an isolated backend instead (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_manager.errors import ExecutorUnavailable, Forbidden
from agent_manager.executors.base import Executor, Resources
from agent_manager.executors.daytona_settings import daytona_section
from agent_manager.settings import Settings


@dataclass(frozen=True)
class RouteRequest:
    run_backend: str | None = None
    step_backend: str | None = None
    agent_backend: str | None = None
    agent_trusted: bool = True
    user_trusted: bool = True
    auto_approve: bool = False
    resources: Resources = Resources()
    host_saturated: bool = False
    user_admin: bool = True
    # For non-admin users: the OS user a local run would switch to, or None with the reason why
    # the service cannot switch (not root, no such user, workspace out of that user's reach).
    run_as: str | None = None
    run_as_problem: str = ""


@dataclass(frozen=True)
class Route:
    backend: str
    reason: str
    run_as: str | None = None


async def _why_not(executors: dict[str, Executor], name: str) -> str | None:
    executor = executors.get(name)
    if executor is None:
        return f"the {name} backend is not configured"
    availability = await executor.available()
    return None if availability.ok else availability.reason


def explicit_choice(req: RouteRequest, settings: Settings) -> tuple[str, str] | None:
    """(backend, reason) when the run, the step, the agent or a fixed mode names a backend."""
    for chosen, who in ((req.run_backend, "the run"), (req.step_backend, "the plan step"),
                        (req.agent_backend, "the agent")):
        if chosen and chosen != "auto":
            return chosen, f"{chosen} requested by {who}"
    if settings.execution_mode != "auto":
        return settings.execution_mode, f"execution mode is {settings.execution_mode}"
    return None


def check_isolation(req: RouteRequest, settings: Settings) -> None:
    """An untrusted user's run never runs on the bare host, whatever was requested."""
    choice = explicit_choice(req, settings)
    if not req.user_trusted and choice is not None and choice[0] == "local":
        raise Forbidden(f"runs of untrusted users must be isolated, but {choice[1]}; "
                        "choose sandbox or daytona")


async def route(req: RouteRequest, settings: Settings, executors: dict[str, Executor]) -> Route:
    """Pick a backend; raise ``ExecutorUnavailable`` with the reason when nothing fits."""
    check_isolation(req, settings)
    choice = explicit_choice(req, settings)
    if choice is not None:
        if choice[0] == "local":
            return await _host(req, settings, executors, choice[1], explicit=True)
        return await _explicit(executors, *choice)

    untrusted = [why for flag, why in ((not req.agent_trusted, "the agent is marked untrusted"),
                                       (not req.user_trusted, "the user is untrusted"),
                                       (req.auto_approve, "the agent runs in an auto-approve mode"))
                 if flag]
    if untrusted:
        return await _isolated(settings, executors, "; ".join(untrusted))

    heavy = _heavy(req.resources, settings)
    if heavy or req.host_saturated:
        why = heavy or "local capacity is saturated"
        configured = daytona_section(settings).configured
        problem = await _why_not(executors, "daytona") if configured else "Daytona is not configured"
        if problem is None:
            return Route("daytona", f"auto: {why}, so it runs on Daytona")
        return await _host(req, settings, executors, f"auto: {why}, but {problem}; running locally")
    return await _host(req, settings, executors, "auto: trusted agent and light work run on this host")


async def _host(req: RouteRequest, settings: Settings, executors: dict[str, Executor], reason: str,
                explicit: bool = False) -> Route:
    """A run bound for ``local``: as the service's user for the admin; as ``run_as_user`` for
    anyone else; isolated instead when the service cannot switch users."""
    if req.user_admin:
        return await _explicit(executors, "local", reason) if explicit else Route("local", reason)
    if req.run_as:
        if explicit:
            await _explicit(executors, "local", reason)
        return Route("local", f"{reason}; as the unprivileged OS user {req.run_as!r} (non-admin user)",
                     run_as=req.run_as)
    why = (f"{reason}, but runs of non-admin users never run as the service's own OS user and "
           f"{req.run_as_problem or 'the service cannot switch to another user'}")
    return await _isolated(settings, executors, why, prefix="")


async def _explicit(executors: dict[str, Executor], name: str, reason: str) -> Route:
    problem = await _why_not(executors, name)
    if problem:
        raise ExecutorUnavailable(f"{reason}, but it is unavailable: {problem}", {"backend": name})
    return Route(name, reason)


async def _isolated(settings: Settings, executors: dict[str, Executor], why: str, prefix: str = "auto: ") -> Route:
    order = ["daytona", "sandbox"] if settings.prefer_daytona_for_untrusted else ["sandbox", "daytona"]
    problems = []
    for position, name in enumerate(order):
        if name == "daytona" and not daytona_section(settings).configured:
            problems.append("daytona: not configured")
            continue
        problem = await _why_not(executors, name)
        if problem is None:
            suffix = "" if position == 0 else f" ({order[0]} unavailable: {problems[-1] if problems else ''})"
            if position and not settings.allow_fallback:
                break
            return Route(name, f"{prefix}{why}, so it runs isolated in {name}{suffix}")
        problems.append(f"{name}: {problem}")
    raise ExecutorUnavailable(f"{why}, which needs an isolated backend, and none is available: "
                              + "; ".join(problems))


def _heavy(resources: Resources, settings: Settings) -> str:
    if resources.cpu and resources.cpu > settings.heavy_cpu:
        return f"it declares {resources.cpu:g} CPUs (local limit {settings.heavy_cpu:g})"
    if resources.memory_mb and resources.memory_mb > settings.heavy_memory_mb:
        return f"it declares {resources.memory_mb} MB of memory (local limit {settings.heavy_memory_mb})"
    return ""
