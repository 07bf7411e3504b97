"""`AsyncWorkpool`: the asyncio face of a `Workpool` (same calls, same logic, awaitable)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio

from workpool.client import ops
from workpool.client.stats import PoolStats
from workpool.client.stats import stats as stats_ops
from workpool.errors import WaitTimeout
from workpool.server.connection import unavailable_as_typed
from workpool.types import Canceled, Configured, JobStatus, Retry
from workpool.wire.protocol import check_job_id
from workpool.wire.settings import config_fields

if TYPE_CHECKING:
    from workpool.client.pool import JobRef, Workpool

_WAIT_RECHECK = 5.0


class AsyncWorkpool:
    """Awaitable enqueue/status/wait/cancel for a pool; registration stays on the Workpool."""

    def __init__(self, pool: Workpool) -> None:
        self.pool = pool
        self._redis: redis.asyncio.Redis | None = None

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The asyncio Redis client (created on first use, in the running event loop)."""
        if self._redis is None:
            self._redis = redis.asyncio.Redis.from_url(
                self.pool.url, decode_responses=False, health_check_interval=30,
                socket_connect_timeout=5)
        return self._redis

    async def _drive(self, gen: ops.Ops) -> Any:
        with unavailable_as_typed(self.pool.url):
            try:
                step = next(gen)
                while True:
                    if step.pause:
                        await asyncio.sleep(step.pause)
                    pipe = self.redis.pipeline(transaction=step.atomic)
                    for command in step.commands:
                        pipe.execute_command(*command)
                    step = gen.send(await pipe.execute())
            except StopIteration as stop:
                return stop.value

    async def enqueue(
        self, job: JobRef, *args: Any, kwargs: Mapping[str, Any] | None = None,
        on_complete: JobRef | None = None, context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        key: str | None = None, timeout: float | None = None, priority: int = 0,
        concurrency_key: str | None = None,
    ) -> str:
        """`Workpool.enqueue`, awaitable."""
        entries = self.pool.build_entries(
            job, [args], kwargs=kwargs, on_complete=on_complete, context=context,
            run_after=run_after, run_at=run_at, retry=retry, key=key, timeout=timeout,
            priority=priority, concurrency_key=concurrency_key)
        ids: list[str] = await self._drive(ops.enqueue(self.pool.keys, entries))
        return ids[0]

    async def enqueue_many(
        self, job: JobRef, args_list: Iterable[Sequence[Any]], *,
        on_complete: JobRef | None = None, context: Any = None, run_after: float | None = None,
        run_at: float | datetime | None = None, retry: Retry | None = None,
        timeout: float | None = None, priority: int = 0, concurrency_key: str | None = None,
    ) -> list[str]:
        """`Workpool.enqueue_many`, awaitable."""
        entries = self.pool.build_entries(
            job, args_list, on_complete=on_complete, context=context, run_after=run_after,
            run_at=run_at, retry=retry, timeout=timeout, priority=priority,
            concurrency_key=concurrency_key)
        if not entries:
            return []
        ids: list[str] = await self._drive(ops.enqueue(self.pool.keys, entries))
        return ids

    async def status(self, job_id: str) -> JobStatus:
        """`Workpool.status`, awaitable."""
        result: JobStatus = await self._drive(ops.status(self.pool.keys, check_job_id(job_id)))
        return result

    async def cancel(self, job_id: str, wait: float = 2.0) -> Canceled:
        """`Workpool.cancel`, awaitable."""
        result: Canceled = await self._drive(ops.cancel_one(self.pool.keys, check_job_id(job_id),
                                                            ops.wait_seconds(wait)))
        return result

    async def cancel_all(self) -> int:
        """`Workpool.cancel_all`, awaitable."""
        sent: int = await self._drive(ops.cancel_all(self.pool.keys))
        return sent

    async def configure(self, *, wait: float = 2.0, **settings: Any) -> Configured:
        """`Workpool.configure`, awaitable (same keyword arguments)."""
        result: Configured = await self._drive(ops.configure(
            self.pool.keys, config_fields(**settings), ops.wait_seconds(wait)))
        return result

    async def stats(self) -> PoolStats:
        """`Workpool.stats`, awaitable."""
        result: PoolStats = await self._drive(stats_ops(self.pool.keys))
        return result

    async def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """`Workpool.wait`, awaitable: woken by the job's notification, no busy polling."""
        deadline = ops.wait_deadline(job_id, timeout)
        with unavailable_as_typed(self.pool.url):
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.pool.keys.done_channel(job_id))
                while True:
                    st = await self.status(job_id)
                    if st.terminal:
                        return st
                    remaining = _WAIT_RECHECK if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        msg = f"job {job_id} is still {st.state.value} after {timeout} s"
                        raise WaitTimeout(msg)
                    await pubsub.get_message(timeout=min(remaining, _WAIT_RECHECK))
            finally:
                await pubsub.aclose()

    async def aclose(self) -> None:
        """Close the asyncio client."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
