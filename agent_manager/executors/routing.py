"""Which backend runs a run, and why (DESIGN 4, "routing").

Order: an explicit backend on the run, then on the plan step, then on the agent; else the
service's execution mode; in ``auto`` mode untrusted input goes to an isolated backend,
heavy work to a remote one when one is set up, everything else to the host. Backends are
told apart by their capabilities (plugins.py), never by name. The returned reason is
stored on the run and shown to the user, so it is written for people.

Why non-admin users never run as the service's own OS user: that user can read the data
directory (admin token, database, config.toml) and the service's environment. So a non-admin
user's run that lands on the bare host runs as ``run_as_user`` (when the service is root and can
switch), and otherwise goes to an isolated backend instead (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent_manager import plugins
from agent_manager.errors import ExecutorUnavailable, Forbidden
from agent_manager.executors.base import Executor, Resources
from agent_manager.plugins import AUTO, HOST, ISOLATED, REMOTE
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


Capabilities = Mapping[str, frozenset[str]]


def _caps(executors: Mapping[str, Executor], capabilities: Capabilities | None) -> Capabilities:
    """Each backend's capabilities: as given, else from the registry."""
    return capabilities if capabilities is not None else {name: plugins.capabilities(name) for name in executors}


def _bare_host(caps: frozenset[str]) -> bool:
    """A backend that runs agents on this host without isolating them (``local`` and the like)."""
    return HOST in caps and ISOLATED not in caps


async def _why_not(executors: Mapping[str, Executor], name: str, settings: Settings | None = None) -> str | None:
    executor = executors.get(name)
    if executor is None:
        return f"the {name} backend is not installed or could not be started (GET /api/backends says why)"
    plugin = plugins.backends().get(name)
    if settings is not None and plugin is not None and plugin.setup_problem is not None:
        problem = plugin.setup_problem(settings)
        if problem:
            return problem
    availability = await executor.available()
    return None if availability.ok else availability.reason


def explicit_choice(req: RouteRequest, settings: Settings) -> tuple[str, str] | None:
    """(backend, reason) when the run, the step, the agent or a fixed mode names a backend."""
    for chosen, who in ((req.run_backend, "the run"), (req.step_backend, "the plan step"),
                        (req.agent_backend, "the agent")):
        if chosen and chosen != AUTO:
            return chosen, f"{chosen} requested by {who}"
    if settings.execution_mode != AUTO:
        return settings.execution_mode, f"execution mode is {settings.execution_mode}"
    return None


def check_isolation(req: RouteRequest, settings: Settings, capabilities: Capabilities | None = None) -> None:
    """An untrusted user's run only ever runs on a backend that claims ``isolated``, whatever
    was requested: not on the bare host, and not on a plugin's backend that is merely remote
    or claims nothing (an SSH or Docker backend without the claim runs what it is given as is)."""
    choice = explicit_choice(req, settings)
    if not req.user_trusted and choice is not None:
        caps = capabilities.get(choice[0], frozenset()) if capabilities is not None \
            else plugins.capabilities(choice[0])
        if ISOLATED not in caps:
            isolated = [name for name, plugin in plugins.backends().items() if ISOLATED in plugin.capabilities]
            raise Forbidden(f"runs of untrusted users must be isolated, but {choice[1]}; "
                            f"choose {' or '.join(isolated) or 'an isolated backend'}")


async def route(req: RouteRequest, settings: Settings, executors: Mapping[str, Executor],
                capabilities: Capabilities | None = None) -> Route:
    """Pick a backend; raise ``ExecutorUnavailable`` with the reason when nothing fits.

    ``capabilities`` (name → capabilities) defaults to the registry's; routing decides by
    them alone, so a second isolated or remote backend slots in without changes here."""
    caps = _caps(executors, capabilities)
    check_isolation(req, settings, caps)
    choice = explicit_choice(req, settings)
    if choice is not None:
        if _bare_host(caps.get(choice[0], frozenset())):
            return await _host(req, settings, executors, caps, choice[1], explicit=choice[0])
        return await _explicit(executors, *choice)

    untrusted = [why for flag, why in ((not req.agent_trusted, "the agent is marked untrusted"),
                                       (not req.user_trusted, "the user is untrusted"),
                                       (req.auto_approve, "the agent runs in an auto-approve mode"))
                 if flag]
    if untrusted:
        return await _isolated(settings, executors, caps, "; ".join(untrusted))

    heavy = _heavy(req.resources, settings)
    if heavy or req.host_saturated:
        why = heavy or "local capacity is saturated"
        problems = []
        for name in [n for n in executors if REMOTE in caps.get(n, frozenset())]:
            problem = await _why_not(executors, name, settings)
            if problem is None:
                return Route(name, f"auto: {why}, so it runs on {name}")
            problems.append(problem)
        problem = "; ".join(problems) or "no remote backend is installed"
        return await _host(req, settings, executors, caps, f"auto: {why}, but {problem}; running locally")
    return await _host(req, settings, executors, caps, "auto: trusted agent and light work run on this host")


async def _host(req: RouteRequest, settings: Settings, executors: Mapping[str, Executor], caps: Capabilities,
                reason: str, explicit: str | None = None) -> Route:
    """A run bound for the bare host (``explicit``: that backend, else the first such one
    installed): as the service's user for the admin; as ``run_as_user`` for anyone else;
    isolated instead when the service cannot switch users."""
    name = explicit or next((n for n in executors if _bare_host(caps.get(n, frozenset()))), None)
    if name is None:
        return await _isolated(settings, executors, caps, f"{reason}, but no host backend is installed", prefix="")
    if req.user_admin:
        return await _explicit(executors, name, reason) if explicit else Route(name, reason)
    if req.run_as:
        if explicit:
            await _explicit(executors, name, reason)
        return Route(name, f"{reason}; as the unprivileged OS user {req.run_as!r} (non-admin user)",
                     run_as=req.run_as)
    why = (f"{reason}, but runs of non-admin users never run as the service's own OS user and "
           f"{req.run_as_problem or 'the service cannot switch to another user'}")
    return await _isolated(settings, executors, caps, why, prefix="")


async def _explicit(executors: Mapping[str, Executor], name: str, reason: str) -> Route:
    problem = await _why_not(executors, name)
    if problem:
        raise ExecutorUnavailable(f"{reason}, but it is unavailable: {problem}", {"backend": name})
    return Route(name, reason)


async def _isolated(settings: Settings, executors: Mapping[str, Executor], caps: Capabilities, why: str,
                    prefix: str = "auto: ") -> Route:
    """The first available isolated backend: on this host first, or remote first when
    ``prefer_daytona_for_untrusted`` (the setting keeps its name; it means "remote first")."""
    isolated = [n for n in executors if ISOLATED in caps.get(n, frozenset())]
    remote_first = settings.prefer_daytona_for_untrusted
    order = sorted(isolated, key=lambda n: (REMOTE in caps[n]) != remote_first)
    problems: list[str] = []
    for position, name in enumerate(order):
        problem = await _why_not(executors, name, settings)
        if problem is None:
            suffix = "" if position == 0 else f" ({order[0]} unavailable: {problems[0]})"
            if position and not settings.allow_fallback:
                break
            return Route(name, f"{prefix}{why}, so it runs isolated in {name}{suffix}")
        problems.append(f"{name}: {problem}")
    raise ExecutorUnavailable(f"{why}, which needs an isolated backend, and none is available: "
                              + ("; ".join(problems) or "none is installed"))


def _heavy(resources: Resources, settings: Settings) -> str:
    if resources.cpu and resources.cpu > settings.heavy_cpu:
        return f"it declares {resources.cpu:g} CPUs (local limit {settings.heavy_cpu:g})"
    if resources.memory_mb and resources.memory_mb > settings.heavy_memory_mb:
        return f"it declares {resources.memory_mb} MB of memory (local limit {settings.heavy_memory_mb})"
    return ""
