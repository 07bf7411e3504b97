"""A worker outside the happy path: Redis refusing commands for a while (OOM, BUSY, READONLY),
jobs whose results, errors or exceptions are out of the ordinary, threads stuck past their
timeout, and long jobs outliving many newer entries. Each test reproduces one defect found by
trying workpool as a user would; the worker must keep its capacity honest and every attempt
must end with an outcome."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from helpers import (
    Pools,
    busy,
    eventually,
    out_of_memory,
    read_only,
    running_worker,
    stays,
)

from workpool import Retry, State, Workpool
from workpool.core.logs import logger
from workpool.errors import WorkerFailed, WorkerStuck
from workpool.server.embedded import RedisServer
from workpool.testing.kit import WorkerThread
from workpool.wire.protocol import text
from workpool.worker import reader
from workpool.worker.liveness import Liveness
from workpool.worker.outbox import Outbox

FAULTS: dict[str, Callable[[redis.Redis], AbstractContextManager[object]]] = {
    "OOM": out_of_memory, "BUSY": busy, "READONLY": read_only}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_worker_outlives_a_redis_that_refuses_commands_for_a_while(
        own_server: RedisServer, fault: str) -> None:
    """OOM under maxmemory, BUSY from a slow script, READONLY during a failover: each arrives as
    a ResponseError. The heartbeat thread and the outcome flusher back off and go on, so the job
    that succeeded meanwhile ends succeeded (not WorkerLost), and the worker stops cleanly."""
    pool = Workpool("refusal", own_server.url, heartbeat_ttl=1.0, lease_ttl=1.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.01))
    release = threading.Event()

    @pool.job()
    async def during() -> str:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "done"

    r = redis.Redis.from_url(own_server.url)
    with running_worker(pool, worker_id="w-refused") as w:
        job = pool.enqueue(during)
        eventually(lambda: pool.status(job).state == State.RUNNING)
        with FAULTS[fault](r):
            release.set()  # the job ends while its outcome cannot be written
            time.sleep(2.5)  # the fault itself: longer than the heartbeat TTL
        st = pool.wait(job, timeout=20)
        assert (st.outcome, st.attempts) == ("succeeded", 1)
        assert eventually(lambda: r.exists(pool.keys.heartbeat("w-refused")), 5.0)
        after = pool.enqueue(during)
        assert pool.wait(after, timeout=20).outcome == "succeeded"
        assert w.failure is None
    r.close()
    pool.close()


# -- results, errors and exceptions out of the ordinary ------------------------------------------


def test_a_stalled_worker_begins_no_attempt_before_redis_says_it_is_still_its_own(
        own_server: RedisServer) -> None:
    # found by the chaos checker: a worker waking from a pause as Redis was killed began an
    # attempt given away meanwhile, because "Redis cannot say" was taken as "still ours"
    pool = Workpool("mine", own_server.url)
    pool.job(name="noop")(lambda: None)
    r = redis.Redis.from_url(own_server.url)
    answers: list[bool] = []

    async def ask() -> bool:
        client = redis.asyncio.Redis.from_url(own_server.url)
        try:
            liveness = Liveness(pool.config, "w", client, asyncio.Event(), logger())
            return await liveness.mine("given-away", 1)
        finally:
            await client.aclose()

    with busy(r):
        asking = threading.Thread(target=lambda: answers.append(asyncio.run(ask())))
        asking.start()
        assert stays(lambda: not answers, 1.0)  # no answer while Redis cannot give one
    asking.join(10)
    assert answers == [False]  # asked again once Redis answered: the attempt is not ours
    r.close()
    pool.close()


def test_a_result_over_the_pools_cap_fails_its_job_and_everything_else_lands(
        pools: Pools) -> None:
    pool = pools("bigresult", max_result_bytes=1000, retry=Retry(max_attempts=3))

    @pool.job()
    def sized(n: int) -> bytes:
        return b"x" * n

    with running_worker(pool, concurrency=4):
        big = pool.enqueue(sized, 5000)
        small = [pool.enqueue(sized, 10) for _ in range(3)]
        st = pool.wait(big, timeout=15)
        assert (st.outcome, st.attempts, st.error_type) == ("failed", 1, "PayloadTooLarge")
        assert "max_result_bytes" in (st.error or "")
        assert [pool.wait(j, timeout=15).result for j in small] == [b"x" * 10] * 3


def test_a_jobs_own_timeout_error_is_its_own_not_the_engines_timeout(pools: Pools) -> None:
    pool = pools("owntimeout", retry=Retry(max_attempts=1))

    @pool.job(timeout=30)
    async def calls_out() -> None:
        raise TimeoutError("the upstream API did not answer")

    @pool.job(timeout=30)
    def calls_out_sync() -> None:
        raise TimeoutError("the upstream API did not answer either")

    with running_worker(pool):
        for job in (calls_out, calls_out_sync):
            st = pool.wait(pool.enqueue(job), timeout=15)
            assert (st.outcome, st.error_type) == ("failed", "TimeoutError")
            assert "did not answer" in (st.error or "")


class Unprintable(Exception):
    """An exception whose text cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __repr__(self) -> str:
        raise RuntimeError("nor a repr")


def test_an_exception_that_cannot_be_printed_still_ends_its_attempt(pools: Pools) -> None:
    """Four such jobs used to keep the four slots of a max_parallelism-4 pool for ever."""
    pool = pools("unprintable", max_parallelism=4, retry=Retry(max_attempts=2,
                                                                initial_backoff=0.01))

    @pool.job()
    async def broken() -> None:
        raise Unprintable

    @pool.job()
    def broken_sync() -> None:
        raise Unprintable

    @pool.job()
    def fine() -> str:
        return "fine"

    with running_worker(pool, concurrency=4):
        jobs = [pool.enqueue(broken) for _ in range(2)] + [pool.enqueue(broken_sync)
                                                           for _ in range(2)]
        later = pool.enqueue(fine)
        for job_id in jobs:
            st = pool.wait(job_id, timeout=15)
            assert (st.outcome, st.attempts, st.error_type) == ("failed", 2, "Unprintable")
            assert "unprintable" in (st.error or "")
        assert pool.wait(later, timeout=15).result == "fine"


def test_arguments_the_worker_cannot_decode_end_the_job_at_once_as_unusable(
        pools: Pools, redis_client: redis.Redis) -> None:
    """msgpack nested deeper than msgpack-python unpacks (the engine's check has no depth
    limit): not retried, since no attempt could ever decode it."""
    pool = pools("undecodable", retry=Retry(max_attempts=3, initial_backoff=0.01))

    @pool.job()
    def takes(*args: Any) -> None:
        return None

    deep = b"\x91" * 3000 + b"\xc0"
    eid = text(redis_client.xadd(pool.keys.pending_start, {"name": "takes", "args": deep}))
    with running_worker(pool):
        st = pool.wait(eid, timeout=15)
    assert (st.outcome, st.attempts, st.error_type) == ("failed", 1, "SerializationError")
    assert "args" in (st.error or "")


def test_a_delivery_to_a_handler_no_worker_has_is_given_up_and_the_job_expires(
        pools: Pools, redis_client: redis.Redis) -> None:
    pool = pools("nohandler", retention=3600.0)

    @pool.job()
    def quick() -> int:
        return 1

    job = pool.enqueue(quick, on_complete="nobody_registered_this")
    with running_worker(pool):
        eventually(lambda: pool.status(job).callback == "failed", 15.0, "delivery given up")
    assert 0 < redis_client.pttl(pool.keys.job(job)) <= 3_600_000
    assert pool.stats().counters.get("callbacks_abandoned") == 1
    assert pool.stats().counters.get("callback_failures", 0) == 0  # not retried


def test_a_sync_handler_that_hangs_is_timed_out_and_tried_again(
        pools: Pools, redis_client: redis.Redis) -> None:
    pool = pools("slowhandler")
    runs: list[int] = []
    release = threading.Event()

    @pool.job()
    def quick() -> int:
        return 1

    @pool.on_complete(timeout=0.2)
    def hangs_once(job_id: str, result: Any, context: Any) -> None:
        runs.append(1)
        if len(runs) == 1:
            release.wait(30)

    try:
        with running_worker(pool, concurrency=2):
            job = pool.enqueue(quick, on_complete=hangs_once)
            eventually(lambda: pool.status(job).callback == "delivered", 20.0)
        h = redis_client.hgetall(pool.keys.job(job))
        assert b"Timeout" in h[b"cb_error"]
        assert len(runs) == 2
    finally:
        release.set()


# -- capacity ------------------------------------------------------------------------------------


def test_a_thread_stuck_past_its_jobs_timeout_counts_against_the_concurrency(
        pools: Pools) -> None:
    """With one of two threads stuck in a job that timed out, the worker takes one entry at a
    time (not two, one of which would wait in the executor and time out without running), and
    the pool's stats show the stuck thread."""
    pool = pools("stuckone", retry=Retry(max_attempts=1))
    release = threading.Event()
    ran: list[str] = []

    @pool.job(timeout=0.2)
    def hangs() -> None:
        release.wait(30)

    @pool.job(timeout=5)
    def quick(i: int) -> int:
        ran.append(threading.current_thread().name)
        time.sleep(0.3)  # the job's own work
        return i

    try:
        with running_worker(pool, concurrency=2, worker_id="w-stuck"):
            st = pool.wait(pool.enqueue(hangs), timeout=15)
            assert (st.outcome, st.error_type) == ("failed", "Timeout")
            eventually(lambda: pool.stats().threads_stuck == 1, 10.0, "stats show it")
            jobs = [pool.enqueue(quick, i) for i in range(3)]
            assert [pool.wait(j, timeout=15).result for j in jobs] == [0, 1, 2]
            assert len(set(ran)) == 1  # one free thread ran them one after another
            release.set()
            eventually(lambda: pool.stats().threads_stuck == 0, 10.0, "the thread came back")
    finally:
        release.set()


def test_a_worker_whose_threads_are_all_stuck_stops_beating_and_says_so(
        pools: Pools, redis_client: redis.Redis) -> None:
    """All threads stuck: the worker cannot run a sync job, so it stops taking work, deletes its
    heartbeat (its attempts are reaped) and ends with WorkerStuck (`workpool worker` then
    restarts the process); a job enqueued meanwhile is left for another worker."""
    pool = pools("stuckall", retry=Retry(max_attempts=1))
    release = threading.Event()

    @pool.job(timeout=0.2)
    def hangs() -> None:
        release.wait(30)

    @pool.job()
    def later() -> str:
        return "ran elsewhere"

    thread = WorkerThread(pool, {"concurrency": 2, "worker_id": "w-all", "grace": 1.0})
    try:
        thread.start()
        assert [pool.wait(pool.enqueue(hangs), timeout=15).error_type for _ in range(2)] == \
            ["Timeout"] * 2
        thread.join(20)
        assert not thread.is_alive()
        assert isinstance(thread.error, WorkerStuck)
        assert not redis_client.exists(pool.keys.heartbeat("w-all"))
        job = pool.enqueue(later)
        with running_worker(pool, worker_id="w-other"):
            assert pool.wait(job, timeout=15).result == "ran elsewhere"
    finally:
        release.set()


def test_a_long_job_is_not_started_twice_however_many_entries_pass_by(
        pools: Pools, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker once remembered only the last 65,536 entries it took: a job still running
    after that many newer ones was taken for an entry never seen and run again. (The bound is
    the page of pending entries the reader checks is lowered here to 10, so 30 newer ones
    span three pages.)"""
    monkeypatch.setattr(reader, "PENDING_PAGE", 10)
    pool = pools("longjob", heartbeat_ttl=2.0)
    starts: list[int] = []
    release = threading.Event()

    @pool.job()
    async def long() -> str:
        starts.append(1)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "long"

    @pool.job()
    async def short(i: int) -> int:
        return i

    with running_worker(pool, concurrency=4):
        job = pool.enqueue(long)
        eventually(lambda: starts, 10.0, "the long job started")
        ids = pool.enqueue_many(short, [(i,) for i in range(30)])
        assert [pool.wait(i, timeout=15).result for i in ids] == list(range(30))
        assert stays(lambda: len(starts) == 1, 2.5)  # two checks of the unseen entries
        release.set()
        assert pool.wait(job, timeout=15).attempts == 1


# -- the main loop and the worker's vital parts ----------------------------------------------------


def test_a_main_loop_that_hits_a_defect_logs_it_and_goes_on(
        pools: Pools, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Workpool(rate_limit="5/s")` once made every campaign raise AttributeError: the loop
    task died at its first step, no leader ever ran, and the worker said nothing. Any error now
    is logged whole, the lease given up, and the loop tries again after a backoff."""
    pool = pools("defect")
    declared = pool.config.declared_settings
    failures = iter(range(3))

    def flaky_declared() -> dict[str, str]:
        if next(failures, None) is not None:
            raise AttributeError("'str' object has no attribute 'spec'")
        return declared()

    monkeypatch.setattr(pool.config, "declared_settings", flaky_declared)

    @pool.job()
    def quick() -> str:
        return "quick"

    with running_worker(pool) as w:
        assert pool.wait(pool.enqueue(quick), timeout=15).result == "quick"
        assert w.failure is None


def test_a_worker_whose_vital_part_stops_stops_too_and_says_why(
        pools: Pools, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vital task that ends (here the outcome flusher, made to return at once) must take the
    worker down loudly: Worker.run raises WorkerFailed naming it, instead of a worker that
    runs jobs whose outcomes are never written."""
    async def gone(self: Outbox, client: Any) -> None:
        return None

    monkeypatch.setattr(Outbox, "run", gone)
    pool = pools("vital")

    @pool.job()
    def quick() -> str:
        return "quick"

    thread = WorkerThread(pool, {"worker_id": "w-vital", "grace": 1.0})
    thread.start()
    thread.join(15)
    assert not thread.is_alive()
    assert isinstance(thread.error, WorkerFailed)
    assert "outcome flusher stopped unexpectedly" in str(thread.error)
