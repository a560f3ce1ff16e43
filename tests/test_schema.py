"""Bad input never breaks the service: schemathesis generates requests for every operation in
/openapi.json against a real server (bounded and deterministic) and checks that no answer is
a 5xx and that every documented response matches its schema."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import FAKES_BIN, LiveServer, start_server, stop_server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

LOG: list[str] = []


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("schema") / "home"
    env = {"PATH": f"{FAKES_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           # no test may reach the real Daytona, whatever a generated request changes
           "DAYTONA_API_URL": "http://127.0.0.1:9", "AGENT_MANAGER_KILL_GRACE_S": "0.2"}
    server = start_server(home, env=env)
    import threading

    def pump() -> None:  # keep the log pipe from filling up; keep the log for failure reports
        assert server.proc.stdout is not None
        for line in server.proc.stdout:
            LOG.append(line)

    threading.Thread(target=pump, daemon=True).start()
    # something for the generated requests to find
    httpx.post(f"{server.url}/api/agents", headers=server.headers,
               json={"name": "gemini", "kind": "gemini"}).raise_for_status()
    try:
        yield server
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
    return [result.ok() for result in api.get_all_operations()]


def test_api_survives_generated_input(fuzz_server: LiveServer) -> None:
    """Every operation, 20 valid and 20 invalid generated requests each (derandomized: the same
    ones every time)."""
    operations = _operations(fuzz_server)
    assert len(operations) > 20
    failures: list[str] = []
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, derandomize=True, database=None, print_blob=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def check(case: Any) -> None:
            response = case.call(base_url=fuzz_server.url, headers=fuzz_server.headers, timeout=30)
            if response.status_code >= 500 and not _documented_unavailable(response):
                raise AssertionError(f"{response.status_code} for {case.as_curl_command()}: {response.text[:500]}")
            case.validate_response(response, checks=[response_schema_conformance], headers=fuzz_server.headers)

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing invalid to say to this operation
        except (Exception, BaseExceptionGroup) as exc:  # collect them all: one report names every broken one
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures) + "\n\nservice log (last lines):\n" + "".join(LOG[-80:])


def test_the_fuzzer_used_our_home(fuzz_server: LiveServer) -> None:
    """Files the generated requests wrote stay under the test's data directory."""
    assert Path(fuzz_server.home).exists()
