"""A plain `pip install` (no extras) gives a service that starts; `make serve` needs only the
runtime set; /docs works without network; bad input at start-up is one clear sentence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer

ROOT = Path(__file__).parent.parent
DEV_ONLY = ("pytest", "playwright", "mypy", "ruff", "daytona", "hypothesis", "schemathesis")


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with `pip install <checkout>` and no extras: built once for this module.

    Real PyPI when it is reachable (CI is online); the build isolation needs setuptools too.
    """
    where = tmp_path_factory.mktemp("plain") / "venv"
    venv.EnvBuilder(with_pip=True).create(where)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # setuptools builds in the checkout; its agent_manager.egg-info there would then shadow the
    # installed metadata (entry points: the plugin registry) of every later run from the checkout.
    leftovers = [p for p in (ROOT / "agent_manager.egg-info", ROOT / "build") if not p.exists()]
    try:
        result = subprocess.run([*pip, str(ROOT)], capture_output=True, text=True, timeout=900)
    finally:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    if result.returncode != 0 and ("Could not find a version" in result.stderr or "NewConnectionError" in
                                   result.stderr or "Temporary failure in name resolution" in result.stderr):
        pytest.skip(f"no package index reachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    yield where


def test_plain_install_starts_and_serves(plain_venv: Path, tmp_path: Path) -> None:
    listed = subprocess.run([str(plain_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert not installed & set(DEV_ONLY), installed & set(DEV_ONLY)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(AGENT_MANAGER_HOME=str(home), PATH=f"{plain_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    proc = subprocess.Popen([str(plain_venv / "bin" / "agent-manager"), "serve", "--port", "0"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    assert proc.stdout is not None
    try:
        url = None
        output = []
        for line in proc.stdout:
            output.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "".join(output)
        token = (home / "admin-token").read_text().strip()
        # The login form is form data: exactly what needed python-multipart.
        login = httpx.post(f"{url}/login", data={"token": token}, follow_redirects=False)
        assert login.status_code in (200, 303), login.text
        assert httpx.get(f"{url}/api/health").json()["status"] == "ok"
        docs = httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js", headers={"Authorization": f"Bearer {token}"})
        assert docs.status_code == 200 and len(docs.content) > 100_000
        # The built-in backends and kinds register through the installed entry points; without the
        # optional Daytona SDK that backend is listed as unavailable, saying how to get it.
        auth = {"Authorization": f"Bearer {token}"}
        backends = {b["name"]: b for b in httpx.get(f"{url}/api/backends", headers=auth).json()}
        assert list(backends) == ["local", "sandbox", "daytona"] and backends["local"]["available"]
        assert not backends["daytona"]["available"] and "agent-manager[daytona]" in backends["daytona"]["reason"]
        kinds = [k["name"] for k in httpx.get(f"{url}/api/kinds", headers=auth).json()]
        assert kinds[0] == "generic" and {"gemini", "claude", "codex"} <= set(kinds)
        # The CLI of that install finds the service without flags.
        agents = subprocess.run([str(plain_venv / "bin" / "agent-manager"), "agents", "list"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert agents.returncode == 0, agents.stderr
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[0]
    assert "Traceback" not in "".join(output) + rest


def _make_dry_run(target: str) -> str:
    return subprocess.run(["make", "-n", "-B", target, "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_make_serve_installs_only_the_runtime_set() -> None:
    serve = _make_dry_run("serve")
    installs = [line for line in serve.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("[daytona]" in line and "dev" not in line for line in installs), serve
    test_install = _make_dry_run("install")
    assert "[dev]" in test_install
    assert "make -s install" in (ROOT / "scripts" / "test.sh").read_text()


def test_api_docs_are_served_locally(live_server: LiveServer) -> None:
    page = httpx.get(f"{live_server.url}/docs", headers=live_server.headers)
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing from another origin
    for source in sources:
        asset = httpx.get(f"{live_server.url}{source}", headers=live_server.headers)
        assert asset.status_code == 200, source
    assert "SwaggerUIBundle" in httpx.get(f"{live_server.url}/docs-assets/init.js", headers=live_server.headers).text


def test_api_docs_render_offline_in_a_browser(live_server: LiveServer) -> None:
    from playwright.sync_api import sync_playwright
    from ui_harness import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(extra_http_headers=live_server.headers)
            page = context.new_page()
            foreign: list[str] = []
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: (foreign.append(route.request.url),
                                                                                route.abort()))
            page.goto(f"{live_server.url}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "Agent Manager" in page.inner_text(".swagger-ui .info .title")
            assert page.locator(".opblock").count() > 10
            # an operation's answers render from the document: its success model and its errors
            page.click("#operations-orchestrations-get_orchestration_api_orchestrations__orch_id__get .opblock-summary")
            answers = page.locator("#operations-orchestrations-get_orchestration_api_orchestrations__orch_id__get"
                                   " .responses-table")
            answers.first.wait_for(timeout=10_000)
            text = answers.first.inner_text()
            assert "404" in text and "steps" in text and "error" in text, text[:2000]
            assert page.locator(".errors-wrapper").count() == 0  # no reference Swagger UI could not resolve
            assert not foreign, foreign
        finally:
            browser.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({"AGENT_MANAGER_PORT": "abc"}, "the environment variable AGENT_MANAGER_PORT is 'abc'"),
    ({"AGENT_MANAGER_MAX_CONCURRENT_RUNS": "0"}, "AGENT_MANAGER_MAX_CONCURRENT_RUNS is '0'"),
])
def test_bad_environment_is_one_sentence(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    result = subprocess.run([sys.executable, "-m", "agent_manager", "serve"], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "AGENT_MANAGER_HOME": str(tmp_path), **env})
    assert result.returncode != 0
    err = result.stderr.strip()
    assert expected in err, err
    assert len(err.splitlines()) == 1 and "pydantic" not in err and "http" not in err, err


def test_bad_json_body_names_the_body(live_server: LiveServer) -> None:
    r = httpx.post(f"{live_server.url}/api/agents", content=b'{"name": "x",', headers={
        **live_server.headers, "Content-Type": "application/json"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["message"].startswith("the request body is not valid JSON"), error
    assert error["details"][0]["field"] == "body"


def test_editable_install_is_quiet(tmp_path: Path) -> None:
    """`make serve` (pip install -e) is a newcomer's first command: it printed setuptools'
    "Please be careful with folders ... with the same name as your package" box. A copy of the
    checkout, so the test writes nothing into it."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "agent_manager", src / "agent_manager",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    where = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(where)
    python = str(where / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], capture_output=True, timeout=600)  # as the Makefile does: a
    result = subprocess.run([*pip, "--no-deps", "-e", str(src)],  # recent pip shows the backend's warnings
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and ("Could not find a version" in result.stderr or "NewConnectionError" in
                                   result.stderr or "Temporary failure in name resolution" in result.stderr):
        pytest.skip(f"no package index reachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr and "!!" not in result.stderr, result.stderr
    # Found, not imported: a subpackage's third-party imports are not installed (--no-deps).
    find = "import importlib.util; print(importlib.util.find_spec('agent_manager.store').origin)"
    where_from = subprocess.run([python, "-c", find],
                                capture_output=True, text=True, cwd=tmp_path, timeout=60,
                                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert where_from.stdout.strip().startswith(str(src / "agent_manager")), where_from
