"""pool.watch over a long journal: after catching up, each read costs what can still change;
and the drivers let a burst of notifications wake one read, not one each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import Pools, running_worker

from workpool import WorkflowContext, Workpool
from workpool.client import drive
from workpool.client.drive import stream
from workpool.client.ops import Step
from workpool.client.watching import watch

WAIT = 30.0
WIDE = 150  # journal entries before the wait: more than one read takes along


@pytest.fixture
def pool(pools: Pools) -> Iterator[Workpool]:
    p = pools("watch", max_parallelism=64)

    @p.job(name="double")
    def double(x: int) -> int:
        return 2 * x

    @p.workflow(name="wide", max_steps=WIDE + 10)
    async def wide(ctx: WorkflowContext) -> int:
        done = await asyncio.gather(*(ctx.step("double", i) for i in range(WIDE)))
        go = await ctx.wait_for_event("go")
        return int(await ctx.step("double", sum(done) + go))

    yield p


def _recorded(op: Generator[Step, list[Any], None],
              log: list[list[Any]]) -> Generator[Step, list[Any], None]:
    """`op` as it is, each step's commands noted in `log` as they go out."""
    step = next(op)
    while True:
        log.append(list(step.commands))
        try:
            step = op.send((yield step))
        except StopIteration:
            return


def _watched(pool: Workpool, wf: str, log: list[list[Any]],
             at_wait: Any) -> list[tuple[str, int, str]]:
    """Every change of `wf` as watched with the blocking driver; `at_wait()` is called once
    the wait for the event is reported."""
    seen = []
    for change in stream(pool.redis, pool.url, _recorded(watch(pool.keys, wf, WAIT), log)):
        seen.append((change.kind, change.number, change.state))
        if change.kind == "asked" and change.name == "go":
            at_wait()
    return seen


def test_after_catching_up_a_watch_reads_what_can_still_change_not_the_journal(
        pool: Workpool) -> None:
    log: list[list[Any]] = []
    with running_worker(pool):
        wf = pool.start_workflow("wide")
        changes = _watched(pool, wf, log, lambda: pool.send_event(wf, "go", 1))
    assert changes[-1] == ("state", 0, "done")
    assert sum(1 for kind, _, state in changes if kind == "ended") == WIDE + 2
    reads = [c for commands in log for c in commands]
    names = [c[0] for c in reads]  # whole reads until the workflow is there, then none
    assert "HMGET" in names and "HGETALL" not in names[names.index("HMGET"):]
    fields = [len(c) - 2 for c in reads if c[0] == "HMGET"]
    assert fields and fields[-1] < WIDE  # the last read: the state and the entries after


def test_the_asyncio_watch_reports_the_same_changes_live(pool: Workpool) -> None:
    async def live(wf: str) -> list[tuple[str, int, str]]:
        seen = []
        try:
            async for change in pool.aio.watch(wf, timeout=WAIT):
                seen.append((change.kind, change.number, change.state))
                if change.kind == "asked" and change.name == "go":
                    await pool.aio.send_event(wf, "go", 1)
        finally:
            await pool.aio.aclose()
        return seen

    with running_worker(pool):
        wf = pool.start_workflow("wide")
        changes = asyncio.run(live(wf))
    again = [(c.kind, c.number, c.state) for c in pool.watch(wf, timeout=WAIT)]
    assert changes == again and changes[-1] == ("state", 0, "done")
    assert len(changes) == 2 + 2 * (WIDE + 2)  # the state twice, each entry asked and ended


def _burst(client: redis.Redis, channel: str) -> None:
    for _ in range(200):
        client.publish(channel, "changed")


def test_a_burst_queued_behind_the_notification_that_woke_a_wait_is_dropped_at_once(
        redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("burst")
    _burst(redis_client, "burst")
    deadline = time.monotonic() + WAIT
    while pubsub.get_message(timeout=1.0) is None:  # the subscription's reply, then the first
        assert time.monotonic() < deadline
    drive._drain(pubsub)
    assert pubsub.get_message(timeout=0.1) is None  # one read follows, not one a message
    pubsub.close()


def test_the_asyncio_driver_drops_such_a_burst_too(redis_url: str) -> None:
    async def run() -> Any:
        client = redis.asyncio.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe("burst")
        sync = redis.Redis.from_url(redis_url)
        _burst(sync, "burst")
        sync.close()
        deadline = time.monotonic() + WAIT
        while await pubsub.get_message(timeout=1.0) is None:
            assert time.monotonic() < deadline
        await drive._adrain(pubsub)
        left = await pubsub.get_message(timeout=0.1)
        await pubsub.aclose()
        await client.aclose()
        return left

    assert asyncio.run(run()) is None
