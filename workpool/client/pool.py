"""`Workpool`: the public face of a pool (registration, enqueue, status, wait, cancel)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.client import Pipeline

from workpool.client import ops
from workpool.client.stats import PoolStats
from workpool.client.stats import stats as stats_ops
from workpool.core import validate
from workpool.core.registry import HandlerSpec, JobSpec, Registry, check_name
from workpool.core.schedule import parse_schedule
from workpool.errors import UnknownJobName, WaitTimeout
from workpool.mainloop.cron import CronJob
from workpool.server.connection import check_url, resolve_url, sync_client, unavailable_as_typed
from workpool.types import Canceled, Configured, JobStatus, RateLimit, Retry, rate_limit_of
from workpool.wire import limits
from workpool.wire.calls import EngineSettings
from workpool.wire.keys import Keys
from workpool.wire.protocol import (
    Encoding,
    Fields,
    check_job_id,
    check_kwargs,
    enqueue_fields,
    enqueue_options,
    key_job_id,
    new_job_id,
)
from workpool.wire.settings import (
    UNSET,
    _Unset,
    check_max_per_key,
    config_fields,
    declared_settings,
)

if TYPE_CHECKING:
    from workpool.client.aio import AsyncWorkpool

F = TypeVar("F", bound=Callable[..., Any])
JobRef = Callable[..., Any] | str

_WAIT_RECHECK = 5.0  # seconds: a safety re-read while waiting, should a notification be missed


def _callable(fn: Any) -> Any:
    """What a decorator was given: a function (the decorator was not called, say)."""
    if not callable(fn):
        validate.fail("the decorated object", "a function", fn)
    return fn


class Workpool:
    """A named pool of jobs on Redis with a global max_parallelism and a retry policy."""

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        max_parallelism: int = 10,
        retry: Retry | None = None,
        retention: float = 24 * 3600.0,
        max_payload_bytes: int = 1 << 20,
        max_result_bytes: int = 1 << 20,
        lease_ttl: float = 5.0,
        heartbeat_ttl: float = 10.0,
        encoding: Encoding = "msgpack",
        rate_limit: RateLimit | str | None = None,
        max_per_key: int | None = None,
    ) -> None:
        self.name = check_name(name)
        self.keys = Keys(name)
        self.max_parallelism = validate.integer("max_parallelism", max_parallelism, 0,
                                                limits.MAX_SETTING)
        self.retry = Retry() if retry is None else validate.instance(
            "retry", retry, Retry, "a workpool.Retry or None")
        self.retention = retention
        self.retention_ms = validate.seconds_ms("retention", retention, limits.MAX_RETENTION_MS,
                                                positive=True)
        self.max_payload_bytes = validate.integer("max_payload_bytes", max_payload_bytes, 1,
                                                  limits.MAX_PAYLOAD_BYTES)
        self.max_result_bytes = validate.integer("max_result_bytes", max_result_bytes, 1,
                                                 limits.MAX_PAYLOAD_BYTES)
        self.lease_ttl = lease_ttl
        validate.seconds_ms("lease_ttl", lease_ttl, limits.MAX_TTL_MS, positive=True)
        self.heartbeat_ttl = heartbeat_ttl
        validate.seconds_ms("heartbeat_ttl", heartbeat_ttl, limits.MAX_TTL_MS, positive=True)
        if encoding not in ("msgpack", "json"):
            validate.fail("encoding", "'msgpack' or 'json'", encoding)
        self.encoding: Encoding = encoding
        self.rate_limit = rate_limit_of("rate_limit", rate_limit)
        self.max_per_key = None if max_per_key is None else check_max_per_key(max_per_key)
        self.registry = Registry()
        self.crons: list[CronJob] = []
        self._url = None if redis_url is None else check_url("redis_url", redis_url)
        self._redis: redis.Redis | None = None
        self._aio: AsyncWorkpool | None = None

    # -- configuration -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Redis URL this pool uses (resolved on first use)."""
        if self._url is None:
            self._url = resolve_url(None)
        return self._url

    def use_url(self, url: str) -> None:
        """Point the pool at another Redis (e.g. the CLI's --redis-url); drops open clients."""
        self.close()
        self._aio = None
        self._url = check_url("redis_url", url)

    @property
    def redis(self) -> redis.Redis:
        """The pool's synchronous Redis client (created on first use)."""
        if self._redis is None:
            self._redis = sync_client(self.url)
        return self._redis

    @property
    def aio(self) -> AsyncWorkpool:
        """The asyncio face of this pool: the same calls, awaitable."""
        if self._aio is None:
            from workpool.client.aio import AsyncWorkpool  # noqa: PLC0415 - avoids an import cycle

            self._aio = AsyncWorkpool(self)
        return self._aio

    def engine_settings(self, batch: int = 256) -> EngineSettings:
        """Limits the main-loop scripts apply for this pool."""
        return EngineSettings(
            batch=batch, max_payload=self.max_payload_bytes, max_result=self.max_result_bytes,
            retention_ms=self.retention_ms, retry=self.retry.wire,
            silence_grace_ms=round(self.heartbeat_ttl * 500),  # a beat comes every ttl/3
        )

    # -- registration --------------------------------------------------------------------

    def job(self, name: str | None = None, *, retry: Retry | None = None,
            timeout: float | None = None, rate_limit: RateLimit | str | None = None,
            max_per_key: int | None = None) -> Callable[[F], F]:
        """Register a sync or async function as a job (by default under its `__name__`).

        `rate_limit`: starts of this job across all workers (a RateLimit or text like "5/s");
        `max_per_key`: running jobs of this name per concurrency key (1 = serial).
        """
        if name is not None:
            check_name(name)
        if retry is not None:
            validate.instance("retry", retry, Retry, "a workpool.Retry or None")
        if timeout is not None:
            validate.seconds_ms("timeout", timeout, limits.MAX_TIMEOUT_MS, positive=True)
        limit = rate_limit_of("rate_limit", rate_limit)
        if max_per_key is not None:
            check_max_per_key(max_per_key)

        def register(fn: F) -> F:
            self.registry.add_job(JobSpec(check_name(name or _callable(fn).__name__), fn, retry,
                                          timeout, limit, max_per_key))
            return fn

        return register

    def cron(self, schedule: str | float | timedelta, *, name: str | None = None,
             catch_up: bool = False, grace: float = 60.0, retry: Retry | None = None,
             timeout: float | None = None) -> Callable[[F], F]:
        """Register a job enqueued once per tick of `schedule` (a cron line in UTC, or seconds).

        Exactly one job per tick however many processes run: the tick time is its idempotency
        key. Every tick found at most `grace` seconds late runs (after a leader handover, too);
        an older one was missed (every process was down): with `catch_up` the latest missed
        tick runs once, else it is skipped and logged.
        """
        parsed = parse_schedule(schedule)
        validate.flag("catch_up", catch_up)
        validate.seconds_ms("grace", grace, limits.MAX_GRACE_MS)
        register_job = self.job(name, retry=retry, timeout=timeout)

        def register(fn: F) -> F:
            job_name = check_name(name or _callable(fn).__name__)
            register_job(fn)
            self.crons.append(CronJob(job_name, parsed, catch_up, grace))
            return fn

        return register

    def declared_settings(self) -> dict[str, str]:
        """Rate and key limits this code declares; a new main-loop holder writes them."""
        return declared_settings(self.rate_limit, self.max_per_key, self.registry)

    def on_complete(self, name: str | None = None, *,
                    timeout: float | None = 60.0) -> Callable[[F], F]:
        """Register `fn(job_id, result, context)` to be called once a job is terminal.

        `timeout`: seconds one run may take (None: no limit); a run past it failed and the
        delivery is tried again, as after any failure.
        """
        if name is not None:
            check_name(name)
        if timeout is not None:
            validate.seconds_ms("timeout", timeout, limits.MAX_TIMEOUT_MS, positive=True)

        def register(fn: F) -> F:
            self.registry.add_handler(HandlerSpec(check_name(name or _callable(fn).__name__),
                                                  fn, timeout))
            return fn

        return register

    # -- requests (built once, sent by the sync or the async face) ----------------------

    def _name_of(self, ref: Any, argument: str) -> str:
        if isinstance(ref, str):
            return check_name(ref, argument)
        if not callable(ref):
            validate.fail(argument, "a registered function or its name", ref)
        name = self.registry.name_of(ref)
        if name is None:
            decorator = "job" if argument == "job" else "on_complete"
            msg = f"{argument} {getattr(ref, '__name__', ref)!r} is not registered on pool " \
                  f"{self.name!r}: decorate it with @pool.{decorator}()"
            raise UnknownJobName(msg)
        return name

    def build_entries(
        self, job: JobRef, args_list: Iterable[Sequence[Any]], *,
        kwargs: Mapping[str, Any] | None = None, on_complete: JobRef | None = None,
        context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        key: str | None = None, timeout: float | None = None, priority: int = 0,
        concurrency_key: str | None = None,
    ) -> list[Fields]:
        """Validate and encode enqueue entries; raises before anything is written."""
        name = self._name_of(job, "job")
        spec = self.registry.jobs.get(name)
        if retry is not None:
            validate.instance("retry", retry, Retry, "a workpool.Retry or None")
        policy = retry or (spec.retry if spec else None) or self.retry
        handler = None if on_complete is None else self._name_of(on_complete, "on_complete")
        options = enqueue_options(
            job_id=key_job_id(key), name=name, enc=self.encoding, retry=policy.wire,
            timeout=timeout if timeout is not None else (spec.timeout if spec else None),
            run_at=run_at.timestamp() if isinstance(run_at, datetime) else run_at,
            run_after=run_after, on_complete=handler, context=context, priority=priority,
            concurrency_key=concurrency_key)
        kw = check_kwargs(kwargs)
        entries = []
        for args in args_list:
            if not isinstance(args, list | tuple):
                validate.fail("args_list", "an iterable of argument tuples (or lists)", args)
            entries.append(enqueue_fields(options, args, kw, self.max_payload_bytes))
        return entries

    def _drive(self, gen: ops.Ops) -> Any:
        with unavailable_as_typed(self.url):
            try:
                step = next(gen)
                while True:
                    if step.pause:
                        time.sleep(step.pause)
                    pipe = self.redis.pipeline(transaction=step.atomic)
                    for command in step.commands:
                        pipe.execute_command(*command)
                    step = gen.send(pipe.execute())
            except StopIteration as stop:
                return stop.value

    # -- the sync API ---------------------------------------------------------------------

    def enqueue(
        self, job: JobRef, *args: Any, kwargs: Mapping[str, Any] | None = None,
        on_complete: JobRef | None = None, context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        key: str | None = None, timeout: float | None = None, priority: int = 0,
        concurrency_key: str | None = None, transaction: Pipeline | None = None,
    ) -> str:
        """Enqueue one job; returns its id, which status() reports as pending at once.

        `key` makes the enqueue idempotent (same key, same job, within the retention).
        `transaction`: a caller's MULTI pipeline to join (the job exists iff it commits).
        """
        entries = self.build_entries(
            job, [args], kwargs=kwargs, on_complete=on_complete, context=context,
            run_after=run_after, run_at=run_at, retry=retry, key=key, timeout=timeout,
            priority=priority, concurrency_key=concurrency_key)
        if transaction is not None:  # its replies are the caller's: name the job ourselves
            entries[0].setdefault("id", new_job_id())
            for command in ops.enqueue_commands(self.keys, entries):
                transaction.execute_command(*command)
            return str(entries[0]["id"])
        ids: list[str] = self._drive(ops.enqueue(self.keys, entries))
        return ids[0]

    def enqueue_many(
        self, job: JobRef, args_list: Iterable[Sequence[Any]], *,
        on_complete: JobRef | None = None, context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        timeout: float | None = None, priority: int = 0, concurrency_key: str | None = None,
    ) -> list[str]:
        """Enqueue one job per argument tuple in one round trip (all accepted, or none)."""
        entries = self.build_entries(
            job, args_list, on_complete=on_complete, context=context, run_after=run_after,
            run_at=run_at, retry=retry, timeout=timeout, priority=priority,
            concurrency_key=concurrency_key)
        if not entries:
            return []
        ids: list[str] = self._drive(ops.enqueue(self.keys, entries))
        return ids

    def status(self, job_id: str) -> JobStatus:
        """The job's current status; JobNotFound if the pool has no such job."""
        result: JobStatus = self._drive(ops.status(self.keys, check_job_id(job_id)))
        return result

    def cancel(self, job_id: str, wait: float = 2.0) -> Canceled:
        """Cancel a job: pending/retrying ones end canceled; a running one is never retried.
        Waits up to `wait` s for the main loop to apply it and says what it did (SENT: none
        did in time; it will, in order)."""
        result: Canceled = self._drive(ops.cancel_one(self.keys, check_job_id(job_id),
                                                      ops.wait_seconds(wait)))
        return result

    def cancel_all(self) -> int:
        """Cancel every job not finished; returns how many cancel requests were sent."""
        sent: int = self._drive(ops.cancel_all(self.keys))
        return sent

    def configure(
        self, *, max_parallelism: int | _Unset = UNSET, paused: bool | _Unset = UNSET,
        rate_limit: RateLimit | str | _Unset | None = UNSET,
        rate_limits: Mapping[str, RateLimit | str | None] | None = None,
        max_per_key: int | _Unset = UNSET, max_per_key_for: Mapping[str, int] | None = None,
        reset: bool = False, wait: float = 2.0,
    ) -> Configured:
        """Change a running pool at once, persisted in Redis (overrides what code declares).

        `rate_limit=None` lifts the pool's limit; `rate_limits={"job": None}` a job's (a rate
        may be text: "50/1s"); `reset=True` drops every override so the code's values apply
        again. Waits up to `wait` s for the main loop: "applied", or "sent" (it applies when a
        main loop runs).
        """
        fields = config_fields(
            max_parallelism=max_parallelism, paused=paused, rate_limit=rate_limit,
            rate_limits=rate_limits, max_per_key=max_per_key, max_per_key_for=max_per_key_for,
            reset=reset)
        result: Configured = self._drive(ops.configure(self.keys, fields, ops.wait_seconds(wait)))
        return result

    def stats(self) -> PoolStats:
        """Counts per state, running vs limit, throughput and anomaly counters."""
        result: PoolStats = self._drive(stats_ops(self.keys))
        return result

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job is terminal (woken by its notification, no busy polling)."""
        deadline = ops.wait_deadline(job_id, timeout)
        with unavailable_as_typed(self.url):
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.keys.done_channel(job_id))
                while True:
                    st = self.status(job_id)
                    if st.terminal:
                        return st
                    remaining = _WAIT_RECHECK if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        msg = f"job {job_id} is still {st.state.value} after {timeout} s"
                        raise WaitTimeout(msg)
                    pubsub.get_message(timeout=min(remaining, _WAIT_RECHECK))
            finally:
                pubsub.close()

    def close(self) -> None:
        """Close the pool's connections."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None
