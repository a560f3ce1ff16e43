"""How many runs may use this host at once."""

from __future__ import annotations

import asyncio

from agent_manager.settings import Settings


class HostSlots:
    """How many host runs may execute at once, following ``settings.max_concurrent_runs`` live:
    raising the setting starts queued runs at once (``resize``), lowering it lets running ones
    finish. Waiting is cancellable, so a queued run's cancel answers at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.used = 0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used < self.settings.max_concurrent_runs)
            self.used += 1

    async def __aexit__(self, *_exc: object) -> None:
        async with self._cond:
            self.used -= 1
            self._cond.notify_all()

    async def resize(self) -> None:
        async with self._cond:
            self._cond.notify_all()
