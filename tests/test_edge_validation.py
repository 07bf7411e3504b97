"""Validation at the API edge: every public call raises ConfigurationError naming the argument
before anything is written, and whatever the client accepts, the engine applies (the two share
one table of limits, `workpool.wire.limits`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from workpool import ConfigurationError, RateLimit, Retry, State, Workpool
from workpool.wire import limits
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.replies import parse_batch, parse_lease
from workpool.wire.scripts import run


@pytest.fixture
def pool(redis_url: str) -> Iterator[Workpool]:
    p = Workpool("edge", redis_url)

    @p.job()
    def work(*args: Any, **kwargs: Any) -> None:
        return None

    @p.on_complete()
    def record(job_id: str, result: Any, context: Any) -> None:
        return None

    try:
        yield p
    finally:
        p.close()


def written(r: redis.Redis, p: Workpool) -> int:
    """Requests appended to the pool's pendingStart (the only thing a client writes)."""
    return int(r.xlen(p.keys.pending_start))


BAD_ENQUEUES: list[tuple[str, dict[str, Any]]] = [
    ("run_at", {"run_at": 1e13}),
    ("run_at", {"run_at": "tomorrow"}),
    ("run_after", {"run_after": 1e20}),
    ("run_after", {"run_after": "soon"}),
    ("run_after", {"run_after": -1}),
    ("run_after", {"run_after": float("nan")}),
    ("timeout", {"timeout": 1e10}),
    ("timeout", {"timeout": "10"}),
    ("timeout", {"timeout": 0}),
    ("priority", {"priority": True}),
    ("priority", {"priority": 1.0}),
    ("priority", {"priority": 1001}),
    ("key", {"key": "k" * 1000}),
    ("key", {"key": 5}),
    ("key", {"key": ""}),
    ("concurrency_key", {"concurrency_key": 5}),
    ("concurrency_key", {"concurrency_key": "c" * 513}),
    ("kwargs", {"kwargs": {1: 2}}),
    ("kwargs", {"kwargs": [("a", 1)]}),
    ("retry", {"retry": 5}),
    ("on_complete", {"on_complete": 5}),
]


@pytest.mark.parametrize(("argument", "options"), BAD_ENQUEUES,
                         ids=[f"{a}={o[a]!r}"[:40] for a, o in BAD_ENQUEUES])
def test_an_enqueue_option_the_engine_would_reject_raises_naming_it_and_writes_nothing(
        pool: Workpool, redis_client: redis.Redis, argument: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        pool.enqueue("work", 1, **options)
    assert written(redis_client, pool) == 0


UNKNOWN: list[tuple[str, Callable[[Workpool], object]]] = [
    ("enqueue", lambda p: p.enqueue("work", 1, pirority=5)),  # type: ignore[call-arg]
    ("enqueue_many", lambda p: p.enqueue_many("work", [(1,)], key="k")),  # type: ignore[call-arg]
    ("configure", lambda p: p.configure(max_paralelism=3)),  # type: ignore[call-arg]
    ("enqueue", lambda p: asyncio.run(p.aio.enqueue("work", 1, delay=5))),  # type: ignore[call-arg]
    ("enqueue_many", lambda p: asyncio.run(
        p.aio.enqueue_many("work", [(1,)], kwargs={"a": 1}))),  # type: ignore[call-arg]
    ("configure", lambda p: asyncio.run(p.aio.configure(pause=True))),  # type: ignore[call-arg]
]


@pytest.mark.parametrize(("call", "make"), UNKNOWN, ids=range(len(UNKNOWN)))
def test_a_misspelt_option_is_refused_by_name_never_dropped(
        pool: Workpool, redis_client: redis.Redis, call: str,
        make: Callable[[Workpool], object]) -> None:
    # the options are one TypedDict for both faces: nothing but the check at the edge stops a
    # name the call does not take, so it is refused there, naming it, before a write
    with pytest.raises(ConfigurationError, match=rf"{call}\(\) got unknown option"):
        make(pool)
    assert written(redis_client, pool) == 0


@pytest.mark.parametrize(("argument", "make"), [
    ("max_attempts", lambda: Retry(max_attempts=2_000_000)),
    ("max_attempts", lambda: Retry(max_attempts=True)),
    ("base", lambda: Retry(base=2000)),
    ("base", lambda: Retry(base="2")),  # type: ignore[arg-type]
    ("initial_backoff", lambda: Retry(initial_backoff=1e9)),
    ("max_backoff", lambda: Retry(max_backoff=1e9)),
    ("max_backoff", lambda: Retry(initial_backoff=10, max_backoff=5)),
    ("limit", lambda: RateLimit(True)),
    ("limit", lambda: RateLimit(10**10)),
    ("per", lambda: RateLimit(2, per=1e15)),
    ("per", lambda: RateLimit(2, per="1")),  # type: ignore[arg-type]
])
def test_retry_and_rate_limit_values_out_of_range_raise_naming_the_field(
        argument: str, make: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        make()


def test_enqueue_many_refuses_an_argument_tuple_that_is_a_string(
        pool: Workpool, redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigurationError, match="args_list"):
        pool.enqueue_many("work", ["ab", "cd"])
    assert written(redis_client, pool) == 0


def test_every_option_at_its_limit_is_applied_by_the_engine(
        pool: Workpool, redis_client: redis.Redis) -> None:
    """The client's limits are the engine's: nothing it accepts is rejected at ingest."""
    extremes: list[dict[str, Any]] = [
        {"run_at": limits.MAX_RUN_AT_MS / 1000, "timeout": limits.MAX_TIMEOUT_MS / 1000,
         "priority": limits.MAX_PRIORITY, "key": "k" * limits.MAX_KEY_BYTES,
         "concurrency_key": "c" * limits.MAX_CONCURRENCY_KEY_BYTES,
         "retry": Retry(max_attempts=limits.MAX_ATTEMPTS, base=limits.MAX_BACKOFF_BASE,
                        initial_backoff=limits.MAX_RETRY_DELAY_MS / 1000,
                        max_backoff=limits.MAX_RETRY_DELAY_MS / 1000)},
        {"run_after": limits.MAX_RUN_AFTER_MS / 1000, "priority": limits.MIN_PRIORITY,
         "timeout": 0.001, "retry": Retry(max_attempts=1, base=1.0, initial_backoff=0,
                                          max_backoff=0),
         "on_complete": "record", "context": {"x": 1}},
        {"run_at": dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)},
    ]
    ids = [pool.enqueue("work", 1, **options) for options in extremes]
    engine = Engine(pool.keys, pool.config.engine_settings())
    lease = parse_lease(run(redis_client, [engine.acquire("o", 10_000, 1)])[0])
    reply = parse_batch(run(redis_client, [engine.ingest(lease.token)])[0])
    assert reply.codes == [Code.ENQUEUED] * len(extremes)
    assert [pool.status(i).state for i in ids] == [State.PENDING] * len(extremes)


@pytest.mark.parametrize(("argument", "settings"), [
    ("max_parallelism", {"max_parallelism": True}),
    ("max_parallelism", {"max_parallelism": limits.MAX_SETTING + 1}),
    ("paused", {"paused": "no"}),
    ("paused", {"paused": 1}),
    ("rate_limit", {"rate_limit": 10}),
    ("rate_limit", {"rate_limit": "10 per second"}),
    ("rate_limits", {"rate_limits": {"work": 5}}),
    ("rate_limits", {"rate_limits": {"bad name!": None}}),
    ("rate_limits", {"rate_limits": [("work", None)]}),
    ("max_per_key", {"max_per_key": True}),
    ("max_per_key_for", {"max_per_key_for": {"work": "2"}}),
    ("max_per_key_for", {"max_per_key_for": {"work": None}}),
    ("reset", {"reset": "yes"}),
])
def test_configure_refuses_an_unusable_value_naming_the_argument(
        pool: Workpool, redis_client: redis.Redis, argument: str,
        settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        pool.configure(**settings)
    assert written(redis_client, pool) == 0


def test_rate_limits_may_be_given_as_text_wherever_a_rate_limit_is_taken(
        redis_url: str) -> None:
    p = Workpool("texts", redis_url, rate_limit="5/s")

    @p.job(rate_limit="10/500ms")
    def job() -> None:
        return None

    assert p.config.rate_limit == RateLimit(5, 1.0)
    assert p.config.declared_settings() == {"rate": "5/1000", "rate:job": "10/500"}
    p.configure(rate_limit="10/1s", rate_limits={"job": "2/1m"})
    p.close()


@pytest.mark.parametrize(("argument", "options"), [
    ("max_parallelism", {"max_parallelism": True}),
    ("max_parallelism", {"max_parallelism": 2.5}),
    ("retention", {"retention": "10"}),
    ("retention", {"retention": float("inf")}),
    ("lease_ttl", {"lease_ttl": 0}),
    ("heartbeat_ttl", {"heartbeat_ttl": "2"}),
    ("max_payload_bytes", {"max_payload_bytes": -1}),
    ("max_payload_bytes", {"max_payload_bytes": True}),
    ("max_result_bytes", {"max_result_bytes": 0}),
    ("encoding", {"encoding": "yaml"}),
    ("rate_limit", {"rate_limit": 5}),
    ("max_per_key", {"max_per_key": "1"}),
    ("retry", {"retry": {"max_attempts": 3}}),
    ("redis_url", {"redis_url": "http://x"}),
    ("redis_url", {"redis_url": 5}),
    ("redis_url", {"redis_url": "redis+cluster://"}),
    ("redis_url", {"redis_url": "redis+cluster://127.0.0.1:7000,127.0.0.1:port"}),
    ("redis_url", {"redis_url": "redis+cluster://127.0.0.1:7000/3"}),
    ("redis_url", {"redis_url": "redis+sentinel://127.0.0.1:26379"}),
    ("redis_url", {"redis_url": "redis+sentinel://127.0.0.1:0/master"}),
    ("replicas", {"replicas": -1}),
    ("replicas", {"replicas": 1.5}),
    ("replicas", {"replicas": 101}),
    ("replica_timeout", {"replica_timeout": 0}),
    ("replica_timeout", {"replica_timeout": "1"}),
])
def test_a_pool_option_that_is_unusable_raises_naming_it(argument: str,
                                                         options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        Workpool("bad", **options)


@pytest.mark.parametrize("name", ["jöb", "name\n", "", "a" * 201, "1abc", "a b", 5])
def test_names_are_ascii_without_a_trailing_newline(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="name"):
        Workpool(name)


@pytest.mark.parametrize(("argument", "options"), [
    ("timeout", {"timeout": "10"}),
    ("retry", {"retry": 3}),
    ("max_per_key", {"max_per_key": True}),
    ("rate_limit", {"rate_limit": 3}),
    ("name", {"name": "x y"}),
])
def test_job_options_are_checked_where_they_are_given(argument: str,
                                                      options: dict[str, Any]) -> None:
    p = Workpool("jobopts")
    with pytest.raises(ConfigurationError, match=argument):
        p.job(**options)


@pytest.mark.parametrize(("argument", "options"), [
    ("grace", {"grace": "x"}),
    ("grace", {"grace": -1}),
    ("catch_up", {"catch_up": "yes"}),
    ("timeout", {"timeout": 0}),
    ("retry", {"retry": 2}),
])
def test_cron_options_are_checked_where_they_are_given(argument: str,
                                                       options: dict[str, Any]) -> None:
    p = Workpool("cronopts")
    with pytest.raises(ConfigurationError, match=argument):
        p.cron(30, **options)


def test_on_complete_options_are_checked_where_they_are_given() -> None:
    p = Workpool("cbopts")
    with pytest.raises(ConfigurationError, match="timeout"):
        p.on_complete(timeout=-1)
    with pytest.raises(ConfigurationError, match="name"):
        p.on_complete(name="a\n")


@pytest.mark.parametrize("job_id", ["", 5, "x" * 600])
def test_calls_taking_a_job_id_refuse_one_that_cannot_exist(
        pool: Workpool, redis_client: redis.Redis, job_id: Any) -> None:
    for call in (pool.status, pool.cancel, lambda i: pool.wait(i, timeout=0.1)):
        with pytest.raises(ConfigurationError, match="job_id"):
            call(job_id)
    assert written(redis_client, pool) == 0


def test_wait_refuses_a_timeout_that_is_not_a_number(pool: Workpool) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        pool.wait("some-id", timeout="1")  # type: ignore[arg-type]
