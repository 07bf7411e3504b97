"""A replay's dispatch entry carries the ended journal entries up to REPLAY_CARRY_BYTES and
names the rest; a worker that keeps the workflow live reads those before it goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgpack
import pytest
import redis
import redis.asyncio
import structlog
import structlog.testing
from helpers.scripts import Pool, leased

from workpool import WorkflowContext, Workpool
from workpool.wire.codes import Code
from workpool.wire.limits import REPLAY_CARRY_BYTES
from workpool.wire.protocol import encode
from workpool.worker.executor import SLOW_REPLAY_S, Executor
from workpool.worker.liveness import Liveness
from workpool.worker.outbox import Outbox
from workpool.worker.threads import JobThreads
from workpool.workflow.replay import carried, unread

BIG = "x" * (REPLAY_CARRY_BYTES * 6 // 10)  #: one result: two do not fit in one entry


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """A pool with a job `work` and a workflow `gather` of three steps, the lease held."""
    client = Workpool("carry", redis_url)
    client.job(name="work")(lambda *a: None)

    @client.workflow(name="gather")
    async def gather(ctx: WorkflowContext) -> list[int]:
        done = await asyncio.gather(*(ctx.step("work", i) for i in range(3)))
        return [len(d) for d in done]

    with leased(client, redis_client) as pool:
        yield pool


def _replay(p: Pool, gen: int) -> dict[str, bytes]:
    ((_, entry),) = [e for e in p.dispatched("wf") if e[1]["gen"] == str(gen).encode()]
    return entry


def _decided(p: Pool, wf: str, gen: int, cmds: bytes | None, ok: str = "1") -> Code:
    p.r.xadd(p.keys.pending_completion, {"kind": "wf", "id": wf, "gen": str(gen), "ok": ok,
                                         "cmds": cmds or b"\x90"})
    ((_, code),) = p.apply(p.clock()).outcomes
    return code


def _executor(p: Pool, client: redis.asyncio.Redis, threads: JobThreads) -> Executor:
    """A worker's executor for the pool (its own classes, on real Redis)."""
    log, config = structlog.get_logger(), p.client.config
    return Executor(config, "w1", Liveness(config, "w1", client, asyncio.Event(), log),
                    threads=threads, children=None,
                    outbox=Outbox(config.keys.pending_completion, log), log=log)


def test_workflow_code_that_holds_the_workers_loop_is_reported(p: Pool, redis_url: str) -> None:
    """Replays run on the worker's event loop: code that blocks it is named in a warning."""
    threads = JobThreads(1, lambda: None)
    executor = _executor(p, redis.asyncio.Redis.from_url(redis_url), threads)
    try:
        with structlog.testing.capture_logs() as logs:
            executor._on_loop("quick", lambda: None)
            executor._on_loop("blocking", time.sleep, SLOW_REPLAY_S + 0.1)
    finally:
        threads.shutdown()
    assert [e.get("workflow") for e in logs if e["log_level"] == "warning"] == ["blocking"]


def test_a_replay_carries_what_fits_and_its_worker_reads_the_rest(p: Pool,
                                                                 redis_url: str) -> None:
    """Regression: a replay's entry carried every ended entry, so a fan-out of large results
    made one huge stream entry (a script's unbounded work)."""
    wf = p.client.start_workflow("gather")
    assert p.ingest(p.clock()).outcomes == [(wf, Code.WORKFLOW_STARTED)]

    async def work() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        threads = JobThreads(1, lambda: None)
        executor = _executor(p, client, threads)
        try:
            first = await executor.replay(_replay(p, 1))  # kept live: asks for three steps
            assert first is not None
            assert _decided(p, wf, 1, first.result) == Code.REPLAY_APPLIED
            t = p.clock()
            assert len(p.start(t).ids) == 3
            p.finish_run(f"{wf}:1", 1, ok=True, result=BIG)
            p.apply(t)  # replay 2 goes out, and cannot decide
            assert _decided(p, wf, 2, None, ok="0") == Code.REPLAY_RETRY
            for n in (2, 3):  # so the next ends wait for replay 3, due after 1 s
                p.finish_run(f"{wf}:{n}", 1, ok=True, result=BIG)
                p.apply(t)
            p.start(t + 5000)
            entry = _replay(p, 3)
            assert len(entry["ended"]) < REPLAY_CARRY_BYTES
            named = unread(entry)
            assert len(named) == 2
            assert {k for k in carried(entry) if k.startswith("j:")} | set(named) == \
                {"j:1", "j:2", "j:3"}
            last = await executor.replay(entry)  # goes on, reading the two it only names
            assert last is not None and last.result is not None
            cmds = msgpack.unpackb(last.result, raw=True)
            assert cmds[0] == [b"deliver", 1, [1, 2, 3]]
            assert cmds[-1] == [b"return", encode([len(BIG)] * 3)]
        finally:
            executor.replayer.close()
            threads.shutdown()
            await client.aclose()

    asyncio.run(work())
