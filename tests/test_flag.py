"""Flag: the per-run one-shot signal (flag.py)."""

from __future__ import annotations

import asyncio

from agent_manager.flag import Flag


async def test_a_set_flag_lets_every_waiter_through_at_once() -> None:
    flag = Flag()
    flag.set()
    await asyncio.wait_for(flag.wait(), 1)
    assert flag.is_set()


async def test_waiters_wake_when_it_is_set_and_a_cancelled_one_does_not_cancel_the_others() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters[1:])
    assert not flag.is_set()
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters[1:]), 1)
    assert waiters[0].cancelled()
    await asyncio.wait_for(flag.wait(), 1)  # a late waiter too
