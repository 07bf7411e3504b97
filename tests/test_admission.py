"""Admission control, one rule per test: priorities, rate limits, per-key concurrency, pause and
live configuration, cron ticks, and the stats that show them.

Like test_transitions.py (both use the `Pool` of helpers/scripts.py), each test drives the real
Lua scripts with an explicit `now` (ms) and checks the returned values and the resulting Redis
state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest
import redis
from helpers.scripts import (
    FAR,
    LEASE_MS,
    OTHER,
    OWNER,
    RETENTION_MS,
    Pool,
    assert_table,
    covers,
    entries,
    retry_due,
    wait_until,
)

from workpool import RateLimit, Retry, State, Workpool
from workpool.core.schedule import CronJob, parse_schedule
from workpool.errors import ConfigurationError
from workpool.mainloop.cron import TickDecision, decide, tick_call
from workpool.wire import limits
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP
from workpool.wire.protocol import text
from workpool.wire.replies import parse_lease, parse_start
from workpool.wire.scripts import run
from workpool.wire.statemachine import CANCELED, PENDING, RETRYING, RUNNING, SUCCEEDED

pytestmark = pytest.mark.topologies  # each test on one server and on a cluster

MakePool = Callable[..., Pool]
HOUR = 3_600_000


@pytest.fixture
def make_pool(redis_url: str, redis_client: redis.Redis) -> Iterator[MakePool]:
    """Makes the pool under test; its lease holder declares `declared` (defaults) once."""
    made: list[Workpool] = []

    def make(declared: Mapping[str, str] | None = None) -> Pool:
        client = Workpool("t", redis_url, max_parallelism=10, retention=RETENTION_MS / 1000,
                          retry=Retry(max_attempts=3, initial_backoff=1.0, base=2.0))
        made.append(client)
        # A silent worker is lost at the first reap (the grace is tested in test_transitions).
        engine = Engine(client.keys, replace(client.config.engine_settings(), silence_grace_ms=0))
        acquire = engine.acquire(OWNER, LEASE_MS, 10, declared)
        lease = parse_lease(run(redis_client, [acquire])[0])
        assert (lease.code, lease.token) == (Code.OK, f"1:{OWNER}")
        return Pool(redis_client, client, engine, lease.token)

    yield make
    for client in made:
        client.close()


@pytest.fixture
def p(make_pool: MakePool) -> Pool:
    """A pool with no declared limits beyond max_parallelism 10."""
    return make_pool()


def zset(p: Pool, key: str) -> list[tuple[str, float]]:
    """A sorted set as (member, score), best first."""
    raw: Any = p.r.zrange(key, 0, -1, withscores=True)
    return [(text(m), float(s)) for m, s in raw]


def hmap(p: Pool, key: str) -> dict[str, str]:
    """A hash as text."""
    raw: Any = p.r.hgetall(key)
    return {text(k): text(v) for k, v in raw.items()}


def rank(priority: int, seq: int) -> float:
    """A job's score in `ready`, `keyq:*` and `nameq:*`: -priority * 1e12 + seq."""
    return float(-priority * 10**12 + seq)


def without(snapshot: dict[bytes, bytes | None], *keys: str) -> dict[bytes, bytes | None]:
    """A snapshot minus some keys (counters and streams a rejected entry passes through)."""
    return {k: v for k, v in snapshot.items() if text(k) not in keys}


# -- priorities ---------------------------------------------------------------------------------


def test_a_higher_priority_job_starts_first_even_when_enqueued_last(p: Pool) -> None:
    p.client.configure(wait=0, max_parallelism=1)
    low = p.client.enqueue("work", priority=-5)
    normal = p.client.enqueue("work")
    high = p.client.enqueue("work", priority=7)
    t = p.clock()
    assert p.ingest(t).codes == [Code.CONFIGURED] + [Code.ENQUEUED] * 3
    assert [(p.job(j)["priority"], p.job(j)["seq"]) for j in (low, normal, high)] == \
        [(b"-5", b"1"), (b"0", b"2"), (b"7", b"3")]

    assert zset(p, p.keys.ready) == [(high, rank(7, 3)), (normal, rank(0, 2)), (low, rank(-5, 1))]
    first = p.start(t)
    assert (first.ids, first.promoted) == ([high], 0)  # due at once: ready since ingest
    assert zset(p, p.keys.ready) == [(normal, rank(0, 2)), (low, rank(-5, 1))]
    assert p.score(p.keys.due, low) is None

    p.finish_run(high, 1, ok=True)
    p.apply(t + 1)
    assert p.start(t + 1).ids == [normal]
    p.finish_run(normal, 1, ok=True)
    p.apply(t + 2)
    assert p.start(t + 2).ids == [low]
    assert p.r.zcard(p.keys.ready) == 0


def test_jobs_of_one_priority_start_in_enqueue_order_even_within_one_millisecond(p: Pool) -> None:
    t = p.clock()
    ids = []
    for i, key in enumerate("zyxwvutsrq"):  # ids in reverse alphabetical order, one ms
        (fields,) = p.client.build_entries("work", [(i,)], key=key)
        p.r.xadd(p.keys.pending_start, fields, id=f"{t}-{i}")  # type: ignore[arg-type]
        ids.append(text(fields["id"]))
    assert p.ingest(t).outcomes == [(i, Code.ENQUEUED) for i in ids]
    assert {p.job(i)["enqueued_at"] for i in ids} == {str(t).encode()}
    assert [p.score(p.keys.ready, i) for i in ids] == [rank(0, n) for n in range(1, 11)]

    started = p.start(t)
    assert started.ids == ids
    assert [p.job(i)["seq"] for i in ids] == [str(n).encode() for n in range(1, 11)]
    assert [f["id"] for _, f in p.dispatched()] == [i.encode() for i in ids]


def test_a_retried_job_keeps_its_priority_and_its_place_in_line(p: Pool) -> None:
    first = p.client.enqueue("work", priority=3)
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == [first]
    p.client.configure(wait=0, paused=True, max_parallelism=1)
    later_same = p.client.enqueue("work", priority=3)
    later_low = p.client.enqueue("work")
    p.ingest(t + 1)
    p.finish_run(first, 1, ok=False)
    assert p.apply(t + 2).outcomes == [(first, Code.RETRY_SCHEDULED)]
    due = retry_due(t + 2, first, 1)
    assert p.start(due).ids == []  # paused: due jobs are promoted, none starts

    assert zset(p, p.keys.ready) == [(first, rank(3, 1)), (later_same, rank(3, 2)),
                                     (later_low, rank(0, 3))]
    h = p.job(first)
    assert (h["state"], h["priority"], h["seq"]) == (b"retrying", b"3", b"1")

    p.client.configure(wait=0, paused=False)
    p.ingest(due)
    assert p.start(due).ids == [first]
    assert (p.state(first), p.job(first)["attempts"]) == (RUNNING, b"2")
    assert zset(p, p.keys.ready) == [(later_same, rank(3, 2)), (later_low, rank(0, 3))]


BAD_PRIORITIES = [
    ("1001", "field priority is not a number from -1000 to 1000"),
    ("-1001", "field priority is not a number from -1000 to 1000"),
    ("1.5", "field priority must be a whole number"),
    ("high", "field priority is not a number from -1000 to 1000"),
    ("nan", "field priority is not a number from -1000 to 1000"),
]


@pytest.mark.parametrize(("priority", "reason"), BAD_PRIORITIES, ids=[b for b, _ in BAD_PRIORITIES])
def test_a_priority_out_of_range_or_not_an_integer_is_rejected_at_ingest(
    p: Pool, priority: str, reason: str,
) -> None:
    p.r.sadd(p.keys.incoming, "bad")
    p.r.xadd(p.keys.pending_start, {"id": "bad", "name": "work", "priority": priority})
    assert p.ingest(p.clock()).outcomes == [("bad", Code.REJECTED)]
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert (text(record["reason"]), record["f.priority"]) == (reason, priority.encode())
    assert p.job("bad") == {}
    assert not p.r.sismember(p.keys.incoming, "bad")
    assert not p.r.exists(p.keys.due, p.keys.unstarted, p.keys.seq)
    for bad in (1001, -1001, 1.5):
        with pytest.raises(ConfigurationError, match="priority must be an integer"):
            p.client.enqueue("work", priority=bad)  # type: ignore[arg-type]


# -- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["declared", "configured"])
def test_a_pool_rate_limit_allows_that_many_starts_then_says_when_the_next_token_comes(
    make_pool: MakePool, source: str,
) -> None:
    p = make_pool({"rate": "2/60000"} if source == "declared" else None)
    if source == "configured":
        p.client.configure(wait=0, rate_limit=RateLimit(2, per=60))
    ids = [p.client.enqueue("work", i) for i in range(4)]
    t = p.clock()
    p.ingest(t)

    first = p.start(t)
    assert (first.ids, first.next_admission_ms, first.running) == (ids[:2], t + 30_000, 2)
    assert hmap(p, p.keys.bucket("pool")) == {"tokens": "0", "ts": str(t)}
    assert zset(p, p.keys.ready) == [(ids[2], 3.0), (ids[3], 4.0)]
    assert [p.state(i) for i in ids[2:]] == [PENDING, PENDING]

    before = p.snapshot()
    half = p.start(t + 15_000)  # half a token: nothing starts, nothing is written
    assert (half.ids, half.next_admission_ms) == ([], t + 30_000)
    assert p.snapshot() == before

    second = p.start(t + 30_000)
    assert (second.ids, second.next_admission_ms) == ([ids[2]], t + 60_000)
    assert hmap(p, p.keys.bucket("pool")) == {"tokens": "0", "ts": str(t + 30_000)}
    third = p.start(t + 60_000)
    assert (third.ids, third.next_admission_ms) == ([ids[3]], None)
    assert p.r.zcard(p.keys.ready) == 0


@covers("start", Code.HELD_BY_RATE)
def test_a_job_held_by_its_names_rate_is_parked_until_the_next_token_and_others_still_start(
    make_pool: MakePool,
) -> None:
    p = make_pool({"rate:work": "1/10000"})
    a, b = p.client.enqueue("work", 1), p.client.enqueue("work", 2)
    other = p.client.enqueue("other")
    t = p.clock()
    p.ingest(t)
    nameq = p.keys.name_queue("work")

    first = p.start(t)
    assert (first.ids, first.next_admission_ms) == ([a, other], t + 10_000)
    assert (p.state(b), p.client.status(b).state) == (PENDING, State.PENDING)
    assert zset(p, nameq) == [(b, rank(0, 2))]
    assert zset(p, p.keys.throttled) == [("work", t + 10_000)]
    assert p.r.zcard(p.keys.ready) == 0
    assert p.r.hexists(p.keys.unstarted, b)
    assert p.stat("held_by_rate") == 1
    assert hmap(p, p.keys.bucket("name:work")) == {"tokens": "0", "ts": str(t)}
    assert_table("start", PENDING, Code.HELD_BY_RATE, PENDING, "rate_exhausted")

    urgent = p.client.enqueue("work", 3, priority=9)  # parked too, ahead of b
    t1 = p.clock()
    p.ingest(t1)
    assert p.start(t1).ids == []
    assert zset(p, nameq) == [(urgent, rank(9, 4)), (b, rank(0, 2))]
    assert zset(p, p.keys.throttled) == [("work", t + 10_000)]
    assert p.stat("held_by_rate") == 2

    before = p.snapshot()
    waiting = p.start(t + 9_999)  # before its token time: not looked at, nothing written
    assert (waiting.ids, waiting.next_admission_ms) == ([], t + 10_000)
    assert p.snapshot() == before

    released = p.start(t + 10_000)  # one token: the best-ranked held job goes, and starts
    assert (released.ids, released.next_admission_ms) == ([urgent], t + 20_000)
    assert zset(p, nameq) == [(b, rank(0, 2))]
    assert zset(p, p.keys.throttled) == [("work", t + 20_000)]
    assert p.stat("held_by_rate") == 1

    last = p.start(t + 20_000)
    assert (last.ids, last.next_admission_ms) == ([b], None)
    assert not p.r.exists(nameq, p.keys.throttled)
    assert p.stat("held_by_rate") == 0
    assert [p.state(j) for j in (a, b, other, urgent)] == [RUNNING] * 4


def _two_parked(p: Pool) -> tuple[str, str, int]:
    """Three jobs of `work` under its rate of 1 a minute: the first runs, two are parked."""
    ids = [p.client.enqueue("work", i) for i in range(3)]
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == ids[:1]
    assert zset(p, p.keys.throttled) == [("work", t + 60_000)]
    assert p.stat("held_by_rate") == 2
    return ids[1], ids[2], t


def test_lifting_a_names_rate_releases_its_held_jobs_at_the_next_call(make_pool: MakePool) -> None:
    p = make_pool({"rate:work": "1/60000"})
    b, c, t = _two_parked(p)
    p.client.configure(wait=0, rate_limits={"work": None})
    assert p.ingest(t + 1).codes == [Code.CONFIGURED]
    assert hmap(p, p.keys.config) == {"rate:work": ""}  # "none": no limit, whatever the code says
    assert zset(p, p.keys.throttled) == [("work", 0.0)]

    started = p.start(t + 1)
    assert (started.ids, started.next_admission_ms) == ([b, c], None)
    assert not p.r.exists(p.keys.name_queue("work"), p.keys.throttled)
    assert p.stat("held_by_rate") == 0


def test_a_config_entry_that_changes_a_names_rate_rechecks_its_held_jobs_at_once(
    make_pool: MakePool,
) -> None:
    p = make_pool({"rate:work": "1/60000"})
    b, c, t = _two_parked(p)
    p.client.configure(wait=0, rate_limits={"work": RateLimit(5, per=1)})
    assert p.ingest(t + 1000).codes == [Code.CONFIGURED]
    assert hmap(p, p.keys.config) == {"rate:work": "5/1000"}
    assert zset(p, p.keys.throttled) == [("work", 0.0)]

    started = p.start(t + 1000)  # 5 tokens after 1 s at the new rate, not one minute
    assert started.ids == [b, c]
    assert hmap(p, p.keys.bucket("name:work")) == {"tokens": "3", "ts": str(t + 1000)}
    assert p.stat("held_by_rate") == 0


def test_a_reset_that_drops_a_names_rate_override_releases_its_held_jobs_at_the_next_call(
    p: Pool,
) -> None:
    p.client.configure(wait=0, rate_limits={"work": RateLimit(1, per=60)})
    p.ingest(p.clock())
    b, c, t = _two_parked(p)
    p.client.configure(wait=0, reset=True)
    assert p.ingest(t + 1).codes == [Code.CONFIGURED]
    assert not p.r.exists(p.keys.config)
    assert p.start(t + 1).ids == [b, c]
    assert p.stat("held_by_rate") == 0


def test_a_canceled_job_held_by_a_rate_leaves_its_name_queue(make_pool: MakePool) -> None:
    p = make_pool({"rate:work": "1/60000"})
    b, c, t = _two_parked(p)
    p.client.cancel(b, wait=0)
    assert p.ingest(t + 1).outcomes == [(b, Code.CANCELED)]
    assert zset(p, p.keys.name_queue("work")) == [(c, rank(0, 3))]
    assert not p.r.hexists(p.keys.unstarted, b)
    assert p.stat("held_by_rate") == 1
    assert p.start(t + 60_000).ids == [c]


# -- per-key concurrency ------------------------------------------------------------------------


KEY_LIMIT_SOURCES = {
    "pool default": {"max_per_key": "1"},
    "per job name": {"max_per_key:work": "1", "max_per_key": "5"},
}


@covers("start", Code.HELD_BY_KEY)
@pytest.mark.parametrize("declared", list(KEY_LIMIT_SOURCES.values()),
                         ids=list(KEY_LIMIT_SOURCES))
def test_with_one_per_key_a_second_job_of_the_key_waits_while_other_jobs_start(
    make_pool: MakePool, declared: dict[str, str],
) -> None:
    p = make_pool(declared)
    k1 = p.client.enqueue("work", 1, concurrency_key="k")
    k2 = p.client.enqueue("work", 2, concurrency_key="k")
    m1 = p.client.enqueue("work", 3, concurrency_key="m")
    unkeyed = p.client.enqueue("work", 4)
    t = p.clock()
    p.ingest(t)
    assert (p.job(k2)["ckey"], p.job(unkeyed).get("ckey")) == (b"k", None)

    started = p.start(t)
    assert (started.ids, started.promoted) == ([k1, m1, unkeyed], 0)
    assert (p.state(k2), p.client.status(k2).state) == (PENDING, State.PENDING)
    assert zset(p, p.keys.key_queue("k")) == [(k2, rank(0, 2))]
    assert hmap(p, p.keys.key_running) == {"k": "1", "m": "1"}
    assert hmap(p, p.keys.key_heads) == {}
    assert p.r.zcard(p.keys.ready) == 0
    assert p.r.hkeys(p.keys.unstarted) == [k2.encode()]
    assert p.stat("held_by_key") == 1
    assert_table("start", PENDING, Code.HELD_BY_KEY, PENDING, "key_at_limit")

    before = p.snapshot()
    assert p.start(t + FAR).ids == []
    assert p.snapshot() == before


def _end_by_success(p: Pool, job_id: str, t: int) -> int:
    p.beat("w1")
    p.deliver("w1")
    p.finish_run(job_id, 1, ok=True)
    assert p.apply(t + 1).outcomes == [(job_id, Code.SUCCEEDED)]
    return t + 1


def _end_by_failure(p: Pool, job_id: str, t: int) -> int:
    p.beat("w1")
    p.deliver("w1")
    p.finish_run(job_id, 1, ok=False)
    assert p.apply(t + 1).outcomes == [(job_id, Code.RETRY_SCHEDULED)]
    return t + 1


def _end_by_worker_lost(p: Pool, job_id: str, t: int) -> int:
    p.deliver("dead")  # no heartbeat
    assert p.reap(t + 1).lost == 1
    return t + 1


def _end_by_timeout(p: Pool, job_id: str, t: int) -> int:
    assert p.reap(t + FAR).timed_out == 0  # not delivered yet: its clock has not started
    p.beat("w1")
    p.deliver("w1")
    wait_until(lambda: int(p.r.xpending_range(p.keys.dispatch, GROUP, "-", "+", 1)[0]
                           ["time_since_delivered"]) >= 1)
    assert p.reap(t + 2 * FAR).timed_out == 1
    return t + 2 * FAR


ENDINGS: dict[str, tuple[Callable[[Pool, str, int], int], str]] = {
    "success": (_end_by_success, SUCCEEDED),
    "failure with retry": (_end_by_failure, RETRYING),
    "worker lost": (_end_by_worker_lost, RETRYING),
    "timeout": (_end_by_timeout, RETRYING),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_when_an_attempt_of_the_key_ends_the_next_job_of_the_key_is_admitted_and_starts(
    make_pool: MakePool, ending: str,
) -> None:
    end, after = ENDINGS[ending]
    p = make_pool({"max_per_key": "1"})
    timeout = 0.001 if ending == "timeout" else None  # else a slow run could also time out
    k1 = p.client.enqueue("work", 1, concurrency_key="k", timeout=timeout)
    k2 = p.client.enqueue("work", 2, concurrency_key="k")
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == [k1]
    assert zset(p, p.keys.key_queue("k")) == [(k2, rank(0, 2))]

    now = end(p, k1, t)
    assert p.state(k1) == after
    assert hmap(p, p.keys.key_running) == {}
    assert hmap(p, p.keys.key_heads) == {"k": k2}
    assert zset(p, p.keys.ready) == [(k2, rank(0, 2))]
    assert not p.r.exists(p.keys.key_queue("k"))
    assert p.stat("held_by_key") == 0

    assert p.start(now).ids == [k2]
    assert hmap(p, p.keys.key_running) == {"k": "1"}
    assert hmap(p, p.keys.key_heads) == {}
    if after == RETRYING:  # the retry waits for its key again, in its old place
        due = p.score(p.keys.due, k1)
        assert due is not None
        assert p.start(int(due)).ids == []
        assert zset(p, p.keys.key_queue("k")) == [(k1, rank(0, 1))]
        assert (p.state(k1), p.stat("held_by_key")) == (RETRYING, 1)


def test_jobs_of_one_key_start_in_enqueue_order_even_within_one_millisecond(
    make_pool: MakePool,
) -> None:
    p = make_pool({"max_per_key": "1"})
    t = p.clock()
    ids = []
    for i, key in enumerate("zyxwv"):  # ids in reverse alphabetical order, one ms
        (fields,) = p.client.build_entries("work", [(i,)], key=key, concurrency_key="k")
        p.r.xadd(p.keys.pending_start, fields, id=f"{t}-{i}")  # type: ignore[arg-type]
        ids.append(text(fields["id"]))
    p.ingest(t)
    assert p.start(t).ids == ids[:1]
    assert zset(p, p.keys.key_queue("k")) == [(j, rank(0, n)) for n, j in enumerate(ids[1:], 2)]
    assert p.stat("held_by_key") == 4
    for n, job_id in enumerate(ids[:-1]):
        p.finish_run(job_id, 1, ok=True)
        p.apply(t + n)
        assert p.start(t + n).ids == [ids[n + 1]]
    assert (p.r.exists(p.keys.key_queue("k")), p.stat("held_by_key")) == (0, 0)


def test_a_higher_priority_job_of_a_key_takes_the_place_of_the_keys_head_in_the_ready_set(
    make_pool: MakePool,
) -> None:
    p = make_pool({"max_per_key": "1"})
    p.client.configure(wait=0, paused=True)
    first = p.client.enqueue("work", 1, concurrency_key="k")
    t = p.clock()
    p.ingest(t)
    p.start(t)
    assert (hmap(p, p.keys.key_heads), zset(p, p.keys.ready)) == ({"k": first}, [(first, 1.0)])

    urgent = p.client.enqueue("work", 2, concurrency_key="k", priority=5)
    t1 = p.clock()
    p.ingest(t1)  # due at once: it joins admission as it is applied
    assert hmap(p, p.keys.key_heads) == {"k": urgent}
    assert zset(p, p.keys.ready) == [(urgent, rank(5, 2))]
    assert zset(p, p.keys.key_queue("k")) == [(first, rank(0, 1))]
    assert p.stat("held_by_key") == 1

    p.client.configure(wait=0, paused=False)
    p.ingest(t1)
    assert p.start(t1).ids == [urgent]
    p.finish_run(urgent, 1, ok=True)
    p.apply(t1 + 1)
    assert p.start(t1 + 1).ids == [first]
    assert p.stat("held_by_key") == 0


def test_with_two_per_key_two_jobs_of_the_key_run_at_once(make_pool: MakePool) -> None:
    p = make_pool({"max_per_key:work": "2"})
    ids = [p.client.enqueue("work", i, concurrency_key="k") for i in range(3)]
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == ids[:2]
    assert hmap(p, p.keys.key_running) == {"k": "2"}
    assert zset(p, p.keys.key_queue("k")) == [(ids[2], rank(0, 3))]
    assert (hmap(p, p.keys.key_heads), p.stat("held_by_key")) == ({}, 1)


RAISES: dict[str, dict[str, Any]] = {
    "pool default": {"max_per_key": 2},
    "per job name": {"max_per_key_for": {"work": 2}},
}


@pytest.mark.parametrize("change", list(RAISES.values()), ids=list(RAISES))
def test_raising_the_key_limit_admits_a_waiting_job_at_once(
    make_pool: MakePool, change: dict[str, Any],
) -> None:
    p = make_pool({"max_per_key": "1"})
    k1 = p.client.enqueue("work", 1, concurrency_key="k")
    k2 = p.client.enqueue("work", 2, concurrency_key="k")
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == [k1]

    p.client.configure(wait=0, **change)
    assert p.ingest(t + 1).codes == [Code.CONFIGURED]
    assert zset(p, p.keys.key_drain) == [("k", 0.0)]  # moved on by the next start, bounded
    assert p.start(t + 1).ids == [k2]  # no attempt of k had to end
    assert (p.r.exists(p.keys.key_queue("k")), p.stat("held_by_key")) == (0, 0)
    assert p.r.exists(p.keys.key_drain) == 0
    assert hmap(p, p.keys.key_running) == {"k": "2"}
    assert [p.state(k) for k in (k1, k2)] == [RUNNING, RUNNING]


def test_canceling_a_job_waiting_for_its_key_leaves_the_key_queue_consistent(
    make_pool: MakePool,
) -> None:
    p = make_pool({"max_per_key": "1"})
    k1, k2, k3 = (p.client.enqueue("work", i, concurrency_key="k") for i in range(3))
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == [k1]
    assert p.stat("held_by_key") == 2

    p.client.cancel(k2, wait=0)
    assert p.ingest(t + 1).outcomes == [(k2, Code.CANCELED)]
    assert p.state(k2) == CANCELED
    assert zset(p, p.keys.key_queue("k")) == [(k3, rank(0, 3))]
    assert p.r.hkeys(p.keys.unstarted) == [k3.encode()]
    assert (hmap(p, p.keys.key_heads), p.stat("held_by_key")) == ({}, 1)

    p.finish_run(k1, 1, ok=True)
    p.apply(t + 2)
    assert hmap(p, p.keys.key_heads) == {"k": k3}
    assert p.start(t + 2).ids == [k3]
    assert (p.r.exists(p.keys.key_queue("k")), p.stat("held_by_key")) == (0, 0)


def test_canceling_the_head_of_a_key_in_the_ready_set_lets_the_next_job_of_the_key_advance(
    make_pool: MakePool,
) -> None:
    p = make_pool({"max_per_key": "1"})
    p.client.configure(wait=0, paused=True)
    k1 = p.client.enqueue("work", 1, concurrency_key="k")
    k2 = p.client.enqueue("work", 2, concurrency_key="k")
    t = p.clock()
    p.ingest(t)
    held = p.start(t)
    assert (held.ids, held.promoted) == ([], 0)
    assert hmap(p, p.keys.key_heads) == {"k": k1}
    assert zset(p, p.keys.ready) == [(k1, rank(0, 1))]
    assert zset(p, p.keys.key_queue("k")) == [(k2, rank(0, 2))]

    p.client.cancel(k1, wait=0)
    assert p.ingest(t + 1).outcomes == [(k1, Code.CANCELED)]
    assert hmap(p, p.keys.key_heads) == {"k": k2}
    assert zset(p, p.keys.ready) == [(k2, rank(0, 2))]
    assert (p.r.exists(p.keys.key_queue("k")), p.stat("held_by_key")) == (0, 0)

    p.client.configure(wait=0, paused=False)
    p.ingest(t + 2)
    assert p.start(t + 2).ids == [k2]
    assert (hmap(p, p.keys.key_heads), hmap(p, p.keys.key_running)) == ({}, {"k": "1"})


def test_many_jobs_waiting_for_one_hot_key_are_not_touched_by_start_calls(
    make_pool: MakePool,
) -> None:
    p = make_pool({"max_per_key": "1"})
    hot = p.client.enqueue_many("work", [(i,) for i in range(50)], concurrency_key="hot")
    cold = p.client.enqueue_many("work", [(i,) for i in range(3)])
    t = p.clock()
    p.ingest(t)
    first = p.start(t)
    assert (first.ids, first.promoted) == ([hot[0], *cold], 0)
    keyq = p.keys.key_queue("hot")
    assert (p.r.zcard(keyq), p.r.zcard(p.keys.ready), p.stat("held_by_key")) == (49, 0, 49)

    queued = p.r.dump(keyq)
    more = p.client.enqueue_many("work", [(i,) for i in range(3)])
    t1 = p.clock()
    p.ingest(t1)
    assert p.start(t1).ids == more  # the hot key's queue is neither read nor written
    assert p.r.dump(keyq) == queued

    p.finish_run(hot[0], 1, ok=True)
    p.apply(t1 + 1)  # only the head moves
    assert (p.r.zcard(keyq), zset(p, p.keys.ready)) == (48, [(hot[1], rank(0, 2))])
    assert p.start(t1 + 1).ids == [hot[1]]
    assert (p.r.zcard(keyq), p.r.zcard(p.keys.ready), p.stat("held_by_key")) == (48, 0, 48)


def test_lifting_a_key_limit_moves_its_waiting_jobs_on_a_batch_at_a_time(
    make_pool: MakePool,
) -> None:
    """A hot key's whole queue waits behind a serial limit that is then lifted (max_per_key 0):
    no one script call moves the queue; each start call moves a batch at most, and the loop is
    told to come again at once until the queue is gone."""
    p = make_pool({"max_per_key": "1"})
    small = Engine(p.keys, replace(p.engine.settings, batch=32))
    p.client.configure(wait=0, max_parallelism=1)
    hot = p.client.enqueue_many("work", [(i,) for i in range(300)], concurrency_key="hot")
    t = p.clock()
    while p.r.xlen(p.keys.pending_start):
        p.ingest(t)
    assert p.start(t).ids == [hot[0]]
    keyq = p.keys.key_queue("hot")
    assert p.r.zcard(keyq) == 299
    p.client.configure(wait=0, max_per_key=0)
    assert p.ingest(t).codes == [Code.CONFIGURED]
    assert p.r.zcard(keyq) == 299  # the config entry itself moves none of them
    left = [299]
    while left[-1]:
        reply = parse_start(p.call(small.start(p.token, t)))
        left.append(p.r.zcard(keyq))
        assert left[-2] - left[-1] <= 32 + limits.KEY_STEPS
        assert reply.promoted >= 32 or not left[-1]  # more left: the loop calls again at once
    assert len(left) > 299 // (32 + limits.KEY_STEPS)
    assert p.r.zcard(p.keys.ready) == 299 and p.stat("held_by_key") == 0
    assert set(hot[1:]) == {m for m, _ in zset(p, p.keys.ready)}


def test_names_with_many_held_jobs_put_them_back_a_batch_at_a_time(p: Pool) -> None:
    """Ten names, forty parked jobs each, then every rate lifted: one start call puts back one
    batch in all (not a batch per name), and each name left with jobs is looked at again at
    once."""
    small = Engine(p.keys, replace(p.engine.settings, batch=32))
    names = [f"n{i}" for i in range(10)]
    p.client.configure(wait=0, max_parallelism=1000, rate_limits=dict.fromkeys(names, "1/1h"))
    for name in names:
        p.client.enqueue_many(name, [(i,) for i in range(40)])
    t = p.clock()
    while p.r.xlen(p.keys.pending_start):
        p.ingest(t)
    while p.r.zcard(p.keys.ready):  # each call parks what it looks at
        parse_start(p.call(small.start(p.token, t)))
    assert p.stat("held_by_rate") == 390  # one of each name started
    p.client.configure(wait=0, rate_limits=dict.fromkeys(names, None))
    p.ingest(t)
    p.client.configure(wait=0, max_parallelism=0)
    p.ingest(t)
    held = [p.stat("held_by_rate")]
    while held[-1]:
        parse_start(p.call(small.start(p.token, t)))
        held.append(p.stat("held_by_rate"))
        assert held[-2] - held[-1] <= 32
    assert p.r.zcard(p.keys.ready) == 390


# -- pause and live configuration ---------------------------------------------------------------


def test_a_paused_pool_admits_due_jobs_but_starts_none_until_resumed(p: Pool) -> None:
    p.client.configure(wait=0, paused=True)
    a, b = p.client.enqueue("work", 1), p.client.enqueue("work", 2)
    t = p.clock()
    assert p.ingest(t).codes == [Code.CONFIGURED, Code.ENQUEUED, Code.ENQUEUED]
    assert hmap(p, p.keys.config) == {"paused": "1"}

    paused = p.start(t + FAR)
    assert (paused.ids, paused.max_parallelism, paused.promoted) == ([], 0, 0)
    assert zset(p, p.keys.ready) == [(a, 1.0), (b, 2.0)]
    assert p.r.zcard(p.keys.due) == 0
    assert (p.state(a), p.state(b)) == (PENDING, PENDING)
    assert p.client.stats().paused

    p.client.configure(wait=0, paused=False)
    assert p.ingest(t + FAR).codes == [Code.CONFIGURED]
    assert hmap(p, p.keys.config) == {"paused": "0"}
    resumed = p.start(t + FAR)
    assert (resumed.ids, resumed.max_parallelism) == ([a, b], 10)
    assert not p.client.stats().paused


def test_a_reset_drops_every_override_and_the_declared_defaults_apply_again(
    make_pool: MakePool,
) -> None:
    p = make_pool({"rate": "2/60000", "max_per_key": "1"})
    p.client.configure(wait=0, max_parallelism=1, paused=True, rate_limit=None, max_per_key=3)
    t = p.clock()
    assert p.ingest(t).codes == [Code.CONFIGURED]
    assert hmap(p, p.keys.config) == {"max_parallelism": "1", "paused": "1", "rate": "",
                                      "max_per_key": "3"}
    assert p.client.stats().settings == {"max_parallelism": "1", "paused": "1", "rate": "none",
                                         "max_per_key": "3"}

    p.client.configure(wait=0, reset=True)
    assert p.ingest(t + 1).codes == [Code.CONFIGURED]
    assert not p.r.exists(p.keys.config)
    assert hmap(p, p.keys.defaults) == {"max_parallelism": "10", "rate": "2/60000",
                                        "max_per_key": "1"}
    stats = p.client.stats()
    assert (stats.settings, stats.paused) == (hmap(p, p.keys.defaults), False)

    ids = [p.client.enqueue("work", i, concurrency_key=f"k{i % 3}") for i in range(6)]
    t2 = p.clock()
    p.ingest(t2)
    started = p.start(t2)  # two a minute, one per key
    assert (started.ids, started.next_admission_ms) == (ids[:2], t2 + 30_000)
    assert zset(p, p.keys.key_queue("k0")) == [(ids[3], rank(0, 4))]


BAD_CONFIG: list[tuple[dict[str, str], str]] = [
    ({"max_parallelism": "-1"}, "config field max_parallelism has an unusable value"),
    ({"max_parallelism": "ten"}, "config field max_parallelism has an unusable value"),
    ({"paused": "2"}, "config field paused has an unusable value"),
    ({"rate": "0/1000"}, "config field rate has an unusable value"),
    ({"rate": "5"}, "config field rate has an unusable value"),
    ({"rate": "5/0"}, "config field rate has an unusable value"),
    ({"rate:work": "1.5/1000"}, "config field rate:work has an unusable value"),
    ({"max_per_key": "-1"}, "config field max_per_key has an unusable value"),
    ({"max_per_key:work": "none"}, "config field max_per_key:work has an unusable value"),
    ({"colour": "red"}, "config field colour has an unusable value"),
    ({}, "config sets nothing"),
    ({"max_parallelism": "5", "paused": "maybe"}, "config field paused has an unusable value"),
    ({"reset": "1", "rate": "fast"}, "config field rate has an unusable value"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_CONFIG,
                         ids=[",".join(f"{k}={v}" for k, v in f.items()) or "nothing"
                              for f, _ in BAD_CONFIG])
def test_a_config_entry_with_any_unusable_value_is_rejected_and_changes_nothing(
    p: Pool, fields: dict[str, str], reason: str,
) -> None:
    p.client.configure(wait=0, max_parallelism=3, rate_limits={"work": RateLimit(1, per=1)})
    p.ingest(p.clock())
    config = hmap(p, p.keys.config)
    before = without(p.snapshot(), p.keys.stats, p.keys.pending_start)

    entry = text(p.r.xadd(p.keys.pending_start, {"op": "config", **fields}))  # type: ignore[dict-item]
    assert p.ingest(p.clock()).outcomes == [(entry, Code.REJECTED)]
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert (text(record["reason"]), record["entry"]) == (reason, entry.encode())
    assert hmap(p, p.keys.config) == config == {"max_parallelism": "3", "rate:work": "1/1000"}
    assert without(p.snapshot(), p.keys.stats, p.keys.pending_start, p.keys.rejected) == before
    assert p.stat("rejected") == 1


def test_configure_refuses_unusable_values_before_writing_anything(p: Pool) -> None:
    bads: list[dict[str, Any]] = [{"max_parallelism": -1}, {"max_per_key": -1},
                                  {"max_per_key_for": {"w": -2}}, {}]
    for bad in bads:
        with pytest.raises(ConfigurationError):
            p.client.configure(wait=0, **bad)
    with pytest.raises(ConfigurationError):
        RateLimit(0)
    assert p.r.xlen(p.keys.pending_start) == 0


# -- cron ticks ---------------------------------------------------------------------------------


EVERY_MINUTE = CronJob("tick", parse_schedule(60), catch_up=False, grace=60)


def _tick(p: Pool, job: CronJob, decision: TickDecision, token: str | None = None) -> list[Any]:
    """Run the fenced tick script as the main loop does (the script names the tick's job)."""
    (fields,) = p.client.build_entries(job.name, [()])
    reply = p.call(tick_call(p.keys, token or p.token, job, decision, fields))
    return [Code(reply[0]), reply[1]]


def test_a_cron_tick_enqueues_one_job_keyed_by_its_tick_and_records_the_tick(p: Pool) -> None:
    now = p.clock()
    tick = now // 60_000 * 60_000
    (decision,) = decide(EVERY_MINUTE, None, now)
    assert decision == TickDecision(tick, enqueue=True, next_ms=tick + 60_000)

    assert _tick(p, EVERY_MINUTE, decision) == [Code.OK, 1]
    job_id = f"cron:tick:{tick}"
    ((_, fields),) = entries(p.r.xrange(p.keys.pending_start))
    assert (fields["id"], fields["name"]) == (job_id.encode(), b"tick")
    assert p.r.sismember(p.keys.incoming, job_id)
    assert hmap(p, p.keys.cron) == {"tick": str(tick)}
    assert p.ingest(now).outcomes == [(job_id, Code.ENQUEUED)]
    assert p.state(job_id) == PENDING

    before = p.snapshot()
    assert _tick(p, EVERY_MINUTE, decision) == [Code.DUPLICATE_ENQUEUE, 0]
    assert p.snapshot() == before


def test_an_idempotency_key_shaped_like_a_cron_tick_makes_a_job_of_its_own(p: Pool) -> None:
    tick = p.clock() // 60_000 * 60_000
    user = p.client.enqueue("tick", key=f"cron:tick:{tick}")
    assert _tick(p, EVERY_MINUTE, TickDecision(tick, True, tick + 60_000)) == [Code.OK, 1]
    assert p.ingest(p.clock()).outcomes == [(user, Code.ENQUEUED),
                                            (f"cron:tick:{tick}", Code.ENQUEUED)]
    assert user != f"cron:tick:{tick}"


def test_a_missed_tick_that_is_skipped_is_recorded_without_a_job(p: Pool) -> None:
    tick = p.clock() // 60_000 * 60_000
    assert _tick(p, EVERY_MINUTE, TickDecision(tick, False, tick + 60_000)) == [Code.OK, 0]
    assert hmap(p, p.keys.cron) == {"tick": str(tick)}
    assert p.r.xlen(p.keys.pending_start) == p.r.scard(p.keys.incoming) == 0
    assert _tick(p, EVERY_MINUTE, TickDecision(tick, True, tick + 60_000))[0] == \
        Code.DUPLICATE_ENQUEUE


def test_a_cron_tick_with_an_old_token_is_not_leader_and_writes_nothing(p: Pool) -> None:
    old = p.token
    p.r.pexpire(p.keys.lease, 1)
    wait_until(lambda: not p.r.exists(p.keys.lease))
    assert p.acquire(OTHER).token == f"2:{OTHER}"
    tick = p.clock() // 60_000 * 60_000
    before = p.snapshot()
    assert _tick(p, EVERY_MINUTE, TickDecision(tick, True, tick + 60_000), old) == \
        [Code.NOT_LEADER, 0]
    assert p.snapshot() == before


T0 = 500_000 * HOUR  # an hour boundary


def _hourly(catch_up: bool) -> CronJob:
    return CronJob("report", parse_schedule(3600), catch_up=catch_up, grace=60)


@pytest.mark.parametrize("catch_up", [False, True])
def test_decide_enqueues_a_tick_within_its_grace(catch_up: bool) -> None:
    job = _hourly(catch_up)
    assert decide(job, T0 - HOUR, T0) == [TickDecision(T0, True, T0 + HOUR)]
    assert decide(job, T0 - HOUR, T0 + 60_000) == [TickDecision(T0, True, T0 + HOUR)]
    assert decide(job, T0, T0 + 60_000) == []  # already handled
    assert decide(job, T0 - HOUR, T0 - 1) == []  # not due yet


def test_decide_skips_a_missed_tick_without_catch_up() -> None:
    assert decide(_hourly(False), T0 - HOUR, T0 + 60_001) == [TickDecision(T0, False, T0 + HOUR)]


def test_decide_with_catch_up_enqueues_the_latest_missed_tick_once_and_never_older_ones() -> None:
    job = _hourly(True)
    now = T0 + 5 * HOUR + 120_000  # down for five hours and two minutes
    (decision,) = decide(job, T0, now)
    assert decision == TickDecision(T0 + 5 * HOUR, True, T0 + 6 * HOUR)
    assert decide(job, decision.tick_ms, now) == []
    assert decide(job, decision.tick_ms, T0 + 6 * HOUR) == [TickDecision(T0 + 6 * HOUR, True,
                                                                           T0 + 7 * HOUR)]


@pytest.mark.parametrize("catch_up", [False, True])
def test_decide_on_a_first_start_does_not_enqueue_a_stale_tick(catch_up: bool) -> None:
    job = _hourly(catch_up)
    assert decide(job, None, T0 + 120_000) == [TickDecision(T0, False, T0 + HOUR)]
    assert decide(job, None, T0 + 5_000) == [TickDecision(T0, True, T0 + HOUR)]


@pytest.mark.parametrize("catch_up", [False, True])
def test_after_a_handover_every_tick_within_its_grace_runs_and_the_missed_one_is_recorded(
        catch_up: bool) -> None:
    """A one-second cron whose leader was SIGKILLed: the ticks of the 5 s handover all run,
    oldest first; with a gap longer than the grace, the latest missed tick is recorded (skipped
    unless catch_up) and the ticks within the grace run."""
    assert decide(CronJob("beat", parse_schedule(1), catch_up, grace=60.0), T0, T0 + 5_000) == [
        TickDecision(T0 + i, True, T0 + i + 1_000) for i in range(1_000, 5_001, 1_000)]
    job = CronJob("beat", parse_schedule(1), catch_up, grace=3.0)
    assert decide(job, T0, T0 + 10_000) == [
        TickDecision(T0 + 6_000, catch_up, T0 + 7_000),
        *(TickDecision(T0 + i, True, T0 + i + 1_000) for i in range(7_000, 10_001, 1_000))]
    long_down = decide(job, T0, T0 + 3_600_000, limit=10)
    assert long_down[0] == TickDecision(T0 + 3_596_000, catch_up, T0 + 3_597_000)
    assert [d.tick_ms for d in long_down[1:]] == [T0 + i for i in range(3_597_000, 3_600_001,
                                                                         1_000)]


class CronCaller:
    """What MainLoop._cron does for one periodic job: decide from its own view of the last
    tick, then run the fenced tick script (a refused token ends its leadership)."""

    def __init__(self, p: Pool, token: str, last: int | None) -> None:
        self.p, self.token, self.last = p, token, last

    def tick(self, now: int) -> Code | None:
        decisions = decide(EVERY_MINUTE, self.last, now)
        if not decisions:
            return None
        (decision,) = decisions
        code, _ = _tick(self.p, EVERY_MINUTE, decision, self.token)
        if code != Code.NOT_LEADER:
            self.last = decision.tick_ms
        return Code(code)


def test_two_main_loops_around_a_leader_change_still_yield_one_job_per_tick(p: Pool) -> None:
    tick = p.clock() // 60_000 * 60_000
    first = CronCaller(p, p.token, None)
    assert first.tick(tick + 100) == Code.OK
    p.r.pexpire(p.keys.lease, 1)
    wait_until(lambda: not p.r.exists(p.keys.lease))
    second = CronCaller(p, p.acquire(OTHER).token, None)  # it read `cron` before the first wrote

    assert second.tick(tick + 200) == Code.DUPLICATE_ENQUEUE
    assert first.tick(tick + 60_100) == Code.NOT_LEADER  # the old leader, still running
    assert second.tick(tick + 60_150) == Code.OK
    assert first.tick(tick + 60_200) == Code.NOT_LEADER
    assert second.tick(tick + 60_300) is None

    ids = [f"cron:tick:{tick}", f"cron:tick:{tick + 60_000}"]
    assert p.ingest(tick + 60_300, second.token).outcomes == [(i, Code.ENQUEUED) for i in ids]
    assert sorted(text(k) for k in p.r.hkeys(p.keys.unstarted)) == sorted(ids)
    assert hmap(p, p.keys.cron) == {"tick": str(tick + 60_000)}


# -- stats --------------------------------------------------------------------------------------


def test_stats_show_ready_and_held_jobs_priorities_and_the_settings_in_force(
    make_pool: MakePool,
) -> None:
    p = make_pool({"rate:work": "1/60000", "max_per_key": "1"})
    w1, w2 = p.client.enqueue("work", 1), p.client.enqueue("work", 2)
    k1 = p.client.enqueue("other", 1, concurrency_key="k")
    k2 = p.client.enqueue("other", 2, concurrency_key="k")
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == [w1, k1]

    p.client.configure(wait=0, paused=True, max_parallelism=3, rate_limits={"other": None})
    ready = [p.client.enqueue("other", priority=n) for n in (5, 0, 0, -2)]
    t1 = p.clock()
    p.ingest(t1)
    assert p.start(t1).ids == []

    s = p.client.stats()
    assert (s.ready, s.held_by_rate, s.held_by_key) == (4, 1, 1)
    assert s.ready_by_priority == {-2: 1, 0: 2, 5: 1}
    assert (s.pending, s.running, s.retrying) == (6, 2, 0)
    assert s.settings == {"max_parallelism": "3", "paused": "1", "rate:work": "1/60000",
                          "rate:other": "none", "max_per_key": "1"}
    assert (s.paused, s.max_parallelism) == (True, 3)
    assert zset(p, p.keys.name_queue("work")) == [(w2, rank(0, 2))]
    assert zset(p, p.keys.key_queue("k")) == [(k2, rank(0, 4))]
    assert [m for m, _ in zset(p, p.keys.ready)] == ready
