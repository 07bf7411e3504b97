"""`Workpool`: the public face of a pool (registration, enqueue, status, wait, cancel)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.client import Pipeline

from workpool.client import ops
from workpool.client.again import again_entry
from workpool.client.aio import AsyncWorkpool
from workpool.client.drive import drive
from workpool.client.ended import ended_jobs
from workpool.client.metrics import PoolMetrics, pool_metrics
from workpool.client.sharded import (
    applied,
    by_shard,
    merge_ended,
    merge_metrics,
    merge_stats,
)
from workpool.client.stats import PoolStats
from workpool.client.stats import stats as stats_ops
from workpool.client.workflows import WorkflowCalls
from workpool.core import validate
from workpool.core.config import PoolConfig
from workpool.core.kit import TestingKit
from workpool.core.registry import HandlerSpec, JobSpec, check_name
from workpool.core.requests import enqueue_entries
from workpool.core.schedule import CronJob, parse_schedule
from workpool.errors import WorkpoolError
from workpool.server.connection import check_url, sync_client
from workpool.types import Canceled, Configured, JobStatus, RateLimit, Retry, rate_limit_of
from workpool.wire import limits
from workpool.wire.options import ENQUEUE_OPTIONS, MANY_OPTIONS, JobRef
from workpool.wire.protocol import Encoding, Fields, check_job_id
from workpool.wire.settings import check_max_per_key, config_fields

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from workpool.wire.options import EnqueueOptions, ManyOptions
    from workpool.wire.settings import LiveSettings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _callable(fn: Any) -> Any:
    """What a decorator was given: a function (the decorator was not called, say)."""
    if not callable(fn):
        validate.fail("the decorated object", "a function", fn)
    return fn


class Workpool(WorkflowCalls):
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
        replicas: int = 0,
        replica_timeout: float = 1.0,
        shards: int = 1,
    ) -> None:
        self.config = PoolConfig(
            check_name(name), redis_url, max_parallelism=max_parallelism,
            retry=Retry() if retry is None else retry, retention=retention,
            max_payload_bytes=max_payload_bytes, max_result_bytes=max_result_bytes,
            lease_ttl=lease_ttl, heartbeat_ttl=heartbeat_ttl, encoding=encoding,
            rate_limit=rate_limit_of("rate_limit", rate_limit), max_per_key=max_per_key,
            replicas=replicas, replica_timeout=replica_timeout, shards=shards)
        self.name, self.keys, self.registry = name, self.config.keys, self.config.registry
        self._redis: redis.Redis | None = None
        self._aio: AsyncWorkpool | None = None
        self.kit: TestingKit | None = None  #: set by workpool.testing.attach (tests only)

    # -- configuration -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Redis URL this pool uses (resolved on first use)."""
        return self.config.url

    def use_url(self, url: str) -> None:
        """Point the pool at another Redis (e.g. the CLI's --redis-url); drops open clients."""
        self.close()
        self._aio = None
        self.config.redis_url = check_url("redis_url", url)

    @property
    def redis(self) -> redis.Redis:
        """The pool's synchronous Redis client (created on first use)."""
        if self._redis is None:
            self._redis = sync_client(self.url)
        return self._redis

    @property
    def testing(self) -> TestingKit:
        """The pool's testing kit: run the real engine in-process until idle, move the clock,
        assert what is enqueued. The `workpool_pool` pytest fixture attaches it (else
        `workpool.testing.attach(pool)`)."""
        if self.kit is None:
            msg = f"pool {self.name!r} has no testing kit: use the workpool_pool fixture " \
                  "(pytest), or workpool.testing.attach(pool)"
            raise WorkpoolError(msg)
        return self.kit

    @property
    def aio(self) -> AsyncWorkpool:
        """The asyncio face of this pool: the same calls, awaitable."""
        if self._aio is None:
            self._aio = AsyncWorkpool(self.config)
        return self._aio

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
            self.config.crons.append(CronJob(job_name, parsed, catch_up, grace))
            return fn

        return register

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

    # -- the sync API (each call one sans-IO operation, client/ops.py) ------------------

    def build_entries(self, job: JobRef, args_list: Iterable[Sequence[Any]],
                      **options: Unpack[EnqueueOptions]) -> list[Fields]:
        """Validate and encode enqueue entries; raises before anything is written."""
        return enqueue_entries(self.config, job, args_list, options,
                               allowed=ENQUEUE_OPTIONS, call="build_entries")

    def enqueue(self, job: JobRef, *args: Any, transaction: Pipeline | None = None,
                **options: Unpack[EnqueueOptions]) -> str:
        """Enqueue one job; returns its id, which status() reports as pending at once.

        `key` makes the enqueue idempotent (same key, same job, within the retention).
        `transaction`: a caller's MULTI pipeline to join (the job exists iff it commits).
        The options are those of `workpool.EnqueueOptions`.
        """
        entries = enqueue_entries(self.config, job, [args], options, allowed=ENQUEUE_OPTIONS,
                                  call="enqueue")
        return self._send(entries, transaction)[0]

    def enqueue_many(self, job: JobRef, args_list: Iterable[Sequence[Any]],
                     **options: Unpack[ManyOptions]) -> list[str]:
        """Enqueue one job per argument tuple in one round trip (all accepted, or none)."""
        entries = enqueue_entries(self.config, job, args_list, options,
                                  allowed=MANY_OPTIONS, call="enqueue_many")
        return self._send(entries) if entries else []

    def run_again(self, job_id: str) -> str:
        """Run a finished job again: a new job with its name, arguments and options, linked to
        it (`status().rerun_of`); the old job stays as it ended. The new job's id."""
        return self._send([self._drive(again_entry(self.config.keys_for(job_id), job_id))])[0]

    def status(self, job_id: str) -> JobStatus:
        """The job's current status; JobNotFound if the pool has no such job."""
        return self._drive(ops.status(self.config.keys_for(check_job_id(job_id)), job_id))

    def cancel(self, job_id: str, wait: float = 2.0) -> Canceled:
        """Cancel a job: pending/retrying ones end canceled; a running one is never retried.
        Waits up to `wait` s for the main loop to apply it and says what it did (SENT: none
        did in time; it will, in order)."""
        return self._drive(ops.cancel_one(self.config.keys_for(check_job_id(job_id)), job_id,
                                          ops.wait_seconds(wait)))

    def cancel_many(self, job_ids: Iterable[str]) -> int:
        """Send a cancel request for each job (a thousand a round trip), applied as cancel()'s
        are, in order; how many were sent (not waited for)."""
        return sum(self._drive(ops.cancel(keys, ids)) for keys, ids in
                   by_shard(self.config, [check_job_id(j) for j in job_ids]))

    def cancel_all(self) -> int:
        """Cancel every job and workflow not finished; returns how many cancel requests were
        sent."""
        return sum(self._drive(ops.cancel_all(keys)) for keys in self.config.shard_keys)

    def configure(self, *, wait: float = 2.0, **settings: Unpack[LiveSettings]) -> Configured:
        """Change a running pool at once, persisted in Redis (overrides what code declares).

        `rate_limit=None` lifts the pool's limit; `rate_limits={"job": None}` a job's (a rate
        may be text: "50/1s"); `reset=True` drops every override so the code's values apply
        again. Waits up to `wait` s for the main loop: "applied", or "sent" (it applies when a
        main loop runs). The settings are those of `workpool.LiveSettings`.
        """
        fields, seconds = config_fields(settings), ops.wait_seconds(wait)
        return applied([self._drive(ops.configure(keys, fields, seconds))
                        for keys in self.config.shard_keys])

    def stats(self) -> PoolStats:
        """Counts per state, running vs limit, throughput and anomaly counters."""
        return merge_stats(self.name, [self._drive(stats_ops(k)) for k in self.config.shard_keys])

    def ended_jobs(self, *, limit: int = 50, failed: bool = False, before: float | None = None,
                   since: float | None = None) -> list[JobStatus]:
        """Jobs (and workflows) that ended within the retention, newest first: up to `limit`,
        only done/failed ones with `failed`, only those that ended before `before` (seconds
        since the epoch: the last one's `finished_at` pages on), and at or after `since`."""
        return merge_ended([self._drive(ended_jobs(keys, limit=limit, failed=failed,
                                                   before=before, since=since))
                            for keys in self.config.shard_keys], limit)

    def metrics(self) -> PoolMetrics:
        """What Prometheus shows of the pool: counts and histograms by job name, its stats,
        leader changes, the age of its oldest waiting job (`workpool metrics` serves them)."""
        return merge_metrics(self.name, [self._drive(pool_metrics(keys))
                                         for keys in self.config.shard_keys])

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job is terminal (woken by its notification, no busy polling)."""
        return self._drive(ops.wait(self.config.keys_for(job_id), job_id, timeout))

    def _drive(self, op: ops.Ops[T]) -> T:
        return drive(self.redis, self.url, op, self.config.replication)

    def close(self) -> None:
        """Close the pool's connections."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None
