"""`AsyncWorkpool`: the asyncio face of a pool: the same calls as `Workpool`, awaitable, each
the same sans-IO operation (client/ops.py) driven by an asyncio client."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio

from workpool.client import ops
from workpool.client.drive import adrive
from workpool.client.requests import enqueue_entries
from workpool.client.stats import PoolStats
from workpool.client.stats import stats as stats_ops
from workpool.core.config import HasConfig, PoolConfig, config_of
from workpool.server.connection import async_client
from workpool.types import Canceled, Configured, JobStatus
from workpool.wire.options import ENQUEUE_OPTIONS, MANY_OPTIONS, JobRef
from workpool.wire.protocol import check_job_id
from workpool.wire.settings import config_fields

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from workpool.wire.options import EnqueueOptions, ManyOptions
    from workpool.wire.settings import LiveSettings

T = TypeVar("T")


class AsyncWorkpool:
    """Awaitable enqueue/status/wait/cancel for a pool; registration stays on the Workpool."""

    def __init__(self, pool: PoolConfig | HasConfig) -> None:
        self.config = config_of(pool)
        self._redis: redis.asyncio.Redis | None = None

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The asyncio Redis client (created on first use, in the running event loop)."""
        if self._redis is None:
            self._redis = async_client(self.config.url)
        return self._redis

    async def _drive(self, op: ops.Ops[T]) -> T:
        return await adrive(self.redis, self.config.url, op)

    async def enqueue(self, job: JobRef, *args: Any, **options: Unpack[EnqueueOptions]) -> str:
        """`Workpool.enqueue`, awaitable."""
        entries = enqueue_entries(self.config, job, [args], options, allowed=ENQUEUE_OPTIONS,
                                  call="enqueue")
        return (await self._drive(ops.enqueue(self.config.keys, entries)))[0]

    async def enqueue_many(self, job: JobRef, args_list: Iterable[Sequence[Any]],
                           **options: Unpack[ManyOptions]) -> list[str]:
        """`Workpool.enqueue_many`, awaitable."""
        entries = enqueue_entries(self.config, job, args_list, options,
                                  allowed=MANY_OPTIONS, call="enqueue_many")
        return await self._drive(ops.enqueue(self.config.keys, entries)) if entries else []

    async def status(self, job_id: str) -> JobStatus:
        """`Workpool.status`, awaitable."""
        return await self._drive(ops.status(self.config.keys, check_job_id(job_id)))

    async def cancel(self, job_id: str, wait: float = 2.0) -> Canceled:
        """`Workpool.cancel`, awaitable."""
        return await self._drive(ops.cancel_one(self.config.keys, check_job_id(job_id),
                                                ops.wait_seconds(wait)))

    async def cancel_all(self) -> int:
        """`Workpool.cancel_all`, awaitable."""
        return await self._drive(ops.cancel_all(self.config.keys))

    async def configure(self, *, wait: float = 2.0,
                        **settings: Unpack[LiveSettings]) -> Configured:
        """`Workpool.configure`, awaitable."""
        return await self._drive(ops.configure(self.config.keys, config_fields(settings),
                                               ops.wait_seconds(wait)))

    async def stats(self) -> PoolStats:
        """`Workpool.stats`, awaitable."""
        return await self._drive(stats_ops(self.config.keys))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """`Workpool.wait`, awaitable: woken by the job's notification, no busy polling."""
        return await self._drive(ops.wait(self.config.keys, job_id, timeout))

    async def aclose(self) -> None:
        """Close the asyncio client."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
