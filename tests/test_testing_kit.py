"""The testing kit, used as a user would (the plugin's fixtures, `pool.testing`): the real
main loop and worker run until idle, the clock jumps over backoffs, delays and workflow sleeps,
and what is enqueued can be asserted before anything runs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis
from helpers.scripts import leased

from workpool import (
    Result,
    Retry,
    State,
    WaitTimeout,
    WorkflowContext,
    Workpool,
    WorkpoolError,
    current,
)
from workpool.wire.replies import parse_start

UsePool = Callable[[Workpool], Workpool]


def _shop() -> tuple[Workpool, list[str]]:
    """A pool of the kind a user writes: a job that fails its first attempt, one that sends,
    an on_complete handler that records, and a workflow that sleeps a day between steps."""
    pool = Workpool("shop", retry=Retry(max_attempts=3, initial_backoff=600))
    handled: list[str] = []

    @pool.job()
    def charge(order: int) -> str:
        if current().attempt == 1:
            msg = "the bank is down"
            raise ConnectionError(msg)
        return f"charged {order}"

    @pool.job()
    def send(order: int, channel: str = "mail") -> str:
        return f"sent {order} by {channel}"

    @pool.on_complete()
    def record(job_id: str, result: Result, context: object) -> None:
        handled.append(f"{job_id}:{result.kind}")

    @pool.workflow()
    async def follow_up(ctx: WorkflowContext, order: int) -> str:
        await ctx.step(send, order)
        await ctx.sleep(24 * 3600)
        return str(await ctx.step(send, order, kwargs={"channel": "sms"}))

    return pool, handled


def test_run_until_idle_runs_the_real_engine_and_advance_jumps_the_clock(
        workpool_pool: UsePool) -> None:
    pool, handled = _shop()
    workpool_pool(pool)
    charge = pool.enqueue("charge", 7, on_complete="record")
    later = pool.enqueue("send", 8, run_after=3600)
    assert pool.testing.run_until_idle() == []  # charge failed once: its retry waits 10 min
    assert pool.status(charge).state == State.RETRYING
    pool.testing.advance(15 * 60)  # past the backoff (600 s, jitter up to 1.5x)
    (done,) = pool.testing.run_until_idle()
    assert (done.id, done.state, done.result, done.attempts) == (charge, State.DONE,
                                                                 "charged 7", 2)
    assert handled == [f"{charge}:succeeded"]
    assert pool.status(later).state == State.PENDING  # due in an hour of the pool's time
    pool.testing.advance(3600)
    assert [j.id for j in pool.testing.run_until_idle()] == [later]


def test_a_workflow_sleeps_through_advance(workpool_pool: UsePool) -> None:
    pool, _ = _shop()
    workpool_pool(pool)
    flow = pool.start_workflow("follow_up", 9)
    ended = pool.testing.run_until_idle()
    assert [j.id for j in ended] == [f"{flow}:1"]  # the first step; then it sleeps a day
    pool.testing.advance(24 * 3600)
    ended = pool.testing.run_until_idle()
    assert [j.id for j in ended] == [f"{flow}:3", flow]
    assert pool.wait(flow, timeout=5).result == "sent 9 by sms"


def test_assert_enqueued_reads_what_was_sent_before_anything_runs(
        workpool_pool: UsePool) -> None:
    pool, _ = _shop()
    workpool_pool(pool)
    job = pool.enqueue("send", 1, kwargs={"channel": "sms"})
    found = pool.testing.assert_enqueued("send", args=[1], kwargs={"channel": "sms"})
    assert (found.id, found.args, found.kwargs) == (job, [1], {"channel": "sms"})
    with pytest.raises(AssertionError, match=r"no job send\(2,\) enqueued .* send\(1,\)"):
        pool.testing.assert_enqueued("send", args=[2])
    pool.testing.refute_enqueued("charge")
    with pytest.raises(AssertionError, match="1 job"):
        pool.testing.refute_enqueued("send")
    pool.testing.run_until_idle()
    pool.testing.refute_enqueued("send")
    assert pool.testing.enqueued() == []


def test_run_until_idle_names_what_is_still_going_on_when_it_times_out(
        workpool_pool: UsePool) -> None:
    pool = workpool_pool(Workpool("slow"))
    release = threading.Event()
    pool.job(name="stuck")(lambda: release.wait(30))
    pool.enqueue("stuck")
    try:
        with pytest.raises(WaitTimeout, match="1 attempts running"):
            pool.testing.run_until_idle(timeout=0.5)
    finally:
        release.set()


def test_a_pool_without_the_kit_says_how_to_get_it() -> None:
    with pytest.raises(WorkpoolError, match="workpool_pool fixture"):
        _ = Workpool("bare").testing
    with pytest.raises(ValueError, match="seconds must be"):
        from workpool.testing import Kit  # noqa: PLC0415

        Kit(Workpool("bare")).advance(-1)


def test_a_scripts_clock_is_redis_time_moved_on_by_plus_ms_and_nothing_else(
        redis_url: str, redis_client: redis.Redis) -> None:
    with leased(Workpool("clock", redis_url), redis_client) as p:
        before = p.clock()
        shifted = parse_start(p.call(p.engine.start(p.token, "+5000"))).now_ms
        assert before + 5000 <= shifted <= p.clock() + 5000
        for bad in ("+x", "+-1", "+1.5"):
            with pytest.raises(redis.ResponseError, match=r"must be ms, empty or \+ms"):
                p.call(p.engine.start(p.token, bad))


def test_the_kit_sees_every_shard_of_a_sharded_pool(workpool_pool: UsePool) -> None:
    pool = workpool_pool(Workpool("shardshop", shards=3))
    pool.job(name="send")(lambda order: f"sent {order}")
    jobs = [pool.enqueue("send", i) for i in range(9)]
    assert len({j.rsplit("@", 1)[1] for j in jobs}) > 1  # in more than one shard
    assert sorted(e.id for e in pool.testing.enqueued("send")) == sorted(jobs)
    pool.testing.assert_enqueued("send", args=[8])
    ended = pool.testing.run_until_idle()
    assert sorted(j.id for j in ended) == sorted(jobs)
    assert pool.testing.enqueued() == []
