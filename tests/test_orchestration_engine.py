"""The DAG engine with the real RunManager, local executor and real processes (generic agents)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent_manager.orchestration import plan as plans
from agent_manager.orchestration.engine import OrchestrationEngine
from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.store import agents as agent_store
from agent_manager.store import orchestrations as orch_store
from agent_manager.store import runs as run_store

# A generic agent: the prompt is argv[1]. Keywords: SLEEP=<s>; SLEEPONCE=<file>:<s> (sleeps only
# while <file> does not exist, then creates it); FLAKY=<file> (fails on the first call, counted in
# <file>); TREE=<marker> (leaves a child process with <marker> in its argv); FAIL.
WORKER = r"""
import os, re, subprocess, sys, time
p = sys.argv[1]
m = re.search(r"TREE=(\S+)", p)
if m:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", m.group(1)])
m = re.search(r"SLEEPONCE=(\S+):([0-9.]+)", p)
if m and not os.path.exists(m.group(1)):
    open(m.group(1), "w").close()
    time.sleep(float(m.group(2)))
m = re.search(r"SLEEP=([0-9.]+)", p)
if m:
    time.sleep(float(m.group(1)))
m = re.search(r"FLAKY=(\S+)", p)
if m:
    n = int(open(m.group(1)).read()) if os.path.exists(m.group(1)) else 0
    open(m.group(1), "w").write(str(n + 1))
    if n == 0:
        sys.exit("first attempt fails")
if "FAIL" in p:
    sys.exit("asked to fail")
print("done[" + p.splitlines()[0] + "]")
"""


def add_worker(svc: Service, name: str = "worker") -> dict[str, Any]:
    return agent_store.create(svc.database, {"name": name, "kind": "generic", "command": "python3",
                                             "args": ["-c", WORKER, "{prompt}"]})


def engine_of(svc: Service) -> OrchestrationEngine:
    engine: OrchestrationEngine = svc.orchestrations
    return engine


def start(svc: Service, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    plan = plans.load({"name": "test", "steps": steps, **extra}, agent_store.list_all(svc.database))
    return engine_of(svc).create(plan)


def step_of(view: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in view["steps"] if s["id"] == step_id)


def run_of(svc: Service, view: dict[str, Any], step_id: str) -> dict[str, Any]:
    run_id = step_of(view, step_id)["run_id"]
    assert run_id, f"step {step_id} has no run"
    return run_store.get(svc.database, run_id)


def event_types(svc: Service, orch_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e["type"], e["data"]) for e in engine_of(svc).events.read(orch_id, 0, 10_000)]


def marker_pids(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


async def until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def test_diamond_runs_both_branches_in_parallel(service: Service) -> None:
    add_worker(service)
    view = start(service, [
        {"id": "top", "agent": "worker", "prompt": "top"},
        {"id": "left", "agent": "worker", "prompt": "left SLEEP=1 {{ steps.top.output }}", "depends_on": ["top"]},
        {"id": "right", "agent": "worker", "prompt": "right SLEEP=1", "depends_on": ["top"]},
        {"id": "join", "agent": "worker", "depends_on": ["left", "right"],
         "prompt": "join L={{ steps.left.output }} R={{ steps.right.output }}"}])
    final = await engine_of(service).wait(view["id"])
    assert final["status"] == "succeeded", final
    assert final["counts"]["succeeded"] == 4
    left, right, top, join = (run_of(service, final, s) for s in ("left", "right", "top", "join"))
    assert left["started_at"] < right["finished_at"] and right["started_at"] < left["finished_at"]  # overlap
    assert top["finished_at"] <= min(left["started_at"], right["started_at"])
    assert join["started_at"] >= max(left["finished_at"], right["finished_at"])
    assert join["prompt"] == "join L=done[left SLEEP=1 done[top]] R=done[right SLEEP=1]"
    types = [t for t, _ in event_types(service, view["id"])]
    assert types[0] == "orchestration.started" and types[-1] == "orchestration.finished"
    assert types.count("step.queued") == types.count("step.started") == types.count("step.finished") == 4
    started = [d for t, d in event_types(service, view["id"]) if t == "step.started"]
    assert all(d["backend"] == "local" and d["run_id"].startswith("run_") for d in started)
    for step in final["steps"]:
        assert step["started_at"].endswith("Z") and step["finished_at"] >= step["started_at"]


async def test_max_parallel_is_honoured(service: Service) -> None:
    add_worker(service)
    steps = [{"id": f"s{i}", "agent": "worker", "prompt": f"s{i} SLEEP=0.4"} for i in range(7)]
    view = start(service, steps, max_parallel=2)
    assert view["max_parallel"] == 2
    samples: list[int] = []
    engine = engine_of(service)
    while view["id"] in engine.live:
        rows = orch_store.steps(service.database, view["id"])
        samples.append(sum(r["status"] == "running" for r in rows))
        await asyncio.sleep(0.02)
    final = orch_store.view(service.database, view["id"])
    assert final["status"] == "succeeded"
    assert max(samples) == 2
    runs = [run_of(service, final, s["id"]) for s in steps]
    for run in runs:  # at any run's start, at most 2 runs (itself included) were running
        overlapping = [r for r in runs if r["started_at"] <= run["started_at"] < r["finished_at"]]
        assert len(overlapping) <= 2


async def test_failure_skips_descendants_only(service: Service) -> None:
    add_worker(service)
    view = start(service, [
        {"id": "root", "agent": "worker", "prompt": "root"},
        {"id": "bad", "agent": "worker", "prompt": "FAIL", "depends_on": ["root"]},
        {"id": "after-bad", "agent": "worker", "prompt": "x", "depends_on": ["bad"]},
        {"id": "after-after", "action": "write_file", "path": "x.txt", "content": "x", "depends_on": ["after-bad"]},
        {"id": "good", "agent": "worker", "prompt": "good SLEEP=0.5", "depends_on": ["root"]},
        {"id": "after-good", "action": "write_file", "path": "g/out.txt", "depends_on": ["good"],
         "content": "{{ steps.good.output }}"}])
    final = await engine_of(service).wait(view["id"])
    status = {s["id"]: s["status"] for s in final["steps"]}
    assert status == {"root": "succeeded", "bad": "failed", "after-bad": "skipped", "after-after": "skipped",
                      "good": "succeeded", "after-good": "succeeded"}
    assert final["status"] == "failed"
    assert final["counts"] | {} == {**final["counts"], "succeeded": 3, "failed": 1, "skipped": 2}
    assert "asked to fail" in step_of(final, "bad")["error"]
    assert step_of(final, "after-bad")["run_id"] is None and "upstream step 'bad' failed" in \
        step_of(final, "after-bad")["error"]
    assert (Path(final["workspace_dir"]) / "g" / "out.txt").read_text() == "done[good SLEEP=0.5]"
    assert step_of(final, "after-good")["output"] == "g/out.txt"


async def test_retry_then_success_and_retries_exhausted(service: Service) -> None:
    add_worker(service)
    view = start(service, [
        {"id": "flaky", "agent": "worker", "prompt": "FLAKY=counter", "retries": 2, "retry_delay_s": 0.05},
        {"id": "flaky-no-retry", "agent": "worker", "prompt": "FLAKY=other"}])
    final = await engine_of(service).wait(view["id"])
    flaky, once = step_of(final, "flaky"), step_of(final, "flaky-no-retry")
    assert flaky["status"] == "succeeded" and flaky["attempts"] == 2
    assert (Path(final["workspace_dir"]) / "counter").read_text() == "2"  # counter lives in the workspace
    assert once["status"] == "failed" and once["attempts"] == 1
    retrying = [d for t, d in event_types(service, view["id"]) if t == "step.retrying"]
    assert [(d["step"], d["attempt"]) for d in retrying] == [("flaky", 1)]


async def test_timeout_fails_the_step(service: Service) -> None:
    add_worker(service)
    view = start(service, [{"id": "slow", "agent": "worker", "prompt": "SLEEP=60", "timeout_s": 0.5},
                           {"id": "next", "agent": "worker", "prompt": "n", "depends_on": ["slow"]}])
    final = await engine_of(service).wait(view["id"])
    assert step_of(final, "slow")["status"] == "failed" and "timed out" in step_of(final, "slow")["error"]
    assert run_of(service, final, "slow")["status"] == "timed_out"
    assert step_of(final, "next")["status"] == "skipped"


async def test_shell_step_is_a_run_with_argv_not_a_shell_string(service: Service) -> None:
    view = start(service, [
        {"id": "hello", "action": "shell", "argv": ["printf", "%s|", "a b", "$HOME", ";", "rm -rf /"]},
        {"id": "use", "action": "shell", "argv": ["python3", "-c", "import sys; print(sys.argv[1].upper())",
                                                  "{{ steps.hello.output }}"], "depends_on": ["hello"]}])
    final = await engine_of(service).wait(view["id"])
    assert final["status"] == "succeeded", final
    assert step_of(final, "hello")["output"] == "a b|$HOME|;|rm -rf /|"
    assert step_of(final, "use")["output"] == "A B|$HOME|;|RM -RF /|"
    run = run_of(service, final, "use")
    assert run["agent_name"] == "shell" and run["backend"] == "local"


async def test_cancel_ends_process_trees_and_starts_nothing_new(service: Service) -> None:
    add_worker(service)
    marker = f"orch-cancel-{uuid.uuid4().hex[:8]}"
    view = start(service, [
        {"id": "a", "agent": "worker", "prompt": f"TREE={marker} SLEEP=60"},
        {"id": "b", "agent": "worker", "prompt": f"TREE={marker} SLEEP=60"},
        {"id": "c", "agent": "worker", "prompt": "c", "depends_on": ["a"]}])
    await until(lambda: len(marker_pids(marker)) >= 2)
    final = await engine_of(service).cancel(view["id"])
    assert final["status"] == "cancelled"
    assert {s["id"]: s["status"] for s in final["steps"]} == dict.fromkeys("abc", "cancelled")
    assert run_of(service, final, "a")["status"] == "cancelled"
    assert step_of(final, "c")["run_id"] is None
    await until(lambda: not marker_pids(marker), timeout=10)
    again = await engine_of(service).cancel(view["id"])  # idempotent
    assert again["status"] == "cancelled"


async def test_resume_after_cancel_reruns_only_what_did_not_succeed(service: Service, tmp_path: Path) -> None:
    add_worker(service)
    once = tmp_path / "once"
    view = start(service, [
        {"id": "a", "agent": "worker", "prompt": "a"},
        {"id": "b", "agent": "worker", "prompt": f"SLEEPONCE={once}:60", "depends_on": ["a"]},
        {"id": "c", "agent": "worker", "prompt": "c got {{ steps.a.output }}", "depends_on": ["b"]},
        {"id": "d", "agent": "worker", "prompt": "d", "depends_on": ["a"]}])
    engine = engine_of(service)
    await until(lambda: once.exists() and orch_store.view(service.database, view["id"])["counts"]["succeeded"] == 2)
    cancelled = await engine.cancel(view["id"])
    first = {s["id"]: s for s in cancelled["steps"]}
    assert {k: v["status"] for k, v in first.items()} == {"a": "succeeded", "b": "cancelled", "c": "cancelled",
                                                          "d": "succeeded"}
    resumed = engine.resume(view["id"])
    assert resumed["status"] == "running"
    final = await engine.wait(view["id"])
    assert final["status"] == "succeeded", final
    after = {s["id"]: s for s in final["steps"]}
    assert after["a"]["run_id"] == first["a"]["run_id"] and after["d"]["run_id"] == first["d"]["run_id"]
    assert after["b"]["run_id"] != first["b"]["run_id"]
    assert run_of(service, final, "c")["prompt"] == "c got done[a]"  # the stored output was reused
    types = [t for t, _ in event_types(service, view["id"])]
    assert types.count("orchestration.finished") == 2 and "orchestration.resumed" in types
    with pytest.raises(Exception, match="nothing to resume"):
        engine.resume(view["id"])


async def test_resume_after_the_service_stopped_mid_run(settings: Settings, tmp_path: Path) -> None:
    once = tmp_path / "once"
    svc = Service(settings)
    await svc.start()
    add_worker(svc)
    view = start(svc, [
        {"id": "a", "agent": "worker", "prompt": "a"},
        {"id": "b", "agent": "worker", "prompt": f"SLEEPONCE={once}:60", "depends_on": ["a"]},
        {"id": "c", "action": "write_file", "path": "c.txt", "content": "{{ steps.a.output }}",
         "depends_on": ["b"]}])
    await until(lambda: once.exists())
    first_a = step_of(orch_store.view(svc.database, view["id"]), "a")["run_id"]
    await svc.stop()

    svc2 = Service(settings)
    await svc2.start()
    try:
        stopped = orch_store.view(svc2.database, view["id"])
        assert stopped["status"] == "interrupted"
        assert {s["id"]: s["status"] for s in stopped["steps"]} == {"a": "succeeded", "b": "cancelled",
                                                                    "c": "pending"}
        engine_of(svc2).resume(view["id"])
        final = await engine_of(svc2).wait(view["id"])
        assert final["status"] == "succeeded"
        assert step_of(final, "a")["run_id"] == first_a
        assert (Path(final["workspace_dir"]) / "c.txt").read_text() == "done[a]"
    finally:
        await svc2.stop()


async def test_recover_marks_orchestrations_left_running_as_interrupted(settings: Settings) -> None:
    """What a crash leaves (status running in the database) becomes interrupted at the next start."""
    svc = Service(settings)
    await svc.start()
    plan = plans.load({"steps": [{"id": "a", "action": "write_file", "path": "a", "content": ""},
                                 {"id": "b", "action": "write_file", "path": "b", "content": "",
                                  "depends_on": ["a"]}]})
    orch_store.create(svc.database, {"id": "orch_crashed", "name": "x", "status": "running",
                                     "plan": plan.model_dump(mode="json", exclude_none=True), "max_parallel": 2,
                                     "workspace": str(settings.workspaces / "orchestrations" / "orch_crashed")},
                      ["a", "b"])
    orch_store.update_step(svc.database, "orch_crashed", "a", status="running")
    await svc.stop()
    svc2 = Service(settings)
    await svc2.start()
    try:
        view = orch_store.view(svc2.database, "orch_crashed")
        assert view["status"] == "interrupted" and step_of(view, "a")["status"] == "cancelled"
        engine_of(svc2).resume("orch_crashed")
        assert (await engine_of(svc2).wait("orch_crashed"))["status"] == "succeeded"
    finally:
        await svc2.stop()


async def test_write_file_cannot_escape_through_a_symlink(service: Service) -> None:
    plan = plans.load({"steps": [{"id": "link", "action": "shell", "argv": ["ln", "-s", "/tmp", "escape"]},
                                 {"id": "w", "action": "write_file", "path": "escape/owned.txt", "content": "x",
                                  "depends_on": ["link"]}]})
    final = await engine_of(service).wait(engine_of(service).create(plan)["id"])
    assert step_of(final, "link")["status"] == "succeeded"
    assert step_of(final, "w")["status"] == "failed" and "escapes the workspace" in step_of(final, "w")["error"]
    assert not Path("/tmp/owned.txt").exists()


async def test_a_deleted_agent_fails_its_step_with_a_message(service: Service) -> None:
    add_worker(service, "temp")
    plan = plans.load({"steps": [{"id": "a", "agent": "temp", "prompt": "x"}]}, agent_store.list_all(service.database))
    agent_store.delete(service.database, "temp")
    final = await engine_of(service).wait(engine_of(service).create(plan)["id"])
    assert step_of(final, "a")["status"] == "failed" and "no longer exists" in step_of(final, "a")["error"]


async def test_retry_of_one_step_leaves_steps_below_another_failure_waiting(service: Service) -> None:
    """A retried step releases what depends on it alone; a step that also depends on another
    failed step never becomes ready (graphlib never hears that one is done) and ends skipped."""
    add_worker(service)
    view = start(service, [
        {"id": "flaky", "agent": "worker", "prompt": "FLAKY=counter"},
        {"id": "bad", "agent": "worker", "prompt": "FAIL"},
        {"id": "after-flaky", "agent": "worker", "prompt": "x", "depends_on": ["flaky"]},
        {"id": "after-both", "agent": "worker", "prompt": "y", "depends_on": ["flaky", "bad"]}])
    engine = engine_of(service)
    first = await engine.wait(view["id"])
    assert {s["id"]: s["status"] for s in first["steps"]} == {
        "flaky": "failed", "bad": "failed", "after-flaky": "skipped", "after-both": "skipped"}
    engine.resume(view["id"], only="flaky")
    final = await engine.wait(view["id"])
    assert {s["id"]: (s["status"], s["attempts"]) for s in final["steps"]} == {
        "flaky": ("succeeded", 2), "bad": ("failed", 1), "after-flaky": ("succeeded", 1),
        "after-both": ("skipped", 0)}
    assert step_of(final, "after-both")["run_id"] is None and final["status"] == "failed"
