"""The registry of backends and kinds (plugins.py): entry points, failures reported, names checked.

A plugin is installed here the way pip leaves one: a ``*.dist-info`` directory with
``entry_points.txt`` on ``sys.path`` (tests/test_plugin_example.py installs a real package
with pip and runs through it end to end).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent_manager import plugins
from agent_manager.plugins import HOST, ISOLATED, REMOTE


def install_dist(root: Path, name: str, entry_points: str, modules: dict[str, str] | None = None) -> Path:
    """Lay out what ``pip install`` leaves for distribution ``name``: its modules and dist-info."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def on_path(tmp_path: Path) -> Iterator[Path]:
    """A directory put on sys.path (as site-packages would be), the registry reloaded after."""
    root = tmp_path / "site"
    root.mkdir()
    saved = (plugins._backends(), plugins._kinds())
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("am_test_")]:
            del sys.modules[name]
        plugins.reload()  # back to the very objects other tests' modules imported
        plugins._loaded.update({plugins.BACKEND_GROUP: saved[0], plugins.KIND_GROUP: saved[1]})


def test_builtins_register_through_entry_points() -> None:
    backends = plugins.backends()
    assert list(backends)[:3] == ["local", "sandbox", "daytona"]
    assert backends["local"].capabilities == {HOST}
    assert backends["sandbox"].capabilities == {HOST, ISOLATED}
    assert backends["daytona"].capabilities == {ISOLATED, REMOTE}
    entries = {e.name: e for e in plugins.backend_entries()}
    assert entries["local"].builtin and entries["local"].dist == "agent-manager"
    assert {"generic", "gemini", "claude", "codex", "ollama", "aider", "opencode", "llm"} <= set(plugins.kinds())
    assert all(kind.name == name for name, kind in plugins.kinds().items())


def test_loading_the_registry_does_not_import_the_daytona_sdk() -> None:
    code = ("import sys; from agent_manager import plugins; plugins.backends(); plugins.kinds(); "
            "print(sorted(m for m in sys.modules if m == 'daytona' or m.startswith('daytona.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


BROKEN = """
    [agent_manager.backends]
    ghost = am_test_missing_module:PLUGIN
    local = am_test_dupe:PLUGIN
    notaplugin = am_test_dupe:NOT_A_PLUGIN
    misnamed = am_test_dupe:PLUGIN
    boom = am_test_dupe:BOOM

    [agent_manager.kinds]
    claude = am_test_dupe:Kind
    weird = am_test_dupe:NOT_A_PLUGIN
"""
DUPE = """
    from agent_manager.agents.base import AgentKind
    from agent_manager.executors.local import LocalExecutor
    from agent_manager.plugins import HOST, BackendPlugin

    PLUGIN = BackendPlugin(name="local", title="an impostor", capabilities=frozenset({HOST}),
                           factory=lambda ctx: LocalExecutor(ctx.settings, ctx.prefix, dict(ctx.environ)))
    NOT_A_PLUGIN = 42
    BOOM = BackendPlugin(name="boom", title="boom", capabilities=frozenset({HOST}), factory=lambda ctx: 1 / 0)

    class Kind(AgentKind):
        name = "claude"
"""


def test_broken_and_duplicate_plugins_are_reported_not_dropped(on_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    install_dist(on_path, "am-broken", BROKEN, {"am_test_dupe": DUPE})
    plugins.reload()
    entries = {(e.name, e.dist): e for e in plugins.backend_entries()}
    # The built-in keeps its name; the impostor is refused, saying who has it.
    assert plugins.backends()["local"].title == "local (this host)"
    assert "already registered" in (entries[("local", "am-broken")].error or "")
    assert "ModuleNotFoundError" in (entries[("ghost", "am-broken")].error or "")
    assert "BackendPlugin" in (entries[("notaplugin", "am-broken")].error or "")
    assert "says its name is 'local'" in (entries[("misnamed", "am-broken")].error or "")
    assert not {"ghost", "notaplugin", "misnamed"} & set(plugins.backends())
    kinds = {(e.name, e.dist): e for e in plugins.kind_entries()}
    assert "already registered" in (kinds[("claude", "am-broken")].error or "")
    assert "AgentKind" in (kinds[("weird", "am-broken")].error or "")
    assert "am_test_missing_module" in caplog.text  # logged, not silent
    with pytest.raises(ValueError, match="installed but unusable: failed to load"):
        plugins.check_backend("ghost")


def test_a_backend_whose_factory_fails_is_unavailable_not_fatal(on_path: Path, tmp_path: Path) -> None:
    from agent_manager.service import build_executors
    from agent_manager.settings import Settings

    install_dist(on_path, "am-broken", BROKEN, {"am_test_dupe": DUPE})
    plugins.reload()
    executors, problems = build_executors(Settings(home=tmp_path), "am-test", {"PATH": "/usr/bin:/bin"})
    assert {"local", "sandbox", "daytona"} <= set(executors) and "boom" not in executors
    assert problems == {"boom": "could not be started: ZeroDivisionError: division by zero"}


async def test_api_lists_backends_and_kinds_with_failures(on_path: Path, client: httpx.AsyncClient) -> None:
    install_dist(on_path, "am-broken", BROKEN, {"am_test_dupe": DUPE})
    plugins.reload()
    backends = {(b["name"], b["plugin"]): b for b in (await client.get("/api/backends")).json()}
    local = backends[("local", "agent-manager 0.1.0")]
    assert local["available"] and local["builtin"] and local["capabilities"] == ["host"] and not local["reason"]
    daytona = next(b for (name, _), b in backends.items() if name == "daytona")
    assert not daytona["available"] and "not configured" in daytona["reason"]
    ghost = backends[("ghost", "am-broken 1.0")]
    assert not ghost["available"] and "failed to load" in ghost["reason"] and not ghost["builtin"]
    assert "already registered" in backends[("local", "am-broken 1.0")]["reason"]
    kinds = {k["name"]: k for k in (await client.get("/api/kinds")).json() if k["builtin"]}
    assert kinds["generic"]["available"] is None and kinds["generic"]["default_command"] == ""
    assert kinds["gemini"]["default_command"] == "gemini" and kinds["gemini"]["supports_resume"]
    assert kinds["gemini"]["available"] is True  # tests/fakes/bin/gemini is on PATH


async def test_unknown_names_are_422_naming_the_choices(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/agents", json={"name": "a", "command": "echo", "backend": "cloud"})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "backend" in message and "local, sandbox, daytona" in message and "auto" not in message
    r = await client.post("/api/agents", json={"name": "a", "command": "echo", "kind": "gpt"})
    assert r.status_code == 422 and "generic" in r.json()["error"]["message"]
    assert (await client.post("/api/agents", json={"name": "a", "command": "echo"})).status_code == 201
    r = await client.post("/api/runs", json={"agent": "a", "prompt": "x", "backend": "nope"})
    assert r.status_code == 422 and "auto, local, sandbox, daytona" in r.json()["error"]["message"]
    r = await client.patch("/api/agents/a", json={"backend": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "backend"
    r = await client.patch("/api/settings", json={"execution_mode": "nope"})
    assert r.status_code == 422 and "execution_mode" in r.json()["error"]["message"]
    plan = {"name": "p", "steps": [{"id": "s", "agent": "a", "prompt": "x", "backend": "nope"}]}
    r = await client.post("/api/plans/validate", json={"plan": plan})
    body = r.json()
    assert r.status_code == 200 and not body["valid"] and "unknown backend 'nope'" in str(body["errors"])
    assert "local, sandbox, daytona" in str(body["errors"])
    schema = (await client.get("/api/plans/schema")).json()
    assert schema["$defs"]["Step"]["properties"]["backend"]["anyOf"][0]["enum"] == ["auto", "local", "sandbox",
                                                                                     "daytona"]


def test_a_plugin_installed_after_start_is_refused_with_restart_the_service(on_path: Path) -> None:
    """A newcomer pip-installs a plugin and forgets to restart: the 422 says what to do."""
    plugins.backends(), plugins.kinds()  # the registry as the running service read it at start
    install_dist(on_path, "am-test-late", """
        [agent_manager.backends]
        late = am_test_late:PLUGIN
        [agent_manager.kinds]
        latekind = am_test_late:KIND
    """)
    with pytest.raises(ValueError, match=r"unknown backend 'late'.*late was installed after the service "
                                         r"started: restart the service to use it"):
        plugins.check_backend("late")
    with pytest.raises(ValueError, match="latekind was installed after the service started"):
        plugins.check_kind("latekind")
    with pytest.raises(ValueError) as never_installed:
        plugins.check_backend("nope")
    assert "restart" not in str(never_installed.value)


async def test_a_validation_message_reads_as_a_sentence(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/agents", json={"name": "a", "command": "echo", "backend": "cloud"})
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("backend: unknown backend 'cloud'; expected one of: local")
    assert "Value error" not in r.text


def test_cli_choices_come_from_the_registry() -> None:
    from click.testing import CliRunner

    from agent_manager.cli import main

    out = CliRunner().invoke(main, ["agents", "add", "--help"]).output
    assert "[local|sandbox|daytona]" in out and "[generic|aider|claude" in out
    result = CliRunner().invoke(main, ["run", "a", "p", "--backend", "cloud"])
    assert result.exit_code == 2 and "'cloud' is not one of 'auto', 'local', 'sandbox', 'daytona'" in result.output


# -- no module outside the registry names a built-in backend or kind -----------------------------

PACKAGE = Path(__file__).parent.parent / "agent_manager"
REGISTRY_HOMES = ("executors", "agents")  # the plugins themselves, and plugins.py
NOT_A_NAME = {"Content-Security-Policy"}  # a header whose value "sandbox" is a CSP directive


def builtin_names() -> set[str]:
    names = {e.name for e in plugins.backend_entries() + plugins.kind_entries() if e.builtin}
    assert {"local", "sandbox", "daytona", "generic", "gemini"} <= names
    return names


def _quoted(names: set[str]) -> re.Pattern[str]:
    alternatives = "|".join(sorted(map(re.escape, names)))
    return re.compile(r"""(["'`])(""" + alternatives + r""")\1""")


def python_hits(path: Path, names: set[str]) -> list[str]:
    """String literals that are exactly a name, or quote one (SQL, JS in Python); docstrings and
    comments are prose and may name backends."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Dict):
            skip.update(id(v) for k, v in zip(node.keys, node.values, strict=True)
                        if isinstance(k, ast.Constant) and k.value in NOT_A_NAME)
    quoted = _quoted(names)
    return [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value[:60]!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and (node.value in names or quoted.search(node.value))]


def ui_hits(path: Path, names: set[str]) -> list[str]:
    """Quoted names in the UI's JavaScript and HTML (comments stripped first)."""
    text = re.sub(r"/\*.*?\*/|<!--.*?-->", "", path.read_text(), flags=re.S)
    text = re.sub(r"(?m)^\s*//.*$", "", text)
    quoted = _quoted(names)
    return [f"{path.relative_to(PACKAGE.parent)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for m in quoted.finditer(text)]


def outside_registry() -> tuple[list[Path], list[Path]]:
    python = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in REGISTRY_HOMES
              and p != PACKAGE / "plugins.py"]
    static = PACKAGE / "web" / "static"
    ui = [p for p in static.rglob("*") if p.suffix in (".js", ".html", ".mjs")
          and "vendor" not in p.relative_to(static).parts]
    ui += [p for p in (PACKAGE / "web").rglob("*.html") if "swagger" not in p.parts and p not in ui]
    return python, ui


def test_no_module_outside_the_registry_names_a_backend_or_kind() -> None:
    names = builtin_names()
    python, ui = outside_registry()
    assert len(python) > 50 and any(p.name == "service.py" for p in python)
    assert any(p.name == "agents.js" for p in ui) and any(p.name == "index.html" for p in ui)
    hits = [hit for path in python for hit in python_hits(path, names)]
    hits += [hit for path in ui for hit in ui_hits(path, names)]
    assert not hits, "backend/kind names outside plugins.py, executors/, agents/ (ask the registry):\n" + \
        "\n".join(hits)


def test_the_literal_check_catches_what_it_should(tmp_path: Path) -> None:
    names = {"local", "sandbox"}
    py = tmp_path / "agent_manager" / "x.py"
    py.parent.mkdir()
    py.write_text('"""Runs on the sandbox or "local"."""\n# "sandbox" in a comment\n'
                  'A = "sandbox"\nB = f"x {A}"\nC = "WHERE backend = \'local\'"\nD = "sandboxes"\n'
                  'E = {"Content-Security-Policy": "sandbox"}\n')
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "agent_manager"
    try:
        assert [h.split(": ", 1)[1] for h in python_hits(py, names)] == ["'sandbox'", '"WHERE backend = \'local\'"']
        js = tmp_path / "agent_manager" / "p.js"
        js.write_text('// "local" in a comment\n/* "sandbox" */ const a = ["local", `sandbox`, "sandboxed"];\n')
        assert [h.rsplit(": ", 1)[1] for h in ui_hits(js, names)] == ['"local"', "`sandbox`"]
    finally:
        PACKAGE = saved


async def test_a_second_cloud_backend_slots_into_routing(tmp_path: Path) -> None:
    """Routing decides by capabilities: another remote, isolated backend takes heavy and
    untrusted work exactly as Daytona would, with no change to the routing code."""
    from agent_manager.executors.base import Availability, Resources
    from agent_manager.executors.routing import RouteRequest, route
    from agent_manager.settings import Settings

    class Up:
        def __init__(self, name: str) -> None:
            self.name = name

        async def available(self) -> Availability:
            return Availability(True)

    executors: dict = {name: Up(name) for name in ("local", "sandbox", "cloud2")}
    caps = {"local": frozenset({HOST}), "sandbox": frozenset({HOST, ISOLATED}), "cloud2": frozenset({ISOLATED, REMOTE})}
    cfg = Settings(home=tmp_path)
    heavy = await route(RouteRequest(resources=Resources(cpu=64)), cfg, executors, caps)
    assert heavy.backend == "cloud2" and heavy.reason.endswith("so it runs on cloud2")
    cfg.prefer_daytona_for_untrusted = True
    untrusted = await route(RouteRequest(agent_trusted=False), cfg, executors, caps)
    assert untrusted.backend == "cloud2" and "isolated in cloud2" in untrusted.reason
    light = await route(RouteRequest(), cfg, executors, caps)
    assert light.backend == "local"
    del executors["cloud2"]
    heavy = await route(RouteRequest(resources=Resources(cpu=64)), cfg, executors, {**caps})
    assert heavy.backend == "local" and "no remote backend is installed" in heavy.reason


async def test_agents_of_an_uninstalled_plugin_stay_listed(client: httpx.AsyncClient, service: object) -> None:
    """Uninstalling a plugin loses no data: its agents are still listed (not available, saying
    why), and a run on its backend fails with a reason instead of the API breaking."""
    r = await client.post("/api/agents", json={"name": "orphan", "command": "echo"})
    assert r.status_code == 201
    db = service.database  # type: ignore[attr-defined]
    db.execute("UPDATE agents SET kind = 'gone', backend = 'vanished' WHERE name = 'orphan'")
    listed = {a["name"]: a for a in (await client.get("/api/agents")).json()}
    orphan = listed["orphan"]
    assert orphan["kind"] == "gone" and orphan["backend"] == "vanished" and not orphan["available"]
    assert "'gone' is not installed" in orphan["install_hint"]
    r = await client.post("/api/runs", json={"agent": "orphan", "prompt": "x"})
    assert r.status_code == 422 and "unknown agent kind 'gone'" in r.json()["error"]["message"]
    db.execute("UPDATE agents SET kind = 'generic' WHERE name = 'orphan'")
    r = await client.post("/api/runs", json={"agent": "orphan", "prompt": "x"})
    assert r.status_code == 201
    from helpers import wait_run

    run = await wait_run(client, r.json()["id"])
    assert run["status"] == "failed" and "the vanished backend is not installed" in run["error"], run


def test_stale_metadata_is_one_clear_sentence_at_start(tmp_path: Path) -> None:
    """An agent_manager.egg-info without the entry points (an old build left in a checkout)
    shadows the real metadata: serve refuses to start a service that could run nothing."""
    stale = tmp_path / "stale" / "agent_manager.egg-info"
    stale.mkdir(parents=True)
    (stale / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: agent-manager\nVersion: 0.0.1\n")
    (stale / "entry_points.txt").write_text("[console_scripts]\nagent-manager = agent_manager.cli:main\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stale.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "agent_manager", "--home", str(tmp_path / "home"), "serve",
                           "--port", "0"], capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path)  # not the checkout: `-m` puts the cwd (and its fresh egg-info) first
    assert done.returncode != 0 and "no built-in backends are registered" in done.stderr
    assert "Traceback" not in done.stderr
