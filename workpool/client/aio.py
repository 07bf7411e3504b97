"""`AsyncWorkpool`: the asyncio face of a pool: the same calls as `Workpool`, awaitable, each
the same sans-IO operation (client/ops.py) driven by an asyncio client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio

from workpool.client import ops, watching
from workpool.client.again import again_entry
from workpool.client.drive import Done, adrive, astream
from workpool.client.ended import ended_jobs
from workpool.client.metrics import PoolMetrics, pool_metrics
from workpool.client.sharded import (
    applied,
    by_shard,
    merge_ended,
    merge_metrics,
    merge_stats,
    placed,
)
from workpool.client.stats import PoolStats
from workpool.client.stats import stats as stats_ops
from workpool.core import tracing
from workpool.core.config import HasConfig, PoolConfig, config_of
from workpool.core.requests import enqueue_entries, event_entry, workflow_entry
from workpool.server.connection import async_client
from workpool.types import Canceled, Configured, JobStatus
from workpool.wire.options import ENQUEUE_OPTIONS, MANY_OPTIONS, JobRef
from workpool.wire.protocol import Fields, check_job_id
from workpool.wire.settings import config_fields
from workpool.workflow.machine import Machine, check_machine
from workpool.workflow.status import WorkflowChange, WorkflowStatus

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

    async def _send(self, entries: list[Fields]) -> list[str]:
        """Append enqueue or workflow start entries, in a PRODUCER span when traces are on;
        their ids."""
        with tracing.producing(self.config.name, entries) as sent:
            by_id: dict[int, str] = {}  # a sharded pool's: each shard's, a round trip each
            for keys, group in placed(self.config, entries):
                by_id.update(zip(map(id, group), await self._drive(ops.enqueue(keys, group)),
                                 strict=True))
            ids = [by_id[id(entry)] for entry in entries]
            sent(ids)
        return ids

    async def _drive(self, op: ops.Ops[T]) -> T:
        return await adrive(self.redis, self.config.url, op, self.config.replication)

    async def enqueue(self, job: JobRef, *args: Any, **options: Unpack[EnqueueOptions]) -> str:
        """`Workpool.enqueue`, awaitable."""
        entries = enqueue_entries(self.config, job, [args], options, allowed=ENQUEUE_OPTIONS,
                                  call="enqueue")
        return (await self._send(entries))[0]

    async def run_again(self, job_id: str) -> str:
        """`Workpool.run_again`, awaitable."""
        entry = await self._drive(again_entry(self.config.keys_for(job_id), job_id))
        return (await self._send([entry]))[0]

    async def enqueue_many(self, job: JobRef, args_list: Iterable[Sequence[Any]],
                           **options: Unpack[ManyOptions]) -> list[str]:
        """`Workpool.enqueue_many`, awaitable."""
        entries = enqueue_entries(self.config, job, args_list, options,
                                  allowed=MANY_OPTIONS, call="enqueue_many")
        return await self._send(entries) if entries else []

    async def start_workflow(self, workflow: Callable[..., Any] | Machine | str, *args: Any,
                             key: str | None = None, kwargs: Mapping[str, Any] | None = None,
                             on_complete: JobRef | None = None, context: Any = None) -> str:
        """`Workpool.start_workflow`, awaitable."""
        if isinstance(workflow, Machine):
            check_machine(workflow)
        entry = workflow_entry(self.config, workflow, args, kwargs=kwargs, key=key,
                               on_complete=on_complete, context=context)
        return (await self._send([entry]))[0]

    async def send_event(self, workflow_id: str, name: str, payload: Any = None, *,
                         key: str | None = None) -> None:
        """`Workpool.send_event`, awaitable."""
        await self._drive(ops.send_event(self.config.keys_for(workflow_id), event_entry(
            self.config, workflow_id, name, payload, key)))

    async def watch(self, workflow_id: str,
                    timeout: float | None = None) -> AsyncIterator[WorkflowChange]:
        """`Workpool.watch`, as an async iterator."""
        async for item in astream(self.redis, self.config.url,
                                  watching.watch(self.config.keys_for(workflow_id),
                                                 workflow_id, timeout)):
            if not isinstance(item, Done):
                yield item

    async def running_workflows(self, limit: int = 1000) -> list[WorkflowStatus]:
        """`Workpool.running_workflows`, awaitable."""
        every = [w for keys in self.config.shard_keys
                 for w in await self._drive(ops.running_workflows(keys, limit))]
        return every[:limit]

    async def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """`Workpool.workflow_status`, awaitable."""
        return await self._drive(ops.workflow_status(
            self.config.keys_for(check_job_id(workflow_id)), workflow_id))

    async def status(self, job_id: str) -> JobStatus:
        """`Workpool.status`, awaitable."""
        return await self._drive(ops.status(self.config.keys_for(check_job_id(job_id)), job_id))

    async def cancel(self, job_id: str, wait: float = 2.0) -> Canceled:
        """`Workpool.cancel`, awaitable."""
        return await self._drive(ops.cancel_one(self.config.keys_for(check_job_id(job_id)),
                                                job_id, ops.wait_seconds(wait)))

    async def cancel_many(self, job_ids: Iterable[str]) -> int:
        """`Workpool.cancel_many`, awaitable."""
        return sum([await self._drive(ops.cancel(keys, ids)) for keys, ids in
                    by_shard(self.config, [check_job_id(j) for j in job_ids])])

    async def cancel_all(self) -> int:
        """`Workpool.cancel_all`, awaitable."""
        return sum([await self._drive(ops.cancel_all(k)) for k in self.config.shard_keys])

    async def configure(self, *, wait: float = 2.0,
                        **settings: Unpack[LiveSettings]) -> Configured:
        """`Workpool.configure`, awaitable."""
        fields, seconds = config_fields(settings), ops.wait_seconds(wait)
        return applied([await self._drive(ops.configure(keys, fields, seconds))
                        for keys in self.config.shard_keys])

    async def stats(self) -> PoolStats:
        """`Workpool.stats`, awaitable."""
        return merge_stats(self.config.name, [await self._drive(stats_ops(keys))
                                              for keys in self.config.shard_keys])

    async def ended_jobs(self, *, limit: int = 50, failed: bool = False,
                         before: float | None = None,
                         since: float | None = None) -> list[JobStatus]:
        """`Workpool.ended_jobs`, awaitable."""
        return merge_ended([await self._drive(ended_jobs(keys, limit=limit, failed=failed,
                                                         before=before, since=since))
                            for keys in self.config.shard_keys], limit)

    async def metrics(self) -> PoolMetrics:
        """`Workpool.metrics`, awaitable."""
        return merge_metrics(self.config.name, [await self._drive(pool_metrics(keys))
                                                for keys in self.config.shard_keys])

    async def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """`Workpool.wait`, awaitable: woken by the job's notification, no busy polling."""
        return await self._drive(ops.wait(self.config.keys_for(job_id), job_id, timeout))

    async def aclose(self) -> None:
        """Close the asyncio client."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
