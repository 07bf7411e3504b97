"""The public client API against a real redis-server, with an in-process Worker for outcomes."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from helpers import Pools, entry_ids, eventually, job_fields, node_of, running_worker
from redis.connection import AbstractConnection

from workpool import (
    JobNotFound,
    NonRetryableError,
    PayloadTooLarge,
    RedisUnavailable,
    Result,
    Retry,
    SerializationError,
    State,
    UnknownJobName,
    WaitTimeout,
    Workpool,
)
from workpool.client import ops
from workpool.server.embedded import RedisServer
from workpool.wire.calls import Engine
from workpool.wire.protocol import encode
from workpool.wire.replies import parse_lease
from workpool.wire.scripts import run, script

pytestmark = pytest.mark.topologies  # each test on one server and on a cluster


def _with_add(pool: Workpool) -> Any:
    @pool.job()
    def add(a: int, b: int) -> int:
        return a + b

    return add


def _applied(pool: Workpool, job_id: str) -> bool:
    """True once the main loop has applied the job's enqueue entry."""
    return bool(job_fields(pool.redis, pool.keys, job_id))


# -- enqueue and status ------------------------------------------------------------------


def test_status_is_pending_right_after_enqueue_before_any_main_loop_runs(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    job_id = pool.enqueue(_with_add(pool), 1, 2)
    st = pool.status(job_id)
    assert (st.id, st.state, st.terminal) == (job_id, State.PENDING, False)
    assert not job_fields(redis_client, pool.keys, job_id)  # nothing has applied it yet


def test_stats_count_enqueues_not_applied_yet_as_pending(pools: Pools) -> None:
    """Before any main loop runs, the jobs just enqueued are pending (the demo's first line
    once said "pending 0" right after enqueuing 300); cancels and configs waiting beside them
    are not jobs."""
    pool = pools("c")
    add = _with_add(pool)
    pool.enqueue_many(add, [(i, i) for i in range(300)])
    pool.enqueue(add, 1, 2, key="named")
    pool.cancel("some-job", wait=0)
    pool.configure(max_parallelism=3, wait=0)
    s = pool.stats()
    assert (s.pending, s.accepted_not_applied, s.exists) == (301, 301, True)
    assert not pools("other").stats().exists


def test_stats_read_a_bounded_amount_of_requests_not_applied_yet(
        pools: Pools, redis_client: redis.Redis) -> None:
    """Counting the enqueues among the requests not applied yet reads 1 MiB of them at most:
    behind 40 entries of 512 KiB, three cancels count as enqueues rather than have a stats call
    read 20 MiB into Redis's Lua."""
    pool = pools("c")
    big = encode([b"x" * (512 << 10)])
    for _ in range(40):
        redis_client.xadd(pool.keys.pending_start, {"name": "add", "args": big})
    for _ in range(3):
        redis_client.xadd(pool.keys.pending_start, {"op": "cancel", "id": "some-job"})
    assert pool.stats().pending == 43


def test_status_of_an_unknown_id_raises_job_not_found(pools: Pools) -> None:
    pool = pools("c")
    with pytest.raises(JobNotFound, match="no job 'nope'"):
        pool.status("nope")
    with pytest.raises(JobNotFound):
        pool.status("1700000000000-0")  # stream-id shaped, but no such entry


def test_enqueue_with_the_same_key_twice_yields_one_job_that_runs_once(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    runs: list[int] = []

    @pool.job()
    def charge(amount: int) -> int:
        runs.append(amount)
        return amount

    first = pool.enqueue(charge, 10, key="order-7")
    second = pool.enqueue(charge, 99, key="order-7")
    assert first == second == "key:order-7"
    with running_worker(pool):
        assert pool.wait(first, timeout=15).result == 10
        eventually(lambda: redis_client.xlen(pool.keys.pending_start) == 0, what="all applied")
    assert runs == [10]
    counters = pool.stats().counters
    assert (counters["enqueued"], counters["duplicate_enqueues"]) == (1, 1)


def test_enqueue_joins_the_callers_transaction_and_exists_only_once_it_commits(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    add = _with_add(pool)
    order = pool.keys.prefix + "order:7"  # a cluster's transaction stays in the pool's slot
    pipe = redis_client.pipeline(transaction=True)
    pipe.set(order, "paid")
    job_id = pool.enqueue(add, 1, 2, transaction=pipe)
    assert redis_client.xlen(pool.keys.pending_start) == 0
    with pytest.raises(JobNotFound):
        pool.status(job_id)
    pipe.execute()
    assert pool.status(job_id).state is State.PENDING
    assert redis_client.get(order) == b"paid"


def test_an_enqueue_in_a_discarded_transaction_leaves_nothing(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    order = pool.keys.prefix + "order:8"
    pipe = redis_client.pipeline(transaction=True)
    pipe.set(order, "paid")
    job_id = pool.enqueue(_with_add(pool), 1, 2, transaction=pipe)
    pipe.reset()
    assert redis_client.xlen(pool.keys.pending_start) == 0
    assert not redis_client.sismember(pool.keys.incoming, job_id)
    assert not redis_client.exists(order)
    with pytest.raises(JobNotFound):
        pool.status(job_id)


def _calls(client: redis.Redis, command: str, pool: Workpool) -> int:
    stats = node_of(client, pool.keys.prefix).info("commandstats").get(
        f"cmdstat_{command}", {"calls": 0})
    return int(stats["calls"])


def test_enqueue_many_is_one_round_trip_of_one_transaction_and_returns_distinct_ids(
    pools: Pools, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = pools("c")
    add = _with_add(pool)
    pool.redis.exists(pool.keys.pending_start)  # connect (handshake included) to its node
    sends: list[Any] = []
    original = cast(Callable[..., None], AbstractConnection.send_packed_command)

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        original(self, command, check_health)

    before = {c: _calls(redis_client, c, pool) for c in ("xadd", "sadd", "multi", "exec")}
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    ids = pool.enqueue_many(add, [(i, i) for i in range(50)])
    monkeypatch.undo()
    after = {c: _calls(redis_client, c, pool) for c in ("xadd", "sadd", "multi", "exec")}
    assert len(sends) == 1  # every command went out in one write, answered in one read
    assert {c: after[c] - before[c] for c in after} == {"xadd": 50, "sadd": 0, "multi": 1,
                                                       "exec": 1}
    assert len(set(ids)) == 50
    assert entry_ids(redis_client, pool.keys.pending_start) == ids  # each id: its entry id
    assert redis_client.scard(pool.keys.incoming) == 0
    assert {pool.status(i).state for i in ids} == {State.PENDING}


def test_a_job_named_by_a_key_is_marked_incoming_until_the_main_loop_applies_it(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    add = _with_add(pool)
    job_id = pool.enqueue(add, 1, 2, key="order-9")
    assert job_id == "key:order-9"
    assert redis_client.smembers(pool.keys.incoming) == {b"key:order-9"}
    assert pool.status(job_id).state == State.PENDING


def test_a_single_enqueue_is_one_xadd_without_a_transaction(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    add = _with_add(pool)
    pool.redis.exists(pool.keys.pending_start)
    before = {c: _calls(redis_client, c, pool) for c in ("xadd", "sadd", "multi", "exec")}
    job_id = pool.enqueue(add, 1, 2)
    after = {c: _calls(redis_client, c, pool) for c in ("xadd", "sadd", "multi", "exec")}
    assert {c: after[c] - before[c] for c in after} == {"xadd": 1, "sadd": 0, "multi": 0,
                                                       "exec": 0}
    assert entry_ids(redis_client, pool.keys.pending_start) == [job_id]


@pytest.mark.parametrize("bad", [object(), {1, 2}], ids=["object", "set"])
def test_unserializable_arguments_raise_and_write_nothing(
    bad: object, pools: Pools, redis_client: redis.Redis,
) -> None:
    for encoding in ("msgpack", "json"):
        pool = pools("c", encoding=encoding)
        add = _with_add(pool)
        with pytest.raises(SerializationError, match=type(bad).__name__):
            pool.enqueue(add, bad, 1)
        with pytest.raises(SerializationError):
            pool.enqueue(add, 1, 2, kwargs={"x": bad})
        with pytest.raises(SerializationError):
            pool.enqueue_many(add, [(1, 2), (bad, 3)])
    assert redis_client.xlen(pool.keys.pending_start) == 0
    assert redis_client.scard(pool.keys.incoming) == 0


def test_a_payload_over_max_payload_bytes_raises_and_writes_nothing(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c", max_payload_bytes=100)
    add = _with_add(pool)
    with pytest.raises(PayloadTooLarge, match="max_payload_bytes=100"):
        pool.enqueue(add, "x" * 200, "")
    assert redis_client.xlen(pool.keys.pending_start) == 0
    pool.enqueue(add, "x" * 10, "")  # under the limit it goes through
    assert redis_client.xlen(pool.keys.pending_start) == 1


def test_enqueue_of_an_unregistered_function_raises_unknown_job_name(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")

    def stray(x: int) -> int:
        return x

    with pytest.raises(UnknownJobName, match="stray"):
        pool.enqueue(stray, 1)
    assert redis_client.xlen(pool.keys.pending_start) == 0


def test_a_job_name_the_worker_does_not_know_ends_failed_and_names_it(pools: Pools) -> None:
    pool = pools("c")
    _with_add(pool)
    job_id = pool.enqueue("billing.charge_v2", 5)
    with running_worker(pool):
        st = pool.wait(job_id, timeout=15)
    assert (st.state, st.outcome, st.error_type) == (State.DONE, "failed", "UnknownJobName")
    assert st.error is not None
    assert "billing.charge_v2" in st.error
    assert st.attempts == 1


# -- waiting -------------------------------------------------------------------------------


def test_wait_returns_the_terminal_status(pools: Pools) -> None:
    pool = pools("c")
    job_id = pool.enqueue(_with_add(pool), 20, 22)
    with running_worker(pool):
        st = pool.wait(job_id, timeout=15)
    assert (st.state, st.outcome, st.result, st.attempts) == (State.DONE, "succeeded", 42, 1)
    assert st.to_result() == Result("succeeded", value=42)


def test_wait_raises_wait_timeout_when_the_job_does_not_finish_in_time(pools: Pools) -> None:
    pool = pools("c")
    job_id = pool.enqueue(_with_add(pool), 1, 2, run_after=3600)
    with running_worker(pool), pytest.raises(WaitTimeout, match="still pending"):
        pool.wait(job_id, timeout=0.3)


def test_the_asyncio_face_enqueues_reads_waits_and_cancels(pools: Pools) -> None:
    pool = pools("c")

    @pool.job()
    async def double(x: int) -> int:
        return 2 * x

    async def scenario() -> None:
        try:
            later = await pool.aio.enqueue(double, 1, run_after=3600)
            assert (await pool.aio.status(later)).state is State.PENDING
            await pool.aio.cancel(later)
            assert (await pool.aio.wait(later, timeout=15)).state is State.CANCELED
            now = await pool.aio.enqueue(double, 21)
            assert (await pool.aio.wait(now, timeout=15)).result == 42
            with pytest.raises(JobNotFound):
                await pool.aio.status("nope")
            with pytest.raises(WaitTimeout):
                await pool.aio.wait(await pool.aio.enqueue(double, 1, run_after=3600), 0.2)
        finally:
            await pool.aio.aclose()

    with running_worker(pool):
        asyncio.run(scenario())


def test_more_asyncio_calls_at_once_than_the_client_has_connections_all_succeed(
        pools: Pools) -> None:
    """Regression: redis-py's default asyncio pool refused the 101st call in flight ("Too many
    connections", raised as RedisUnavailable); the calls now wait for a connection."""
    pool = pools("c")
    pool.job(name="work")(lambda: None)

    async def burst() -> list[str]:
        try:
            return await asyncio.gather(*(pool.aio.enqueue("work") for _ in range(500)))
        finally:
            await pool.aio.aclose()

    ids = asyncio.run(burst())
    assert len(set(ids)) == 500
    assert pool.redis.xlen(pool.keys.pending_start) == 500  # each appended once


# -- cancel and configure ------------------------------------------------------------------


def test_cancel_all_cancels_pending_jobs_and_returns_the_count(pools: Pools) -> None:
    pool = pools("c", max_parallelism=0)
    add = _with_add(pool)
    with running_worker(pool):
        applied = pool.enqueue_many(add, [(1, 1), (2, 2), (3, 3)])
        eventually(lambda: all(_applied(pool, i) for i in applied), what="entries applied")
        waiting = pool.enqueue(add, 4, 4, run_after=3600)
        eventually(lambda: _applied(pool, waiting), what="delayed entry applied")
        assert pool.cancel_all() == 4
        for job_id in [*applied, waiting]:
            assert pool.wait(job_id, timeout=15).state is State.CANCELED
        assert pool.cancel_all() == 0


def test_cancel_all_also_cancels_entries_not_applied_yet(pools: Pools) -> None:
    pool = pools("c", max_parallelism=0)
    ids = pool.enqueue_many(_with_add(pool), [(1, 1), (2, 2)])
    assert pool.cancel_all() == 2  # still in the incoming set: no main loop ran
    with running_worker(pool):
        assert [pool.wait(i, timeout=15).state for i in ids] == [State.CANCELED] * 2


def _drive(pool: Workpool, gen: ops.Ops[Any], between: int, action: Any) -> Any:
    """Run an ops generator step by step, calling `action` after step number `between`."""
    reply: Any = None
    n = 0
    try:
        while True:
            step = gen.send(reply)
            pipe = pool.redis.pipeline(transaction=step.atomic)
            for command in step.commands:
                pipe.execute_command(*command)
            reply = pipe.execute()
            n += 1
            if n == between:
                action()
    except StopIteration as stop:
        return stop.value


def test_cancel_all_catches_a_job_the_main_loop_applies_while_it_pages(pools: Pools) -> None:
    pool = pools("c", max_parallelism=0)
    job_id = pool.enqueue(_with_add(pool), 1, 1)
    engine = Engine(pool.keys, pool.config.engine_settings())
    token = parse_lease(run(pool.redis, [engine.acquire("me", 60_000, 0)])[0]).token

    def main_loop_applies_the_entry() -> None:
        run(pool.redis, [engine.ingest(token)])
        assert _applied(pool, job_id)

    sent = _drive(pool, ops.cancel_all(pool.keys), 1, main_loop_applies_the_entry)
    assert sent == 1  # found in incoming; not sent again when found in due
    run(pool.redis, [engine.ingest(token)])
    assert pool.status(job_id).state is State.CANCELED


def test_configure_max_parallelism_wakes_a_paused_pool(pools: Pools) -> None:
    pool = pools("c", max_parallelism=0)
    job_id = pool.enqueue(_with_add(pool), 2, 2)
    with running_worker(pool):
        eventually(lambda: _applied(pool, job_id), what="entry applied")
        stats = pool.stats()
        assert (stats.max_parallelism, stats.running) == (0, 0)
        assert pool.status(job_id).state is State.PENDING
        pool.configure(max_parallelism=2)
        assert pool.wait(job_id, timeout=15).result == 4
    assert pool.stats().max_parallelism == 2


# -- failures ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_redis_raises_redis_unavailable_naming_the_url(pools: Pools) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    pool = pools("c", redis_url=url)
    add = _with_add(pool)
    with pytest.raises(RedisUnavailable, match=url):
        pool.enqueue(add, 1, 2)
    with pytest.raises(RedisUnavailable, match=url):
        pool.status("any")


def test_a_non_retryable_error_ends_the_job_failed_after_one_attempt(pools: Pools) -> None:
    pool = pools("c", retry=Retry(max_attempts=5, initial_backoff=0.01))

    @pool.job()
    def reject(x: int) -> None:
        raise NonRetryableError(f"input {x} is invalid")

    job_id = pool.enqueue(reject, 7)
    with running_worker(pool):
        st = pool.wait(job_id, timeout=15)
    assert (st.state, st.outcome, st.attempts) == (State.DONE, "failed", 1)
    assert (st.error_type, st.error) == ("NonRetryableError", "input 7 is invalid")


def test_a_job_running_past_its_timeout_fails_with_timeout_and_is_retried(pools: Pools) -> None:
    pool = pools("c", retry=Retry(max_attempts=2, initial_backoff=0.01))

    @pool.job(timeout=0.2)
    async def hang() -> None:
        await asyncio.Event().wait()  # never finishes on its own

    job_id = pool.enqueue(hang)
    with running_worker(pool):
        st = pool.wait(job_id, timeout=15)
    assert (st.state, st.outcome, st.error_type) == (State.DONE, "failed", "Timeout")
    assert st.attempts == 2


# -- on_complete ---------------------------------------------------------------------------


def test_on_complete_gets_each_outcome_exactly_once_including_a_cancel(pools: Pools) -> None:
    pool = pools("c")
    calls: list[tuple[str, Result, Any]] = []
    add = _with_add(pool)

    @pool.job()
    def refuse() -> None:
        raise NonRetryableError("no")

    @pool.on_complete()
    def record(job_id: str, result: Result, context: Any) -> None:
        calls.append((job_id, result, context))

    ok = pool.enqueue(add, 1, 2, on_complete=record, context={"n": "ok"})
    failed = pool.enqueue(refuse, on_complete=record, context={"n": "failed"})
    canceled = pool.enqueue(add, 3, 4, on_complete=record, context={"n": "canceled"},
                            run_after=3600)
    pool.cancel(canceled)
    with running_worker(pool):
        eventually(lambda: all(pool.status(i).callback == "delivered"
                               for i in (ok, failed, canceled)), what="all delivered")
    by_id = {job_id: (result, context) for job_id, result, context in calls}
    assert len(calls) == len(by_id) == 3
    assert by_id[ok] == (Result("succeeded", value=3), {"n": "ok"})
    assert by_id[failed][0].kind == "failed"
    assert by_id[failed][0].error_type == "NonRetryableError"
    assert by_id[canceled] == (Result("canceled"), {"n": "canceled"})


def test_a_failing_on_complete_handler_is_retried_then_delivered(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    add = _with_add(pool)
    calls: list[str] = []
    lock = threading.Lock()

    @pool.on_complete()
    def flaky(job_id: str, result: Result, context: Any) -> None:
        with lock:
            calls.append(job_id)
            if len(calls) == 1:
                msg = "downstream is down"
                raise RuntimeError(msg)

    job_id = pool.enqueue(add, 1, 1, on_complete=flaky)
    with running_worker(pool):
        assert pool.wait(job_id, timeout=15).result == 2
        eventually(lambda: pool.status(job_id).callback == "delivered", what="delivered")
    assert calls == [job_id, job_id]
    h = redis_client.hgetall(pool.keys.job(job_id))
    assert h[b"cb_n"] == b"2"
    assert b"downstream is down" in h[b"cb_error"]


# -- the server side -----------------------------------------------------------------------


def test_the_main_loop_keeps_working_after_script_flush(
    pools: Pools, redis_client: redis.Redis,
) -> None:
    pool = pools("c")
    add = _with_add(pool)
    with running_worker(pool):
        assert pool.wait(pool.enqueue(add, 1, 1), timeout=15).result == 2
        redis_client.script_flush()  # only a NOSCRIPT reload can bring the scripts back
        assert pool.wait(pool.enqueue(add, 2, 2), timeout=15).result == 4
    assert redis_client.script_exists(script("ingestRequests").sha) == [True]


def test_an_accepted_job_survives_a_redis_crash_and_then_completes(
    pools: Pools, tmp_path: Path,
) -> None:
    server = RedisServer.start(tmp_path / "crash", appendfsync="always")
    try:
        pool = pools("c", redis_url=server.url)
        job_id = pool.enqueue(_with_add(pool), 40, 2)
        assert pool.status(job_id).state is State.PENDING
        server.kill()
        server.restart()
        assert pool.status(job_id).state is State.PENDING
        with running_worker(pool):
            st = pool.wait(job_id, timeout=15)
        assert (st.state, st.outcome, st.result) == (State.DONE, "succeeded", 42)
    finally:
        server.stop()
