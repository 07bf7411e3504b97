"""What a job knows of its own run (`workpool.current()`), and which attempt a cancel found:
the attempt number is the fencing token users key their outside effects by."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from helpers import Pools, eventually, hold_job, running_worker

import workpool
from workpool import Result, State


def test_a_job_and_its_on_complete_handler_know_the_run_they_belong_to(redis_url: str) -> None:
    pools = Pools(redis_url)
    pool = pools("current")
    seen: list[tuple[str, int, int, str]] = []

    @pool.job()
    async def on_loop() -> list[Any]:
        run = workpool.current()
        return [run.job_id, run.attempt, run.name, run.delivery]

    @pool.job()
    def in_thread() -> list[Any]:
        run = workpool.current()
        return [run.job_id, run.attempt, run.name, run.delivery]

    @pool.on_complete()
    def handler(job_id: str, result: Result, context: Any) -> None:
        run = workpool.current()
        seen.append((run.job_id, run.attempt, run.delivery, run.name))

    with running_worker(pool):
        a = pool.enqueue(on_loop, on_complete=handler)
        t = pool.enqueue(in_thread)
        assert pool.wait(a, 15).result == [a, 1, "on_loop", 0]
        assert pool.wait(t, 15).result == [t, 1, "in_thread", 0]
        eventually(lambda: seen, what="the handler ran")
    assert seen == [(a, 0, 1, "handler")]
    pools.close()


def test_a_run_knows_when_the_main_loop_handed_it_out_on_redis_s_clock(
        redis_url: str, redis_client: redis.Redis) -> None:
    pools = Pools(redis_url)
    pool = pools("dispatched")
    seen: list[float] = []

    @pool.job()
    async def stamp() -> float:
        return workpool.current().dispatched_at

    @pool.on_complete()
    def handler(job_id: str, result: Result, context: Any) -> None:
        seen.append(workpool.current().dispatched_at)

    def redis_now() -> float:
        seconds, micros = redis_client.time()
        return seconds + micros / 1e6

    with running_worker(pool):
        before = redis_now()
        job = pool.enqueue(stamp, on_complete=handler)
        dispatched = pool.wait(job, 15).result
        eventually(lambda: seen, what="the handler ran")
        after = redis_now()
    assert before - 0.001 <= dispatched <= seen[0] <= after  # ms of the dispatch entry id
    pools.close()


def test_current_outside_a_job_raises_an_error_that_says_where_it_works() -> None:
    with pytest.raises(workpool.WorkpoolError, match="only available inside a job"):
        workpool.current()


def test_a_cancel_records_the_attempt_it_found(redis_url: str,
                                               redis_client: redis.Redis) -> None:
    pools = Pools(redis_url)
    pool = pools("cancelat", max_parallelism=1)
    holding, release = hold_job(pool)

    with running_worker(pool):
        running = pool.enqueue("hold")
        waiting = pool.enqueue("hold")  # the only slot is taken: it stays pending
        assert holding.wait(15)
        pool.cancel(waiting)
        pool.cancel(running)
        eventually(lambda: pool.status(waiting).state == State.CANCELED)
        eventually(lambda: redis_client.hget(pool.keys.job(running), "cancel_attempt"))
        release.set()
        st = pool.wait(running, 15)
    assert (st.outcome, st.attempts, st.cancel_requested) == ("succeeded", 1, True)
    assert redis_client.hget(pool.keys.job(running), "cancel_attempt") == b"1"
    assert redis_client.hget(pool.keys.job(waiting), "cancel_attempt") == b"0"
    pools.close()
