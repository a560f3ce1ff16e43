"""Pacer: a burst of heavy steps is spread over turns of the event loop, in arrival order."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from agent_manager.pacing import Pacer


class Turns:
    """Counts turns of the running loop (a callback that re-schedules itself once per turn)."""

    def __init__(self) -> None:
        self.now = 0
        self._stopped = False
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if not self._stopped:
            self.now += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True


async def test_a_burst_is_spread_over_turns_in_arrival_order() -> None:
    pacer = Pacer(3)
    turns = Turns()
    order: list[int] = []
    when: Counter[int] = Counter()

    async def step(i: int) -> None:
        await pacer.turn()
        order.append(i)
        when[turns.now] += 1

    await asyncio.gather(*(step(i) for i in range(20)))
    turns.stop()
    assert order == list(range(20))
    assert max(when.values()) <= 6  # never the whole burst in one turn (without a pacer: 20)
    assert len(when) >= 4


async def test_an_idle_pacer_lets_a_caller_go_at_once() -> None:
    pacer = Pacer(2)
    turns = Turns()
    await asyncio.sleep(0)
    before = turns.now
    await pacer.turn()
    assert turns.now == before  # no turn lost: a DAG's next step starts without waiting
    turns.stop()


async def test_a_cancelled_waiter_does_not_hold_up_the_others() -> None:
    pacer = Pacer(1)
    done: list[int] = []

    async def step(i: int) -> None:
        await pacer.turn()
        done.append(i)

    tasks = [asyncio.create_task(step(i)) for i in range(6)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    tasks[3].cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert done == [0, 1, 4, 5]


def test_per_turn_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Pacer(0)
