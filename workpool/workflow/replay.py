"""One replay: the workflow function run from its start against the journal, on an event loop
of its own (in a worker's job thread), until it returns, raises, or waits only for steps that
have not ended. Its decision is what the main loop's applyOutcomes applies: the steps asked
for, then the end, if it came."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import msgpack

from workpool.core import failures
from workpool.core.config import PoolConfig
from workpool.core.registry import WorkflowSpec
from workpool.errors import NonDeterministicWorkflow
from workpool.wire.protocol import Encoding, decode_arguments, encode, text
from workpool.workflow import journal
from workpool.workflow.context import WorkflowContext

MAX_TURNS = 100_000  #: event-loop turns one replay may take before it is called stuck


def decide(spec: WorkflowSpec, config: PoolConfig, workflow_id: str,
           h: Mapping[str, bytes]) -> bytes:
    """The decision of one replay of the workflow whose hash is `h` (text field names, its spec
    read as fields): a msgpack array of commands (docs/protocol.md, "Workflows").
    NonDeterministicWorkflow when the code no longer matches the journal, or awaits something
    that is not one of the context's calls."""
    enc: Encoding = "json" if text(h.get("enc")) == "json" else "msgpack"
    args, kwargs = decode_arguments(h.get("args") or b"", h.get("kwargs") or b"", enc)
    loop = asyncio.new_event_loop()
    ctx = WorkflowContext(config, workflow_id, journal.entries(h),
                          started_at_ms=int(h.get("started_at") or 0), loop=loop)
    task = loop.create_task(spec.fn(ctx, *args, **kwargs))
    try:
        _run_until_blocked(loop, task)
        ctx.closed = True
        if ctx.mismatch is not None:
            raise NonDeterministicWorkflow(ctx.mismatch)
        commands = list(ctx.commands)
        if task.done():
            commands.append(_ending(task, enc))
        # as str, not bin: Redis's cmsgpack knows no bin type (the bytes pass through as is)
        return msgpack.packb(commands, use_bin_type=False)  # type: ignore[no-any-return]
    finally:
        _close(loop)


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


def _run_until_blocked(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    for _ in range(MAX_TURNS):
        loop.call_soon(loop.stop)
        loop.run_forever()  # one turn: every callback ready now
        if task.done():
            return
        if not getattr(loop, "_ready", None):  # nothing can run until a step ends
            if getattr(loop, "_scheduled", None):
                msg = "the workflow awaits a timer (asyncio.sleep, say): a workflow may await " \
                      "only its context's calls, which replay the same way every time"
                raise NonDeterministicWorkflow(msg)
            return
    msg = f"the workflow did not settle within {MAX_TURNS} event-loop turns"
    raise NonDeterministicWorkflow(msg)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """End the replay's coroutines (a `finally:` in the workflow runs here) and the loop."""
    tasks = asyncio.all_tasks(loop)
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
