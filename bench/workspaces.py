"""Workspaces benchmark; prints JSON.

On a generated repository (default 10,000 files / 50 MB, one commit):

* **creation**: what a run on a project pays before its agent starts (resolve the base in the
  user's repository, record the workspace, ``git worktree add`` of its branch, all through
  ``agent_manager.workspaces``) against a plain ``git worktree add`` of the same commit in the
  same repository. Goal: p50 ≤ 1.2 × plain.
* **diff**: ``GET /api/runs/{id}/diff``'s work (per-file stats + the patch) after a run changed
  100 files. Goal: ≤ 200 ms.
* **daytona**: a run on the Daytona backend (the emulator of tests/fakes, real SDK) that changes
  100 files; bytes moved through the toolbox (upload + download) against the size of a
  ``git bundle`` of the base. Goal: ≤ 2 × the bundle.

Usage: ``.venv/bin/python bench/workspaces.py [--files 10000] [--mb 50] [--reps 7]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.store import agents as agent_store
from agent_manager.workspaces import Workspaces
from agent_manager.workspaces import git as wgit
from agent_manager.workspaces import records as rec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.daytona_emulator import DaytonaEmulator  # noqa: E402

GOALS = {"creation_ratio_p50": 1.2, "diff_100_files_ms": 200.0, "daytona_bytes_over_bundle": 2.0}
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "B", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "B",
           "GIT_COMMITTER_EMAIL": "b@x", "GIT_CONFIG_NOSYSTEM": "1"}
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega def class return import value index item count total").split()
EDIT = "for f in $(git ls-files src | head -100); do echo changed >> \"$f\"; done"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, files: int, total_mb: float) -> None:
    """``files`` text files of random words (source-like, so it compresses like code does)."""
    rng = random.Random(12)
    size = int(total_mb * 1_000_000 / files)
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(files):
        d = path / "src" / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(WORDS) + (str(rng.randrange(10_000)) if rng.random() < .3 else "")
            words.append(word)
            length += len(word) + 1
        (d / f"f{i}.txt").write_text(" ".join(words)[:size] + "\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "generated")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


async def creation(svc: Service, reps: int) -> dict[str, Any]:
    workspaces: Workspaces = svc.workspaces
    project = rec.project(svc.database, "bench")
    repo = Path(project["repo"])
    commit = await wgit.rev("main", git_dir=repo)
    assert commit
    ours, plain = [], []
    for i in range(reps):
        target = svc.settings.home / "plain" / str(i)
        started = time.perf_counter()
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(target), commit], cwd=repo, check=True,
                       env=GIT_ENV)
        plain.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        base = await workspaces.check_base("bench", None)
        ws = workspaces.record(base, "run", f"bench{i}", None)
        await workspaces.prepare(ws["id"], f"bench{i}", "local", _spec())
        ours.append((time.perf_counter() - started) * 1000)
        await workspaces.settle(ws["id"], "nothing", "local", run_id=f"bench{i}")
        await workspaces.discard(ws["id"])
        subprocess.run(["git", "worktree", "remove", "--force", str(target)], cwd=repo, check=True, env=GIT_ENV)
    return {"workspace_p50_ms": round(pct(ours, 50), 1), "plain_worktree_add_p50_ms": round(pct(plain, 50), 1),
            "ratio_p50": round(pct(ours, 50) / pct(plain, 50), 3), "reps": reps}


def _spec() -> Any:
    from agent_manager.executors.base import ExecSpec

    return ExecSpec(argv=["true"])


async def run_and_wait(svc: Service, agent: str, prompt: str) -> dict[str, Any]:
    from agent_manager.run_request import RunRequest

    workspaces: Workspaces = svc.workspaces
    base = await workspaces.check_base("bench", None)
    run = svc.runs.submit(RunRequest(agent=agent_store.get(svc.database, agent), prompt=prompt, new_workspace=base))
    final = await svc.runs.wait(run["id"])
    assert final["status"] == "succeeded", final
    ws = rec.linked(svc.database, "runs", run["id"])
    assert ws is not None
    return ws


async def diff_time(svc: Service, reps: int) -> dict[str, Any]:
    ws = await run_and_wait(svc, "sh", "Change 100 files\n" + EDIT)
    workspaces: Workspaces = svc.workspaces
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        diff = await workspaces.diff(ws["id"])
        times.append((time.perf_counter() - started) * 1000)
    assert len(diff["files"]) == 100, len(diff["files"])
    return {"files": len(diff["files"]), "patch_bytes": len(diff["patch"]), "p50_ms": round(pct(times, 50), 1),
            "max_ms": round(max(times), 1)}


async def daytona(home: Path, user_repo: Path) -> dict[str, Any]:
    (home / "emu").mkdir(parents=True)
    emulator = DaytonaEmulator(home / "emu")
    await emulator.start()
    settings = Settings(home=home / "dhome", daytona_api_key=emulator.api_key, daytona_api_url=emulator.api_url,
                        daytona_target="us")
    svc = Service(settings)
    await svc.start()
    try:
        agent_store.create(svc.database, {"name": "sh", "kind": "generic", "command": "sh",
                                          "args": ["-c", "{prompt}"], "backend": "daytona"})
        await svc.workspaces.register({"admin": True}, "bench", path=str(user_repo), git_url=None,
                                                base=None)
        before_up, before_down = emulator.bytes_uploaded, emulator.bytes_downloaded
        started = time.perf_counter()
        ws = await run_and_wait(svc, "sh", "Change 100 files\n" + EDIT)
        took = time.perf_counter() - started
        moved = emulator.bytes_uploaded - before_up + emulator.bytes_downloaded - before_down
        bundle = home / "base.bundle"
        git(user_repo, "bundle", "create", str(bundle), "main")
        size = bundle.stat().st_size
        return {"files_changed": ws["files_changed"], "bytes_uploaded": emulator.bytes_uploaded - before_up,
                "bytes_downloaded": emulator.bytes_downloaded - before_down, "bytes_moved": moved,
                "bundle_bytes": size, "ratio": round(moved / size, 3), "run_s": round(took, 2)}
    finally:
        await svc.stop()
        await emulator.stop()


async def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="am-bench-ws-"))
    try:
        user_repo = tmp / "repo"
        started = time.perf_counter()
        make_repo(user_repo, args.files, args.mb)
        generated_s = time.perf_counter() - started
        svc = Service(Settings(home=tmp / "home"))
        await svc.start()
        try:
            agent_store.create(svc.database, {"name": "sh", "kind": "generic", "command": "sh",
                                              "args": ["-c", "{prompt}"], "backend": "local"})
            await svc.workspaces.register({"admin": True}, "bench", path=str(user_repo), git_url=None,
                                                    base=None)
            created = await creation(svc, args.reps)
            diffed = await diff_time(svc, args.reps)
        finally:
            await svc.stop()
        remote = await daytona(tmp, user_repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    passes = {"creation_ratio_p50": created["ratio_p50"] <= GOALS["creation_ratio_p50"],
              "diff_100_files_ms": diffed["p50_ms"] <= GOALS["diff_100_files_ms"],
              "daytona_bytes_over_bundle": remote["ratio"] <= GOALS["daytona_bytes_over_bundle"]}
    return {"params": {"files": args.files, "mb": args.mb, "reps": args.reps}, "nproc": os.cpu_count(),
            "git": git(Path("/"), "--version"), "repo_generated_s": round(generated_s, 1), "goals": GOALS,
            "pass": passes, "all_pass": all(passes.values()), "creation": created, "diff": diffed,
            "daytona": remote}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
