"""Runs one attempt or one on_complete delivery and returns its typed Outcome, whatever the
code does: async jobs on the event loop, sync jobs in threads or in child processes (that can
be killed one by one and see msgpack bytes only). It never begins an attempt the liveness
checks cannot confirm is still this worker's (None: nothing to report)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar, cast

import redis.asyncio

from workpool.core import failures, tracing
from workpool.core.config import PoolConfig
from workpool.current import Running, enter
from workpool.server.backoff import asked
from workpool.types import status_from_hash
from workpool.wire.protocol import decode, decode_arguments, encode, job_fields, text
from workpool.worker.children import ChildFailed, ChildLost, Children
from workpool.worker.liveness import Liveness
from workpool.worker.outbox import Outbox
from workpool.worker.outcome import (
    ChildError,
    Outcome,
    delivery_failed,
    failed,
    failure_of,
    replay_failed,
)
from workpool.worker.reader import entry_time
from workpool.worker.threads import (
    AttemptTimedOut,
    Guard,
    JobThreads,
    Stalled,
    bounded,
    guarded_await,
    guarded_call,
)
from workpool.workflow.replay import Replayer, carried, fresh_start, unread

Entry = dict[str, bytes]
T = TypeVar("T")
SLOW_REPLAY_S = 0.5  #: a replay holding the worker's event loop longer is reported


def _timeout(raw: bytes | None) -> float | None:
    """An entry's timeout_ms as seconds; None for none (0, absent or unreadable)."""
    try:
        ms = float(raw or 0)
    except ValueError:
        return None
    return ms / 1000 if math.isfinite(ms) and ms > 0 else None


class Executor:
    """Runs a pool's registered code for one worker."""

    def __init__(self, config: PoolConfig, worker_id: str, liveness: Liveness, *,
                 threads: JobThreads, children: Children | None, outbox: Outbox,
                 log: Any) -> None:
        self.config, self.worker_id, self.liveness = config, worker_id, liveness
        self.threads, self.children, self.outbox, self.log = threads, children, outbox, log
        self.replayer = Replayer(config)

    async def run(self, entry_id: bytes, f: Entry, read_at: float, received: float) -> None:
        """What the reader runs for each entry: an attempt or a delivery, its outcome handed
        to the outbox. `read_at`: when the read that returned it was issued (-inf: unknown);
        `received`: when it reached us."""
        dispatched_at = entry_time(entry_id)
        if f.get("kind") == b"cb":
            out = await self.deliver(f, read_at, received, dispatched_at)
        elif f.get("kind") == b"wf":
            out = await self.replay(f)
        else:
            out = await self.attempt(f, read_at, received, dispatched_at)
        if out is not None:
            self.outbox.put(out)

    async def attempt(self, f: Entry, read_at: float, received: float,
                      dispatched_at: float) -> Outcome | None:
        """One attempt: every way it can end (a defect of ours included) is an outcome, but
        for a cancel (fenced: it was given away, or left to the reaper at shutdown) and an
        attempt that is no longer ours (None). It runs in a CONSUMER span when traces are on
        (core/tracing.py)."""
        job_id, name = text(f.get("id")), text(f.get("name"))
        try:
            attempt = int(f.get("attempt") or 0)
        except ValueError:
            attempt = 0
        with tracing.consuming(self.config.name, job_id, attempt, name, f) as failed:
            out = await self._attempt(f, read_at, received, dispatched_at, attempt)
            if out is not None and not out.ok:
                failed(out.error_type, out.error)
        return None if out is None else replace(out, worker=self.worker_id)  # its record's

    async def _attempt(self, f: Entry, read_at: float, received: float,
                       dispatched_at: float, attempt: int) -> Outcome | None:
        job_id, name = text(f.get("id")), text(f.get("name"))
        log = self.log.bind(job=job_id, attempt=attempt, name=name)
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        try:
            while True:
                checked = await self.liveness.confirmed(job_id, attempt, read_at, received)
                if checked is None:
                    log.warning("skipping an attempt given away while this worker stalled")
                    return None
                # Begun: from here a lapsed heartbeat's fence may cancel it (until here, the
                # checks are its fence). The guard stops it just before its first instruction
                # if the worker may have stalled since `checked`: then it is checked again.
                self.liveness.hold(task, job_id, attempt)
                try:
                    out = await self._execute(f, Running(
                        job_id, name, attempt, 0, self.worker_id, dispatched_at),
                        partial(self.liveness.stalled, checked, checked))
                    break
                except Stalled:
                    read_at = received = checked
                finally:
                    self.liveness.release(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a defect of the worker: the attempt still ends
            log.exception("the worker failed running an attempt")
            out = failed(job_id, attempt, exc, retryable=True, kind="WorkerError")
        if out.ok:
            log.debug("transition", transition="attempt_succeeded")
        else:
            log.warning("transition", transition="attempt_failed", error_type=out.error_type,
                        retryable=out.retryable, error=failures.cut(out.error or "", 300))
        return out

    async def _execute(self, f: Entry, running: Running, guard: Guard) -> Outcome:
        """Run the job; its outcome. Stalled (no outcome) if `guard` trips just before its
        first instruction."""
        job_id, attempt = running.job_id, running.attempt
        name, enc = running.name, text(f.get("enc")) or "msgpack"
        timeout = _timeout(f.get("timeout_ms"))
        enter(running)  # this task's own context: current() inside the job
        try:
            spec = self.config.registry.job(name)
            if self.children is not None and not spec.is_async:
                raw = await self._in_child(f, name, enc, running, timeout, guard)
            else:
                args, kwargs = decode_arguments(f.get("args") or b"", f.get("kwargs") or b"",
                                                enc)
                if spec.is_async:
                    value = await bounded(guarded_await(guard, spec.fn, args, kwargs), timeout)
                else:
                    value = await self.threads.run(guarded_call(guard, spec.fn), args, kwargs,
                                                   timeout)
                raw = encode(value, "json" if enc == "json" else "msgpack")
        except Stalled:
            raise
        except Exception as exc:  # the job's own error, its timeout, its child's death
            return failure_of(job_id, attempt, exc)
        cap = self.config.max_result_bytes
        if len(raw) > cap:
            msg = f"the result of {len(raw)} bytes is over the pool's max_result_bytes " \
                  f"({cap}); store large results elsewhere and return a reference"
            return Outcome("run", job_id, str(attempt), ok=False, retryable=False,
                           error_type="PayloadTooLarge", error=msg)
        return Outcome("run", job_id, str(attempt), ok=True, result=raw)

    async def _in_child(self, f: Entry, name: str, enc: str,  # noqa: PLR0917
                        running: Running, timeout: float | None, guard: Guard) -> bytes:
        """Run a sync job in a child process (a timeout kills that child)."""
        assert self.children is not None
        try:
            return await self.children.run(name, f.get("args") or b"", f.get("kwargs") or b"",
                                           enc, running, timeout, guard)
        except asyncio.TimeoutError as exc:
            msg = f"ran past its timeout of {timeout:g} s; its child process was killed"
            raise AttemptTimedOut(msg) from exc
        except ChildFailed as exc:
            raise ChildError(exc.error_type, exc.message, exc.retryable) from exc
        except ChildLost as exc:
            msg = f"the child process running the attempt died (exit code {exc.exitcode}); " \
                  "the process executor replaced it"
            raise ChildError("ChildProcessLost", msg, True) from exc

    async def deliver(self, f: Entry, read_at: float, received: float,
                      dispatched_at: float) -> Outcome | None:
        """One on_complete delivery: every way it can end is an outcome, but a delivery
        superseded meanwhile, or left to the reaper as the worker stops (None)."""
        job_id, n = text(f.get("id")), text(f.get("n"))
        log = self.log.bind(job=job_id, delivery=n)
        try:
            h = await self._job_hash(job_id)
            if h is not None and self.liveness.stalled(read_at, received):  # that read may
                h = await self._job_hash(job_id)  # have waited out a pause: given away?
            if h is None:
                return None  # the worker stops: the reaper hands the delivery out again
            if text(h.get("cb")) != "pending" or text(h.get("cb_n")) != n:
                return None  # superseded: the main loop already closed or re-issued it
            handler = text(h.get("on_complete"))
            enter(Running(job_id, handler, 0, int(n or 0), self.worker_id, dispatched_at))
            spec = self.config.registry.handler(handler)
            result = status_from_hash(job_id, h).to_result()
            context = decode(h.get("context") or b"", text(h.get("enc")) or "msgpack")
            if spec.is_async:
                await bounded(spec.fn(job_id, result, context), spec.timeout)
            else:
                await self.threads.run(spec.fn, (job_id, result, context), {}, spec.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the handler's error, or ours: reported
            out = delivery_failed(job_id, n, exc)
            log.warning("transition", transition="callback_failed",
                        error=failures.cut(out.error or "", 300))
            return out
        log.debug("transition", transition="callback_delivered")
        return Outcome("cb", job_id, n, ok=True)

    async def replay(self, f: Entry) -> Outcome | None:
        """One replay of a workflow: its decision, or why it could not decide; None when it is
        superseded (another replay is out, or the workflow ended) or the worker stops. A
        replay is fenced by its generation, so running a stale one changes nothing. A workflow
        this worker keeps live goes on from where it waits, from what its entry carries (and
        the ended entries it only names, read); another is replayed from the start against its
        whole journal (read, unless the entry carries its start: an empty journal). The
        workflow's code runs on this event loop, as async jobs do (a thread hand-off per
        replay cost more than the replay): it must not block, and a replay that held the loop
        for over SLOW_REPLAY_S is reported."""
        workflow_id, gen = text(f.get("id")), text(f.get("gen"))
        try:
            cmds = None
            if self.replayer.keeps(workflow_id):
                read = await self._fields(workflow_id, unread(f))
                if read is None:
                    return None
                cmds = self._on_loop(workflow_id, self.replayer.resume, workflow_id,
                                     {**carried(f), **read}, gen)
            if cmds is None:
                h = fresh_start(f) or await self._job_hash(workflow_id)
                if h is None or text(h.get("state")) != "running" or \
                        text(h.get("wf_gen")) != gen:
                    return None
                spec = self.config.registry.workflow(text(h.get("name")))
                cmds = self._on_loop(workflow_id, self.replayer.replay, spec, workflow_id, h, gen)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a mismatch, an unknown workflow, or a defect: tried again
            self.log.warning("transition", transition="replay_failed", workflow=workflow_id,
                             error=failures.cut(f"{type(exc).__name__}: {exc}", 300))
            return replay_failed(workflow_id, gen, exc)
        return Outcome("wf", workflow_id, gen, ok=True, result=cmds, worker=self.worker_id)

    def _on_loop(self, workflow_id: str, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`: the workflow's code, run on this event loop; reported when it held
        the loop for over SLOW_REPLAY_S (the reads around it are not counted)."""
        began = time.monotonic()
        try:
            return call(*args)
        finally:
            held = time.monotonic() - began
            if held > SLOW_REPLAY_S:
                self.log.warning("a replay held the worker's event loop: workflow code must not "
                                 "block (await only its context's calls)", workflow=workflow_id,
                                 seconds=round(held, 3))

    async def _fields(self, job_id: str, names: list[str]) -> dict[str, bytes] | None:
        """Fields `names` of the job's hash (those it has), read a thousand at a time until
        Redis answers; None if the worker stops meanwhile."""
        client: redis.asyncio.Redis = self.liveness.client
        key, found = self.config.keys.job(job_id), {}
        for i in range(0, len(names), 1000):
            part = names[i:i + 1000]
            raw = await asked("read the journal", partial(client.hmget, key, part),
                              self.log, self.liveness.halt, job=job_id)
            if raw is None:
                return None
            found.update({n: v for n, v in zip(part, cast("list[bytes | None]", raw),
                                                 strict=True) if v is not None})
        return found

    async def _job_hash(self, job_id: str) -> dict[str, bytes] | None:
        """The job's fields (its hash, its spec read as fields), read until Redis answers
        (dropping the delivery would strand it); None if the worker stops meanwhile (the
        reaper hands the delivery out again)."""
        client: redis.asyncio.Redis = self.liveness.client
        raw = await asked("read the job",
                          lambda: client.hgetall(self.config.keys.job(job_id)),
                          self.log, self.liveness.halt, job=job_id)
        return None if raw is None else job_fields(cast("dict[bytes, bytes]", raw), None)
