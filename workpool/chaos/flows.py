"""The chaos pool's workflow (`flow`): it runs a program the client draws (program.py: steps
of the app's own jobs, parallel steps, sleeps, waits for events, child workflows) and records,
at every replay, what each call of its context gave it, so the checker can tell a step result
that changed between replays, an event received twice or lost, or a sleep that ended early."""

from __future__ import annotations

import asyncio
from typing import Any

import workpool
from workpool.chaos.history import own as recorder
from workpool.chaos.program import EVENT, entries, step_value


async def _step(ctx: workpool.WorkflowContext, n: int, kind: str, args: list[Any]) -> Any:
    try:
        value = await ctx.step(kind, *args)
    except workpool.StepFailed as exc:
        value = step_value(exc.outcome, None, exc.error_type)
    return _seen(ctx, n, value)


async def _child(ctx: workpool.WorkflowContext, n: int, program: list[Any]) -> Any:
    try:
        value = await ctx.workflow("flow", program)
    except workpool.StepFailed as exc:
        value = step_value(exc.outcome, None, exc.error_type)
    return _seen(ctx, n, value)


def _seen(ctx: workpool.WorkflowContext, n: int, value: Any) -> Any:
    recorder().record("wf_seen", wf=ctx.workflow_id, n=n, v=value)
    return value


async def flow(ctx: workpool.WorkflowContext, program: list[Any]) -> list[Any]:
    """Run `program`; returns what each entry gave, in entry order (app.py registers it as
    the workflow `flow`)."""
    numbered = list(entries(program))
    out: list[Any] = []
    i = 0
    for op in program:
        if op[0] == "par":
            group = numbered[i:i + len(op[1])]
            out += await asyncio.gather(*(_step(ctx, n, e[1], e[2]) for n, e in group))
            i += len(group)
            continue
        n, e = numbered[i]
        i += 1
        if e[0] == "step":
            out.append(await _step(ctx, n, e[1], e[2]))
        elif e[0] == "child":
            out.append(await _child(ctx, n, e[1]))
        elif e[0] == "sleep":
            recorder().record("wf_sleep", wf=ctx.workflow_id, n=n, s=e[1], now=ctx.now())
            await ctx.sleep(e[1])
            recorder().record("wf_woke", wf=ctx.workflow_id, n=n)
            out.append(_seen(ctx, n, None))
        else:
            try:
                got = await ctx.wait_for_event(EVENT, timeout=e[1])
            except workpool.WaitTimeout:
                recorder().record("wf_timeout", wf=ctx.workflow_id, n=n)
                got = "timeout"
            out.append(_seen(ctx, n, got))
    return out
