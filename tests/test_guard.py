"""The guard a worker puts right before a job's first instruction: if the worker may have
stalled since it last made sure the attempt is still its own, the job does not begin (Stalled),
and no await lies between the guard and the job's first instruction."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from workpool.worker.threads import Stalled, guarded_await, guarded_call


def test_a_tripped_guard_stops_a_sync_job_before_its_first_instruction() -> None:
    ran: list[int] = []
    call = guarded_call(lambda: True, ran.append)
    with ThreadPoolExecutor(1) as pool, pytest.raises(Stalled):
        pool.submit(call, 1).result()
    assert ran == []
    assert guarded_call(lambda: False, lambda x: x * 2)(21) == 42


def test_a_tripped_guard_stops_an_async_job_and_an_open_one_begins_it_in_the_same_step(
        ) -> None:
    ran: list[str] = []
    guard_seen: list[bool] = []

    async def job(tag: str) -> str:
        ran.append(tag)  # the first instruction: must come with no await after the guard
        return tag

    async def main() -> None:
        with pytest.raises(Stalled):
            await guarded_await(lambda: True, job, ("stopped",), {})
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: guard_seen.append(bool(ran)))  # runs at the loop's next step
        assert await guarded_await(lambda: False, job, ("begun",), {}) == "begun"
        await asyncio.sleep(0)

    asyncio.run(main())
    assert ran == ["begun"]
    assert guard_seen == [True]  # the job began before any other callback could run
