"""The reaper's trust in the main loop: a loop vouches ("heartbeats could be written all along")
for a gap in reaping only after a grace of its own writes landing. Neither a loop that backed off
for longer than the grace (after an outage) nor a new leader that was only reading before (a
candidate) may vouch for its first reap, or suspicions recorded before declare a live worker lost
before its heartbeat (retried on its own schedule) can land."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from helpers import Pools, eventually
from helpers.loop import main_loop
from structlog.testing import capture_logs
from structlog.typing import EventDict

from workpool import Retry, State, Workpool
from workpool.mainloop.loop import MainLoop
from workpool.server.backoff import MAX_BACKOFF
from workpool.server.embedded import RedisServer
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP
from workpool.wire.protocol import encode
from workpool.wire.replies import parse_lease
from workpool.wire.scripts import run

WORKER = "w1"  # a worker in another language, played by the test through its own client


class _Remote:
    """Worker w1, played by the test through its own client: it takes one job's attempt from
    the dispatch stream and beats only when the test says so."""

    def __init__(self, pool: Workpool, r: redis.Redis) -> None:
        self.pool, self.r, self.keys = pool, r, pool.keys
        self.hb = self.keys.heartbeat(WORKER)
        self.job = ""

    def take(self) -> None:
        """Enqueue a job, wait until the main loop dispatches it and read it as w1 (no beat)."""
        self.job = self.pool.enqueue("remote", 1)
        eventually(lambda: self.job_is(b"running", b"1"), 15.0, "the loop dispatched the job")
        read: Any = self.r.xreadgroup(GROUP, WORKER, {self.keys.dispatch: ">"}, count=1)
        assert read[0][1][0][1][b"id"] == self.job.encode()
        assert not self.r.exists(self.hb)  # w1 holds the attempt and never beat

    def job_is(self, state: bytes, attempts: bytes) -> bool:
        got = self.r.hmget(self.keys.job(self.job), "state", "attempts")
        return bool(got == [state, attempts])

    def seen(self) -> list[bytes | str | None]:
        return list(self.r.hmget(self.keys.job(self.job), "state", "attempts", "error_type",
                                 "error"))

    def lost(self) -> int:
        return int(self.r.hget(self.keys.stats, "workers_lost_attempts") or 0)

    def suspected(self) -> bytes | str | None:
        """Since when (Redis ms) the reaper suspects w1, if it does."""
        return self.r.hget(self.keys.suspects, WORKER)

    def beat(self) -> None:
        self.r.set(self.hb, "x", px=5000)

    def holds_its_attempt(self) -> None:
        assert self.job_is(b"running", b"1"), self.seen()
        assert self.lost() == 0, self.r.hgetall(self.keys.stats)

    def beats_until_cleared(self) -> None:
        """Beat until a reap sees it and clears the suspicion: w1 is safe from then on."""
        def cleared() -> bool:
            self.beat()  # keeps beating while it waits
            return self.suspected() is None

        eventually(cleared, 10.0, "the reaper saw w1's heartbeat")
        self.holds_its_attempt()

    def succeeds(self) -> None:
        """Report the outcome as the protocol says: the attempt w1 held still counts."""
        self.r.xadd(self.keys.pending_completion, {"kind": "run", "id": self.job, "attempt": "1",
                                                   "ok": "1", "result": encode("done")})
        st = self.pool.wait(self.job, timeout=15)
        assert (st.state, st.outcome, st.attempts, st.result) == (
            State.DONE, "succeeded", 1, "done"), st
        assert st.error_type is None, st
        assert self.lost() == 0


def _redis_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _backoffs(logs: list[EventDict]) -> list[float]:
    """The waits the main loop announced after Redis refused its calls."""
    return [float(e["backoff"]) for e in list(logs)
            if e.get("event") == "main loop step failed, retrying"]


def test_the_first_reap_after_a_backoff_longer_than_the_grace_suspects_afresh(
        own_server: RedisServer) -> None:
    # grace = ttl / 2 = 0.6 s < MAX_BACKOFF, reaps every 0.3 s; the lease outlives the outage
    pool = Workpool("trust", own_server.url, heartbeat_ttl=1.2, lease_ttl=10.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.01))
    keys = pool.keys
    grace = pool.config.heartbeat_ttl / 2
    assert grace < MAX_BACKOFF  # else no backoff outlasts the grace: nothing to test
    r = redis.Redis.from_url(own_server.url)
    w1 = _Remote(pool, r)

    try:
        with capture_logs() as logs, main_loop(pool):
            w1.take()

            # the reaper suspects the silent w1; at once (before the grace runs out) Redis
            # refuses every write: the loop's rounds fail with OOM and it backs off
            before = eventually(w1.suspected, 10.0, "w1 suspected")
            reaped_before = r.get(keys.reaped_at)
            r.config_set("maxmemory", "1")
            try:
                eventually(lambda: any(b >= MAX_BACKOFF for b in _backoffs(logs)), 15.0,
                           "the loop's backoff grew past the grace")
                assert w1.lost() == 0
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
            w1.beat()  # w1 beats again, on its own schedule: after that reap
            w1.holds_its_attempt()
            assert w1.suspected() != before  # suspected afresh, not reused

            w1.beats_until_cleared()
            w1.succeeds()
    finally:
        r.close()
        pool.close()


def test_a_new_leader_that_only_read_before_suspects_afresh(own_server: RedisServer) -> None:
    # grace = ttl / 2 = 1 s; each loop reaps every 2 graces: the test has that long to act
    # between two reaps (the next would find w1 lost), a generous margin on a busy machine
    pool = Workpool("trust-lead", own_server.url, heartbeat_ttl=2.0, lease_ttl=10.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.01))
    keys = pool.keys
    grace = pool.config.heartbeat_ttl / 2
    every = 2 * grace
    r = redis.Redis.from_url(own_server.url)
    w1 = _Remote(pool, r)

    try:
        # leader A suspects the silent w1, then stops before its next reap; its exit releases
        # the lease
        with main_loop(pool, owner="a", reap_interval=every):
            w1.take()
            before = eventually(w1.suspected, 3 * every, "A suspected w1")
        assert w1.suspected() == before
        assert w1.lost() == 0
        assert not r.exists(keys.lease)
        reaped_before = r.get(keys.reaped_at)

        # at once another owner takes the lease for 4 graces and never reaps: meanwhile w1's
        # heartbeats may have been refused (READONLY, OOM) while reads were answered
        engine = Engine(keys, pool.config.engine_settings())
        (reply,) = run(r, [engine.acquire("other", round(4 * grace * 1000),
                                          pool.config.max_parallelism,
                                          pool.config.declared_settings())])
        assert parse_lease(reply).code == Code.OK
        free_ms = _redis_ms(r) + int(r.pttl(keys.lease))  # when the lease is free again

        # candidate B campaigns all that time: its acquire finds the lease held, so Redis
        # answers it promptly, but B writes nothing. When the lease is free B takes it and reaps
        # at once: a reap more than a grace after the previous one, by a leader whose writes
        # have not landed for a grace yet, must suspect w1 afresh
        with main_loop(pool, owner="b", reap_interval=every):
            assert r.pttl(keys.lease) >= 2 * grace * 1000  # B read for over a grace first

            def first_reap() -> list[Any] | None:
                pipe = r.pipeline(transaction=True)  # one snapshot, taken between two reaps
                pipe.get(keys.reaped_at)
                pipe.hget(keys.suspects, WORKER)
                pipe.get(keys.lease)
                got: list[Any] = pipe.execute()
                return got if got[0] != reaped_before else None

            at, suspected, lease = eventually(first_reap, 15.0, "B reaped once it led")
            w1.beat()  # w1's heartbeat lands again, on its own schedule: after that reap
            assert lease is not None and lease.endswith(b":b"), lease
            assert int(at) >= free_ms, (at, free_ms)  # B's reap, once the lease was free
            w1.holds_its_attempt()
            assert suspected == at, (suspected, at, before)  # suspected afresh, not reused

            w1.beats_until_cleared()
            w1.succeeds()
    finally:
        r.close()
        pool.close()


def test_the_loop_reaps_again_as_soon_as_a_suspect_would_be_lost(pools: Pools) -> None:
    """Regression: after a reap suspected a silent worker, the loop reaped again only after its
    interval, so the worker was lost up to an interval after its grace ran out. It now reaps
    right when the reaper says the first suspect would be lost (Redis ms, through the clock
    of its last reply), and on the interval otherwise."""
    loop = MainLoop(pools("reap-at"), reap_interval=30.0)
    loop._clock = (1_000_000, 100.0)  # Redis said 1,000,000 ms; seen at monotonic 100 s
    assert loop._next_reap(100.0, -1) == 130.0  # nobody suspected: the interval
    assert loop._next_reap(100.0, 1_000_400) == pytest.approx(100.402)  # that suspect's end
    assert loop._next_reap(100.0, 1_050_000) == 130.0  # one due after the interval: interval
