"""The registry of backends and agent kinds, found through Python entry points (DESIGN 3.9).

Built-in backends and kinds register exactly as a third-party package does, in the
``agent_manager.backends`` and ``agent_manager.kinds`` entry-point groups of pyproject.toml,
so ``pip install agent-manager-whatever`` adds one the way ``llm`` adds a model. Every list
of backends or kinds (validation, routing, the plan schema, CLI choices, the web UI) reads
this one registry; nothing else names a backend or kind literally (tests/test_plugins.py).

A plugin that fails to load is logged and kept as an ``Entry`` with the reason, so
``GET /api/backends`` shows it as unavailable instead of it vanishing silently; a second
plugin claiming a name already taken is refused the same way. Loading never raises.

The interface a plugin implements is documented for users in docs/plugins.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal

from agent_manager.errors import ValidationFailed

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agent_manager.agents.base import AgentKind
    from agent_manager.executors.base import Executor
    from agent_manager.settings import Settings

log = logging.getLogger("agent_manager.plugins")
BACKEND_GROUP = "agent_manager.backends"
KIND_GROUP = "agent_manager.kinds"
BUILTIN_DIST = "agent-manager"
AUTO = "auto"  # not a backend: "let the routing policy choose"
DEFAULT_KIND = "generic"
"""The kind of an agent created without one, and of orchestration ``shell`` steps: any program."""
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

HOST = "host"
"""Runs on this machine and takes one of its run slots (``max_concurrent_runs``)."""
ISOLATED = "isolated"
"""Fit for untrusted input: the agent cannot reach the service's files, secrets or users."""
REMOTE = "remote"
"""Elastic capacity off this machine: routing sends heavy work there; the workspace travels
in its portable form (``ExecSpec.portable``)."""
CAPABILITIES = frozenset({HOST, ISOLATED, REMOTE})


@dataclass
class BackendContext:
    """What a backend's factory gets. Backends never read the environment or settings files
    themselves: everything they may use comes through here."""

    settings: Settings
    """The service's settings (one shared object: read values when used, they change live)."""
    section: BaseModel | None
    """This backend's own typed settings section (``BackendPlugin.settings_model``), or None."""
    prefix: str
    """The instance label: tag processes, cgroups and remote sandboxes with it, so a restart
    can find and end what a crashed predecessor left."""
    environ: Mapping[str, str]
    """The service's environment, for PATH and locale only; never hand it to an agent."""


@dataclass(frozen=True)
class BackendPlugin:
    """One backend, as an entry point of group ``agent_manager.backends`` exports it."""

    name: str
    """What runs, agents, plans and the CLI call it: ``[a-z][a-z0-9_-]*``, unique."""
    title: str
    """Shown in the UI's choices."""
    capabilities: frozenset[str]
    """A subset of ``CAPABILITIES``; routing chooses by these, never by name."""
    factory: Callable[[BackendContext], Executor]
    """Builds the executor once at service start (and again when ``rebuild_on`` settings change)."""
    settings_model: type[BaseModel] | None = None
    """The backend's own typed settings section, a pydantic model whose fields all have defaults
    (sections.py): ``[name]`` in config.toml, ``AGENT_MANAGER_<NAME>_<FIELD>`` in the environment,
    ``name.field`` in the API; shown on the Settings page. The factory gets the live instance as
    ``BackendContext.section``."""
    description: str = ""
    setup_problem: Callable[[Settings], str | None] | None = None
    """Why the backend is not set up for use (e.g. no API key), or None. Routing's ``auto``
    policy skips a backend with a problem; choosing it as ``execution_mode`` is refused."""
    rebuild_on: frozenset[str] = frozenset()
    """Fields of its own section whose change needs a new executor (e.g. a client built from a
    URL and key): the service builds one for new runs and closes the old one when its runs are
    done. A change to its other fields is passed to the executor's ``settings_changed(fields)``."""


@dataclass(frozen=True)
class Entry:
    """One entry point of either group: the loaded object, or why it could not be used."""

    name: str
    value: str
    dist: str | None
    version: str | None
    plugin: Any = None
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN_DIST

    @property
    def distribution(self) -> str | None:
        return f"{self.dist} {self.version}" if self.dist else None


@dataclass
class _Group:
    entries: list[Entry] = field(default_factory=list)

    def loaded(self) -> dict[str, Any]:
        return {e.name: e.plugin for e in self.entries if e.error is None}

    def failed(self) -> dict[str, str]:
        return {e.name: e.error for e in self.entries if e.error is not None}


def _dist(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return str(dist.metadata["Name"]), str(dist.version)


def _order(eps: Iterable[EntryPoint]) -> list[EntryPoint]:
    """Built-ins first (so they keep their names), then installed plugins by distribution and
    name. (Entry-point files are not ordered: setuptools writes them sorted by name.)"""
    listed = list(eps)
    return sorted(listed, key=lambda ep: (_dist(ep)[0] != BUILTIN_DIST, _dist(ep)[0] or "", ep.name))


def _backend_rank(entry: Entry) -> tuple[bool, bool, bool, bool, str]:
    """The order of the UI's choices: built-ins first, each group from the bare host outwards
    (host, isolated on this host, remote), loaded before failed."""
    caps = entry.plugin.capabilities if entry.plugin is not None else frozenset()
    return entry.error is not None, not entry.builtin, REMOTE in caps, ISOLATED in caps, entry.name


def _kind_rank(entry: Entry) -> tuple[bool, bool, bool, str]:
    """Built-ins first, the default kind (any program) first of all, then by name."""
    return entry.error is not None, not entry.builtin, entry.name != DEFAULT_KIND, entry.name


def _load(group: str, check: Callable[[str, Any], Any], rank: Callable[[Entry], Any]) -> _Group:
    """Load every entry point of ``group``; ``check`` turns the loaded object into the plugin
    (or raises TypeError/ValueError saying what is wrong with it); ``rank`` orders the result."""
    result = _Group()
    taken: dict[str, Entry] = {}
    seen: set[tuple[str, str, str | None]] = set()
    for ep in _order(entry_points(group=group)):
        dist, version = _dist(ep)
        if (ep.name, ep.value, dist) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value, dist))
        where = f"{ep.value} ({dist or 'unknown distribution'})"
        if ep.name in taken:
            first = taken[ep.name]
            error = f"the name {ep.name!r} is already registered by {first.value} ({first.dist}); refused"
            log.error("%s plugin %s: %s", group, where, error)
            result.entries.append(Entry(ep.name, ep.value, dist, version, error=error))
            continue
        try:
            plugin = check(ep.name, ep.load())
        except Exception as exc:  # a broken plugin is reported, never fatal
            error = f"failed to load: {type(exc).__name__}: {exc}"
            log.error("%s plugin %s %s", group, where, error)
            entry = Entry(ep.name, ep.value, dist, version, error=error)
        else:
            entry = Entry(ep.name, ep.value, dist, version, plugin=plugin)
        taken[ep.name] = entry
        result.entries.append(entry)
    result.entries.sort(key=rank)
    return result


def _check_backend(name: str, obj: Any) -> BackendPlugin:
    if not isinstance(obj, BackendPlugin):
        raise TypeError(f"expected an agent_manager.plugins.BackendPlugin, got {type(obj).__name__}")
    if obj.name != name:
        raise ValueError(f"the entry point is called {name!r} but the plugin says its name is {obj.name!r}")
    if name == AUTO or not NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable backend name")
    unknown = set(obj.capabilities) - CAPABILITIES
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    return obj


def _check_kind(name: str, obj: Any) -> AgentKind:
    from agent_manager.agents.base import AgentKind

    if isinstance(obj, type) and issubclass(obj, AgentKind):
        obj = obj()
    if not isinstance(obj, AgentKind):
        raise TypeError(f"expected an agent_manager.agents.base.AgentKind, got {type(obj).__name__}")
    if obj.name != name:
        raise ValueError(f"the entry point is called {name!r} but the kind says its name is {obj.name!r}")
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable kind name")
    return obj


_loaded: dict[str, _Group] = {}  # group → what loading it found (loaded once, on first use)


def _backends() -> _Group:
    if BACKEND_GROUP not in _loaded:
        _loaded[BACKEND_GROUP] = _load(BACKEND_GROUP, _check_backend, _backend_rank)
    return _loaded[BACKEND_GROUP]


def _kinds() -> _Group:
    if KIND_GROUP not in _loaded:
        _loaded[KIND_GROUP] = _load(KIND_GROUP, _check_kind, _kind_rank)
    return _loaded[KIND_GROUP]


def backends() -> dict[str, BackendPlugin]:
    """Every backend that loaded, by name, in the UI's order (built-ins first: local, sandbox, ...)."""
    return _backends().loaded()


def kinds() -> dict[str, AgentKind]:
    """Every agent kind that loaded, by name, built-ins first, the default kind first of all."""
    return _kinds().loaded()


def backend_entries() -> list[Entry]:
    """Every entry point of the backends group, loaded or not (for ``GET /api/backends``)."""
    return list(_backends().entries)


def kind_entries() -> list[Entry]:
    return list(_kinds().entries)


def reload() -> None:
    """Forget what was loaded (tests that install a plugin while the process runs)."""
    _loaded.clear()


def capabilities(name: str | None) -> frozenset[str]:
    """The capabilities of backend ``name``; none for a name that is not installed."""
    plugin = backends().get(name or "")
    return plugin.capabilities if plugin is not None else frozenset()


WorkspaceAccess = Literal["direct", "private_git", "portable"]


def workspace_access(name: str | None) -> WorkspaceAccess:
    """How backend ``name`` reaches a project workspace (workspaces/): a remote one carries it in
    its portable form (``ExecSpec.portable``), an isolated one on this host gets a private git dir
    (``ExecSpec.mounts``), any other uses the worktree and its git directly."""
    caps = capabilities(name)
    if REMOTE in caps:
        return "portable"
    return "private_git" if ISOLATED in caps else "direct"


def on_host(name: str | None) -> bool:
    """Whether backend ``name`` runs on this machine, taking one of its run slots."""
    return HOST in capabilities(name)


def _unknown(what: str, name: str, known: Iterable[str], failed: Mapping[str, str], group: str) -> str:
    message = f"unknown {what} {name!r}; expected one of: {', '.join(known)}"
    if name in failed:
        message += f" ({name} is installed but unusable: {failed[name]})"
    elif any(ep.name == name for ep in entry_points(group=group)):
        # The registry is read once, at start: a package pip-installed since is not in it yet.
        message += f" ({name} was installed after the service started: restart the service to use it)"
    return message


def check_backend(name: str, allow_auto: bool = False) -> str:
    """``name`` if it is an installed backend (or ``auto`` where that is allowed), else a
    ``ValueError`` naming the valid choices (pydantic turns it into the usual 422)."""
    choices = backend_choices(allow_auto)
    if name not in choices:
        raise ValueError(_unknown("backend", name, choices, _backends().failed(), BACKEND_GROUP))
    return name


def check_kind(name: str) -> str:
    if name not in kinds():
        raise ValueError(_unknown("agent kind", name, kinds(), _kinds().failed(), KIND_GROUP))
    return name


def backend_choices(allow_auto: bool = False) -> list[str]:
    return ([AUTO] if allow_auto else []) + list(backends())


def get_kind(name: str) -> AgentKind:
    """The kind called ``name``; an unknown one is a validation error (422), not a crash."""
    try:
        return kinds()[name]
    except KeyError:
        raise ValidationFailed(_unknown("agent kind", name, kinds(), _kinds().failed(), KIND_GROUP)) from None
