"""Bad input never breaks the service, and every answer is what /openapi.json says.

schemathesis generates requests for every operation in /openapi.json against a real server
(bounded and deterministic) and checks that no answer is a 5xx and that every answer matches
its documented status code, content type and schema. Half of the valid requests name real
things (an agent, a run and a conversation on a git project, an orchestration, a saved plan,
a user, a terminal), so the 2xx answers are checked too, not only the 404s of random ids.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import FAKES_BIN, LiveServer, start_server, stop_server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from workspace_helpers import make_repo

from agent_manager.web.auth import OPEN_PATHS

LOG: list[str] = []
EXAMPLES = 20  # per operation and mode: the same ones every time (derandomized)
CHECKS = [response_schema_conformance, status_code_conformance, content_type_conformance]
# Run last, in this order: they change or delete what the other operations' requests name.
LAST = ("/merge", "/discard", "PATCH /api/settings", "POST /api/runs/prune", "DELETE ")
# What a success costs a lot of (a planner agent's runs, with one retry): fewer examples, all
# of them naming the seeded planner.
BUDGET = {"POST /api/plans": 2}
NON_JSON = {"text/event-stream", "text/x-diff", "application/octet-stream", "text/plain", "text/html", "image/svg+xml"}


def _json(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = client.request(method, path, **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return dict(response.json())


def _finished(client: httpx.Client, path: str, key: str = "status") -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (found := _json(client, "GET", path))[key] in ("queued", "running"):
        assert time.monotonic() < deadline, f"{path} still {found[key]}"
        time.sleep(0.1)
    return found


def _seed(server: LiveServer, repo: Path) -> dict[str, Any]:
    """Real things for the generated requests to name: parameter name → value."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        gemini = _json(client, "POST", "/api/agents", json={"name": "gemini", "kind": "gemini"})
        # the agent PATCH and DELETE requests act on (they rename it, change its command...)
        target = _json(client, "POST", "/api/agents", json={"name": "target", "kind": "gemini"})
        shell = _json(client, "POST", "/api/agents", json={"name": "sh-agent", "kind": "generic", "command": "sh",
                                                            "args": ["-c", "{prompt}"]})
        _json(client, "POST", "/api/projects", json={"name": "proj", "path": str(repo)})
        run = _json(client, "POST", "/api/runs", json={"agent": shell["id"], "project": "proj",
                                                       "prompt": "echo changed > a.txt && echo new > new.txt"})
        _finished(client, f"/api/runs/{run['id']}")
        conv = _json(client, "POST", "/api/conversations", json={"title": "t", "agent": gemini["id"],
                                                                 "project": "proj"})
        plan = {"name": "seed", "steps": [{"id": "a", "action": "write_file", "path": "out/a.txt", "content": "hi"},
                                          {"id": "b", "action": "shell", "argv": ["false"], "depends_on": ["a"]}]}
        orch = _json(client, "POST", "/api/orchestrations", json={"plan": plan, "project": "proj"})
        _finished(client, f"/api/orchestrations/{orch['id']}")
        saved = _json(client, "POST", "/api/plans/saved", json={"name": "saved", "plan": plan})
        user = _json(client, "POST", "/api/users", json={"name": "someone"})
        terminal = _json(client, "POST", "/api/terminals", json={})
        for name in ("seed.txt", "delete-me.txt"):
            _json(client, "PUT", "/api/files", params={"agent": gemini["id"], "path": name}, content=b"seed")
        # merged ones cannot be discarded: the discard requests get their own; a project with
        # open workspaces cannot be deleted: the delete requests get an empty one
        run2 = _json(client, "POST", "/api/runs", json={"agent": shell["id"], "project": "proj", "prompt": "true"})
        _finished(client, f"/api/runs/{run2['id']}")
        conv2 = _json(client, "POST", "/api/conversations", json={"title": "t2", "project": "proj"})
        orch2 = _json(client, "POST", "/api/orchestrations", json={"plan": {"steps": plan["steps"][:1]},
                                                                   "project": "proj"})
        _finished(client, f"/api/orchestrations/{orch2['id']}")
        _json(client, "POST", "/api/projects", json={"name": "proj2", "path": str(repo)})
    return {"ref": target["id"], "projects.ref": "proj", "body.agent": gemini["id"], "agent": gemini["id"],
            "planner": gemini["id"], "run_id": run["id"], "runs.item_id": run["id"], "conv_id": conv["id"],
            "conversations.item_id": conv["id"], "orch_id": orch["id"], "orchestrations.item_id": orch["id"],
            "step_id": "b", "plan_id": saved["id"], "user_id": user["id"], "terminal_id": terminal["id"],
            "body.project": "proj", "projects.path": str(repo), "files.path": "seed.txt", "plan": plan,
            "POST /api/runs/{item_id}/discard.item_id": run2["id"],
            "POST /api/conversations/{item_id}/discard.item_id": conv2["id"],
            "POST /api/orchestrations/{item_id}/discard.item_id": orch2["id"],
            "DELETE /api/projects/{ref}.ref": "proj2", "DELETE /api/files.path": "delete-me.txt",
            "GET /login.token": server.token, "POST /login.token": server.token,
            # an agent the service can create: an installed kind, the default backend
            "POST /api/agents.kind": "gemini", "POST /api/agents.backend": None}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("schema")
    env = {"PATH": f"{FAKES_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           # no test may reach the real Daytona, whatever a generated request changes
           "DAYTONA_API_URL": "http://127.0.0.1:9", "AGENT_MANAGER_KILL_GRACE_S": "0.2", "FAKE_DELAY": "0"}
    server = start_server(base / "home", env=env)

    def pump() -> None:  # keep the log pipe from filling up; keep the log for failure reports
        assert server.proc.stdout is not None
        for line in server.proc.stdout:
            LOG.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield server, _seed(server, make_repo(base / "repo"))
    finally:
        stop_server(server)


def _documented_unavailable(response: Any) -> bool:
    """503 executor_unavailable ("Daytona is not configured") is an answer, not a crash."""
    try:
        return response.status_code == 503 and response.json()["error"]["code"] == "executor_unavailable"
    except (ValueError, KeyError, TypeError):
        return False


def _operations(server: LiveServer) -> list[Any]:
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=server.headers)
    found = [result.ok() for result in api.get_all_operations()]
    return sorted(found, key=lambda op: next((i + 1 for i, mark in enumerate(LAST)
                                              if mark in f"{op.method.upper()} {op.path}"), 0))


def _with_seeds(seeds: dict[str, Any]) -> Any:
    """A generated case naming the seeded things where it names an agent, a run, a plan...
    Seeds are looked up as ``<resource>.<parameter>`` (e.g. ``projects.ref``), then ``<parameter>``."""

    def apply(case: Any) -> Any:
        label = f"{case.operation.method.upper()} {case.operation.path}"
        resource = (case.operation.path.split("/") + ["", ""])[2]

        def seed(container: dict[str, Any], where: str = "") -> None:
            for name in list(container):
                key = next((k for k in (f"{label}.{name}", f"{resource}.{name}", f"{where}{name}") if k in seeds), None)
                if key is not None:
                    container[name] = seeds[key]

        for container in (case.path_parameters, case.query):
            if isinstance(container, dict):
                seed(container)
        if isinstance(case.body, dict):
            seed(case.body, "body.")
            if resource in ("orchestrations", "plans") and {"plan", "yaml"} & set(case.body):
                case.body.pop("yaml", None)
                case.body["plan"] = seeds["plan"]
            if label == "POST /api/plans":
                case.body["planner"] = seeds["planner"]
        return case

    return apply


@pytest.mark.parametrize(("path", "param", "seed"), [("/api/runs/{run_id}/events", "run_id", "run_id"),
                                                      ("/api/orchestrations/{orch_id}/events", "orch_id", "orch_id")])
def test_live_event_streams_are_documented(fuzz_server: tuple[LiveServer, dict[str, Any]], path: str, param: str,
                                           seed: str) -> None:
    """The SSE side of the JSON/SSE endpoints (generated requests never ask for it): a finished
    run's or orchestration's stream replays and ends, as the documented media type. Before the
    generated requests, which prune runs and delete what they name."""
    server, seeds = fuzz_server
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=server.headers)
    operation = api[path]["GET"]
    case = operation.Case(path_parameters={param: seeds[seed]}, headers={"Accept": "text/event-stream"})
    response = case.call(base_url=server.url, headers=server.headers, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    assert "event: " in response.text and "id: " in response.text
    case.validate_response(response, checks=CHECKS, headers=server.headers)


def test_api_survives_generated_input(fuzz_server: tuple[LiveServer, dict[str, Any]]) -> None:
    """Every operation, EXAMPLES valid and EXAMPLES invalid generated requests each."""
    server, seeds = fuzz_server
    operations = _operations(server)
    assert len(operations) > 40
    failures: list[str] = []
    answered: dict[str, set[int]] = defaultdict(set)
    for operation, mode in itertools.product(operations, GenerationMode):
        label = f"{operation.method.upper()} {operation.path}"
        strategy = operation.as_strategy(generation_mode=mode)
        if mode is GenerationMode.POSITIVE:
            seeded = strategy.map(_with_seeds(seeds))
            strategy = seeded if label in BUDGET else st.one_of(strategy, seeded)

        @given(case=strategy)
        @settings(max_examples=BUDGET.get(label, EXAMPLES), deadline=None, derandomize=True, database=None,
                  print_blob=False, suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case: Any) -> None:
            response = case.call(base_url=server.url, headers=server.headers, timeout=30, allow_redirects=False)
            answered[label].add(response.status_code)  # noqa: B023 (called within this iteration)
            if response.status_code >= 500 and not _documented_unavailable(response):
                raise AssertionError(f"{response.status_code} for {case.as_curl_command()}: {response.text[:500]}")
            case.validate_response(response, checks=CHECKS, headers=server.headers)

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing invalid to say to this operation
        except (Exception, BaseExceptionGroup) as exc:  # collect them all: one report names every broken one
            failures.append(f"{label} ({mode.value}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures) + "\n\nservice log (last lines):\n" + "".join(LOG[-80:])
    # The seeded requests reach the routes' success answers, so their bodies were checked too.
    unreached = sorted(label for label, codes in answered.items() if not any(200 <= c < 400 for c in codes))
    assert unreached == UNREACHABLE, answered


# Sweeping needs Daytona configured (its listing with Daytona sandboxes is checked against the
# model by tests/test_backends_api.py); its 503 answer is still checked above.
UNREACHABLE = ["POST /api/sandboxes/gc"]


def test_every_json_answer_has_a_schema(fuzz_server: tuple[LiveServer, dict[str, Any]]) -> None:
    """A route added without a response model fails here: every 2xx of every operation names its
    body (a schema with properties or items, a string for non-JSON media types), and every
    4xx is the one error shape."""
    server, _ = fuzz_server
    spec = httpx.get(f"{server.url}/openapi.json", headers=server.headers).json()
    schemas = spec["components"]["schemas"]

    def described(schema: dict[str, Any]) -> bool:
        if "$ref" in schema:
            return described(schemas[schema["$ref"].rsplit("/", 1)[-1]])
        if "anyOf" in schema or "oneOf" in schema:
            return all(described(s) for s in schema.get("anyOf", schema.get("oneOf")))
        if schema.get("type") == "array":
            return described(schema.get("items", {}))
        if schema.get("type") == "object" or "properties" in schema:
            return bool(schema.get("properties")) or isinstance(schema.get("additionalProperties"), dict)
        return bool(schema.get("type") or schema.get("enum") or "const" in schema)

    problems = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            answers = operation["responses"]
            successes = {code: answer for code, answer in answers.items() if code[0] in "23"}
            if not successes:
                problems.append(f"{label}: no 2xx answer")
            for code, answer in successes.items():
                content = answer.get("content", {})
                if not content and code != "204" and not code.startswith("3"):
                    problems.append(f"{label} {code}: no content declared")
                for media, body in content.items():
                    if media == "application/json" and not described(body.get("schema", {})):
                        problems.append(f"{label} {code}: the JSON body has no schema: {body.get('schema')}")
                    elif media != "application/json" and (media not in NON_JSON or not body.get("schema")):
                        problems.append(f"{label} {code}: {media} undocumented")
            for code, answer in answers.items():
                if code.startswith("4") and code != "499":  # 499: the client left, nobody reads it
                    content = answer.get("content", {})
                    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                    # the login form answers a person: its own errors are the page with a message
                    if not ref.endswith("/ErrorResponse") and not (path == "/login" and "text/html" in content):
                        problems.append(f"{label} {code}: not the error shape")
            middleware = {"400", "403", "413"} | (set() if path in OPEN_PATHS else {"401", "429"})
            if not middleware <= set(answers):
                problems.append(f"{label}: the middleware's answers are not documented")
    assert not problems, "\n".join(problems)
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 body is never sent


def test_the_fuzzer_used_our_home(fuzz_server: tuple[LiveServer, dict[str, Any]]) -> None:
    """Files the generated requests wrote stay under the test's data directory."""
    assert Path(fuzz_server[0].home).exists()


def test_the_settings_answer_cannot_carry_a_secret() -> None:
    """A secret setting is typed as the mask in the settings answer: a route that forgot to mask
    one fails its own response validation (a 500) instead of sending the key."""
    from pydantic import BaseModel, SecretStr, ValidationError

    from agent_manager.models import MASK
    from agent_manager.web.responses import settings_view

    class Demo(BaseModel):
        api_key: SecretStr | None = None
        home: Path = Path("/")

    view = settings_view(Demo)
    answer = {"home": "/x", "mutable": [], "restart_required": [], "from_env": {}, "listening": None,
              "sections": {}, "section_info": []}
    for shown in (MASK, None):
        view.model_validate({**answer, "api_key": shown})
    with pytest.raises(ValidationError, match="api_key"):
        view.model_validate({**answer, "api_key": "the-real-key"})


def test_the_backend_sections_cannot_carry_a_secret(tmp_path: Path) -> None:
    """The settings view's secrets (those of the backends' sections) are typed as the mask: a
    route that forgot to mask one would fail its own response validation (a 500) instead of
    sending the key."""
    from pydantic import ValidationError

    from agent_manager.models import MASK
    from agent_manager.sections import is_secret
    from agent_manager.settings import Settings
    from agent_manager.web.responses import SettingsView
    from agent_manager.web.routers.settings import public_view

    settings = Settings(home=tmp_path)
    view = {**public_view(settings), "listening": None}
    SettingsView.model_validate(view)
    secrets = [(name, field) for name, section in settings.sections.items()
               for field, info in type(section).model_fields.items() if is_secret(info)]
    assert secrets
    for name, field in secrets:
        def with_value(value: str, name: str = name, field: str = field) -> dict[str, object]:
            return {**view, "sections": {**view["sections"], name: {**view["sections"][name], field: value}}}
        SettingsView.model_validate(with_value(MASK))
        with pytest.raises(ValidationError, match=field):
            SettingsView.model_validate(with_value("the-real-key"))
