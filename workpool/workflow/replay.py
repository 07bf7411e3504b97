"""Replays. A workflow function runs on an event loop of its own (no file descriptors, driven
one turn at a time from the worker's own event loop, as its async jobs run: no thread
hand-off) until it returns, raises, or waits only for journal entries that have not ended.
Results reach it only through activations: activation k delivers, in order, the entries
whose end one replay first saw (the journal records each), so a replay from the start sees
every result in the same order and at the same point as the run that first saw it. A worker
keeps a workflow's live coroutine between replays (`Replayer`), so a replay usually only
delivers what ended since and runs on from there: its cost does not grow with the journal.
Each decision is what applyOutcomes applies: the activation it made, the entries asked for,
then the end, if it came."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from workpool.core import failures
from workpool.core.config import PoolConfig
from workpool.core.registry import WorkflowSpec
from workpool.errors import NonDeterministicWorkflow
from workpool.wire.protocol import TRACE_FIELDS, Encoding, decode_arguments, encode, text
from workpool.workflow import journal
from workpool.workflow.context import WorkflowContext

MAX_TURNS = 100_000  #: event-loop turns one replay may take before it is called stuck
KEPT = 16_384  #: live workflows a worker keeps between replays (the least recent go first)


def carried(f: Mapping[str, bytes]) -> dict[str, bytes]:
    """What a replay's dispatch entry carries, as the workflow's hash fields: wf_steps,
    wf_acts, wf_applied and `j:<n>` for each entry that ended and is not delivered yet (but
    those it only names: `unread`)."""
    h = {"wf_steps": f.get("steps") or b"0", "wf_acts": f.get("acts") or b"0",
         "wf_applied": f.get("applied") or b"0"}
    flat = msgpack.unpackb(f.get("ended") or b"\x90", raw=True)
    for i in range(0, len(flat) - 1, 2):
        h[f"{journal.PREFIX}{int(flat[i])}"] = flat[i + 1]
    return h


def unread(f: Mapping[str, bytes]) -> list[str]:
    """The hash fields (`j:<n>`) of the ended entries a replay's dispatch entry names without
    carrying them (over its size budget): the worker reads them."""
    return [f"{journal.PREFIX}{int(n)}" for n in msgpack.unpackb(f.get("unread") or b"\x90")]


def fresh_start(f: Mapping[str, bytes]) -> dict[str, bytes] | None:
    """The workflow's hash fields a replay needs, when its dispatch entry carries its start
    (a journal still empty: its spec, read as fields, and started_at); None otherwise."""
    if "started_at" not in f or f.get("steps") != b"0" or f.get("acts") != b"0":
        return None
    return {**f, "state": b"running", "wf_gen": f.get("gen") or b"", "wf_steps": b"0",
            "wf_acts": b"0"}


class _NoSelector:
    def select(self, timeout: float | None = None) -> list[Any]:
        return []


class ReplayLoop(asyncio.BaseEventLoop):
    """An event loop with no I/O at all (so no file descriptor per live workflow): only
    callbacks and futures, which is all a workflow may await."""

    def __init__(self) -> None:
        super().__init__()
        self._selector = _NoSelector()
        self.tasks: list[asyncio.Task[Any]] = []  #: every task made here (asyncio.all_tasks
        # walks every task of every loop in the process: thousands, with workflows kept live)

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """A task of the workflow (its function, or one gather() wraps), remembered."""
        task = super().create_task(coro, **kwargs)
        self.tasks = [t for t in self.tasks if not t.done()] if len(self.tasks) > 64 else \
            self.tasks
        self.tasks.append(task)
        return task

    def _process_events(self, event_list: list[Any]) -> None:
        """Nothing to process: there is no I/O."""

    def _write_to_self(self) -> None:
        """Nothing to wake: the loop is driven a turn at a time by its replay."""


@dataclass
class Live:
    """A workflow's coroutine between replays, and the journal it has acted on: its
    activations and entries as of its last decision, and that decision's generation. Unless
    the journal's last applied decision is that one (another worker decided since, or this
    one's was stale), the next replay starts over."""

    loop: ReplayLoop
    task: asyncio.Task[Any]
    ctx: WorkflowContext
    enc: Encoding
    activations: int = 0
    entries: int = 0
    decided: str = ""  #: the generation of its last decision: it counts once applied

    def close(self) -> None:
        """End its coroutines (a `finally:` in the workflow runs here) and its loop, in at most
        MAX_TURNS turns: code that catches the cancel and awaits on is left, never spun on."""
        self.ctx.closed = True
        tasks = [t for t in self.loop.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        for _ in range(MAX_TURNS if tasks else 0):
            _turn(self.loop)
            if all(t.done() for t in tasks):
                break
        self.loop.close()


class Replayer:
    """One worker's replays, with its live workflows kept between them (at most KEPT). Used
    from one thread: a replay runs whole before the next begins."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._live: OrderedDict[str, Live] = OrderedDict()

    def keeps(self, workflow_id: str) -> bool:
        """Is the workflow's coroutine kept live here?"""
        return workflow_id in self._live

    def resume(self, workflow_id: str, h: Mapping[str, bytes], gen: str) -> bytes | None:
        """The decision of replay `gen` going on from the kept coroutine, `h` holding the
        workflow's wf_steps, wf_acts, wf_applied and the entries that ended since
        (`carried`); None when none is kept or the journal is not the one it acted on (replay
        from the start)."""
        live = self._live.get(workflow_id)
        if live is None:
            return None
        try:
            if text(h.get("wf_applied")) != live.decided or live.task.done() or \
                    int(h.get("wf_steps") or 0) != live.entries or \
                    int(h.get("wf_acts") or 0) != live.activations:
                self._forget(workflow_id, live)
                live.close()
                return None
            live.ctx.learn(journal.entries(h))
            live.decided = gen
            return self._decide(workflow_id, live)
        except BaseException:  # its state is the failed replay's: start over next time
            self._forget(workflow_id, live)
            live.close()
            raise

    def replay(self, spec: WorkflowSpec, workflow_id: str, h: Mapping[str, bytes],
               gen: str) -> bytes:
        """The decision of a replay from the start against the whole journal `h` (the
        workflow's hash, text field names, its spec read as fields); the coroutine is kept.
        NonDeterministicWorkflow when the code no longer matches the journal, or awaits
        something that is not one of its context's calls."""
        self._drop(workflow_id)
        enc: Encoding = "json" if text(h.get("enc")) == "json" else "msgpack"
        args, kwargs = decode_arguments(h.get("args") or b"", h.get("kwargs") or b"", enc)
        loop = ReplayLoop()
        ctx = WorkflowContext(self.config, workflow_id, journal.entries(h),
                              started_at_ms=int(h.get("started_at") or 0), loop=loop,
                              trace={k: text(h[k]) for k in TRACE_FIELDS if h.get(k)})
        live = Live(loop, loop.create_task(spec.fn(ctx, *args, **kwargs)), ctx, enc,
                    decided=gen)
        try:
            _run_until_blocked(live)
            for k, delivered in enumerate(journal.activations(h), 1):
                for n in delivered:
                    ctx.deliver(n)
                _run_until_blocked(live)
                live.activations = k
            if ctx.mismatch is not None:
                raise NonDeterministicWorkflow(ctx.mismatch)
            live.entries = int(h.get("wf_steps") or 0)
            decision = self._decide(workflow_id, live, keep=False)
        except BaseException:
            live.close()
            raise
        if live.task.done():
            live.close()
            return decision
        self._live[workflow_id] = live
        while len(self._live) > KEPT:  # the least recently used goes
            self._live.popitem(last=False)[1].close()
        return decision

    def _decide(self, workflow_id: str, live: Live, *, keep: bool = True) -> bytes:
        """Deliver what ended since (one activation), run on, and say what was decided."""
        ctx = live.ctx
        commands: list[list[Any]] = list(ctx.commands)
        ended = ctx.ended()
        if ended:
            for n in ended:
                ctx.deliver(n)
            live.activations += 1
            commands.insert(0, ["deliver", live.activations, ended])
            _run_until_blocked(live)
            if ctx.mismatch is not None:
                raise NonDeterministicWorkflow(ctx.mismatch)
            commands += ctx.commands
        ctx.commands = []
        live.entries += sum(1 for c in commands if c[0] not in ("deliver", "return", "fail"))
        if live.task.done():
            commands.append(_ending(live.task, live.enc))
            if keep:
                self._forget(workflow_id, live)
                live.close()
        elif keep:
            self._live.move_to_end(workflow_id)
        # as str, not bin: Redis's cmsgpack knows no bin type (the bytes pass through as is)
        return msgpack.packb(commands, use_bin_type=False)  # type: ignore[no-any-return]

    def close(self) -> None:
        """End every kept workflow's coroutine (the worker stops)."""
        kept, self._live = list(self._live.values()), OrderedDict()
        for live in kept:
            live.close()

    def _forget(self, workflow_id: str, live: Live) -> None:
        """Stop keeping `live`."""
        if self._live.get(workflow_id) is live:
            del self._live[workflow_id]

    def _drop(self, workflow_id: str) -> None:
        """Forget the kept coroutine and close it."""
        live = self._live.pop(workflow_id, None)
        if live is not None:
            live.close()


def _turn(loop: ReplayLoop) -> None:
    """One turn of `loop`: every callback ready now. asyncio runs one loop per thread at a
    time, so the worker's own (running this call) is set aside for the turn."""
    outer = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        asyncio.events._set_running_loop(outer)


def _ending(task: asyncio.Task[Any], enc: Encoding) -> list[Any]:
    """The command a finished workflow function ends with: its result, or its error."""
    exc: BaseException | None = asyncio.CancelledError("the workflow function was canceled") \
        if task.cancelled() else task.exception()
    if exc is None:
        try:
            return ["return", encode(task.result(), enc)]
        except Exception as bad:  # a result that cannot be encoded fails the workflow
            exc = bad
    return ["fail", failures.describe(exc), failures.error_type(exc)]


def _run_until_blocked(live: Live) -> None:
    loop = live.loop
    for _ in range(MAX_TURNS):
        _turn(loop)
        if live.task.done():
            return
        if not getattr(loop, "_ready", None):  # nothing can run until an entry ends
            if getattr(loop, "_scheduled", None):
                msg = "the workflow awaits a timer (asyncio.sleep, say): a workflow may await " \
                      "only its context's calls, which replay the same way every time"
                raise NonDeterministicWorkflow(msg)
            if not live.ctx.waiting:  # blocked, yet no entry it asked for is outstanding
                msg = "the workflow awaits something that is not one of its context's calls " \
                      "(an asyncio.Event, a thread, a network call): nothing would ever wake it"
                raise NonDeterministicWorkflow(msg)
            return
    msg = f"the workflow did not settle within {MAX_TURNS} event-loop turns"
    raise NonDeterministicWorkflow(msg)
