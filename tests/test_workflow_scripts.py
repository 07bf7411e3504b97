"""The workflow scripts called directly: a replay's decision is checked in full before its first
write, and only the replay out now counts (end to end: tests/test_workflows.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from helpers.scripts import LEASE_MS, OWNER, Pool

from workpool import WorkflowContext, Workpool
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.replies import parse_lease
from workpool.wire.scripts import run


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """A pool with a job `work` and a workflow `flow`, and the lease held."""
    client = Workpool("t", redis_url)
    client.job(name="work")(lambda *a: None)

    @client.workflow(name="flow")
    async def flow(ctx: WorkflowContext) -> None:
        await ctx.step("work")

    engine = Engine(client.keys, client.config.engine_settings())
    lease = parse_lease(run(redis_client, [engine.acquire(OWNER, LEASE_MS, 10)])[0])
    try:
        yield Pool(redis_client, client, engine, lease.token)
    finally:
        client.close()


def _started(p: Pool) -> str:
    """A workflow started and ingested: replay 1 is out."""
    wf = p.client.start_workflow("flow")
    assert p.ingest(p.clock()).outcomes == [(wf, Code.WORKFLOW_STARTED)]
    return wf


def _decide(p: Pool, wf: str, gen: int, cmds: list[Any]) -> Code:
    p.r.xadd(p.keys.pending_completion, {"kind": "wf", "id": wf, "gen": str(gen), "ok": "1",
                                         "cmds": msgpack.packb(cmds, use_bin_type=False)})
    ((_, code),) = p.apply(p.clock()).outcomes
    return code


def _snapshot(p: Pool, wf: str) -> tuple[Any, ...]:
    return (p.r.hgetall(p.keys.job(wf)), p.r.xlen(p.keys.pending_start),
            p.r.zcard(p.keys.wf_timers), p.r.xlen(p.keys.dispatch))


@pytest.mark.parametrize("cmds", [
    [["sleep", 1, "nan"]],  # a time that is not one: ZADD would fail after the first write
    [["sleep", 1, 2**62]],
    [["step", 1, ["name", "work"]], ["event", 3, "go", 0]],  # numbered out of order
    [["step", 1, ["name", "work"]], ["deliver", 1, [1]]],  # delivers an entry not ended
    [["step", 1, ["name", "work"]], ["return", "a"], ["return", "b"]],
    [["step", 1, ["name"]]],
    [["unknown", 1]],
])
def test_a_decision_that_cannot_be_applied_is_set_aside_whole_with_nothing_written(
        p: Pool, cmds: list[Any]) -> None:
    wf = _started(p)
    before = _snapshot(p, wf)
    assert _decide(p, wf, 1, cmds) == Code.REJECTED
    assert _snapshot(p, wf) == before
    assert p.r.xlen(p.keys.rejected) == 1


def test_only_the_replay_out_now_decides(p: Pool) -> None:
    wf = _started(p)
    before = _snapshot(p, wf)
    assert _decide(p, wf, 2, [["step", 1, ["name", "work"]]]) == Code.STALE_REPLAY
    assert _snapshot(p, wf) == before
    assert _decide(p, wf, 1, [["step", 1, ["name", "work", "op", "cancel"]]]) == \
        Code.REPLAY_APPLIED
    assert p.ingest(p.clock()).outcomes == [(f"{wf}:1", Code.ENQUEUED)]  # its op is the engine's
    assert _decide(p, wf, 1, [["step", 2, ["name", "work"]]]) == Code.STALE_REPLAY
    assert p.stat("stale_replays") == 2
