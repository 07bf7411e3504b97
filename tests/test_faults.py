"""Faults found by the chaos runner, each reproduced here on its own: a redis-server that
stalls, a read whose reply is lost (the worker paused past its heartbeat is in test_e2e)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Pools, eventually, hold_job, running_worker, stays

from workpool import Retry, State, Workpool
from workpool.server.embedded import RedisServer
from workpool.wire.keys import GROUP


def test_a_redis_stall_longer_than_the_heartbeat_ttl_does_not_declare_live_workers_lost(
        own_server: RedisServer) -> None:
    pool = Workpool("stall", own_server.url, heartbeat_ttl=1.0, lease_ttl=1.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.01))
    release = threading.Event()

    @pool.job()
    async def long_job() -> str:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "done"

    with running_worker(pool):
        job = pool.enqueue(long_job)
        eventually(lambda: pool.status(job).state == State.RUNNING)
        os.kill(own_server.pid, signal.SIGSTOP)
        time.sleep(2.5)  # the fault itself: Redis answers nobody for 2.5 heartbeat TTLs
        os.kill(own_server.pid, signal.SIGCONT)
        assert stays(lambda: pool.status(job).attempts == 1, 3.0), pool.status(job)
        release.set()
        st = pool.wait(job, timeout=15)
    assert (st.outcome, st.attempts, st.result) == ("succeeded", 1, "done")
    pool.close()


@pytest.mark.parametrize("comes_back", [True, False])
def test_after_a_redis_restart_a_silent_worker_gets_time_to_beat_again_before_it_is_lost(
        own_server: RedisServer, comes_back: bool) -> None:
    pool = Workpool("restart", own_server.url, heartbeat_ttl=1.0, lease_ttl=1.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.01))
    holding, release = hold_job(pool)

    @pool.job()
    def other() -> str:
        return "other"

    client = redis.Redis.from_url(own_server.url)
    ghost = pool.keys.heartbeat("ghost")  # a worker of another process, played by the test
    with running_worker(pool, concurrency=1):
        pool.enqueue("hold")
        assert holding.wait(15)
        job = pool.enqueue(other)
        client.set(ghost, "pid=0", px=1000)
        eventually(lambda: client.xreadgroup(GROUP, "ghost", {pool.keys.dispatch: ">"}, count=1))
        own_server.kill()
        time.sleep(2.0)  # the fault itself: Redis is down for two heartbeat TTLs
        own_server.restart()  # from its AOF: every heartbeat key has expired meanwhile
        client = redis.Redis.from_url(own_server.url)
        eventually(lambda: client.exists(pool.keys.lease), what="the main loop is back")
        if comes_back:
            client.set(ghost, "pid=0", px=5000)  # the ghost beats again, after the leader
            assert stays(lambda: pool.status(job).attempts == 1, 2.0), pool.status(job)
        else:
            st = eventually(lambda: (s := pool.status(job)).attempts == 2 and s, 15.0)
            assert st.error_type == "WorkerLost"
        release.set()
    client.close()
    pool.close()


def test_an_entry_delivered_to_a_worker_whose_read_reply_was_lost_still_runs(
        redis_url: str, tmp_path: Path) -> None:
    pools = Pools(redis_url)
    pool = pools("lostread", max_parallelism=2)
    holding, release = hold_job(pool)

    @pool.job()
    def quick() -> str:
        return "quick"

    with running_worker(pool, worker_id="w-lost", concurrency=1):
        pool.enqueue("hold")
        assert holding.wait(15)
        second = pool.enqueue(quick)  # dispatched, but the worker's only slot is busy
        client = redis.Redis.from_url(redis_url)
        stolen: Any = eventually(lambda: client.xreadgroup(
            GROUP, "w-lost", {pool.keys.dispatch: ">"}, count=1))  # as if its reply were lost
        assert stolen[0][1][0][1][b"id"] == second.encode()
        release.set()
        st = pool.wait(second, timeout=15)
        client.close()
    assert (st.outcome, st.attempts, st.result) == ("succeeded", 1, "quick")
    pools.close()
