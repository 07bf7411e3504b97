"""A support agent as a durable workflow: fetch the ticket, draft a reply with an LLM that
fails half the time, wait for a human's approval, send the reply. Each step is a job (retried,
limited, recovered from a lost worker as any job is); the workflow survives any process dying
between or inside its steps, and its on_complete runs once.

Run it: `python examples/support_agent.py` (an embedded redis-server, a worker in this
process, the approval sent after a moment). In production, run `workpool worker
support_agent:pool` and call `pool.send_event(workflow_id, "approved", {...})` from the UI.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from workpool import Retry, WorkflowContext, Workpool
from workpool.process import worker
from workpool.server.embedded import RedisServer

pool = Workpool("support", max_parallelism=20, lease_ttl=1.0, heartbeat_ttl=1.0,
                retry=Retry(max_attempts=10, initial_backoff=0.05, base=1.5))

EFFECTS = "support:effects"  #: step -> how many times its effect happened (a HASH)
HOLD = "support:hold:"  #: while `support:hold:<step>` exists, that step waits midway


async def _midway(step: str) -> None:
    """Where a step may be held (a test kills its worker here); records who got here."""
    r = pool.aio.redis
    await r.rpush(f"support:reached:{step}", 1)
    while await r.exists(HOLD + step):
        await asyncio.sleep(0.01)


async def _effect(step: str) -> None:
    """The step's effect on the world, once it succeeds (a sent e-mail, say)."""
    await pool.aio.redis.hincrby(EFFECTS, step, 1)


@pool.job()
async def fetch_ticket(ticket_id: int) -> dict[str, Any]:
    await _midway("fetch")
    await _effect("fetch")
    return {"id": ticket_id, "text": "My order never arrived."}


@pool.job(retry=Retry(max_attempts=20, initial_backoff=0.01, base=1.0))
async def draft_reply(ticket: dict[str, Any]) -> str:
    await _midway("draft")
    if random.random() < 0.5:  # a flaky model
        msg = "the model is overloaded (HTTP 529)"
        raise RuntimeError(msg)
    await _effect("draft")
    return f"Sorry about ticket {ticket['id']}: a replacement ships today."


@pool.job()
async def send_reply(ticket_id: int, text: str, approver: str) -> str:
    await _midway("send")
    await _effect("send")
    return f"sent to the customer of ticket {ticket_id}, approved by {approver}"


@pool.on_complete()
async def record(workflow_id: str, result: Any, context: Any) -> None:
    await pool.aio.redis.rpush("support:completed", workflow_id)


@pool.workflow()
async def support_agent(ctx: WorkflowContext, ticket_id: int) -> str:
    ticket = await ctx.step(fetch_ticket, ticket_id)
    draft = await ctx.step(draft_reply, ticket)
    approval = await ctx.wait_for_event("approved", timeout=86_400)
    return str(await ctx.step(send_reply, ticket_id, draft, approval["by"]))


async def _main() -> None:
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(Path(tmp) / "redis") as server:
        pool.use_url(server.url)
        stop = asyncio.Event()
        running = asyncio.create_task(worker(pool, concurrency=10).run(stop))
        wf = await pool.aio.start_workflow(support_agent, 42, on_complete=record)
        print("started", wf)
        while not (await pool.aio.workflow_status(wf)).steps[2:]:
            await asyncio.sleep(0.05)  # waiting for the approval request, as a UI would poll
        await pool.aio.send_event(wf, "approved", {"by": "ops"})
        print((await pool.aio.wait(wf, timeout=60)).result)
        for s in (await pool.aio.workflow_status(wf)).steps:
            print(f"  step {s.number}: {s.kind} {s.name or '-'} {s.outcome}")
        stop.set()
        await running
        await pool.aio.aclose()


if __name__ == "__main__":
    asyncio.run(_main())
