"""One test per row of the job state machine (wire/statemachine.py TABLE), legal and illegal.

Each test sets a state up the way clients and workers do (entries appended to pendingStart and
pendingCompletion, XREADGROUP on dispatch), runs the real Lua scripts with an explicit `now` (ms),
and checks the codes, the resulting Redis state, and that the table predicts the same row.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import redis
import redis.crc
from helpers.scripts import (
    BACKOFF_MS,
    BASE,
    COVERED,
    FAR,
    LEASE_MS,
    OTHER,
    OWNER,
    RETENTION_MS,
    SEED,
    Pool,
    assert_table,
    covers,
    entries,
    jitter,
    retry_due,
    wait_until,
)

from workpool import Retry, State, Workpool
from workpool.core.schedule import CronJob, parse_schedule
from workpool.mainloop.cron import TickDecision, tick_call
from workpool.wire import limits, protocol
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import decode, encode, text
from workpool.wire.replies import ReapReply, parse_batch, parse_lease, parse_reap
from workpool.wire.scripts import Call, run, scripts
from workpool.wire.statemachine import (
    ABSENT,
    CANCELED,
    FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    TABLE,
    step,
)

COVERING_MODULES = ("test_admission",)  #: other test modules whose tests mark TABLE rows


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """A pool with max_parallelism 10, 3 attempts, 1 s backoff doubling, and the lease held."""
    client = Workpool("t", redis_url, max_parallelism=10, retention=RETENTION_MS / 1000,
                      retry=Retry(max_attempts=3, initial_backoff=BACKOFF_MS / 1000, base=BASE))
    # A silent worker is lost at the first reap here; the suspicion grace has its own tests.
    engine = Engine(client.keys, replace(client.config.engine_settings(), silence_grace_ms=0))
    lease = parse_lease(run(redis_client, [engine.acquire(OWNER, LEASE_MS, 10)])[0])
    assert (lease.code, lease.token) == (Code.OK, f"1:{OWNER}")
    try:
        yield Pool(redis_client, client, engine, lease.token)
    finally:
        client.close()


# -- enqueue ------------------------------------------------------------------------------------


@covers("enqueue", Code.ENQUEUED)
def test_an_enqueued_job_is_pending_at_once_and_stays_pending_once_ingested(p: Pool) -> None:
    job_id = p.client.enqueue("work", 1, 2, kwargs={"x": 3})
    assert p.client.status(job_id).state == State.PENDING
    assert p.job(job_id) == {}
    assert [e for e, _ in entries(p.r.xrange(p.keys.pending_start))] == [job_id]  # entry id

    t = p.clock()
    assert p.ingest(t).outcomes == [(job_id, Code.ENQUEUED)]
    h = p.job(job_id)
    assert (h["state"], h["attempts"], h["name"]) == (b"pending", b"0", b"work")
    assert not p.r.exists(p.keys.job(job_id))  # packed in `unstarted` until its first start
    assert decode(h["args"], "msgpack") == [1, 2]
    assert decode(h["kwargs"], "msgpack") == {"x": 3}
    assert (h["max_attempts"], h["backoff_ms"], h["base"]) == (b"3", b"1000", b"2")
    enqueued_at = int(h["enqueued_at"])
    assert enqueued_at <= t
    assert int(h["due_at"]) == enqueued_at
    assert p.score(p.keys.due, job_id) is None  # due already: straight into the ready set
    assert p.score(p.keys.ready, job_id) == int(h["seq"])
    assert not p.r.sismember(p.keys.incoming, job_id)
    assert p.r.xlen(p.keys.pending_start) == 0
    st = p.client.status(job_id)  # read from the packed form
    assert (st.state, st.name, st.attempts, st.max_attempts, st.enqueued_at) == (
        State.PENDING, "work", 0, 3, enqueued_at / 1000)
    assert p.stat("enqueued") == 1
    assert_table("enqueue", ABSENT, Code.ENQUEUED, PENDING)


MALFORMED: list[tuple[dict[str, str | bytes], str]] = [
    ({"op": "enqueue", "id": "bad"}, "field name must be a name"),
    ({"id": "bad", "name": "two words"}, "field name must be a name"),
    ({"id": "bad", "name": "work", "on_complete": "x" * 201}, "field on_complete must be a name"),
    ({"id": "bad", "name": "work", "enc": "pickle"}, "field enc must be msgpack or json"),
    ({"id": "bad", "name": "work", "args": b"\x93\x01"}, "field args is not valid msgpack"),
    ({"id": "bad", "name": "work", "enc": "json", "args": "[1,"}, "field args is not valid json"),
    ({"id": "bad", "name": "work", "args": b"\x91\xc1"}, "field args is not valid msgpack"),
    ({"id": "bad", "name": "work", "args": encode([1]) + b"\x01"}, "field args is not valid"),
    ({"id": "bad", "name": "work", "args": b"\xc6\x00\x00\x00\x09x"}, "field args is not valid"),
    ({"id": "bad", "name": "work", "args": b"\xdd\x00\x01\x00\x00"}, "field args is not valid"),
    ({"id": "bad", "name": "work", "args": encode(5)}, "field args must encode an array"),
    ({"id": "bad", "name": "work", "kwargs": encode([1])}, "field kwargs must encode a map"),
    ({"id": "bad", "name": "work", "kwargs": encode({1: 2})},
     "field kwargs must encode a map with string keys"),
    ({"id": "bad", "name": "work", "kwargs": encode({"a": 1, b"b": 2})},
     "field kwargs must encode a map with string keys"),
    ({"id": "bad", "name": "work", "enc": "json", "args": "{}"}, "field args must encode an array"),
    ({"id": "bad", "name": "work", "enc": "json", "args": '{"1": 2}'},
     "field args must encode an array"),
    ({"id": "bad", "name": "work", "enc": "json", "kwargs": " []"},
     "field kwargs must encode a map"),
    ({"id": "bad", "name": "work", "context": b"\xd9"}, "field context is not valid msgpack"),
    ({"id": "bad", "name": "work", "max_attempts": "1.5"},
     "field max_attempts must be a whole number"),
    ({"id": "bad", "name": "work", "max_attempts": "0"},
     "field max_attempts is not a number from 1 to 1000000"),
    ({"id": "bad", "name": "work", "base": "1001"}, "field base is not a number from 1 to 1000"),
    ({"id": "bad", "name": "work", "timeout_ms": "1e13"}, "field timeout_ms is not a number"),
    ({"id": "bad", "name": "work", "initial_backoff_ms": "1e12"},
     "field initial_backoff_ms is not a number"),
    ({"id": "bad", "name": "work", "run_at_ms": "soon"}, "field run_at_ms is not a number"),
    ({"id": "bad", "name": "work", "run_after_ms": "nan"}, "field run_after_ms is not a number"),
    ({"op": "frobnicate", "id": "bad"}, "unknown op frobnicate"),
]


@covers("enqueue", Code.REJECTED)
@pytest.mark.parametrize(("fields", "reason"), MALFORMED, ids=[r for _, r in MALFORMED])
def test_a_malformed_enqueue_is_set_aside_with_its_raw_fields_and_the_batch_goes_on(
    p: Pool, fields: dict[str, str | bytes], reason: str,
) -> None:
    bad_entry = text(p.r.xadd(p.keys.pending_start, fields))  # type: ignore[arg-type]
    p.r.sadd(p.keys.incoming, "bad")
    good = p.client.enqueue("work", 1)

    reply = p.ingest(p.clock())
    assert reply.outcomes == [("bad", Code.REJECTED), (good, Code.ENQUEUED)]
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert record["entry"] == bad_entry.encode()
    assert text(record["reason"]).startswith(reason)
    kept = {k[2:]: v for k, v in record.items() if k.startswith("f.")}
    assert kept == {k: v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
    assert "cut" not in record  # small enough to keep whole
    assert p.state("bad") == ABSENT
    assert not p.r.sismember(p.keys.incoming, "bad")
    assert p.state(good) == PENDING
    assert p.r.xlen(p.keys.pending_start) == 0
    assert p.stat("rejected") == 1
    assert_table("enqueue", ABSENT, Code.REJECTED, ABSENT, "malformed")


def test_a_malformed_enqueue_with_the_id_of_an_existing_job_is_set_aside_not_a_duplicate(
    p: Pool,
) -> None:
    job_id = p.client.enqueue("work", 1, key="k")
    t = p.clock()
    p.ingest(t)
    before = p.job(job_id)
    p.r.xadd(p.keys.pending_start, {"id": job_id, "name": "work", "args": b"\xc1"})
    assert p.ingest(t + 1).outcomes == [(job_id, Code.REJECTED)]
    assert p.job(job_id) == before
    assert p.r.xlen(p.keys.rejected) == 1
    assert p.stat("duplicate_enqueues") == 0
    assert_table("enqueue", PENDING, Code.REJECTED, PENDING, "malformed")


@covers("cancel", Code.REJECTED)
def test_a_cancel_without_an_id_is_set_aside_and_changes_nothing(p: Pool) -> None:
    job_id = p.client.enqueue("work", 1)
    t = p.clock()
    p.ingest(t)
    p.r.xadd(p.keys.pending_start, {"op": "cancel"})
    assert p.ingest(t + 1).codes == [Code.REJECTED]
    assert p.state(job_id) == PENDING
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert text(record["reason"]) == "cancel needs field id"
    assert_table("cancel", ABSENT, Code.REJECTED, ABSENT, "malformed")


def test_an_entry_that_raises_is_set_aside_and_the_jobs_around_it_are_fully_admitted(
    p: Pool,
) -> None:
    p.r.set(p.keys.job("clobbered"), "not a hash")  # HMGET on it raises WRONGTYPE
    before = p.client.enqueue("work", 1)
    p.r.xadd(p.keys.pending_start, {"op": "cancel", "id": "clobbered"})
    after = p.client.enqueue("work", 2)
    reply = p.ingest(p.clock())
    assert reply.outcomes == [(before, Code.ENQUEUED), ("clobbered", Code.REJECTED),
                              (after, Code.ENQUEUED)]
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert "WRONGTYPE" in text(record["reason"])
    assert p.r.xlen(p.keys.pending_start) == 0
    assert p.score(p.keys.ready, before) is not None
    assert p.score(p.keys.ready, after) is not None
    assert {text(m) for m in p.r.hkeys(p.keys.unstarted)} == {before, after}


def test_a_job_hash_written_before_specs_were_packed_is_still_read_to_its_end(p: Pool) -> None:
    """An upgrade keeps jobs in flight: a hash of the earlier form (the spec's fields flat, no
    `spec`) is retried, started again with its arguments, and finished."""
    job_id, t = p.running_job(7)
    jk = p.keys.job(job_id)
    packed = p.r.hget(jk, "spec")
    assert isinstance(packed, bytes)
    p.r.hdel(jk, "spec")
    for name, value in protocol.spec_fields(packed).items():  # as the earlier engine wrote it
        p.r.hset(jk, name, value)
    p.finish_run(job_id, 1, ok=False)
    assert p.apply(t).codes == [Code.RETRY_SCHEDULED]  # its retry policy read flat
    due = retry_due(t, job_id, 1)
    assert p.score(p.keys.due, job_id) == due
    assert p.start(due).ids == [job_id]
    ((_, f),) = p.dispatched("run")[-1:]
    assert (f["name"], decode(f["args"], "msgpack"), f["attempt"]) == (b"work", [7], b"2")
    p.finish_run(job_id, 2, ok=True, result=70)
    assert p.apply(due).codes == [Code.SUCCEEDED]
    h = p.job(job_id)
    assert (h["state"], h["name"], decode(h["result"], "msgpack")) == (b"done", b"work", 70)


def test_start_reports_a_clobbered_request_stream_as_waiting_and_writes_all_it_meant_to(
    p: Pool,
) -> None:
    job_id = p.client.enqueue("work", 1)
    p.ingest(p.clock())
    p.r.delete(p.keys.pending_completion)
    p.r.set(p.keys.pending_completion, "not a stream")  # XLEN on it raises WRONGTYPE
    reply = p.start(p.clock())  # its stream lengths are read after its writes: never raising
    assert (reply.ids, reply.requests_waiting, reply.outcomes_waiting) == ([job_id], 0, 1)
    assert p.state(job_id) == "running"


def test_an_entry_of_thousands_of_fields_is_set_aside_bounded_and_the_stream_goes_on(
    p: Pool,
) -> None:
    """One huge malformed entry among good ones: each good one applied exactly once (a keyed job
    is queued in one place), the huge one set aside in a record of bounded size."""
    p.client.configure(wait=0, max_per_key=1)
    assert p.ingest(p.clock()).codes == [Code.CONFIGURED]
    keyed = p.client.enqueue("work", 1, concurrency_key="k")
    junk: dict[Any, Any] = {f"f{i}": "v" for i in range(4100)}
    huge = text(p.r.xadd(p.keys.pending_start, {"op": "enqueue", **junk}))  # no name
    after = p.client.enqueue("work", 2)
    reply = p.ingest(p.clock())
    assert reply.outcomes == [(keyed, Code.ENQUEUED), (huge, Code.REJECTED),
                              (after, Code.ENQUEUED)]
    assert p.r.xlen(p.keys.pending_start) == 0
    assert p.ingest(p.clock()).outcomes == []  # nothing left to fail on
    assert p.score(p.keys.ready, keyed) is not None
    assert p.r.zcard(p.keys.key_queue("k")) == 0
    assert p.r.hget(p.keys.key_heads, "k") == keyed.encode()
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert text(record["cut"]) == "kept 32 of 4101 fields, 123 of 23499 bytes"
    assert len([k for k in record if k.startswith("f.")]) == 32


def test_an_outcome_entry_of_thousands_of_fields_is_set_aside_and_the_outcome_behind_it_lands(
    p: Pool,
) -> None:
    job_id, _ = p.running_job(1)
    junk: dict[Any, Any] = {f"f{i}": "v" for i in range(4100)}
    p.r.xadd(p.keys.pending_completion, {"kind": "mystery", **junk})
    p.finish_run(job_id, 1, ok=True, result="done")
    assert p.apply(p.clock()).codes == [Code.REJECTED, Code.SUCCEEDED]
    assert p.state(job_id) == SUCCEEDED
    assert p.r.xlen(p.keys.pending_completion) == 0


def test_rejected_entries_are_kept_bounded_in_bytes_and_one_call_reads_a_bounded_amount(
    p: Pool,
) -> None:
    """Five 8 MB enqueues over the payload limit: each is set aside as a few KiB, and a script
    call stops reading once it has read CALL_BYTES (it still applies at least one entry)."""
    big = encode([b"x" * (8 << 20)])
    bad = [text(p.r.xadd(p.keys.pending_start, {"name": "work", "args": big}))
           for _ in range(5)]
    good = p.client.enqueue("work", 1)
    codes: list[Code] = []
    while p.r.xlen(p.keys.pending_start):
        reply = p.ingest(p.clock())
        assert reply.applied == 1  # each 8 MB entry fills a call's byte budget on its own
        codes += reply.codes
    assert codes == [Code.REJECTED] * 5 + [Code.ENQUEUED]
    assert [e for e, _ in entries(p.r.xrange(p.keys.rejected))] != []
    records = [f for _, f in entries(p.r.xrange(p.keys.rejected))]
    assert [text(f["entry"]) for f in records] == bad
    assert all(text(f["reason"]).startswith("payload of ") for f in records)
    assert all(len(f["f.args"]) < limits.REJECTED_ENTRY_BYTES for f in records)
    assert int(p.r.memory_usage(p.keys.rejected) or 0) < 64 * 1024
    assert p.client.status(good).state == State.PENDING


def test_an_unusable_setting_written_behind_the_engines_back_cannot_stop_a_start(
    p: Pool,
) -> None:
    """A rate of 2 per 10^17 ms (it once passed validation, then PEXPIRE failed after startJobs
    had dispatched): the engine refuses it at ingest, and one already stored (an older version,
    a hand edit) counts as unset, so the job starts once and is counted running."""
    eid = text(p.r.xadd(p.keys.pending_start, {"op": "config",
                                               "rate:work": "2/100000000000000000"}))
    assert p.ingest(p.clock()).outcomes == [(eid, Code.REJECTED)]
    p.r.hset(p.keys.config, "rate:work", "2/100000000000000000")
    p.r.hset(p.keys.config, "max_per_key", "many")
    job_id = p.client.enqueue("work", 1, concurrency_key="k")
    t = p.clock()
    assert p.ingest(t).codes == [Code.ENQUEUED]
    assert p.start(t).ids == [job_id]
    assert p.start(t).ids == []
    assert p.start(t).ids == []
    assert len(p.dispatched("run")) == 1
    assert p.score(p.keys.running, job_id) == t
    assert p.job(job_id)["attempts"] == b"1"


@pytest.mark.parametrize(("argv", "index"), [(3, "batch"), (4, "now")])
def test_a_script_given_an_unusable_argument_fails_whole_and_writes_nothing(
    p: Pool, argv: int, index: str,
) -> None:
    p.client.enqueue("work", 1)
    t = p.clock()
    assert p.ingest(t).codes == [Code.ENQUEUED]
    before = p.snapshot()
    call = p.engine.start(p.token, t)
    args = list(call.args)
    args[argv - 1] = "lots"
    with pytest.raises(redis.ResponseError, match=f"ARGV\\[{argv}\\] must be a whole number"):
        p.call(replace(call, args=args))
    assert p.snapshot() == before, index


def test_a_fractional_ms_option_from_a_foreign_client_is_whole_ms_in_the_job(p: Pool) -> None:
    p.r.xadd(p.keys.pending_start, {"id": "frac", "name": "work", "timeout_ms": "1500.7",
                                    "run_after_ms": "0.5", "initial_backoff_ms": "10.9"})
    t = p.clock()
    assert p.ingest(t).outcomes == [("frac", Code.ENQUEUED)]
    assert p.start(t + 1).ids == ["frac"]
    h = p.job("frac")
    assert (h["timeout_ms"], h["backoff_ms"]) == (b"1500", b"10")
    ((_, dispatched),) = p.dispatched("run")
    assert dispatched["timeout_ms"] == b"1500"


WELL_FORMED: list[tuple[Any, ...]] = [
    (b"\x00\xff",),
    (b"x" * 300, b"y" * 70_000),
    ("s" * 40, "t" * 300, "u" * 70_000),
    (list(range(20)), {str(i): i for i in range(20)}),
    (-1, -200, -70_000, 2**40, -(2**40), 2**64 - 1, 1.5, None, True, False),
    ([[[{"deep": [b"bin"]}]]],),
    (msgpack.ExtType(1, b"ab"), msgpack.ExtType(2, b"x" * 300)),
]


@pytest.mark.parametrize("args", WELL_FORMED, ids=range(len(WELL_FORMED)))
def test_an_enqueue_of_any_msgpack_value_is_accepted_bytes_included(
    p: Pool, args: tuple[Any, ...],
) -> None:
    job_id = p.client.enqueue("work", *args, kwargs={"blob": b"\x01"}, on_complete="record",
                              context=b"\x00" * 10)
    assert p.ingest(p.clock()).outcomes == [(job_id, Code.ENQUEUED)]
    h = p.job(job_id)
    assert decode(h["args"], "msgpack") == list(args)
    assert decode(h["context"], "msgpack") == b"\x00" * 10


@covers("enqueue", Code.DUPLICATE_ENQUEUE)
def test_a_second_enqueue_with_the_same_idempotency_key_makes_no_second_job(p: Pool) -> None:
    first = p.client.enqueue("work", 1, key="order-7")
    second = p.client.enqueue("work", 2, key="order-7")
    assert first == second == "key:order-7"
    t = p.clock()
    reply = p.ingest(t)
    assert reply.outcomes == [(first, Code.ENQUEUED), (first, Code.DUPLICATE_ENQUEUE)]
    assert decode(p.job(first)["args"], "msgpack") == [1]
    assert p.r.zcard(p.keys.ready) == 1
    p.client.enqueue("work", 9, key="order-7")  # a later batch: found packed in `unstarted`
    assert p.ingest(t).outcomes == [(first, Code.DUPLICATE_ENQUEUE)]
    assert_table("enqueue", PENDING, Code.DUPLICATE_ENQUEUE, PENDING)

    assert p.start(t).ids == [first]
    p.client.enqueue("work", 3, key="order-7")
    assert p.ingest(t + 1).outcomes == [(first, Code.DUPLICATE_ENQUEUE)]
    h = p.job(first)
    assert (h["state"], h["attempts"]) == (b"running", b"1")
    assert decode(h["args"], "msgpack") == [1]
    assert p.r.zcard(p.keys.ready) == 0
    assert p.stat("duplicate_enqueues") == 3
    assert_table("enqueue", RUNNING, Code.DUPLICATE_ENQUEUE, RUNNING)


# -- start --------------------------------------------------------------------------------------


def test_a_job_with_run_at_is_not_started_before_it_is_due(p: Pool) -> None:
    at = p.clock() + 60_000
    job_id = p.client.enqueue("work", run_at=at / 1000)
    assert p.ingest(at - 60_000).codes == [Code.ENQUEUED]
    assert int(p.job(job_id)["due_at"]) == at == p.score(p.keys.due, job_id)

    early = p.start(at - 1)
    assert (early.started, early.ids, early.next_due_ms) == (0, [], at)
    assert p.state(job_id) == PENDING
    with pytest.raises(LookupError):
        step("start", PENDING, {})  # not due: no row applies, the job stays pending
    assert p.start(at).ids == [job_id]
    assert p.state(job_id) == RUNNING


def test_a_job_with_run_after_is_due_that_long_after_its_enqueue(p: Pool) -> None:
    job_id = p.client.enqueue("work", run_after=30, run_at=1.0)  # the later of the two wins
    p.ingest(p.clock())
    h = p.job(job_id)
    due = int(h["enqueued_at"]) + 30_000
    assert int(h["due_at"]) == due == p.score(p.keys.due, job_id)
    assert p.start(due - 1).ids == []
    assert p.state(job_id) == PENDING
    assert p.start(due).ids == [job_id]


def test_jobs_start_only_while_running_is_below_max_parallelism(p: Pool) -> None:
    p.client.configure(wait=0, max_parallelism=2)
    ids = {p.client.enqueue("work", i) for i in range(3)}
    t = p.clock()
    assert p.ingest(t).codes == [Code.CONFIGURED] + [Code.ENQUEUED] * 3
    first = p.start(t)
    assert (first.started, first.running, first.max_parallelism) == (2, 2, 2)
    (waiting,) = ids - set(first.ids)
    assert p.start(t + FAR).started == 0
    assert p.state(waiting) == PENDING
    assert p.r.zcard(p.keys.running) == 2

    p.finish_run(first.ids[0], 1, ok=True)
    assert p.apply(t + 1).codes == [Code.SUCCEEDED]
    assert p.start(t + 1).ids == [waiting]
    assert p.r.zcard(p.keys.running) == 2


def test_max_parallelism_zero_pauses_the_pool_until_a_config_entry_raises_it(p: Pool) -> None:
    p.client.configure(wait=0, max_parallelism=0)
    job_id = p.client.enqueue("work")
    t = p.clock()
    assert p.ingest(t).codes == [Code.CONFIGURED, Code.ENQUEUED]
    assert p.r.hget(p.keys.config, "max_parallelism") == b"0"
    paused = p.start(t + FAR)
    assert (paused.started, paused.max_parallelism) == (0, 0)
    assert p.state(job_id) == PENDING

    p.client.configure(wait=0, max_parallelism=1)
    assert p.ingest(t + FAR).codes == [Code.CONFIGURED]
    assert p.start(t + FAR).ids == [job_id]
    assert p.state(job_id) == RUNNING


@covers("start", Code.STARTED)
def test_each_start_increments_the_attempt_and_dispatches_that_attempt(p: Pool) -> None:
    job_id = p.client.enqueue("work", 7)
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == [job_id]
    h = p.job(job_id)
    assert (h["state"], h["attempts"], h["started_at"]) == (b"running", b"1", str(t).encode())
    assert not p.r.hexists(p.keys.unstarted, job_id)  # its first start moved its spec to its hash
    assert (h["name"], decode(h["args"], "msgpack"), h["max_attempts"]) == (b"work", [7], b"3")
    ((entry, f),) = p.dispatched()
    assert h["dispatch"] == entry.encode()
    assert (f["kind"], f["id"], f["attempt"], f["name"]) == (b"run", job_id.encode(), b"1", b"work")
    assert decode(f["args"], "msgpack") == [7]
    assert p.score(p.keys.running, job_id) == t
    assert p.score(p.keys.due, job_id) is None
    assert_table("start", PENDING, Code.STARTED, RUNNING, "due_and_slot_free")

    p.finish_run(job_id, 1, ok=False)
    assert p.apply(t + 10).codes == [Code.RETRY_SCHEDULED]
    due = retry_due(t + 10, job_id, 1)
    assert p.start(due).ids == [job_id]
    h = p.job(job_id)
    assert (h["state"], h["attempts"]) == (b"running", b"2")
    ((entry, f),) = p.dispatched()  # attempt 1's entry is gone
    assert (h["dispatch"], f["attempt"]) == (entry.encode(), b"2")
    assert p.stat("started") == 2
    assert_table("start", RETRYING, Code.STARTED, RUNNING, "due_and_slot_free")


def test_ended_attempts_entries_wait_behind_an_older_pending_one_then_go_in_one_trim(
        p: Pool) -> None:
    # acknowledged entries are trimmed in bulk up to the oldest one still pending, not deleted
    # one XDEL each: two later attempts end first and stay until the first one ends
    ids = [p.client.enqueue("work", i) for i in range(3)]
    t = p.clock()
    p.ingest(t)
    assert p.start(t).ids == ids
    p.beat("w1")
    assert len(p.deliver("w1")) == 3
    for job_id in ids[1:]:
        p.finish_run(job_id, 1, ok=True)
    assert p.apply(t + 1).codes == [Code.SUCCEEDED] * 2
    assert (len(p.dispatched()), p.held()) == (3, 1)  # all kept: the oldest is still pending
    p.finish_run(ids[0], 1, ok=True)
    assert p.apply(t + 2).codes == [Code.SUCCEEDED]
    assert (p.r.xlen(p.keys.dispatch), p.held()) == (0, 0)


@pytest.mark.parametrize("damage", ["deleted", "group_destroyed"])
def test_an_outcome_lands_whole_when_the_dispatch_stream_was_damaged_behind_the_engine(
        p: Pool, damage: str) -> None:
    # the bulk trim runs after the outcome's writes: a dispatch stream deleted (or its group
    # destroyed) by someone else must not fail the script half-way; the outcome is applied
    job_id, t = p.running_job()
    if damage == "deleted":
        p.r.delete(p.keys.dispatch)
    else:
        p.r.xgroup_destroy(p.keys.dispatch, GROUP)
    p.finish_run(job_id, 1, ok=True, result="ok")
    assert p.apply(t + 1).codes == [Code.SUCCEEDED]
    assert p.job(job_id)["state"] == b"done"


def test_behind_an_attempt_pending_for_long_the_dispatch_stream_stays_bounded(
        p: Pool) -> None:
    # an attempt that never ends pins the trim point; past DISPATCH_SLACK entries behind it,
    # the ended ones are deleted one by one again
    slack = limits.DISPATCH_SLACK
    p.client.configure(wait=0, max_parallelism=2 * slack)
    assert p.ingest(p.clock()).codes == [Code.CONFIGURED]
    pinned, t = p.running_job()
    chunk = 1000
    for first in range(0, slack + chunk, chunk):
        ids = p.client.enqueue_many("work", [(i,) for i in range(first, first + chunk)])
        t = p.clock()
        while p.ingest(t).applied:
            pass
        while p.start(t).started:
            pass
        taken = p.deliver("w1", count=chunk)
        assert len(taken) == chunk
        for job_id in ids:
            p.finish_run(job_id, 1, ok=True)
        while p.apply(t).applied:
            pass
    assert p.held() == 1  # only the pinned attempt
    batch = p.engine.settings.batch  # kept behind it until past the slack, then no more
    assert slack - batch <= p.r.xlen(p.keys.dispatch) <= slack + batch
    p.finish_run(pinned, 1, ok=True)
    assert p.apply(t).codes == [Code.SUCCEEDED]
    assert p.r.xlen(p.keys.dispatch) == 0


# -- attempt outcomes ---------------------------------------------------------------------------


@covers("succeed", Code.SUCCEEDED)
def test_success_of_the_current_attempt_makes_the_job_done_succeeded_with_its_result(
    p: Pool,
) -> None:
    job_id, t = p.running_job()
    pubsub = p.r.pubsub()
    pubsub.subscribe(p.keys.done_channel(job_id))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    p.finish_run(job_id, 1, ok=True, result={"sum": 42})
    now = t + 5
    assert p.apply(now).outcomes == [(job_id, Code.SUCCEEDED)]

    h = p.job(job_id)
    assert (h["state"], h["outcome"]) == (b"done", b"succeeded")
    assert h["finished_at"] == str(now).encode()
    assert decode(h["result"], "msgpack") == {"sum": 42}
    assert "error" not in h
    assert p.score(p.keys.running, job_id) is None
    assert (p.r.xlen(p.keys.dispatch), p.held(), p.r.xlen(p.keys.pending_completion)) == (0, 0, 0)
    assert 0 < p.r.pttl(p.keys.job(job_id)) <= RETENTION_MS
    assert p.stat("succeeded") == 1
    assert p.client.status(job_id).result == {"sum": 42}
    message = pubsub.get_message(timeout=5)
    assert message is not None
    assert message["data"] == b"done"
    pubsub.close()
    assert_table("succeed", RUNNING, Code.SUCCEEDED, SUCCEEDED, "current_attempt")


@covers("fail", Code.RETRY_SCHEDULED)
def test_a_failed_attempt_with_attempts_left_is_retrying_after_backoff_times_jitter(
    p: Pool,
) -> None:
    job_id, t = p.running_job()
    p.finish_run(job_id, 1, ok=False, error="boom", error_type="ValueError")
    now = t + 7
    assert p.apply(now).outcomes == [(job_id, Code.RETRY_SCHEDULED)]
    due = retry_due(now, job_id, 1)
    assert now + 500 <= due < now + 1500
    h = p.job(job_id)
    assert (h["state"], h["attempts"], h["due_at"]) == (b"retrying", b"1", str(due).encode())
    assert (h["error"], h["error_type"]) == (b"boom", b"ValueError")
    assert p.score(p.keys.due, job_id) == due
    assert p.score(p.keys.running, job_id) is None
    assert (p.r.xlen(p.keys.dispatch), p.held()) == (0, 0)
    assert (p.stat("retried"), p.stat("retrying")) == (1, 1)
    assert_table("fail", RUNNING, Code.RETRY_SCHEDULED, RETRYING, "current_attempt_may_retry",
                 "current_attempt")

    assert p.start(due).ids == [job_id]
    p.finish_run(job_id, 2, ok=False)
    later = due + 3
    assert p.apply(later).codes == [Code.RETRY_SCHEDULED]
    second = retry_due(later, job_id, 2)
    assert later + 1000 <= second < later + 3000
    assert p.score(p.keys.due, job_id) == second


def test_a_retrying_job_holds_no_slot(p: Pool) -> None:
    p.client.configure(wait=0, max_parallelism=1)
    p.ingest(p.clock())
    job_id, now = p.retrying_job()
    other = p.client.enqueue("work")
    p.ingest(now)
    started = p.start(now + 1)
    assert (started.ids, started.running) == ([other], 1)
    assert p.state(job_id) == RETRYING


def test_a_retrying_job_runs_again_once_its_backoff_is_due(p: Pool) -> None:
    job_id, now = p.retrying_job()
    due = retry_due(now, job_id, 1)
    assert p.start(due - 1).ids == []
    assert p.state(job_id) == RETRYING
    assert p.start(due).ids == [job_id]
    h = p.job(job_id)
    assert (h["state"], h["attempts"]) == (b"running", b"2")
    assert p.score(p.keys.running, job_id) == due
    assert p.stat("retrying") == 0


@covers("fail", Code.FAILED)
def test_the_failure_of_the_last_attempt_makes_the_job_done_failed(p: Pool) -> None:
    job_id, now = p.retrying_job(retry=Retry(max_attempts=2, initial_backoff=0.01))
    due = retry_due(now, job_id, 1, backoff_ms=10)
    assert p.start(due).ids == [job_id]
    p.finish_run(job_id, 2, ok=False, error="still broken", error_type="KeyError")
    assert p.apply(due + 1).outcomes == [(job_id, Code.FAILED)]
    h = p.job(job_id)
    assert (h["state"], h["outcome"], h["attempts"]) == (b"done", b"failed", b"2")
    assert (h["error"], h["error_type"]) == (b"still broken", b"KeyError")
    assert h["finished_at"] == str(due + 1).encode()
    assert p.score(p.keys.due, job_id) is None
    assert p.score(p.keys.running, job_id) is None
    assert 0 < p.r.pttl(p.keys.job(job_id)) <= RETENTION_MS
    assert p.stat("failed") == 1
    assert p.client.status(job_id).outcome == "failed"
    assert_table("fail", RUNNING, Code.FAILED, FAILED, "current_attempt")


def test_a_non_retryable_failure_makes_the_job_done_failed_at_once(p: Pool) -> None:
    job_id, t = p.running_job()
    p.finish_run(job_id, 1, ok=False, retryable=False, error_type="NonRetryableError")
    assert p.apply(t + 1).outcomes == [(job_id, Code.FAILED)]
    h = p.job(job_id)
    assert (h["state"], h["outcome"], h["attempts"], h["max_attempts"]) == \
        (b"done", b"failed", b"1", b"3")
    assert h["error_type"] == b"NonRetryableError"
    assert p.score(p.keys.due, job_id) is None
    assert p.start(t + FAR).started == 0


# -- cancel -------------------------------------------------------------------------------------


@covers("cancel", Code.CANCEL_MARKED)
def test_a_cancel_of_a_running_job_marks_it_and_its_failure_is_never_retried(p: Pool) -> None:
    job_id, t = p.running_job()
    p.client.cancel(job_id, wait=0)
    assert p.ingest(t + 1).outcomes == [(job_id, Code.CANCEL_MARKED)]
    h = p.job(job_id)
    assert (h["state"], h["cancel"]) == (b"running", b"1")
    assert p.score(p.keys.running, job_id) == t
    assert p.client.status(job_id).cancel_requested
    assert p.stat("cancel_marked") == 1
    assert_table("cancel", RUNNING, Code.CANCEL_MARKED, RUNNING, "not_cancel_requested")

    p.finish_run(job_id, 1, ok=False, retryable=True)
    assert p.apply(t + 2).outcomes == [(job_id, Code.FAILED)]
    assert p.state(job_id) == FAILED
    assert p.score(p.keys.due, job_id) is None
    assert p.start(t + FAR).started == 0
    assert_table("fail", RUNNING, Code.FAILED, FAILED, "current_attempt")


def test_a_cancel_of_a_running_job_lets_its_success_stand(p: Pool) -> None:
    job_id, t = p.running_job()
    p.client.cancel(job_id, wait=0)
    assert p.ingest(t + 1).codes == [Code.CANCEL_MARKED]
    p.finish_run(job_id, 1, ok=True, result="fine")
    assert p.apply(t + 2).outcomes == [(job_id, Code.SUCCEEDED)]
    assert p.state(job_id) == SUCCEEDED
    assert decode(p.job(job_id)["result"], "msgpack") == "fine"


def _assert_one_delivery_recorded(p: Pool, job_id: str) -> None:
    h = p.job(job_id)
    ((entry, f),) = p.dispatched("cb")
    assert (f["id"], f["n"]) == (job_id.encode(), b"1")
    assert (h["cb"], h["cb_n"], h["cb_entry"]) == (b"pending", b"1", entry.encode())
    assert p.r.pttl(p.keys.job(job_id)) == -1  # kept until the delivery is closed


@covers("cancel", Code.CANCELED)
def test_a_cancel_of_a_pending_job_cancels_it_and_records_one_on_complete_delivery(
    p: Pool,
) -> None:
    job_id = p.client.enqueue("work", on_complete="record", context={"user": 1})
    t = p.clock()
    p.ingest(t)
    p.client.cancel(job_id, wait=0)
    assert p.ingest(t + 1).outcomes == [(job_id, Code.CANCELED)]
    h = p.job(job_id)
    assert (h["state"], h["outcome"], h["cancel"]) == (b"canceled", b"canceled", b"1")
    assert h["finished_at"] == str(t + 1).encode()
    assert decode(h["context"], "msgpack") == {"user": 1}
    assert (h["name"], h["attempts"], h["cancel_attempt"]) == (b"work", b"0", b"0")
    assert not p.r.hexists(p.keys.unstarted, job_id)  # its hash, written at its cancel
    _assert_one_delivery_recorded(p, job_id)
    assert p.score(p.keys.due, job_id) is None
    assert p.score(p.keys.ready, job_id) is None
    assert p.stat("canceled") == 1
    assert p.start(t + FAR).started == 0
    assert_table("cancel", PENDING, Code.CANCELED, CANCELED)


def test_a_cancel_of_a_retrying_job_cancels_it_and_records_one_on_complete_delivery(
    p: Pool,
) -> None:
    job_id, now = p.retrying_job(on_complete="record")
    assert p.stat("retrying") == 1
    p.client.cancel(job_id, wait=0)
    assert p.ingest(now + 1).outcomes == [(job_id, Code.CANCELED)]
    assert p.state(job_id) == CANCELED
    _assert_one_delivery_recorded(p, job_id)
    assert p.score(p.keys.due, job_id) is None
    assert (p.stat("retrying"), p.stat("canceled")) == (0, 1)
    assert p.start(now + FAR).started == 0
    assert_table("cancel", RETRYING, Code.CANCELED, CANCELED)


@covers("cancel", Code.CANCEL_NOOP)
def test_a_cancel_of_a_finished_job_changes_nothing(p: Pool) -> None:
    job_id, t = p.running_job()
    p.finish_run(job_id, 1, ok=True)
    p.apply(t + 1)
    before = p.job(job_id), p.dispatched()
    p.client.cancel(job_id, wait=0)
    assert p.ingest(t + 2).outcomes == [(job_id, Code.CANCEL_NOOP)]
    assert (p.job(job_id), p.dispatched()) == before
    assert p.stat("cancel_noop") == 1
    assert_table("cancel", SUCCEEDED, Code.CANCEL_NOOP, SUCCEEDED)


def test_a_second_cancel_is_a_harmless_noop(p: Pool) -> None:
    pending = p.client.enqueue("work", on_complete="record")
    p.client.cancel(pending, wait=0)
    p.client.cancel(pending, wait=0)
    t = p.clock()
    assert p.ingest(t).codes == [Code.ENQUEUED, Code.CANCELED, Code.CANCEL_NOOP]
    assert p.state(pending) == CANCELED
    assert len(p.dispatched("cb")) == 1
    assert_table("cancel", CANCELED, Code.CANCEL_NOOP, CANCELED)

    running, t = p.running_job(worker=None)
    p.client.cancel(running, wait=0)
    p.client.cancel(running, wait=0)
    assert p.ingest(t).codes == [Code.CANCEL_MARKED, Code.CANCEL_NOOP]
    assert (p.state(running), p.job(running)["cancel"]) == (RUNNING, b"1")
    assert (p.stat("canceled"), p.stat("cancel_marked"), p.stat("cancel_noop")) == (1, 1, 2)
    assert_table("cancel", RUNNING, Code.CANCEL_NOOP, RUNNING)


def test_a_cancel_of_an_unknown_job_is_a_noop(p: Pool) -> None:
    p.client.cancel("nope", wait=0)
    assert p.ingest(p.clock()).outcomes == [("nope", Code.CANCEL_NOOP)]
    assert p.state("nope") == ABSENT
    assert (p.r.xlen(p.keys.dispatch), p.r.zcard(p.keys.due)) == (0, 0)
    assert_table("cancel", ABSENT, Code.CANCEL_NOOP, ABSENT)


# -- stale and duplicate outcomes ---------------------------------------------------------------


@covers("succeed", Code.STALE_COMPLETION)
def test_a_batch_entry_applies_each_outcome_it_carries_and_sets_aside_what_is_malformed(
        p: Pool) -> None:
    ok_id, _ = p.running_job(1)
    failing, _ = p.running_job(2)
    items = [["kind", "run", "id", ok_id, "attempt", "1", "ok", "1", "result", b"\xc0"],
             ["kind", "run", "id", failing, "attempt", 1, "ok", "0", "retryable", "0",
              "error", "no", "error_type", "ValueError"],  # a number is read as its text
             ["kind", "run", "id", ["nested"]],  # not a flat array of strings
             ["kind", "nope", "id", "x"]]
    p.r.xadd(p.keys.pending_completion,
             {"kind": "batch", "o": msgpack.packb(items, use_bin_type=False)})
    p.r.xadd(p.keys.pending_completion, {"kind": "batch", "o": b"\xc1 not msgpack"})
    reply = p.apply(p.clock())
    assert reply.codes == [Code.SUCCEEDED, Code.FAILED, Code.REJECTED, Code.REJECTED,
                           Code.REJECTED]
    assert (p.state(ok_id), p.state(failing)) == (SUCCEEDED, FAILED)
    reasons = [f["reason"] for _, f in entries(p.r.xrange(p.keys.rejected))]
    assert reasons == [b"an outcome must be a flat array of strings", b"unknown kind nope",
                       b"field o must be a msgpack array of outcomes"]
    assert p.r.xlen(p.keys.pending_completion) == 0


def test_a_batched_outcome_that_raises_is_set_aside_alone_and_the_rest_are_applied(
        p: Pool) -> None:
    first, _ = p.running_job(1)
    p.r.set(p.keys.job("clobbered"), "not a hash")  # HMGET on it raises WRONGTYPE
    last, _ = p.running_job(3)
    items = [["kind", "run", "id", job_id, "attempt", "1", "ok", "1", "result", b"\xc0"]
             for job_id in (first, "clobbered", last)]
    p.r.xadd(p.keys.pending_completion,
             {"kind": "batch", "o": msgpack.packb(items, use_bin_type=False)})
    reply = p.apply(p.clock())
    assert reply.outcomes == [(first, Code.SUCCEEDED), ("clobbered", Code.REJECTED),
                              (last, Code.SUCCEEDED)]
    assert (p.state(first), p.state(last)) == (SUCCEEDED, SUCCEEDED)
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert "WRONGTYPE" in text(record["reason"])
    assert p.r.xlen(p.keys.pending_completion) == 0


def test_a_batch_entry_of_up_to_the_protocol_maximum_applies_whole_whatever_the_batch(
    p: Pool,
) -> None:
    """A worker packs up to MAX_OUTCOMES_PER_ENTRY outcomes in an entry, whatever batch the main
    loop runs with; one entry more is set aside whole (bounded work per script call)."""
    job_id, _ = p.running_job(1)
    item = ["kind", "run", "id", job_id, "attempt", "1", "ok", "1", "result", b"\xc0"]
    small = Engine(p.keys, replace(p.engine.settings, batch=16))
    for n in (limits.MAX_OUTCOMES_PER_ENTRY, limits.MAX_OUTCOMES_PER_ENTRY + 1):
        p.r.xadd(p.keys.pending_completion,
                 {"kind": "batch", "o": msgpack.packb([item] * n, use_bin_type=False)})
    first = parse_batch(p.call(small.apply(p.token, SEED, p.clock())))
    assert first.codes == [Code.SUCCEEDED] + [Code.STALE_COMPLETION] * (n - 2)
    assert p.apply(p.clock()).codes == [Code.REJECTED]
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert text(record["reason"]) == f"field o holds more than {n - 1} outcomes"


def test_a_result_over_max_result_bytes_fails_its_job_at_once_and_the_other_outcomes_land(
    p: Pool,
) -> None:
    big, small = p.running_job(1)[0], p.running_job(2)[0]
    p.finish_run(big, 1, ok=True, result="x" * 200)
    p.finish_run(small, 1, ok=True, result="y" * 10)
    capped = Engine(p.keys, replace(p.engine.settings, max_result=100))
    reply = parse_batch(p.call(capped.apply(p.token, SEED, p.clock())))
    assert reply.outcomes == [(big, Code.FAILED), (small, Code.SUCCEEDED)]  # attempts were left
    h = p.job(big)
    assert (h["error_type"], h["error"]) == (
        b"PayloadTooLarge", b"the result of 202 bytes is over the pool's max_result_bytes (100)")
    assert "result" not in h
    assert decode(p.job(small)["result"], "msgpack") == "y" * 10


def test_an_error_text_is_kept_up_to_its_limit(p: Pool) -> None:
    job_id, _ = p.running_job(1)
    p.finish_run(job_id, 1, ok=False, retryable=False, error="e" * 100_000,
                 error_type="T" * 1000)
    assert p.apply(p.clock()).codes == [Code.FAILED]
    h = p.job(job_id)
    assert (len(h["error"]), len(h["error_type"])) == (limits.MAX_ERROR_BYTES, 200)


def test_a_retry_never_waits_longer_than_max_backoff_even_when_its_growth_overflows(
    p: Pool,
) -> None:
    """base 1000 from 1 s: the raw delay passes 10^300 and then overflows to infinity; every
    wait stays within the job's max_backoff_ms, so the job keeps coming back."""
    p.r.xadd(p.keys.pending_start, {"id": "grow", "name": "work", "max_attempts": "120",
                                    "initial_backoff_ms": "1000", "base": "1000",
                                    "max_backoff_ms": "5000"})
    now = p.clock()
    assert p.ingest(now).codes == [Code.ENQUEUED]
    waits = []
    for attempt in range(1, 120):
        assert p.start(now).ids == ["grow"]
        p.finish_run("grow", attempt, ok=False)
        assert p.apply(now).codes == [Code.RETRY_SCHEDULED]
        due = int(p.job("grow")["due_at"])
        waits.append(due - now)
        now = due
    assert waits[0] == int(1000 * jitter(SEED, "grow", 1))
    assert all(0 <= w <= 5000 for w in waits)
    assert waits[-1] == 5000  # 1000 ** 118 is inf: the cap, not inf
    p.r.xadd(p.keys.pending_start, {"id": "dflt", "name": "work", "base": "1000",
                                    "initial_backoff_ms": "100000"})
    assert p.ingest(now).codes == [Code.ENQUEUED]
    assert p.job("dflt")["max_backoff_ms"] == str(limits.DEFAULT_MAX_BACKOFF_MS).encode()


def test_a_completion_of_a_superseded_attempt_is_rejected_and_counted(p: Pool) -> None:
    job_id, now = p.retrying_job()
    due = retry_due(now, job_id, 1)
    assert p.start(due).ids == [job_id]
    p.finish_run(job_id, 1, ok=True, result="late")
    assert p.apply(due + 1).outcomes == [(job_id, Code.STALE_COMPLETION)]
    h = p.job(job_id)
    assert (h["state"], h["attempts"]) == (b"running", b"2")
    assert "result" not in h
    assert p.score(p.keys.running, job_id) == due
    assert [e for e, _ in p.dispatched()] == [text(h["dispatch"])]
    assert p.r.xlen(p.keys.pending_completion) == 0
    assert p.stat("stale_completions") == 1
    assert_table("succeed", RUNNING, Code.STALE_COMPLETION, RUNNING)


@covers("fail", Code.STALE_COMPLETION)
def test_a_failure_report_for_a_job_that_is_not_running_is_rejected_and_counted(
    p: Pool,
) -> None:
    job_id, now = p.retrying_job()
    before = p.job(job_id)
    p.finish_run(job_id, 1, ok=False)
    assert p.apply(now + 1).outcomes == [(job_id, Code.STALE_COMPLETION)]
    assert p.job(job_id) == before
    assert p.score(p.keys.due, job_id) == retry_due(now, job_id, 1)
    assert (p.stat("stale_completions"), p.stat("retried")) == (1, 1)
    assert_table("fail", RETRYING, Code.STALE_COMPLETION, RETRYING)


def test_a_second_completion_of_the_same_attempt_is_stale_and_doubles_nothing(p: Pool) -> None:
    job_id, t = p.running_job(on_complete="record")
    p.finish_run(job_id, 1, ok=True, result=1)
    p.finish_run(job_id, 1, ok=True, result=2)
    p.finish_run(job_id, 1, ok=False)
    now = t + 1
    assert p.apply(now).codes == [Code.SUCCEEDED, Code.STALE_COMPLETION, Code.STALE_COMPLETION]
    h = p.job(job_id)
    assert (p.state(job_id), decode(h["result"], "msgpack")) == (SUCCEEDED, 1)
    assert len(p.dispatched("cb")) == 1
    assert (p.stat("succeeded"), p.stat("stale_completions")) == (1, 2)
    assert p.r.hget(p.keys.throughput(now // 60_000), "succeeded") == b"1"
    assert_table("succeed", SUCCEEDED, Code.STALE_COMPLETION, SUCCEEDED)


def test_a_completion_for_an_unknown_job_is_stale(p: Pool) -> None:
    p.finish_run("ghost", 1, ok=True)
    p.finish_run("ghost", 1, ok=False)
    assert p.apply(p.clock()).outcomes == [("ghost", Code.STALE_COMPLETION)] * 2
    assert p.state("ghost") == ABSENT
    assert p.stat("stale_completions") == 2
    assert_table("succeed", ABSENT, Code.STALE_COMPLETION, ABSENT)
    assert_table("fail", ABSENT, Code.STALE_COMPLETION, ABSENT)


def test_a_malformed_worker_outcome_is_set_aside_and_the_batch_goes_on(p: Pool) -> None:
    job_id, t = p.running_job()
    bad = text(p.r.xadd(p.keys.pending_completion, {"kind": "run", "id": job_id, "ok": "1"}))
    p.finish_run(job_id, 1, ok=True)
    assert p.apply(t + 1).codes == [Code.REJECTED, Code.SUCCEEDED]
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert (record["entry"], record["f.kind"]) == (bad.encode(), b"run")
    assert p.state(job_id) == SUCCEEDED


# -- lost attempts ------------------------------------------------------------------------------


def test_a_lost_attempt_whose_job_key_was_clobbered_is_set_aside_and_the_reap_goes_on(
    p: Pool,
) -> None:
    t = p.two_started()
    taken = [text(f["id"]) for _, f in p.deliver("w1")]  # w1 never beats: it is dead
    broken, other = taken
    p.r.delete(p.keys.job(broken))
    p.r.set(p.keys.job(broken), "not a hash")  # HMGET on it raises WRONGTYPE
    assert p.reap(t + 100) == ReapReply(Code.OK, 0, 1, 0, -1)
    assert p.state(other) == RETRYING
    ((_, record),) = entries(p.r.xrange(p.keys.rejected))
    assert "WRONGTYPE" in text(record["reason"])
    assert p.held() == 0  # its entry dropped: the next reap does not trip on it again
    assert p.reap(t + 200) == ReapReply(Code.OK, 0, 0, 0, -1)


@covers("lose", Code.RETRY_SCHEDULED)
def test_an_attempt_held_by_a_worker_without_heartbeat_fails_as_worker_lost_and_is_retried(
    p: Pool,
) -> None:
    t = p.two_started()
    ((_, gone),) = p.deliver("w1", count=1)  # w1 never set its heartbeat: it is dead
    p.beat("w2")
    ((_, alive),) = p.deliver("w2", count=1)
    lost, kept = text(gone["id"]), text(alive["id"])

    now = t + 100
    assert p.reap(now) == ReapReply(Code.OK, 0, 1, 0, -1)
    h = p.job(lost)
    assert (h["state"], h["error_type"]) == (b"retrying", b"WorkerLost")
    assert b"worker w1" in h["error"]
    assert p.score(p.keys.due, lost) == retry_due(now, lost, 1)
    assert p.score(p.keys.running, lost) is None
    assert (p.state(kept), p.job(kept)["attempts"]) == (RUNNING, b"1")
    consumers = [text(c["name"]) for c in p.r.xinfo_consumers(p.keys.dispatch, GROUP)]
    assert consumers == ["w2"]
    assert p.held() == 1
    assert p.stat("workers_lost_attempts") == 1
    assert_table("lose", RUNNING, Code.RETRY_SCHEDULED, RETRYING, "current_attempt_may_retry",
                 "current_attempt")

    p.finish_run(lost, 1, ok=True)  # the "dead" worker was only slow
    assert p.apply(now + 1).outcomes == [(lost, Code.STALE_COMPLETION)]
    assert p.state(lost) == RETRYING
    assert p.reap(now + 2) == ReapReply(Code.OK, 0, 0, 0, -1)


GRACE_MS = 1000


def with_grace(p: Pool) -> Pool:
    """The same pool whose reaper suspects a silent worker for GRACE_MS before it is lost."""
    return replace(p, engine=Engine(p.keys, replace(p.engine.settings,
                                                    silence_grace_ms=GRACE_MS)))


def test_workers_gone_for_good_leave_the_dispatch_group_and_their_suspicion(p: Pool) -> None:
    """Each restart of a worker makes a new consumer: one with nothing pending, no heartbeat and
    idle past the grace is removed (and its suspicion with it), so neither grows forever."""
    graced = Engine(p.keys, replace(p.engine.settings, silence_grace_ms=50))
    jobs = [p.client.enqueue("work", i) for i in range(4)]
    t = p.clock()
    p.ingest(t)
    assert len(p.start(t).ids) == 4
    for worker in ("old-1", "old-2", "w-held"):
        ((_, f),) = p.deliver(worker, count=1)  # each takes one job, and dies without a beat
    p.beat("w1")
    assert len(p.deliver("w1")) == 1

    def reap(now: int) -> ReapReply:
        return parse_reap(p.call(graced.reap(p.token, SEED, now)))

    def consumers() -> list[str]:
        return sorted(text(c["name"]) for c in p.r.xinfo_consumers(p.keys.dispatch, GROUP))

    for job_id in jobs[:2]:  # the outcomes of old-1 and old-2 landed
        p.finish_run(job_id, 1, ok=True)
    assert p.apply(t + 1).codes == [Code.SUCCEEDED] * 2
    assert reap(t + 1).lost == 0  # w-held is suspected only
    assert p.r.hexists(p.keys.suspects, "w-held")
    p.finish_run(text(f["id"]), 1, ok=True)  # w-held's outcome landed before it died
    assert p.apply(t + 2).codes == [Code.SUCCEEDED]
    wait_until(lambda: reap(t + 3).lost == 0 and consumers() == ["w1"])
    assert p.r.hlen(p.keys.suspects) == 0
    assert p.stat("workers_removed") == 3


def test_a_silent_worker_is_lost_only_once_suspected_for_the_grace(p: Pool) -> None:
    g = with_grace(p)
    job_id, _ = g.running_job(1, worker=None)
    g.deliver("w1")  # w1 never beats
    t = g.clock()
    assert g.reap(t).lost == 0  # first seen silent: suspected
    assert g.reap(t + GRACE_MS // 2).lost == 0
    assert g.reap(t + GRACE_MS).lost == 1
    assert (g.job(job_id)["error_type"], g.r.hexists(g.keys.suspects, "w1")) == (
        b"WorkerLost", False)


def test_a_reap_says_when_its_first_suspect_would_be_lost(p: Pool) -> None:
    """Regression: the main loop learned of a suspect's end only at its next interval's reap,
    so a dead worker's attempts ran again up to a reap interval (0.5 s) after its grace ran
    out: recoveries came in 0.5 s steps, and the leader-SIGKILL ones past their 4 s p99."""
    g = with_grace(p)
    job_id, _ = g.running_job(1, worker=None)
    g.deliver("w1")  # never beats
    g.deliver("w2", count=1)  # holds nothing: never suspected
    t = g.clock()
    assert g.reap(t).next_lost_ms == t + GRACE_MS  # suspected now
    assert g.reap(t + 300).next_lost_ms == t + GRACE_MS  # since t, however often it reaps
    assert g.reap(t + GRACE_MS) == ReapReply(Code.OK, 0, 1, 0, -1)  # lost: none suspected
    assert g.job(job_id)["error_type"] == b"WorkerLost"


def test_a_gap_between_reaps_suspects_silent_workers_afresh(p: Pool) -> None:
    g = with_grace(p)
    g.running_job(1, worker=None)
    g.deliver("w1")
    t = g.clock()
    assert g.reap(t).lost == 0
    later = t + 5 * GRACE_MS  # no reap meanwhile: Redis was down, or no leader reaped
    assert g.reap(later).lost == 0  # heartbeats may not have had their chance: suspect again
    assert g.reap(later + GRACE_MS // 2).lost == 0
    assert g.reap(later + GRACE_MS).lost == 1


def test_a_gap_forgets_every_suspicion_also_of_workers_its_reap_does_not_reach(p: Pool) -> None:
    """Regression (chaos run, seed 2037): the reap after a gap suspected afresh only the silent
    workers its batch reached; one it did not reach (the batch spent on a silent worker's
    inbox) kept its suspicion from before the gap, and the next reap lost it at once: a live
    worker whose beat was not due yet, whose on_complete deliveries then ran twice."""
    g = with_grace(p)
    g.running_job(1, worker=None)
    g.deliver("w1")  # never beats
    t = g.clock()
    assert g.reap(t).lost == 0  # suspected at t
    g.r.xgroup_createconsumer(g.keys.dispatch, GROUP, "w0")  # silent too, with an inbox
    g.r.xgroup_create(g.keys.inbox("w0"), GROUP, id="0", mkstream=True)
    g.r.xadd(g.keys.inbox("w0"), {"kind": "wf", "id": "ended", "gen": "1"})
    one = replace(g, engine=Engine(g.keys, replace(g.engine.settings, batch=1)))
    later = t + 5 * GRACE_MS  # a gap: Redis was down
    assert one.reap(later).lost == 0  # its batch goes on w0's inbox: w1 is not reached
    assert g.reap(later + GRACE_MS // 2).lost == 0  # not suspected since t: only since now
    assert g.reap(later + GRACE_MS // 2 + GRACE_MS).lost == 1


def test_a_gap_vouched_for_by_a_leader_that_saw_redis_answer_is_not_suspected_afresh(
        p: Pool) -> None:
    g = with_grace(p)
    g.running_job(1, worker=None)
    g.deliver("w1")
    t = g.clock()

    def reap(now: int, sent: int) -> ReapReply:
        return parse_reap(g.call(g.engine.reap(g.token, SEED, now, sent_ms=sent)))

    assert reap(t, t).lost == 0  # suspected
    later = t + 5 * GRACE_MS  # a leader handover: heartbeats went on meanwhile
    assert reap(later, later - GRACE_MS // 2).lost == 0  # this call waited: Redis was frozen
    assert reap(later + GRACE_MS // 2, later + GRACE_MS // 2).lost == 0
    assert reap(later + GRACE_MS, later + GRACE_MS).lost == 1  # suspected since `later`
    g2 = with_grace(p)
    job2, _ = g2.running_job(2, worker=None)
    g2.deliver("w2")
    t2 = later + GRACE_MS + 1
    assert reap(t2, t2).lost == 0  # w2 first seen silent
    after_handover = t2 + 5 * GRACE_MS
    assert reap(after_handover, after_handover).lost == 1  # the gap is vouched for: lost
    assert g2.job(job2)["error_type"] == b"WorkerLost"


def test_a_worker_that_beats_again_is_no_longer_suspected(p: Pool) -> None:
    g = with_grace(p)
    job_id, _ = g.running_job(1, worker=None)
    g.deliver("w1")
    t = g.clock()
    assert g.reap(t).lost == 0
    g.beat("w1")
    assert g.reap(t + GRACE_MS // 2).lost == 0
    assert not g.r.hexists(g.keys.suspects, "w1")
    g.r.delete(g.keys.heartbeat("w1"))
    assert g.reap(t + GRACE_MS).lost == 0  # silent again: suspected from now on
    assert g.reap(t + 2 * GRACE_MS).lost == 1
    assert g.state(job_id) == RETRYING


def test_with_a_grace_the_timeout_backstop_waits_two_graces_more_for_the_worker(
        p: Pool) -> None:
    g = with_grace(p)
    job_id, _ = g.running_job(worker=None, timeout=0.001)
    g.beat("w2")
    g.deliver("w2")
    g.reap(g.clock())  # a first reap: the reaper has been running (no gap)
    t = g.clock()
    assert g.reap(t).timed_out == 0  # 1 ms past delivery: the worker times itself out
    deadline = g.score(g.keys.deadlines, job_id)
    assert deadline is not None and t < deadline <= t + 1 + 2 * GRACE_MS
    wait_until(lambda: int(g.r.xpending_range(g.keys.dispatch, GROUP, "-", "+", 1)[0]
                           ["time_since_delivered"]) >= 1 + 2 * GRACE_MS, timeout=10)
    g.beat("w2")
    g.reap(g.clock() - GRACE_MS // 2)  # keep reaping without a gap
    assert g.reap(g.clock()).timed_out == 1
    assert g.job(job_id)["error_type"] == b"Timeout"


def test_a_reap_after_a_gap_times_out_and_loses_nothing(p: Pool) -> None:
    g = with_grace(p)
    job_id, _ = g.running_job(worker=None, timeout=0.001)
    g.deliver("w1")  # never beats
    wait_until(lambda: int(g.r.xpending_range(g.keys.dispatch, GROUP, "-", "+", 1)[0]
                           ["time_since_delivered"]) >= 1 + 2 * GRACE_MS, timeout=10)
    t = g.clock()
    assert g.reap(t - 10 * GRACE_MS) == ReapReply(Code.OK, 0, 0, 0, t - 9 * GRACE_MS)
    assert g.reap(t) == ReapReply(Code.OK, 0, 0, 0, t + GRACE_MS)  # a gap: suspected afresh
    assert g.state(job_id) == RUNNING
    assert g.reap(t + GRACE_MS // 2).timed_out == 1


@covers("lose", Code.FAILED)
def test_a_lost_last_attempt_makes_the_job_done_failed_as_worker_lost(p: Pool) -> None:
    job_id, t = p.running_job(worker=None, retry=Retry(max_attempts=1), on_complete="record")
    p.deliver("w1")
    assert p.reap(t + 1) == ReapReply(Code.OK, 0, 1, 0, -1)
    h = p.job(job_id)
    assert (h["state"], h["outcome"], h["error_type"]) == (b"done", b"failed", b"WorkerLost")
    assert p.score(p.keys.running, job_id) is None
    assert [f["kind"] for _, f in p.dispatched()] == [b"cb"]
    _assert_one_delivery_recorded(p, job_id)
    assert_table("lose", RUNNING, Code.FAILED, FAILED, "current_attempt")


def test_an_attempt_past_its_timeout_counted_from_delivery_fails_as_timeout(p: Pool) -> None:
    job_id, t = p.running_job(worker=None, timeout=0.001)
    assert p.job(job_id)["timeout_ms"] == b"1"
    assert p.score(p.keys.deadlines, job_id) == t + 1
    assert p.reap(t + FAR) == ReapReply(Code.OK, 0, 0, 0, -1)  # not delivered yet: no clock running
    assert p.state(job_id) == RUNNING
    assert p.score(p.keys.deadlines, job_id) == t + FAR + 1

    p.beat("w2")
    p.deliver("w2")
    wait_until(lambda: int(p.r.xpending_range(p.keys.dispatch, GROUP, "-", "+", 1)[0]
                           ["time_since_delivered"]) >= 1)
    now = t + 2 * FAR
    assert p.reap(now) == ReapReply(Code.OK, 1, 0, 0, -1)
    h = p.job(job_id)
    assert (h["state"], h["error_type"]) == (b"retrying", b"Timeout")
    assert p.score(p.keys.due, job_id) == retry_due(now, job_id, 1)
    assert p.r.zcard(p.keys.running) == p.r.zcard(p.keys.deadlines) == 0
    assert p.stat("timeouts") == 1
    p.finish_run(job_id, 1, ok=True)
    assert p.apply(now + 1).codes == [Code.STALE_COMPLETION]
    assert_table("lose", RUNNING, Code.RETRY_SCHEDULED, RETRYING, "current_attempt_may_retry")


def test_an_attempt_within_its_timeout_since_delivery_keeps_running_whatever_the_clock(
    p: Pool,
) -> None:
    job_id, t = p.running_job(timeout=3600)
    now = t + FAR
    assert p.reap(now) == ReapReply(Code.OK, 0, 0, 0, -1)
    assert p.state(job_id) == RUNNING
    deadline = p.score(p.keys.deadlines, job_id)
    assert deadline is not None
    assert now < deadline <= now + 3_600_000


# -- on_complete deliveries ---------------------------------------------------------------------


@covers("deliver_ok", Code.CALLBACK_DELIVERED)
def test_a_successful_on_complete_delivery_is_closed_and_the_job_then_expires(p: Pool) -> None:
    job_id, t = p.running_job(on_complete="record")
    p.finish_run(job_id, 1, ok=True)
    assert p.apply(t + 1).codes == [Code.SUCCEEDED]
    _assert_one_delivery_recorded(p, job_id)
    ((_, f),) = p.deliver("w1")
    assert (f["kind"], f["n"]) == (b"cb", b"1")

    p.finish_callback(job_id, 1, ok=True)
    assert p.apply(t + 2).outcomes == [(job_id, Code.CALLBACK_DELIVERED)]
    h = p.job(job_id)
    assert h["cb"] == b"delivered"
    assert "cb_entry" not in h
    assert (p.r.xlen(p.keys.dispatch), p.held()) == (0, 0)
    assert 0 < p.r.pttl(p.keys.job(job_id)) <= RETENTION_MS
    assert p.client.status(job_id).callback == "delivered"
    assert p.stat("callbacks_delivered") == 1
    assert_table("deliver_ok", SUCCEEDED, Code.CALLBACK_DELIVERED, SUCCEEDED, "delivery_current")


@covers("deliver_fail", Code.CALLBACK_RETRY)
def test_a_failed_on_complete_delivery_is_retried_after_one_second_doubling_capped_at_60(
    p: Pool,
) -> None:
    job_id, t = p.running_job(on_complete="record")
    p.finish_run(job_id, 1, ok=False, retryable=False)
    now = t + 1
    assert p.apply(now).codes == [Code.FAILED]
    delays = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
    for n, delay in enumerate(delays, start=1):
        ((_, f),) = p.deliver("w1")
        assert (f["kind"], f["n"]) == (b"cb", str(n).encode())
        p.finish_callback(job_id, n, ok=False)
        assert p.apply(now).outcomes == [(job_id, Code.CALLBACK_RETRY)]
        h = p.job(job_id)
        assert (h["cb"], h["cb_n"], h["cb_error"]) == \
            (b"pending", str(n + 1).encode(), b"RuntimeError: handler down")
        assert "cb_entry" not in h
        assert p.score(p.keys.callbacks_due, job_id) == now + delay
        assert (p.r.xlen(p.keys.dispatch), p.held()) == (0, 0)
        assert p.start(now + delay - 1).next_callback_ms == now + delay
        assert p.dispatched() == []
        now += delay
        p.start(now)
        ((entry, f),) = p.dispatched()
        assert (f["kind"], f["n"], p.job(job_id)["cb_entry"]) == \
            (b"cb", str(n + 1).encode(), entry.encode())
        assert p.score(p.keys.callbacks_due, job_id) is None
    assert p.stat("callback_failures") == len(delays)
    assert_table("deliver_fail", FAILED, Code.CALLBACK_RETRY, FAILED, "delivery_current")

    p.deliver("w1")
    p.finish_callback(job_id, len(delays) + 1, ok=True)
    assert p.apply(now).codes == [Code.CALLBACK_DELIVERED]


@covers("deliver_fail", Code.CALLBACK_ABANDONED)
def test_a_delivery_no_worker_can_run_is_closed_undelivered_and_the_job_then_expires(
    p: Pool,
) -> None:
    job_id, t = p.delivering("nosuchhandler")
    p.finish_callback(job_id, 1, ok=False, retryable=False)
    assert p.apply(t + 1).outcomes == [(job_id, Code.CALLBACK_ABANDONED)]
    h = p.job(job_id)
    assert (h["cb"], h["cb_error"]) == (b"failed", b"RuntimeError: handler down")
    assert 0 < p.r.pttl(p.keys.job(job_id)) <= RETENTION_MS
    assert p.score(p.keys.callbacks_due, job_id) is None
    assert (p.r.xlen(p.keys.dispatch), p.held()) == (0, 0)
    assert p.stat("callbacks_abandoned") == 1
    assert_table("deliver_fail", SUCCEEDED, Code.CALLBACK_ABANDONED, SUCCEEDED,
                 "delivery_given_up", "delivery_current")


def test_a_delivery_still_failing_a_retention_after_its_job_finished_is_given_up(
    p: Pool,
) -> None:
    job_id, t = p.delivering("record")
    p.finish_callback(job_id, 1, ok=False)
    assert p.apply(t + RETENTION_MS).codes == [Code.CALLBACK_RETRY]  # within the retention
    p.start(t + RETENTION_MS + 1000)
    p.deliver("w1")
    p.finish_callback(job_id, 2, ok=False)
    assert p.apply(t + RETENTION_MS + 1001).codes == [Code.CALLBACK_ABANDONED]
    assert p.job(job_id)["cb"] == b"failed"


@covers("deliver_ok", Code.STALE_CALLBACK)
def test_an_outcome_of_a_closed_delivery_is_stale_and_dropped(p: Pool) -> None:
    job_id = p.client.enqueue("work", on_complete="record")
    t = p.clock()
    p.ingest(t)
    p.client.cancel(job_id, wait=0)
    p.ingest(t)
    p.finish_callback(job_id, 1, ok=True)
    p.finish_callback(job_id, 1, ok=True)
    p.finish_callback(job_id, 1, ok=False)
    p.finish_callback("ghost", 1, ok=True)
    assert p.apply(t + 1).codes == [Code.CALLBACK_DELIVERED] + [Code.STALE_CALLBACK] * 3
    h = p.job(job_id)
    assert (h["cb"], h["cb_n"]) == (b"delivered", b"1")
    assert p.score(p.keys.callbacks_due, job_id) is None
    assert p.state("ghost") == ABSENT
    assert p.stat("stale_callbacks") == 3
    assert_table("deliver_ok", CANCELED, Code.STALE_CALLBACK, CANCELED)
    assert_table("deliver_ok", ABSENT, Code.STALE_CALLBACK, ABSENT)


@covers("deliver_fail", Code.STALE_CALLBACK)
def test_a_delivery_held_by_a_dead_worker_is_handed_out_again_and_its_late_outcome_is_stale(
    p: Pool,
) -> None:
    job_id, t = p.running_job(on_complete="record")
    p.finish_run(job_id, 1, ok=True)
    p.apply(t + 1)
    ((old, _),) = p.deliver("dead")  # no heartbeat for "dead"
    assert p.reap(t + 2) == ReapReply(Code.OK, 0, 0, 1, -1)
    h = p.job(job_id)
    ((entry, f),) = p.dispatched()
    assert entry != old
    assert (f["kind"], f["n"]) == (b"cb", b"2")
    assert (h["cb"], h["cb_n"], h["cb_entry"]) == (b"pending", b"2", entry.encode())
    assert p.held() == 0
    assert p.stat("callbacks_redelivered") == 1

    p.finish_callback(job_id, 1, ok=False)
    p.finish_callback(job_id, 1, ok=True)
    assert p.apply(t + 3).codes == [Code.STALE_CALLBACK] * 2
    assert (p.job(job_id)["cb"], p.job(job_id)["cb_n"]) == (b"pending", b"2")
    assert p.score(p.keys.callbacks_due, job_id) is None
    assert_table("deliver_fail", SUCCEEDED, Code.STALE_CALLBACK, SUCCEEDED)

    p.deliver("w1")
    p.finish_callback(job_id, 2, ok=True)
    assert p.apply(t + 4).codes == [Code.CALLBACK_DELIVERED]


# -- the lease: fencing and epochs --------------------------------------------------------------


def _expire_lease(p: Pool) -> None:
    p.r.pexpire(p.keys.lease, 1)
    wait_until(lambda: not p.r.exists(p.keys.lease))


def test_a_second_owner_cannot_take_the_lease_while_the_first_holds_it(p: Pool) -> None:
    refused = p.acquire(OTHER)
    assert (refused.code, refused.token) == (Code.NOT_LEADER, "")
    assert 0 < refused.ttl_ms <= LEASE_MS
    assert p.r.get(p.keys.lease) == p.token.encode()
    renewed = p.acquire(OWNER)
    assert (renewed.code, renewed.token) == (Code.OK, p.token)
    assert p.r.get(p.keys.epoch) == b"1"


def test_after_the_lease_expires_a_new_owner_gets_a_higher_epoch(p: Pool) -> None:
    _expire_lease(p)
    taken = p.acquire(OTHER)
    assert (taken.code, taken.token) == (Code.OK, f"2:{OTHER}")
    assert p.acquire(OWNER).code == Code.NOT_LEADER
    assert p.call(p.engine.release(taken.token)) == [Code.OK]
    assert not p.r.exists(p.keys.lease)
    assert p.acquire(OWNER).token == f"3:{OWNER}"  # epochs are never reused


def test_every_script_called_with_an_old_token_after_the_lease_changed_hands_writes_nothing(
    p: Pool,
) -> None:
    ids = {p.client.enqueue("work", 1), p.client.enqueue("work", 2)}
    t = p.clock()
    p.ingest(t)
    p.start(t)
    ((_, f),) = p.deliver("dead", count=1)  # a lost attempt for reapLost
    p.beat("w1")
    p.deliver("w1")
    (done,) = ids - {text(f["id"])}
    p.finish_run(done, 1, ok=True)  # an outcome for applyOutcomes
    due = p.client.enqueue("work", 3)
    p.ingest(t)  # a due job for startJobs
    p.client.enqueue("work", 4)  # a request for ingestRequests
    old = p.token
    _expire_lease(p)
    new = p.acquire(OTHER).token
    assert new == f"2:{OTHER}"

    before = p.snapshot()
    now = t + FAR
    assert p.ingest(now, old).code == Code.NOT_LEADER
    assert p.apply(now, old).code == Code.NOT_LEADER
    assert p.start(now, old).code == Code.NOT_LEADER
    assert p.reap(now, old).code == Code.NOT_LEADER
    assert p.call(p.engine.release(old)) == [Code.NOT_LEADER]
    assert p.acquire(OWNER).code == Code.NOT_LEADER
    assert p.snapshot() == before

    assert p.ingest(now, new).codes == [Code.ENQUEUED]
    assert p.apply(now, new).outcomes == [(done, Code.SUCCEEDED)]
    assert due in p.start(now, new).ids
    assert p.reap(now, new).lost == 1
    assert p.snapshot() != before


def _every_call(p: Pool, token: str, t: int) -> list[Call[Any]]:
    """One call of each script, the lease release last."""
    cron = CronJob("work", parse_schedule(60), catch_up=False, grace=60)
    tick = tick_call(p.keys, token, cron, TickDecision(t, enqueue=False, next_ms=t + 1), {})
    shard = Engine(Keys(p.keys.pool, 0))  # its coordinator's key is the pool's own slot
    return [p.engine.acquire(OWNER, LEASE_MS, 10), p.engine.ingest(token, t),
            p.engine.apply(token, SEED, t), p.engine.start(token, t),
            p.engine.reap(token, SEED, t), tick,
            shard.grant(2, 1, running=0, demand=0, maxp=10, fresh_ms=1000, now=t),
            p.engine.release(token)]


def test_every_script_survives_a_script_flush(p: Pool) -> None:
    t = p.clock()
    calls = _every_call(p, p.token, t)
    assert {c.script.name for c in calls} == set(scripts())
    p.r.script_flush()
    assert [r[0] for r in run(p.r, calls)] == [Code.OK] * len(calls)  # one pipeline, all missed

    calls = _every_call(p, p.acquire(OWNER).token, t + 1)
    for c in calls:
        p.r.script_flush()
        assert p.call(c)[0] == Code.OK, c.script.name
        assert p.r.script_exists(c.script.sha) == [True]
    assert not p.r.exists(p.keys.lease)


# -- keys ---------------------------------------------------------------------------------------


def test_every_key_of_a_pool_shares_one_cluster_hash_slot(p: Pool) -> None:
    keys = p.keys
    slot = redis.crc.key_slot(b"{wp:t}")
    names = [getattr(keys, n) for n, v in vars(Keys).items()
             if isinstance(v, property) and n != "prefix"]
    names += [keys.job("x"), keys.heartbeat("w1"), keys.done_channel("x"), keys.throughput(1)]
    for c in _every_call(p, p.token, p.clock()):
        names += c.keys
    assert len(names) > 40
    assert {redis.crc.key_slot(n.encode()) for n in names} == {slot}

    job_id, t = p.running_job(on_complete="record")  # a life that touches every kind of key
    p.finish_run(job_id, 1, ok=True)
    p.apply(t + 1)
    live = list(p.r.scan_iter())
    assert live
    assert {redis.crc.key_slot(k) for k in live} == {slot}


def test_every_row_of_the_transition_table_has_a_test() -> None:
    for module in COVERING_MODULES:  # their @covers marks count too, whichever file runs
        importlib.import_module(module)
    assert {(r.event, r.code) for r in TABLE} == COVERED
