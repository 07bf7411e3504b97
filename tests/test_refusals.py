"""A client call that meets a Redis refusing commands for a while (OOM, READONLY, BUSY, ...):
the sync and asyncio faces raise `RedisRefused` (a `RedisUnavailable`) naming the URL instead
of letting redis-py's raw ResponseError escape; the refused call wrote nothing, so the same
enqueue with the same `key=` succeeds once the server recovers. Other ResponseErrors (a defect
of the call, not a passing state of the server) are not turned into refusals."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
import redis
from helpers import eventually

from workpool import RedisRefused, RedisUnavailable, State, Workpool, connection
from workpool.embedded import RedisServer
from workpool.protocol import key_job_id

URL = "redis://h:1/0"  # never dialled: the mapping alone is under test
SPIN = "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] " \
       "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > tonumber(ARGV[1])"


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


@contextmanager
def out_of_memory(r: redis.Redis) -> Iterator[None]:
    """Every write that can grow memory fails with OOM (maxmemory far below what is used)."""
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    try:
        yield
    finally:
        r.config_set("maxmemory", "0")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed again)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def busy_reply(r: redis.Redis) -> bool:
    """True once the server answers BUSY (a script runs past the busy-reply threshold)."""
    try:
        r.ping()
    except redis.ResponseError as exc:
        if str(exc).startswith("BUSY"):
            return True
        raise
    return False


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
    raw.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a primary that is gone
    try:
        assert_refused(lambda: pool.enqueue("noop", 1, key="ro"), own_server.url, "READONLY")
        assert_refused(lambda: pool.enqueue("noop", 1), own_server.url, "READONLY")
        assert pool.status(before).state is State.PENDING  # reads still work
    finally:
        raw.execute_command("REPLICAOF", "NO", "ONE")
    assert pool.status(before).state is State.PENDING
    assert entries_of(raw, pool, before) == 1
    recovers(pool, raw, "ro")


def test_an_enqueue_while_a_script_holds_redis_busy_raises_redis_refused(
        own_server: RedisServer, pool: Workpool, raw: redis.Redis) -> None:
    pool.enqueue("noop", 0)
    # `busy-reply-threshold` since Redis 7; `lua-time-limit` is its name on 6.2 (an alias on 7)
    raw.config_set("lua-time-limit", "100")
    script_client = redis.Redis.from_url(own_server.url)
    outcome: dict[str, Any] = {}

    def spin() -> None:
        try:
            outcome["reply"] = script_client.eval(SPIN, 0, 1_500_000)  # ends by itself in 1.5 s
        except BaseException as exc:  # reported to the test thread below
            outcome["error"] = exc

    runner = threading.Thread(target=spin, name="busy-script", daemon=True)
    runner.start()
    try:
        eventually(lambda: busy_reply(raw), 5.0, "the server answers BUSY")
        assert_refused(lambda: pool.enqueue("noop", 1, key="busy"), own_server.url, "BUSY")
        assert_refused(lambda: pool.enqueue("noop", 1), own_server.url, "BUSY")
        assert runner.is_alive()  # the refusal came from the script, not after it
    finally:
        runner.join(15)
        script_client.close()
    assert not runner.is_alive()
    assert "error" not in outcome, outcome
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
