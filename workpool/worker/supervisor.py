"""A worker process: takes attempts and callback deliveries from the dispatch stream, runs the
registered function, and appends each outcome to pendingCompletion. That stream and its own
heartbeat key are all a worker writes. `Worker` is a small supervisor over its parts:

1. Liveness (liveness.py): the heartbeat thread, stall detection and self-fencing.
2. Reader (reader.py): entries from the dispatch stream into free slots.
3. Executor (executor.py): runs one attempt or delivery and returns its typed Outcome; async
   jobs on the event loop, sync jobs in threads or in child processes (children.py).
4. Outbox (outbox.py): all outcomes that are ready go in one round trip.
5. `alongside`: another vital task of the process (the composer passes a main-loop candidate).
6. SIGTERM/SIGINT: stop taking work, let running attempts finish (up to `grace`), flush, stop
   what runs alongside, delete the heartbeat so anything left is reaped at once as
   WorkerLost. A vital part that stops (the main loop, the flusher, the heartbeat) or every
   thread stuck stops the worker the same way, and `run` then raises WorkerFailed
   (WorkerStuck) saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal, cast

import redis.asyncio

from workpool.core import failures, validate
from workpool.core.config import HasConfig, PoolConfig, config_of
from workpool.core.logs import logger
from workpool.errors import ConfigurationError, WorkerFailed, WorkerStuck
from workpool.server.connection import async_client
from workpool.wire import limits
from workpool.wire.keys import GROUP
from workpool.wire.scripts import scripts
from workpool.worker.children import Children
from workpool.worker.executor import Executor
from workpool.worker.liveness import Liveness
from workpool.worker.outbox import Outbox
from workpool.worker.reader import Reader
from workpool.worker.threads import JobThreads

ExecutorKind = Literal["thread", "process"]
#: a vital task run alongside the worker: (the worker's id, an event set when it must stop)
Alongside = Callable[[str, asyncio.Event], Coroutine[Any, Any, None]]


class Worker:
    """Runs a pool's registered jobs and on_complete handlers."""

    def __init__(self, pool: PoolConfig | HasConfig, *, concurrency: int = 10,
                 executor: ExecutorKind = "thread", worker_id: str | None = None,
                 grace: float = 30.0, pool_spec: str | None = None,
                 alongside: Alongside | None = None) -> None:
        self.config = config = config_of(pool)
        self.concurrency = validate.integer("concurrency", concurrency, 1, 10_000)
        if executor not in ("thread", "process"):
            validate.fail("executor", "'thread' or 'process'", executor)
        if executor == "process" and pool_spec is None:
            validate.fail("pool_spec", "'module:attribute' naming the pool, for the process "
                          "executor's children to import it", pool_spec)
        if not config.registry.jobs and not config.registry.handlers:
            msg = f"pool {config.name!r} registers no job and no on_complete handler: a " \
                  "worker would have nothing to run (name the module:attribute where they are)"
            raise ConfigurationError(msg)
        self.executor_kind = executor
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        validate.string("worker_id", self.id, limits.MAX_NAME_BYTES)
        self.grace = validate.number("grace", grace, 0, 10**6)
        self.pool_spec = pool_spec
        self.alongside = alongside
        self.log = logger(pool=config.name, worker=self.id)
        self.failure: WorkerFailed | None = None  #: why the worker stopped on its own, if it did
        self._outbox = Outbox(config.keys.pending_completion, self.log, config.replication)
        self._halt = asyncio.Event()  # stop taking work: asked for, or a vital part stopped
        self._threads: JobThreads | None = None
        self._children: Children | None = None
        self._reader: Reader | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set (or a vital part stops: then raise WorkerFailed)."""
        try:
            scripts()  # a broken install must say so now, not leave the pool idle
        except (OSError, ValueError) as exc:
            msg = f"cannot load the Lua scripts of workpool ({exc}): the installation is " \
                  "incomplete; reinstall workpool"
            raise WorkerFailed(msg) from exc
        self._halt.clear()
        self._threads = threads = JobThreads(self.concurrency, self._capacity_changed)
        if self.executor_kind == "process":
            await self._start_children()
        client = async_client(self.config.url)
        liveness = Liveness(self.config, self.id, client, self._halt, self.log)
        liveness.start(self._beat_value, lambda: self._vital_ended("heartbeat thread", None))
        executor = Executor(self.config, self.id, liveness, threads=threads,
                            children=self._children, outbox=self._outbox, log=self.log)
        self._reader = reader = Reader(
            self.config.keys, self.id, self.concurrency, self._halt, self.log,
            stuck=lambda: threads.stuck, check_every=max(1.0, self.config.heartbeat_ttl / 2),
            run=executor.run)
        side_stop = asyncio.Event()
        vital: list[asyncio.Task[None]] = []
        if self.alongside is not None:
            vital.append(asyncio.create_task(self.alongside(self.id, side_stop),
                                             name="main loop"))
        await liveness.beat_once(self._beat_value())  # alive before taking any entry
        flusher = asyncio.create_task(self._outbox.run(client), name="outcome flusher")
        for task in [*vital, flusher]:
            task.add_done_callback(lambda t: self._vital_ended(t.get_name(), t))
        halted = asyncio.create_task(self._follow(stop))
        self.log.info("worker started", concurrency=self.concurrency, executor=self.executor_kind,
                      main_loop=self.alongside is not None)
        try:
            await reader.read_forever(client)
        finally:
            halted.cancel()
            await reader.drain(self.grace)
            await self._flush(client, flusher)
            side_stop.set()
            for task in vital:
                with contextlib.suppress(Exception):
                    await task
            await liveness.stop()
            await client.aclose()
            executor.replayer.close()
            threads.shutdown()
            if self._children is not None:
                await self._children.close()
            self.log.info("worker stopped", reason=str(self.failure) if self.failure else "asked")
        if self.failure is not None:
            raise self.failure

    async def _follow(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._halt.set()

    async def _flush(self, client: redis.asyncio.Redis, flusher: asyncio.Task[None]) -> None:
        """Write every outcome left (within the grace) before stopping."""
        self._outbox.close()
        with contextlib.suppress(Exception):
            await flusher
        unwritten = await self._outbox.drain(client, within=max(self.grace, 1.0))
        if unwritten:
            self.log.error("outcomes could not be written before stopping; their attempts "
                           "will be reaped as WorkerLost and retried", entries=unwritten)
        if isinstance(self.failure, WorkerStuck):
            await self._settled(client)  # our own main loop, if it leads, applies them

    async def _settled(self, client: redis.asyncio.Redis) -> None:
        """Before a restart: wait (a while at most) until the main loop applied the outcomes of
        the attempts this process took, so the restarted one, under the same name, does not
        take them for entries it never saw; they are retried as new attempts instead."""
        deadline = time.monotonic() + 2 * max(self.config.lease_ttl, self.config.heartbeat_ttl)
        while time.monotonic() < deadline:
            try:
                if not await client.xpending_range(self.config.keys.dispatch, GROUP, "-", "+",
                                                   1, self.id):
                    return
            except Exception:  # gone or refusing: nothing to wait for
                return
            await asyncio.sleep(0.05)  # poll interval

    def _fail(self, failure: WorkerFailed) -> None:
        """A vital part stopped (or all threads are stuck): stop taking work, say why."""
        if self.failure is None and not self._halt.is_set():
            self.failure = failure
            self.log.error("worker stopping", reason=str(failure))
        self._halt.set()

    def _vital_ended(self, what: str, task: asyncio.Task[None] | None) -> None:
        if self._halt.is_set() or (task is not None and task.cancelled()):
            return
        why = "it returned"
        if task is not None and task.exception() is not None:
            exc = cast("BaseException", task.exception())
            why = f"{failures.error_type(exc)}: {failures.describe(exc)}"
        self._fail(WorkerFailed(f"the worker's {what} stopped unexpectedly ({why})"))

    async def _start_children(self) -> None:
        assert self.pool_spec is not None
        self._children = Children(self.concurrency, self.pool_spec)
        try:
            await self._children.start()
        except Exception as exc:
            await self._children.close()
            msg = f"the process executor could not start its children: {failures.message(exc)}"
            raise WorkerFailed(msg) from exc

    def _capacity_changed(self) -> None:
        """A thread got stuck or came back: maybe a slot is free; maybe none can ever be."""
        if self._reader is not None:
            self._reader.freed()
        stuck = self._threads.stuck if self._threads is not None else 0
        if stuck >= self.concurrency:
            self._fail(WorkerStuck(
                f"all {stuck} job threads are stuck in attempts that ran past their timeout "
                "(a thread cannot be stopped): this process stops so it can be restarted"))

    def _beat_value(self) -> str:
        """What the heartbeat key holds: what stats shows of this worker."""
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "concurrency": self.concurrency,
                           "running": len(self._reader.inflight) if self._reader else 0,
                           "stuck": self._threads.stuck if self._threads else 0})

