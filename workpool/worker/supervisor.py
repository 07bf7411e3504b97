"""A worker process: takes attempts and callback deliveries from the dispatch stream, runs the
registered function, and appends each outcome to pendingCompletion. That stream and its own
heartbeat key are all a worker writes.

1. A heartbeat thread keeps `hb:<worker>` alive (heartbeat.py), even while jobs hog the loop.
2. The reader takes at most as many entries as it has free slots (XREADGROUP, blocking); a
   thread stuck in an attempt that timed out takes a slot until it comes back (threads.py).
3. Async jobs run on the event loop; sync jobs in threads, or in child processes that can be
   killed one by one (children.py) and get and return msgpack bytes only.
4. Every attempt ends with an outcome, whatever the job raised; outcomes go to the outbox
   (outcomes.py): all that is ready goes in one round trip.
5. Unless told otherwise, the process also competes for the main-loop lease.
6. SIGTERM/SIGINT: stop taking work, let running attempts finish (up to `grace`), flush, give
   the lease back, delete the heartbeat so anything left is reaped at once as WorkerLost. A
   vital part that stops (the main loop, the flusher, the heartbeat) or every thread stuck
   stops the worker the same way, and `run` then raises WorkerFailed (WorkerStuck) saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar, cast

import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from workpool.core import failures, validate
from workpool.core.logs import logger
from workpool.current import Running, enter
from workpool.errors import (
    FINAL_ERRORS,
    ConfigurationError,
    UnknownJobName,
    WorkerFailed,
    WorkerStuck,
)
from workpool.mainloop.loop import MainLoop, _wait
from workpool.server.connection import Backoff
from workpool.types import status_from_hash
from workpool.wire import limits
from workpool.wire.keys import GROUP
from workpool.wire.protocol import as_text_map, decode, decode_arguments, encode, text
from workpool.wire.scripts import scripts
from workpool.worker.fencing import still_current
from workpool.worker.heartbeat import Heartbeat
from workpool.worker.outbox import Outbox, Outcome
from workpool.worker.threads import (
    AttemptTimedOut,
    Escaped,
    Guard,
    JobThreads,
    Stalled,
    bounded,
    guarded_await,
    guarded_call,
)

if TYPE_CHECKING:
    from workpool.client.pool import Workpool
    from workpool.worker.children import Children

ExecutorKind = Literal["thread", "process"]
StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
_PENDING_PAGE = 256  # our pending entries read per check for ones never seen


T = TypeVar("T")

def _entry_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _entry_time(entry_id: bytes) -> float:
    """When the main loop wrote a dispatch entry (its id's Redis time), in s since the epoch."""
    return _entry_key(entry_id)[0] / 1000


def _timeout(raw: bytes | None) -> float | None:
    """An entry's timeout_ms as seconds; None for none (0, absent or unreadable)."""
    try:
        ms = float(raw or 0)
    except ValueError:
        return None
    return ms / 1000 if math.isfinite(ms) and ms > 0 else None


def _failed(exc: BaseException, *, retryable: bool, kind: str | None = None,
            trace: bool = True) -> Outcome:
    """The outcome fields of an attempt that failed with `exc` (any exception at all)."""
    return {"ok": "0", "retryable": "1" if retryable else "0",
            "error_type": kind or failures.error_type(exc),
            "error": failures.describe(exc, with_traceback=trace)}


def _failure_of(exc: Exception) -> Outcome:
    """The outcome fields of an attempt that ended with `exc`: the job's own error, its
    timeout, its child process's report or death, or an error no retry could change."""
    if isinstance(exc, AttemptTimedOut):
        return _failed(exc, retryable=True, kind="Timeout", trace=False)
    if isinstance(exc, _ChildError):
        return {"ok": "0", "retryable": "1" if exc.retryable else "0", "error_type": exc.kind,
                "error": failures.cut(str(exc))}
    if isinstance(exc, Escaped):
        return _failed(exc.original, retryable=True)
    final = isinstance(exc, FINAL_ERRORS)  # its message says it all
    return _failed(exc, retryable=not final, trace=not final)


class Worker:
    """Runs a pool's registered jobs and on_complete handlers."""

    def __init__(self, pool: Workpool, *, concurrency: int = 10, executor: ExecutorKind = "thread",
                 run_loop: bool = True, worker_id: str | None = None, grace: float = 30.0,
                 pool_spec: str | None = None) -> None:
        self.pool = pool
        self.concurrency = validate.integer("concurrency", concurrency, 1, 10_000)
        if executor not in ("thread", "process"):
            validate.fail("executor", "'thread' or 'process'", executor)
        if executor == "process" and pool_spec is None:
            validate.fail("pool_spec", "'module:attribute' naming the pool, for the process "
                          "executor's children to import it", pool_spec)
        if not pool.registry.jobs and not pool.registry.handlers:
            msg = f"pool {pool.name!r} registers no job and no on_complete handler: a worker " \
                  "would have nothing to run (name the module:attribute where they are)"
            raise ConfigurationError(msg)
        self.executor_kind = executor
        self.run_loop = run_loop
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        validate.string("worker_id", self.id, limits.MAX_NAME_BYTES)
        self.grace = validate.number("grace", grace, 0, 10**6)
        self.pool_spec = pool_spec
        self.log = logger(pool=pool.name, worker=self.id)
        self.failure: WorkerFailed | None = None  #: why the worker stopped on its own, if it did
        self._outbox = Outbox(pool.keys.pending_completion, self.log)
        self._inflight: set[asyncio.Task[None]] = set()
        self._threads: JobThreads | None = None
        self._children: Children | None = None
        self._halt = asyncio.Event()  # stop taking work: asked for, or a vital part stopped
        self._slot_freed = asyncio.Event()
        self._taken: dict[bytes, float] = {}  # entries taken and not seen acknowledged yet
        self._attempts: dict[asyncio.Task[None], tuple[str, int]] = {}  # begun: job, attempt
        self._fencing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: redis.asyncio.Redis | None = None
        self._heartbeat: Heartbeat | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set (or a vital part stops: then raise WorkerFailed)."""
        try:
            scripts()  # a broken install must say so now, not leave the pool idle
        except (OSError, ValueError) as exc:
            msg = f"cannot load the Lua scripts of workpool ({exc}): the installation is " \
                  "incomplete; reinstall workpool"
            raise WorkerFailed(msg) from exc
        self._loop = loop = asyncio.get_running_loop()
        self._halt.clear()
        self._threads = JobThreads(self.concurrency, self._capacity_changed)
        if self.executor_kind == "process":
            await self._start_children()
        beat = Heartbeat(
            self.pool.url, self.pool.keys.heartbeat(self.id), self.pool.heartbeat_ttl,
            self._beat_value, self.log,
            lapsed=lambda: loop.call_soon_threadsafe(self._lapsed),
            ended=lambda: loop.call_soon_threadsafe(self._vital_ended, "heartbeat thread", None))
        self._heartbeat = beat
        beat.start()
        client = redis.asyncio.Redis.from_url(self.pool.url, decode_responses=False,
                                              socket_connect_timeout=5)
        self._client = client
        loop_stop = asyncio.Event()
        vital: list[asyncio.Task[None]] = []
        if self.run_loop:
            vital.append(asyncio.create_task(MainLoop(self.pool, owner=self.id).run(loop_stop),
                                             name="main loop"))
        await self._beat_once(client)  # alive before taking any entry, so none is reaped early
        vital.append(asyncio.create_task(self._outbox.run(client), name="outcome flusher"))
        for task in vital:
            task.add_done_callback(lambda t: self._vital_ended(t.get_name(), t))
        halted = asyncio.create_task(self._follow(stop))
        self.log.info("worker started", concurrency=self.concurrency, executor=self.executor_kind,
                      main_loop=self.run_loop)
        try:
            await self._read_forever(client)
        finally:
            halted.cancel()
            await self._shutdown(client, beat, vital, loop_stop)
        if self.failure is not None:
            raise self.failure

    async def _follow(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._halt.set()

    async def _shutdown(self, client: redis.asyncio.Redis, beat: Heartbeat,
                        vital: list[asyncio.Task[None]], loop_stop: asyncio.Event) -> None:
        await self._drain()
        self._outbox.close()
        flusher, loop_task = vital[-1], (vital[0] if self.run_loop else None)
        with contextlib.suppress(Exception):
            await flusher
        unwritten = await self._outbox.drain(client, within=max(self.grace, 1.0))
        if unwritten:
            self.log.error("outcomes could not be written before stopping; their attempts "
                           "will be reaped as WorkerLost and retried", entries=unwritten)
        if isinstance(self.failure, WorkerStuck):
            await self._settled(client)  # our own main loop, if it leads, applies them
        loop_stop.set()
        if loop_task is not None:
            with contextlib.suppress(Exception):
                await loop_task
        beat.stop()
        with contextlib.suppress(Exception):
            await client.delete(self.pool.keys.heartbeat(self.id))
        await client.aclose()
        if self._threads is not None:
            self._threads.shutdown()
        if self._children is not None:
            await self._children.close()
        self.log.info("worker stopped", reason=str(self.failure) if self.failure else "asked")

    async def _settled(self, client: redis.asyncio.Redis) -> None:
        """Before a restart: wait (a while at most) until the main loop applied the outcomes of
        the attempts this process took, so the restarted one, under the same name, does not
        take them for entries it never saw; they are retried as new attempts instead."""
        deadline = time.monotonic() + 2 * max(self.pool.lease_ttl, self.pool.heartbeat_ttl)
        while time.monotonic() < deadline:
            try:
                if not await client.xpending_range(self.pool.keys.dispatch, GROUP, "-", "+", 1,
                                                   self.id):
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
        from workpool.worker.children import Children  # noqa: PLC0415 - only for the process executor

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
        self._slot_freed.set()
        stuck = self._threads.stuck if self._threads is not None else 0
        if stuck >= self.concurrency:
            self._fail(WorkerStuck(
                f"all {stuck} job threads are stuck in attempts that ran past their timeout "
                "(a thread cannot be stopped): this process stops so it can be restarted"))

    def _beat_value(self) -> str:
        """What the heartbeat key holds: what stats shows of this worker."""
        return json.dumps({"pid": os.getpid(), "concurrency": self.concurrency,
                           "running": len(self._inflight),
                           "stuck": self._threads.stuck if self._threads else 0})

    async def _beat_once(self, client: redis.asyncio.Redis) -> None:
        """Set the heartbeat once, right away (the thread keeps it alive from then on)."""
        with contextlib.suppress(Exception):
            await client.set(self.pool.keys.heartbeat(self.id), self._beat_value(),
                             px=round(self.pool.heartbeat_ttl * 1000))
            if self._heartbeat is not None:
                self._heartbeat.beaten()

    async def _drain(self) -> None:
        """Let running attempts finish within the grace period; abandon the rest to the reaper."""
        if not self._inflight:
            return
        self.log.info("waiting for running attempts", running=len(self._inflight),
                      grace=self.grace)
        _, pending = await asyncio.wait(self._inflight, timeout=self.grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- reading ---------------------------------------------------------------------------

    async def _read_forever(self, client: redis.asyncio.Redis) -> None:
        keys = self.pool.keys
        backoff = Backoff()
        check_every = max(1.0, self.pool.heartbeat_ttl / 2)
        check_at = 0.0  # when to look for entries delivered to us that we never saw
        while not self._halt.is_set():
            free = await self._free_slots()
            if free == 0:
                continue
            try:
                if time.monotonic() >= check_at:
                    await self._take_unseen(client)
                    check_at = time.monotonic() + check_every
                read_at = time.monotonic()
                reply = cast("StreamReply", await client.xreadgroup(
                    GROUP, self.id, {keys.dispatch: ">"}, count=free, block=500))
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await _wait(self._halt, 0.2)  # no main loop has created the group yet
                    continue
                await self._retry_read(exc, backoff)
                continue
            except Exception as exc:  # an outage, or a defect: never the end
                check_at = 0.0  # a reply lost with the connection may have carried entries
                await self._retry_read(exc, backoff)
                continue
            for _stream, entries in reply or []:
                for entry_id, raw in entries:
                    self._spawn(entry_id, as_text_map(raw), client, read_at)

    async def _retry_read(self, exc: Exception, backoff: Backoff) -> None:
        delay = backoff.next()
        if isinstance(exc, RedisError | OSError):
            self.log.warning("could not read work, retrying", error_type=failures.error_type(exc),
                             error=failures.describe(exc, with_traceback=False), backoff=delay)
        else:  # a defect of ours: its traceback is what will get it fixed
            self.log.exception("reading work failed, retrying", backoff=delay)
        await _wait(self._halt, delay)

    async def _take_unseen(self, client: redis.asyncio.Redis) -> None:
        """Run the entries Redis delivered to us but we never saw: a read whose reply was lost
        with its connection (or silently retried by the client library) leaves them in our
        pending list, where nobody would ever run them, since we are alive. An entry taken is
        remembered until it leaves that list (the main loop acknowledged it), however many
        newer ones come, so a long attempt is never taken for an unseen one. XPENDING and
        XRANGE read without touching the entries' delivery times (the timeouts' clock)."""
        dispatch, asked = self.pool.keys.dispatch, time.monotonic()
        pending = await client.xpending_range(dispatch, GROUP, "-", "+", _PENDING_PAGE, self.id)
        ids = [cast("bytes", p["message_id"]) for p in pending]
        listed, last = set(ids), (_entry_key(ids[-1]) if len(ids) == _PENDING_PAGE else None)
        for entry_id, taken_at in list(self._taken.items()):  # acknowledged since: forget
            if entry_id not in listed and taken_at < asked and \
                    (last is None or _entry_key(entry_id) <= last):
                del self._taken[entry_id]
        unseen = [e for e in ids if e not in self._taken]
        if not unseen:
            return
        pipe = client.pipeline(transaction=False)
        for entry_id in unseen:
            pipe.xrange(dispatch, entry_id, entry_id)
        for entry_id, found in zip(unseen, await pipe.execute(), strict=True):
            if found and found[0][1]:
                self.log.warning("running an entry delivered to us but never seen",
                                 entry=text(entry_id))
                self._spawn(entry_id, as_text_map(found[0][1]), client, -math.inf)

    async def _free_slots(self) -> int:
        """Wait until a slot is free (or the worker halts); return how many are free. A thread
        stuck in an attempt that ended takes a slot until it comes back."""
        while not self._halt.is_set():
            stuck = self._threads.stuck if self._threads is not None else 0
            free = self.concurrency - len(self._inflight) - stuck
            if free > 0:
                return free
            self._slot_freed.clear()
            waiters = {asyncio.create_task(self._slot_freed.wait()),
                       asyncio.create_task(self._halt.wait())}
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        return 0

    def _spawn(self, entry_id: bytes, f: dict[str, bytes], client: redis.asyncio.Redis,
               read_at: float) -> None:
        """Run one delivered entry; `read_at` is when the read that returned it was issued
        (-inf when unknown), the earliest moment Redis may have handed it to us."""
        self._taken[entry_id] = time.monotonic()
        if f.get("kind") == b"cb":
            task = asyncio.create_task(self._deliver(client, f, read_at, time.monotonic(),
                                                     _entry_time(entry_id)))
        else:
            task = asyncio.create_task(self._attempt(f, client, read_at, time.monotonic(),
                                                     _entry_time(entry_id)))
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._attempts.pop(task, None)
        self._slot_freed.set()

    def _lapsed(self) -> None:
        """Our heartbeat lapsed (paused, or Redis unreachable): check our running attempts."""
        if self._client is not None and self._attempts:
            task = asyncio.create_task(self._fence(self._client))
            self._fencing.add(task)
            task.add_done_callback(self._fencing.discard)

    async def _fence(self, client: redis.asyncio.Redis) -> None:
        """Cancel the attempts that were given away while we could not beat."""
        running = list(self._attempts.items())
        try:
            current = await still_current(client, self.pool.keys, [a for _, a in running])
        except Exception:  # the next successful beat after a lapse tries again
            return
        for (task, (job_id, attempt)), ok in zip(running, current, strict=True):
            if not ok:
                self.log.warning("cancelling an attempt given away while this worker was "
                                 "unreachable (a thread-run job cannot be stopped, only left)",
                                 job=job_id, attempt=attempt)
                task.cancel()

    # -- running ---------------------------------------------------------------------------

    async def _attempt(self, f: dict[str, bytes], client: redis.asyncio.Redis, read_at: float,
                       received: float, dispatched_at: float) -> None:
        """One attempt: every way it can end (a defect of ours included) is an outcome, but
        for a cancel (fenced: it was given away, or left to the reaper at shutdown)."""
        job_id, name = text(f.get("id")), text(f.get("name"))
        try:
            attempt = int(f.get("attempt") or 0)
        except ValueError:
            attempt = 0
        log = self.log.bind(job=job_id, attempt=attempt, name=name)
        out: Outcome = {"kind": "run", "id": job_id, "attempt": str(attempt)}
        task = cast("asyncio.Task[None]", asyncio.current_task())
        try:
            while True:
                checked = await self._confirmed(client, job_id, attempt, read_at, received)
                if checked is None:
                    log.warning("skipping an attempt given away while this worker stalled")
                    return
                # Begun: from here a lapsed heartbeat's fence may cancel it (until here, the
                # checks are its fence: it is not listed, so it is never "cancelled" before it
                # began). The guard stops it just before its first instruction if the worker
                # may have stalled since `checked`: then it is checked again.
                self._attempts[task] = (job_id, attempt)
                try:
                    out.update(await self._execute(f, Running(
                        job_id, name, attempt, 0, self.id, dispatched_at),
                        partial(self._stalled, checked, checked)))
                    break
                except Stalled:
                    del self._attempts[task]
                    read_at = received = checked
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a defect of the worker: the attempt still ends
            log.exception("the worker failed running an attempt")
            out.update(_failed(exc, retryable=True, kind="WorkerError"))
        if out.get("ok") == "1":
            log.debug("transition", transition="attempt_succeeded")
        else:
            log.warning("transition", transition="attempt_failed", error_type=out["error_type"],
                        retryable=out["retryable"] == "1",
                        error=failures.cut(text(out["error"]), 300))
        self._outbox.put(out)

    async def _execute(self, f: dict[str, bytes], running: Running, guard: Guard) -> Outcome:
        """Run the job; its outcome's ok/result or error fields. Stalled (no outcome) if
        `guard` trips just before its first instruction."""
        name, enc = running.name, text(f.get("enc")) or "msgpack"
        timeout = _timeout(f.get("timeout_ms"))
        enter(running)  # this task's own context: current() inside the job
        try:
            spec = self.pool.registry.job(name)
            if self._children is not None and not spec.is_async:
                raw = await self._in_child(f, name, enc, running, timeout, guard)
            else:
                args, kwargs = decode_arguments(f.get("args") or b"", f.get("kwargs") or b"",
                                                enc)
                if spec.is_async:
                    value = await bounded(guarded_await(guard, spec.fn, args, kwargs), timeout)
                else:
                    assert self._threads is not None
                    value = await self._threads.run(guarded_call(guard, spec.fn), args, kwargs,
                                                    timeout)
                raw = encode(value, "json" if enc == "json" else "msgpack")
        except Stalled:
            raise
        except Exception as exc:  # the job's own error, its timeout, its child's death
            return _failure_of(exc)
        if len(raw) > self.pool.max_result_bytes:
            msg = f"the result of {len(raw)} bytes is over the pool's max_result_bytes " \
                  f"({self.pool.max_result_bytes}); store large results elsewhere and return a " \
                  "reference"
            return {"ok": "0", "retryable": "0", "error_type": "PayloadTooLarge", "error": msg}
        return {"ok": "1", "result": raw}

    async def _in_child(self, f: dict[str, bytes], name: str, enc: str,  # noqa: PLR0917
                        running: Running, timeout: float | None, guard: Guard) -> bytes:
        """Run a sync job in a child process (a timeout kills that child)."""
        from workpool.worker.children import ChildFailed, ChildLost  # noqa: PLC0415

        assert self._children is not None
        try:
            return await self._children.run(name, f.get("args") or b"", f.get("kwargs") or b"",
                                            enc, running, timeout, guard)
        except asyncio.TimeoutError as exc:
            msg = f"ran past its timeout of {timeout:g} s; its child process was killed"
            raise AttemptTimedOut(msg) from exc
        except ChildFailed as exc:
            raise _ChildError(exc.error_type, exc.message, exc.retryable) from exc
        except ChildLost as exc:
            msg = f"the child process running the attempt died (exit code {exc.exitcode}); " \
                  "the process executor replaced it"
            raise _ChildError("ChildProcessLost", msg, True) from exc

    async def _deliver(self, client: redis.asyncio.Redis, f: dict[str, bytes], read_at: float,
                       received: float, dispatched_at: float) -> None:
        """One on_complete delivery: every way it can end is an outcome (a handler this worker
        does not have: retryable=0, so the delivery is given up rather than tried forever)."""
        job_id, n = text(f.get("id")), text(f.get("n"))
        log = self.log.bind(job=job_id, delivery=n)
        out: Outcome = {"kind": "cb", "id": job_id, "n": n}
        try:
            h = await self._job_hash(client, job_id)
            if h is not None and self._stalled(read_at, received):  # that read may have waited
                h = await self._job_hash(client, job_id)  # out a pause: given away meanwhile?
            if h is None:
                return  # the worker stops: the reaper hands the delivery out again
            if text(h.get("cb")) != "pending" or text(h.get("cb_n")) != n:
                return  # superseded: the main loop already closed or re-issued this delivery
            handler = text(h.get("on_complete"))
            enter(Running(job_id, handler, 0, int(n or 0), self.id, dispatched_at))
            spec = self.pool.registry.handler(handler)
            result = status_from_hash(job_id, h).to_result()
            context = decode(h.get("context") or b"", text(h.get("enc")) or "msgpack")
            if spec.is_async:
                await bounded(spec.fn(job_id, result, context), spec.timeout)
            else:
                assert self._threads is not None
                await self._threads.run(spec.fn, (job_id, result, context), {}, spec.timeout)
            out["ok"] = "1"
            log.debug("transition", transition="callback_delivered")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the handler's error, or ours: reported
            original = exc.original if isinstance(exc, Escaped) else exc
            kind = "Timeout" if isinstance(exc, AttemptTimedOut) else None
            out.update(ok="0", error=f"{kind or failures.error_type(original)}: "
                                     f"{failures.describe(original)}")
            if isinstance(exc, UnknownJobName):
                out["retryable"] = "0"
            log.warning("transition", transition="callback_failed",
                        error=failures.cut(text(out["error"]), 300))
        self._outbox.put(out)

    def _stalled(self, read_at: float, received: float) -> bool:
        """Could the reaper have given this attempt away before it begins? It waited half a
        TTL since it reached us, this process wrote no heartbeat for half a TTL, or such a
        gap ended after its read was issued (paused: Redis may have handed it to us long
        before we woke and looked; the heartbeat thread may beat first on waking). An entry
        from an unknown read (read_at -inf: a lost reply) is always checked."""
        now, half = time.monotonic(), self.pool.heartbeat_ttl / 2
        beat = self._heartbeat
        beat_at, resumed_at = (beat.beat_at, beat.resumed_at) if beat else (now, -math.inf)
        return read_at == -math.inf or now - received > half or now - beat_at > half \
            or resumed_at > read_at

    async def _confirmed(self, client: redis.asyncio.Redis, job_id: str, attempt: int,
                         read_at: float, received: float) -> float | None:
        """When this attempt was last known to be ours with no stall since (None: it is not
        ours, or the worker stops). Without a stall since its read, that is now; else Redis is
        asked, and asked again while a stall may have come between asking and the answer."""
        since, got, backoff, asked_before = read_at, received, Backoff(), False
        while self._stalled(since, got):
            if asked_before:  # stalled again (or still: heartbeats refused): wait a little
                await _wait(self._halt, backoff.next())
            asked = time.monotonic()
            if self._halt.is_set() or not await self._mine(client, job_id, attempt):
                return None
            since = got = asked
            asked_before = True
        return time.monotonic()

    async def _mine(self, client: redis.asyncio.Redis, job_id: str, attempt: int) -> bool:
        """Is this attempt still the job's current one? Asked until Redis answers (False if the
        worker stops meanwhile): to begin one that was given away would run it twice at once."""
        current = await self._asked(
            "check that an attempt is still ours",
            lambda: still_current(client, self.pool.keys, [(job_id, attempt)]),
            job=job_id, attempt=attempt)
        return bool(current and current[0])

    async def _job_hash(self, client: redis.asyncio.Redis,
                        job_id: str) -> dict[str, bytes] | None:
        """The job's hash, read until Redis answers (dropping the delivery would strand it);
        None if the worker stops meanwhile (the reaper hands the delivery out again)."""
        raw = await self._asked("read the job", lambda: client.hgetall(self.pool.keys.job(job_id)),
                                job=job_id)
        return None if raw is None else as_text_map(cast("dict[bytes, bytes]", raw))

    async def _asked(self, what: str, call: Callable[[], Awaitable[T]],
                     **context: object) -> T | None:
        """`call()`'s answer, asked again after each failure (an outage or a refusal passes)
        until one comes; None if the worker halts first. Never assumes an answer."""
        backoff = Backoff()
        while not self._halt.is_set():
            try:
                return await call()
            except Exception as exc:  # any refusal: try again after a while
                delay = backoff.next()
                self.log.warning(f"could not {what}, retrying", **context,
                                 error_type=failures.error_type(exc),
                                 error=failures.describe(exc, with_traceback=False),
                                 backoff=delay)
                await _wait(self._halt, delay)
        return None


class _ChildError(Exception):
    """A job's error as its child process reported it (type, text, retryable)."""

    def __init__(self, kind: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind, self.retryable = kind, retryable
