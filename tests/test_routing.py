"""Backend routing: run > step > agent > mode, and the auto policy with its reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_manager.errors import ExecutorUnavailable
from agent_manager.executors.base import Availability, ExecSpec, Execution, Resources
from agent_manager.executors.routing import RouteRequest, route
from agent_manager.settings import Settings


class Fake:
    def __init__(self, name: str, ok: bool = True, reason: str = "") -> None:
        self.name, self.ok, self.reason = name, ok, reason

    async def available(self) -> Availability:
        return Availability(self.ok, self.reason)

    async def start(self, spec: ExecSpec) -> Execution:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def executors(**down: str) -> dict:
    return {n: Fake(n, n not in down, down.get(n, "")) for n in ("local", "sandbox", "daytona")}


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


@pytest.fixture
def cloud(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, daytona_api_key="k")


async def test_explicit_order_run_step_agent(cfg: Settings) -> None:
    ex = executors()
    r = await route(RouteRequest(run_backend="sandbox", step_backend="daytona", agent_backend="local"), cfg, ex)
    assert (r.backend, r.reason) == ("sandbox", "sandbox requested by the run")
    r = await route(RouteRequest(run_backend="auto", step_backend="daytona", agent_backend="local"), cfg, ex)
    assert r.backend == "daytona" and "plan step" in r.reason
    r = await route(RouteRequest(agent_backend="local", agent_trusted=False), cfg, ex)
    assert r.backend == "local" and "the agent" in r.reason  # an explicit choice beats the policy


async def test_mode(cfg: Settings) -> None:
    cfg.execution_mode = "sandbox"
    r = await route(RouteRequest(), cfg, executors())
    assert r == type(r)("sandbox", "execution mode is sandbox")


async def test_explicit_but_unavailable_fails_with_reason(cfg: Settings) -> None:
    with pytest.raises(ExecutorUnavailable, match="bubblewrap is not installed"):
        await route(RouteRequest(run_backend="sandbox"), cfg, executors(sandbox="bubblewrap is not installed"))


async def test_auto_trusted_light_runs_locally(cfg: Settings) -> None:
    r = await route(RouteRequest(), cfg, executors())
    assert r.backend == "local" and r.reason.startswith("auto:")


@pytest.mark.parametrize("req,why", [
    (RouteRequest(agent_trusted=False), "agent is marked untrusted"),
    (RouteRequest(user_trusted=False), "user is untrusted"),
    (RouteRequest(auto_approve=True), "auto-approve"),
])
async def test_auto_untrusted_is_isolated(cfg: Settings, req: RouteRequest, why: str) -> None:
    r = await route(req, cfg, executors())
    assert r.backend == "sandbox" and why in r.reason


async def test_untrusted_prefers_daytona_when_asked(cloud: Settings) -> None:
    cloud.prefer_daytona_for_untrusted = True
    r = await route(RouteRequest(agent_trusted=False), cloud, executors())
    assert r.backend == "daytona"


async def test_untrusted_falls_back_to_daytona_and_says_so(cloud: Settings) -> None:
    r = await route(RouteRequest(agent_trusted=False), cloud, executors(sandbox="no bwrap"))
    assert r.backend == "daytona" and "no bwrap" in r.reason


async def test_untrusted_never_falls_back_to_local(cfg: Settings) -> None:
    with pytest.raises(ExecutorUnavailable, match="isolated"):
        await route(RouteRequest(agent_trusted=False), cfg, executors(sandbox="no bwrap"))


async def test_untrusted_fallback_can_be_forbidden(cloud: Settings) -> None:
    cloud.allow_fallback = False
    with pytest.raises(ExecutorUnavailable):
        await route(RouteRequest(agent_trusted=False), cloud, executors(sandbox="no bwrap"))


async def test_heavy_work_goes_to_daytona(cloud: Settings) -> None:
    r = await route(RouteRequest(resources=Resources(cpu=8)), cloud, executors())
    assert r.backend == "daytona" and "8 CPUs" in r.reason
    r = await route(RouteRequest(resources=Resources(memory_mb=64000)), cloud, executors())
    assert r.backend == "daytona" and "memory" in r.reason
    r = await route(RouteRequest(host_saturated=True), cloud, executors())
    assert r.backend == "daytona" and "saturated" in r.reason


async def test_heavy_without_daytona_runs_locally_and_says_why(cfg: Settings, cloud: Settings) -> None:
    r = await route(RouteRequest(resources=Resources(cpu=8)), cfg, executors())
    assert r.backend == "local" and "not configured" in r.reason
    r = await route(RouteRequest(host_saturated=True), cloud, executors(daytona="Daytona API unreachable"))
    assert r.backend == "local" and "unreachable" in r.reason


@pytest.mark.parametrize("req", [RouteRequest(user_trusted=False, run_backend="local"),
                                 RouteRequest(user_trusted=False, step_backend="local"),
                                 RouteRequest(user_trusted=False, agent_backend="local")])
async def test_untrusted_user_never_runs_on_the_host(cfg: Settings, req: RouteRequest) -> None:
    from agent_manager.errors import Forbidden
    with pytest.raises(Forbidden, match="untrusted"):
        await route(req, cfg, executors())


async def test_untrusted_user_and_local_mode(cfg: Settings) -> None:
    from agent_manager.errors import Forbidden
    cfg.execution_mode = "local"
    with pytest.raises(Forbidden, match="execution mode is local"):
        await route(RouteRequest(user_trusted=False), cfg, executors())
