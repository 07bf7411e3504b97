"""`Workpool`: the public face of a pool (registration, enqueue, status, wait, cancel)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.client import Pipeline

from workpool import ops
from workpool.connection import resolve_url, sync_client, unavailable_as_typed
from workpool.engine import EngineSettings
from workpool.errors import ConfigurationError, UnknownJobName, WaitTimeout
from workpool.keys import Keys
from workpool.protocol import Encoding, Fields, enqueue_fields, new_job_id
from workpool.registry import HandlerSpec, JobSpec, Registry, check_name
from workpool.types import JobStatus, Retry

if TYPE_CHECKING:
    from workpool.aio import AsyncWorkpool

F = TypeVar("F", bound=Callable[..., Any])
JobRef = Callable[..., Any] | str

_WAIT_RECHECK = 5.0  # seconds: a safety re-read while waiting, should a notification be missed


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
        lease_ttl: float = 5.0,
        heartbeat_ttl: float = 10.0,
        encoding: Encoding = "msgpack",
    ) -> None:
        check_name(name)
        if not isinstance(max_parallelism, int) or max_parallelism < 0:
            msg = f"max_parallelism must be an integer >= 0 (0 pauses), got {max_parallelism!r}"
            raise ConfigurationError(msg)
        for label, value in (("retention", retention), ("lease_ttl", lease_ttl),
                             ("heartbeat_ttl", heartbeat_ttl)):
            if not value > 0:
                msg = f"{label} must be a positive number of seconds, got {value!r}"
                raise ConfigurationError(msg)
        self.name = name
        self.keys = Keys(name)
        self.max_parallelism = max_parallelism
        self.retry = retry or Retry()
        self.retention = retention
        self.max_payload_bytes = max_payload_bytes
        self.lease_ttl = lease_ttl
        self.heartbeat_ttl = heartbeat_ttl
        self.encoding = encoding
        self.registry = Registry()
        self._url = redis_url
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
        self._url = url

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
            from workpool.aio import AsyncWorkpool  # noqa: PLC0415 - avoids an import cycle

            self._aio = AsyncWorkpool(self)
        return self._aio

    def engine_settings(self, batch: int = 256) -> EngineSettings:
        """Limits the main-loop scripts apply for this pool."""
        return EngineSettings(
            batch=batch, max_payload=self.max_payload_bytes,
            retention_ms=round(self.retention * 1000), max_attempts=self.retry.max_attempts,
            initial_backoff_ms=round(self.retry.initial_backoff * 1000), base=self.retry.base,
        )

    # -- registration --------------------------------------------------------------------

    def job(self, name: str | None = None, *, retry: Retry | None = None,
            timeout: float | None = None) -> Callable[[F], F]:
        """Register a sync or async function as a job (by default under its `__name__`)."""
        if timeout is not None and not timeout > 0:
            msg = f"timeout must be a positive number of seconds, got {timeout!r}"
            raise ConfigurationError(msg)

        def register(fn: F) -> F:
            self.registry.add_job(JobSpec(check_name(name or fn.__name__), fn, retry, timeout))
            return fn

        return register

    def on_complete(self, name: str | None = None) -> Callable[[F], F]:
        """Register `fn(job_id, result, context)` to be called once a job is terminal."""

        def register(fn: F) -> F:
            self.registry.add_handler(HandlerSpec(check_name(name or fn.__name__), fn))
            return fn

        return register

    # -- requests (built once, sent by the sync or the async face) ----------------------

    def _name_of(self, ref: JobRef, kind: str) -> str:
        if isinstance(ref, str):
            return check_name(ref)
        name = self.registry.name_of(ref)
        if name is None:
            decorator = "job" if kind == "job" else "on_complete"
            msg = f"{kind} {getattr(ref, '__name__', ref)!r} is not registered on pool " \
                  f"{self.name!r}: decorate it with @pool.{decorator}()"
            raise UnknownJobName(msg)
        return name

    def build_entries(
        self, job: JobRef, args_list: Iterable[Sequence[Any]], *,
        kwargs: Mapping[str, Any] | None = None, on_complete: JobRef | None = None,
        context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        key: str | None = None, timeout: float | None = None,
    ) -> list[Fields]:
        """Validate and encode enqueue entries; raises before anything is written."""
        name = self._name_of(job, "job")
        spec = self.registry.jobs.get(name)
        policy = retry or (spec.retry if spec else None) or self.retry
        handler = None if on_complete is None else self._name_of(on_complete, "on_complete")
        at = run_at.timestamp() if isinstance(run_at, datetime) else run_at
        entries = []
        for args in args_list:
            entries.append(enqueue_fields(
                job_id=new_job_id(key), name=name, args=args, kwargs=kwargs,
                enc=self.encoding, max_payload=self.max_payload_bytes,
                max_attempts=policy.max_attempts, initial_backoff=policy.initial_backoff,
                base=policy.base, timeout=timeout if timeout is not None else
                (spec.timeout if spec else None), run_at=at, run_after=run_after,
                on_complete=handler, context=context,
            ))
        return entries

    def _drive(self, gen: ops.Ops) -> Any:
        with unavailable_as_typed(self.url):
            try:
                step = next(gen)
                while True:
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
        key: str | None = None, timeout: float | None = None,
        transaction: Pipeline | None = None,
    ) -> str:
        """Enqueue one job; returns its id, which status() reports as pending at once.

        `key` makes the enqueue idempotent (same key, same job, within the retention).
        `transaction`: a caller's MULTI pipeline to join (the job exists iff it commits).
        """
        entries = self.build_entries(
            job, [args], kwargs=kwargs, on_complete=on_complete, context=context,
            run_after=run_after, run_at=run_at, retry=retry, key=key, timeout=timeout)
        if transaction is not None:
            for command in ops.enqueue_commands(self.keys, entries):
                transaction.execute_command(*command)
            return str(entries[0]["id"])
        ids: list[str] = self._drive(ops.enqueue(self.keys, entries))
        return ids[0]

    def enqueue_many(
        self, job: JobRef, args_list: Iterable[Sequence[Any]], *,
        on_complete: JobRef | None = None, context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Enqueue one job per argument tuple in one round trip (all accepted, or none)."""
        entries = self.build_entries(
            job, args_list, on_complete=on_complete, context=context, run_after=run_after,
            run_at=run_at, retry=retry, timeout=timeout)
        if not entries:
            return []
        ids: list[str] = self._drive(ops.enqueue(self.keys, entries))
        return ids

    def status(self, job_id: str) -> JobStatus:
        """The job's current status; JobNotFound if the pool has no such job."""
        result: JobStatus = self._drive(ops.status(self.keys, job_id))
        return result

    def cancel(self, job_id: str) -> None:
        """Cancel a job: pending/retrying ones end canceled; a running one is never retried."""
        self._drive(ops.cancel(self.keys, [job_id]))

    def cancel_all(self) -> int:
        """Cancel every job not finished; returns how many cancel requests were sent."""
        sent: int = self._drive(ops.cancel_all(self.keys))
        return sent

    def configure(self, *, max_parallelism: int) -> None:
        """Change the live max_parallelism of the pool (0 pauses it); applied at once."""
        if not isinstance(max_parallelism, int) or max_parallelism < 0:
            msg = f"max_parallelism must be an integer >= 0, got {max_parallelism!r}"
            raise ConfigurationError(msg)
        self._drive(ops.configure(self.keys, max_parallelism))

    def stats(self) -> ops.PoolStats:
        """Counts per state, running vs limit, throughput and anomaly counters."""
        result: ops.PoolStats = self._drive(ops.stats(self.keys))
        return result

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job is terminal (woken by its notification, no busy polling)."""
        deadline = None if timeout is None else time.monotonic() + timeout
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
