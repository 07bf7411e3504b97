"""The reaper's trust in the main loop after an outage: a loop that backed off for longer than
the silence grace must not vouch ("Redis answered all along") for its first reap after Redis
comes back, or suspicions recorded before the outage declare a live worker lost before its
heartbeat (retried on its own schedule) can land."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from helpers import eventually
from structlog.testing import capture_logs
from structlog.typing import EventDict

from workpool import Retry, State, Workpool
from workpool.connection import MAX_BACKOFF
from workpool.embedded import RedisServer
from workpool.keys import GROUP
from workpool.loop import MainLoop
from workpool.protocol import encode

WORKER = "w1"  # a worker in another language, played by the test through its own client


@contextmanager
def main_loop(pool: Workpool) -> Iterator[MainLoop]:
    """A MainLoop for `pool` alone (no Worker) on its own event loop in a background thread."""
    loop = MainLoop(pool)
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        held["events"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await loop.run(held["stop"])

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread below
            held["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"main-loop-{pool.name}", daemon=True)
    thread.start()
    assert ready.wait(10), "the main loop did not start"
    try:
        yield loop
    finally:
        if "stop" in held and thread.is_alive():
            held["events"].call_soon_threadsafe(held["stop"].set)
        thread.join(15)
        assert not thread.is_alive(), "the main loop did not stop within 15 s"
        if "error" in held:
            raise held["error"]


def _backoffs(logs: list[EventDict]) -> list[float]:
    """The waits the main loop announced after Redis refused its calls."""
    return [float(e["backoff"]) for e in list(logs)
            if e.get("event") == "redis refused a call, retrying"]


def test_the_first_reap_after_a_backoff_longer_than_the_grace_suspects_afresh(
        own_server: RedisServer) -> None:
    # grace = ttl / 2 = 0.6 s < MAX_BACKOFF, reaps every 0.3 s; the lease outlives the outage
    pool = Workpool("trust", own_server.url, heartbeat_ttl=1.2, lease_ttl=10.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.01))
    keys = pool.keys
    grace = pool.heartbeat_ttl / 2
    assert grace < MAX_BACKOFF  # else no backoff outlasts the grace: nothing to test
    r = redis.Redis.from_url(own_server.url)
    hb = keys.heartbeat(WORKER)

    def job_is(state: bytes, attempts: bytes) -> bool:
        got = r.hmget(keys.job(job), "state", "attempts")
        return bool(got == [state, attempts])

    def seen() -> list[bytes | str | None]:
        return list(r.hmget(keys.job(job), "state", "attempts", "error_type", "error"))

    def lost() -> int:
        return int(r.hget(keys.stats, "workers_lost_attempts") or 0)

    try:
        with capture_logs() as logs, main_loop(pool):
            job = pool.enqueue("remote", 1)
            eventually(lambda: job_is(b"running", b"1"), 15.0, "the loop dispatched the job")
            read: Any = r.xreadgroup(GROUP, WORKER, {keys.dispatch: ">"}, count=1)
            assert read[0][1][0][1][b"id"] == job.encode()
            assert not r.exists(hb)  # w1 holds the attempt and never beat

            # the reaper suspects the silent w1; at once (before the grace runs out) Redis
            # refuses every write: the loop's rounds fail with OOM and it backs off
            before = eventually(lambda: r.hget(keys.suspects, WORKER), 10.0, "w1 suspected")
            reaped_before = r.get(keys.reaped_at)
            r.config_set("maxmemory", "1")
            try:
                eventually(lambda: any(b >= MAX_BACKOFF for b in _backoffs(logs)), 15.0,
                           "the loop's backoff grew past the grace")
                assert lost() == 0
                assert r.get(keys.reaped_at) == reaped_before  # no reap during the outage
            finally:
                r.config_set("maxmemory", "0")
            back_ms = int(r.time()[0]) * 1000  # Redis time when it accepts writes again

            # the loop's first reap since: its suspicion from before the outage says nothing
            # (heartbeats could not be written either), so w1 is only suspected afresh
            def reaped_again() -> bool:
                at = r.get(keys.reaped_at)
                return at is not None and at != reaped_before and int(at) >= back_ms

            eventually(reaped_again, 10.0, "the loop reaped after the outage")
            r.set(hb, "x", px=5000)  # w1 beats again, on its own schedule: after that reap
            assert job_is(b"running", b"1"), seen()
            assert lost() == 0, r.hgetall(keys.stats)
            assert r.hget(keys.suspects, WORKER) != before  # suspected afresh, not reused

            # a later reap sees the beat and clears the suspicion: w1 is safe from now on
            def cleared() -> bool:
                r.set(hb, "x", px=5000)  # keeps beating while it waits
                return r.hget(keys.suspects, WORKER) is None

            eventually(cleared, 10.0, "the reaper saw w1's heartbeat")
            assert job_is(b"running", b"1"), seen()
            assert lost() == 0, r.hgetall(keys.stats)

            # w1 reports its outcome as the protocol says: the attempt it held still counts
            r.xadd(keys.pending_completion, {"kind": "run", "id": job, "attempt": "1",
                                             "ok": "1", "result": encode("done")})
            st = pool.wait(job, timeout=15)
        assert (st.state, st.outcome, st.attempts, st.result) == (
            State.DONE, "succeeded", 1, "done"), st
        assert st.error_type is None, st
        assert lost() == 0
    finally:
        r.close()
        pool.close()
