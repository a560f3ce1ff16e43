"""How far a disk-speed writer gets past ``sandbox_disk_mb`` before it is stopped; prints JSON.

A sandboxed run writes 1 MiB files into its workspace as fast as it can (page cache, no
fsync), up to 1 GiB; the disk guard stops it. Reported per limit: the workspace's allocated
MiB afterwards (so the overshoot is ``written_mib - limit_mib``), the exit code and the reason
recorded on the run. See docs/backends-sandbox.md ("Bounded workspace writes").

Usage: ``.venv/bin/python bench/sandbox_disk.py [--limits 64 256]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agent_manager.executors.base import ExecSpec
from agent_manager.executors.disk_guard import usage_bytes
from agent_manager.executors.sandbox import SandboxExecutor
from agent_manager.settings import Settings

WRITER = "import os\nb = os.urandom(1 << 20)\nfor i in range(1024):\n    open(f'/workspace/f{i}', 'wb').write(b)\n"


async def one(limit_mib: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # on disk, like a real data directory
    executor = SandboxExecutor(Settings(home=base / "home", sandbox_disk_mb=limit_mib), "bench-disk")
    try:
        execution = await executor.start(ExecSpec(argv=["python3", "-c", WRITER], workspace=base / "ws",
                                                  network=False))
        async for _ in execution.output():
            pass
        code = await execution.wait()
        return {"limit_mib": limit_mib, "written_mib": usage_bytes(base / "ws") >> 20, "exit_code": code,
                "reason": execution.info.get("disk_exceeded", "")}
    finally:
        await executor.close()
        shutil.rmtree(base, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limits", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    print(json.dumps([await one(limit) for limit in args.limits], indent=2))


if __name__ == "__main__":
    asyncio.run(main())
