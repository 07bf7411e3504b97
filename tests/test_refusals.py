"""A client call that meets a Redis refusing commands for a while (OOM, READONLY, BUSY, ...):
the sync and asyncio faces raise `RedisRefused` (a `RedisUnavailable`) naming the URL instead
of letting redis-py's raw ResponseError escape; the refused call wrote nothing, so the same
enqueue with the same `key=` succeeds once the server recovers. Other ResponseErrors (a defect
of the call, not a passing state of the server) are not turned into refusals."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from helpers import busy, out_of_memory, read_only

from workpool import RedisRefused, RedisUnavailable, State, Workpool
from workpool.server import connection
from workpool.server.embedded import RedisServer
from workpool.wire.protocol import key_job_id

URL = "redis://h:1/0"  # never dialled: the mapping alone is under test


@pytest.fixture
def raw(own_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test's own server, to configure it and look at its data."""
    client = redis.Redis.from_url(own_server.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def pool(own_server: RedisServer) -> Iterator[Workpool]:
    made = Workpool("refused", own_server.url)

    @made.job()
    def noop(n: int) -> int:
        return n

    try:
        yield made
    finally:
        made.close()


def entries_of(r: redis.Redis, pool: Workpool, job_id: str) -> int:
    """How many enqueue entries name `job_id` (a refused enqueue must have added none)."""
    entries: Any = r.xrange(pool.keys.pending_start)
    return len([e for e, fields in entries if fields.get(b"id") == job_id.encode()])


def recovers(pool: Workpool, r: redis.Redis, key: str) -> None:
    """The enqueue that was refused, repeated with the same key: accepted, the job once."""
    job_id = pool.enqueue("noop", 1, key=key)
    assert job_id == key_job_id(key)
    assert pool.status(job_id).state is State.PENDING
    assert entries_of(r, pool, job_id) == 1


def assert_refused(call: Callable[[], object], url: str, code: str) -> RedisRefused:
    """`call()` raises RedisRefused (a RedisUnavailable) naming `url` and the server's reply."""
    with pytest.raises(RedisRefused, match=re.escape(url)) as info:
        call()
    assert isinstance(info.value, RedisUnavailable)
    assert isinstance(info.value.__cause__, redis.ResponseError)
    assert connection.is_refusal(info.value.__cause__), repr(info.value.__cause__)
    reply = f"{type(info.value.__cause__).__name__} {info.value.__cause__}"
    assert code.lower() in reply.lower(), info.value
    return info.value


# -- the sync face ------------------------------------------------------------------------------


def test_an_enqueue_on_a_redis_out_of_memory_raises_redis_refused_and_can_be_repeated(
        own_server: RedisServer, pool: Workpool, raw: redis.Redis) -> None:
    pool.enqueue("noop", 0)  # the pool's connection is open before the fault
    with out_of_memory(raw):
        assert_refused(lambda: pool.enqueue("noop", 1, key="oom"), own_server.url, "OutOfMemory")
        assert_refused(lambda: pool.enqueue("noop", 1), own_server.url, "OutOfMemory")
    assert raw.scard(pool.keys.incoming) == 0  # the refused MULTI wrote nothing
    recovers(pool, raw, "oom")


def test_an_enqueue_on_a_read_only_replica_raises_redis_refused_and_keeps_the_data(
        own_server: RedisServer, pool: Workpool, raw: redis.Redis) -> None:
    before = pool.enqueue("noop", 0, key="before")
    with read_only(raw):  # a primary that is gone
        assert_refused(lambda: pool.enqueue("noop", 1, key="ro"), own_server.url, "READONLY")
        assert_refused(lambda: pool.enqueue("noop", 1), own_server.url, "READONLY")
        assert pool.status(before).state is State.PENDING  # reads still work
    assert pool.status(before).state is State.PENDING
    assert entries_of(raw, pool, before) == 1
    recovers(pool, raw, "ro")


def test_an_enqueue_while_a_script_holds_redis_busy_raises_redis_refused(
        own_server: RedisServer, pool: Workpool, raw: redis.Redis) -> None:
    pool.enqueue("noop", 0)
    with busy(raw, 1.5) as runner:  # ends by itself in 1.5 s, without an error
        assert_refused(lambda: pool.enqueue("noop", 1, key="busy"), own_server.url, "BUSY")
        assert_refused(lambda: pool.enqueue("noop", 1), own_server.url, "BUSY")
        assert runner.is_alive()  # the refusal came from the script, not after it
    assert not runner.is_alive()
    recovers(pool, raw, "busy")


# -- the asyncio face ---------------------------------------------------------------------------


def test_the_asyncio_face_raises_redis_refused_on_a_redis_out_of_memory(
        own_server: RedisServer, pool: Workpool, raw: redis.Redis) -> None:
    async def scenario() -> None:
        try:
            await pool.aio.enqueue("noop", 0)
            with out_of_memory(raw):
                with pytest.raises(RedisRefused, match=re.escape(own_server.url)) as keyed:
                    await pool.aio.enqueue("noop", 1, key="aio-oom")
                with pytest.raises(RedisRefused, match=re.escape(own_server.url)) as plain:
                    await pool.aio.enqueue("noop", 1)
            for info in (keyed, plain):
                assert isinstance(info.value, RedisUnavailable)
                assert isinstance(info.value.__cause__, redis.exceptions.OutOfMemoryError)
            job_id = await pool.aio.enqueue("noop", 1, key="aio-oom")
            assert (await pool.aio.status(job_id)).state is State.PENDING
        finally:
            await pool.aio.aclose()

    asyncio.run(scenario())
    assert raw.scard(pool.keys.incoming) == 1
    assert entries_of(raw, pool, "key:aio-oom") == 1


# -- what is (not) a refusal ---------------------------------------------------------------------


@pytest.mark.parametrize("exc", [
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.ResponseError("BUSY Redis is busy running a script. You can only call "
                        "SCRIPT KILL or SHUTDOWN NOSAVE."),
    redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's "
                        "currently unable to persist to disk."),
    redis.ResponseError("Command # 1 (XADD {wp:p}:pendingStart * op enqueue) of pipeline "
                        "caused error: BUSY Redis is busy running a script. You can only call "
                        "SCRIPT KILL or SHUTDOWN NOSAVE."),  # as a pipeline raises it
    redis.ResponseError("LOADING Redis is loading the dataset in memory"),
    redis.ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is "
                        "set to 'no'."),
    redis.ResponseError("Error running script (call to f_fdbcaa11): @user_script:582: "
                        "@user_script: 582: -READONLY You can't write against a read only "
                        "replica."),  # a script refused at its first write (Redis 6.2)
    redis.ResponseError("UNBLOCKED force unblock from blocking operation, instance state "
                        "changed (master -> replica?)"),
], ids=["OOM", "READONLY", "LOADING-class", "BUSY", "MISCONF", "BUSY-in-pipeline", "LOADING",
        "MASTERDOWN", "READONLY-in-script", "UNBLOCKED"])
def test_a_passing_refusal_of_the_server_is_a_refusal(exc: Exception) -> None:
    assert connection.is_refusal(exc)
    with pytest.raises(RedisRefused, match=re.escape(URL)) as info, \
            connection.unavailable_as_typed(URL):
        raise exc
    assert info.value.__cause__ is exc


@pytest.mark.parametrize("exc", [
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.ResponseError("BUSYGROUP Consumer Group name already exists"),
    redis.ResponseError("ERR unknown command 'NOPE'"),
    redis.ResponseError("ERR Error running script: OOM in a message, not a code"),
    redis.ResponseError("Error running script (call to f_0): @user_script:3: user_script:3: "
                        "Script attempted to access nonexistent global variable 'x'"),
    redis.exceptions.NoScriptError("No matching script. Please use EVAL."),
    redis.exceptions.DataError("Invalid input of type: 'dict'"),
    ValueError("BUSY but not from Redis"),
], ids=["WRONGTYPE", "BUSYGROUP", "ERR", "OOM-in-text", "script-defect", "NOSCRIPT", "DataError",
        "ValueError"])
def test_a_defect_of_the_call_is_not_a_refusal(exc: Exception) -> None:
    assert not connection.is_refusal(exc)
    with pytest.raises(type(exc)) as info, connection.unavailable_as_typed(URL):
        raise exc
    assert info.value is exc


def test_a_wrongtype_reply_of_a_real_server_escapes_as_itself_not_as_a_refusal(
        pool: Workpool, raw: redis.Redis) -> None:
    raw.set(pool.keys.pending_start, "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE") as info:
        pool.enqueue("noop", 1, key="wrongtype")
    assert not isinstance(info.value, RedisUnavailable)
