"""The wire protocol from a foreign client's side: plain `redis-cli XADD`, no Python client.

Each test appends raw entries with the redis-cli binary, then runs a real Worker (with its main
loop) on a pool that registers the job, and reads the outcome the way docs/protocol.md says.
"""

from __future__ import annotations

import json
from typing import cast

import msgpack
import pytest
import redis
from helpers import Pools, eventually, job_fields, redis_cli, running_worker, xadd

from workpool import JobNotFound, JobStatus, Retry, State, Workpool
from workpool.wire.keys import Keys
from workpool.wire.protocol import SPEC_FIELDS

KEYS = Keys("proto")
STREAM = KEYS.pending_start


@pytest.fixture
def pool(pools: Pools) -> Workpool:
    """The pool foreign clients enqueue into, with the jobs they name."""
    p = pools("proto")

    @p.job()
    def add(a: int, b: int) -> int:
        return a + b

    @p.job()
    def greet(name: str, punctuation: str = ".") -> dict[str, object]:
        return {"greeting": f"hello {name}{punctuation}", "length": len(name)}

    return p


def test_a_json_entry_without_id_runs_under_its_entry_id_and_returns_json(
    pool: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    entry_id = xadd(redis_url, STREAM, "op", "enqueue", "name", "greet", "enc", "json",
                    "args", '["ada"]', "kwargs", '{"punctuation":"!"}')
    assert pool.status(entry_id).state is State.PENDING  # found through XRANGE, no SADD needed
    with running_worker(pool):
        st = pool.wait(entry_id, timeout=15)
    assert (st.state, st.outcome) == (State.DONE, "succeeded")
    assert st.result == {"greeting": "hello ada!", "length": 3}
    raw = redis_client.hget(KEYS.job(entry_id), "result")
    assert isinstance(raw, bytes)
    assert json.loads(raw) == st.result


def test_a_json_entry_with_an_id_and_the_incoming_sadd_is_pending_at_once(
    pool: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    script = (f'MULTI\nXADD "{STREAM}" * op enqueue id order-42 name add enc json args "[2,3]"\n'
              f'SADD "{KEYS.incoming}" order-42\nEXEC\n')
    redis_cli(redis_url, stdin=script.encode())
    assert pool.status("order-42").state is State.PENDING
    with running_worker(pool):
        st = pool.wait("order-42", timeout=15)
    assert (st.state, st.outcome, st.result) == (State.DONE, "succeeded", 5)
    assert redis_client.hget(KEYS.job("order-42"), "result") == b"5"
    spec = msgpack.unpackb(redis_client.hget(KEYS.job("order-42"), "spec"), raw=True)
    assert spec[SPEC_FIELDS.index("enc")] == b"json"  # the packed spec docs/protocol.md gives


def test_a_custom_id_without_the_sadd_is_unknown_until_its_entry_is_applied(
    pool: Workpool, redis_url: str,
) -> None:
    xadd(redis_url, STREAM, "id", "quiet-1", "name", "add", "enc", "json", "args", "[1,1]")
    with pytest.raises(JobNotFound):
        pool.status("quiet-1")
    with running_worker(pool):
        st = eventually(lambda: _status_or_none(pool, "quiet-1"), what="quiet-1 applied")
        assert pool.wait(st.id, timeout=15).result == 2


def test_a_msgpack_entry_without_id_made_with_printf_escapes_runs(
    pool: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    args = b"\x92\x02\x03"  # printf '\x92\x02\x03': fixarray(2) [2, 3]
    assert msgpack.unpackb(args) == [2, 3]
    entry_id = xadd(redis_url, STREAM, "op", "enqueue", "name", "add", "args", args)
    with running_worker(pool):
        st = pool.wait(entry_id, timeout=15)
    assert (st.state, st.outcome, st.result) == (State.DONE, "succeeded", 5)
    assert redis_client.hget(KEYS.job(entry_id), "result") == msgpack.packb(5)
    spec = msgpack.unpackb(redis_client.hget(KEYS.job(entry_id), "spec"), raw=True)
    assert spec[SPEC_FIELDS.index("enc")] == b"msgpack"


def test_a_msgpack_entry_with_an_id_and_nul_bytes_sent_through_stdin_runs(
    pool: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    kwargs = b"\x81\xa4name\xa3bob"  # {"name": "bob"}
    args = b"\x90"  # [] -- args is last so `-x` can carry any bytes, NUL included
    xadd(redis_url, STREAM, "op", "enqueue", "id", "mp-1", "name", "greet",
         "kwargs", kwargs, "max_attempts", "2", "args", last=args)
    nul = msgpack.packb([0, 0])  # b'\x92\x00\x00': a NUL cannot travel in argv
    xadd(redis_url, STREAM, "id", "mp-2", "name", "add", "args", last=nul)
    redis_cli(redis_url, "SADD", KEYS.incoming, "mp-1", "mp-2")
    assert pool.status("mp-2").state is State.PENDING
    with running_worker(pool):
        first = pool.wait("mp-1", timeout=15)
        second = pool.wait("mp-2", timeout=15)
    assert first.result == {"greeting": "hello bob.", "length": 3}
    assert first.max_attempts == 2
    assert (second.outcome, second.result) == ("succeeded", 0)


def test_a_msgpack_entry_may_carry_bin_values_and_maps_as_kwargs(
    pool: Workpool, redis_url: str,
) -> None:
    @pool.job()
    def size(blob: bytes, *, times: int) -> int:
        return len(blob) * times

    args = msgpack.packb([b"\x00\x01\x02"], use_bin_type=True)  # bin 8: c4 03 00 01 02
    kwargs = msgpack.packb({"times": 2})
    assert args.startswith(b"\x91\xc4\x03")
    entry_id = xadd(redis_url, STREAM, "name", "size", "kwargs", kwargs, "args", last=args)
    with running_worker(pool):
        assert pool.wait(entry_id, timeout=15).result == 6


def test_options_of_an_entry_land_in_the_job_hash(
    pool: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    xadd(redis_url, STREAM, "id", "opts", "name", "add", "enc", "json", "args", "[1,2]",
         "max_attempts", "7", "initial_backoff_ms", "1500", "base", "3", "timeout_ms", "9000",
         "run_after_ms", "3600000")
    with running_worker(pool):
        st = eventually(lambda: _status_or_none(pool, "opts"), what="opts applied")
    h = job_fields(redis_client, KEYS, "opts")
    assert st.state is State.PENDING  # an hour away
    assert (h["max_attempts"], h["backoff_ms"], h["base"], h["timeout_ms"]) == (
        b"7", b"1500", b"3", b"9000")
    assert int(h["due_at"]) == int(h["enqueued_at"]) + 3_600_000


def test_an_entry_that_omits_options_gets_the_pool_defaults(
    pools: Pools, redis_client: redis.Redis, redis_url: str,
) -> None:
    p = pools("proto", retry=Retry(max_attempts=4, initial_backoff=0.5, base=3.0,
                                   max_backoff=60.0))

    @p.job()
    def add(a: int, b: int) -> int:
        return a + b

    xadd(redis_url, STREAM, "id", "dflt", "name", "add", "enc", "json", "args", "[1,2]",
         "run_after_ms", "3600000")
    with running_worker(p):
        eventually(lambda: _status_or_none(p, "dflt"), what="dflt applied")
    h = job_fields(redis_client, KEYS, "dflt")
    assert (h["max_attempts"], h["backoff_ms"], float(h["base"]), h["timeout_ms"],
            h["max_backoff_ms"]) == (b"4", b"500", 3.0, b"0", b"60000")


def test_raw_cancel_and_config_entries_are_applied(
    pools: Pools, redis_url: str,
) -> None:
    p = pools("proto", max_parallelism=0)

    @p.job()
    def add(a: int, b: int) -> int:
        return a + b

    c1 = xadd(redis_url, STREAM, "name", "add", "enc", "json", "args", "[1,2]")
    c2 = xadd(redis_url, STREAM, "name", "add", "enc", "json", "args", "[3,4]")
    xadd(redis_url, STREAM, "op", "cancel", "id", c1)  # the job id of an entry without id
    with running_worker(p):
        assert p.wait(c1, timeout=15).state is State.CANCELED
        assert p.status(c2).state is State.PENDING  # paused: max_parallelism 0
        xadd(redis_url, STREAM, "op", "config", "max_parallelism", "3")
        assert p.wait(c2, timeout=15).result == 7
    assert p.stats().max_parallelism == 3


def _status_or_none(pool: Workpool, job_id: str) -> JobStatus | None:
    """The status once the entry has been applied (unstarted, or a hash of its own), else None."""
    if not job_fields(pool.redis, pool.keys, job_id):
        return None
    return pool.status(job_id)


MALFORMED = {
    "missing name": ([b"op", b"enqueue", b"id", b"bad", b"enc", b"json", b"args", b"[1]"],
                     "field name must be a name"),
    "bad msgpack": ([b"id", b"bad", b"name", b"add", b"args", b"\xc1"],
                    "field args is not valid msgpack"),
    "truncated msgpack": ([b"id", b"bad", b"name", b"add", b"args", b"\x92\x01"],
                          "field args is not valid msgpack"),
    "bad json": ([b"id", b"bad", b"name", b"add", b"enc", b"json", b"args", b"[1,"],
                 "field args is not valid json"),
    "args a number": ([b"id", b"bad", b"name", b"add", b"enc", b"json", b"args", b"5"],
                      "field args must encode an array"),
    "args a map": ([b"id", b"bad", b"name", b"add", b"enc", b"json", b"args", b'{"a":1}'],
                   "field args must encode an array"),
    "kwargs an array": ([b"id", b"bad", b"name", b"greet", b"enc", b"json", b"args", b"[]",
                         b"kwargs", b'["bob"]'], "field kwargs must encode a map"),
    "unknown enc": ([b"id", b"bad", b"name", b"add", b"enc", b"xml", b"args", b"<a/>"],
                    "field enc must be msgpack or json"),
    "unknown op": ([b"op", b"frobnicate", b"id", b"bad"], "unknown op frobnicate"),
    "non-numeric max_attempts": (
        [b"id", b"bad", b"name", b"add", b"enc", b"json", b"args", b"[1,2]",
         b"max_attempts", b"many"], "field max_attempts is not a number from 1 to 1000000"),
    "max_attempts zero": (
        [b"id", b"bad", b"name", b"add", b"enc", b"json", b"args", b"[1,2]",
         b"max_attempts", b"0"], "field max_attempts is not a number from 1 to 1000000"),
    "fractional max_attempts": (
        [b"id", b"bad", b"name", b"add", b"enc", b"json", b"args", b"[1,2]",
         b"max_attempts", b"2.5"], "field max_attempts must be a whole number"),
    "cancel without id": ([b"op", b"cancel"], "cancel needs field id"),
    "config with a negative count": ([b"op", b"config", b"max_parallelism", b"-1"],
                                     "config field max_parallelism has an unusable value"),
    "config setting nothing": ([b"op", b"config"], "config sets nothing"),
    "config of an unknown setting": ([b"op", b"config", b"colour", b"red"],
                                     "config field colour has an unusable value"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_entry_is_set_aside_and_the_next_entry_is_still_applied(
    case: str, pool: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    fields, reason = MALFORMED[case]
    bad_entry = xadd(redis_url, STREAM, *fields)
    good = xadd(redis_url, STREAM, "name", "add", "enc", "json", "args", "[20,22]")
    with running_worker(pool):
        assert pool.wait(good, timeout=15).result == 42
    stats = pool.stats()
    assert stats.counters.get("rejected") == 1
    shown = stats.rejected[0]
    assert shown["entry"] == bad_entry
    assert reason in shown["reason"]
    assert {k[2:]: v for k, v in shown.items() if k.startswith("f.")} == {
        k.decode(): v.decode("utf-8", "backslashreplace") for k, v in zip(
            fields[::2], fields[1::2], strict=True)}
    rejected = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrange(KEYS.rejected))
    ((_, raw),) = rejected
    assert raw[b"entry"] == bad_entry.encode()
    assert {k[2:]: v for k, v in raw.items() if k.startswith(b"f.")} == dict(
        zip(fields[::2], fields[1::2], strict=True))
    if b"id" in fields:
        with pytest.raises(JobNotFound):
            pool.status("bad")
    assert redis_client.xlen(STREAM) == 0
