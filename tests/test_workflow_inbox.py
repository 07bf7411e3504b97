"""A workflow's replay goes to the inbox of the worker that keeps it live, and the reaper takes
it back from an inbox whose worker is silent or does not read it in time (statemachine.md,
"Replays, generations and activations")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from helpers import Pools, running_worker
from helpers.scripts import Pool, entries, leased, wait_until

from workpool import WorkflowContext, Workpool
from workpool.wire import limits
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP
from workpool.wire.protocol import encode


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """A pool with a job `work`, and the lease held."""
    client = Workpool("inbox", redis_url)
    client.job(name="work")(lambda *a: None)
    with leased(client, redis_client) as pool:
        yield pool


def _open_inbox(p: Pool, worker: str) -> None:
    """What a worker's reader does before its first read: join the group, make its inbox."""
    p.r.xgroup_createconsumer(p.keys.dispatch, GROUP, worker)
    p.r.xgroup_create(p.keys.inbox(worker), GROUP, id="0", mkstream=True)


def _decide(p: Pool, wf: str, gen: int, cmds: list[Any], worker: str | None) -> Code:
    out: dict[str, str | bytes] = {"kind": "wf", "id": wf, "gen": str(gen), "ok": "1",
                                   "cmds": msgpack.packb(cmds, use_bin_type=False)}
    if worker is not None:
        out["worker"] = worker
    p.r.xadd(p.keys.pending_completion, out)  # type: ignore[arg-type]
    ((_, code),) = p.apply(p.clock()).outcomes
    return code


def _step_done(p: Pool, worker: str | None) -> str:
    """A workflow whose first decision (by `worker`) asked for a step, which then ended: its
    second replay is out. Returns the workflow's id."""
    wf = p.client.start_workflow("flow")
    assert p.ingest(p.clock()).codes == [Code.WORKFLOW_STARTED]
    assert _decide(p, wf, 1, [["step", 1, ["name", "work"]]], worker) == Code.REPLAY_APPLIED
    assert p.start(p.clock()).ids == [f"{wf}:1"]
    p.finish_run(f"{wf}:1", 1, ok=True)
    p.apply(p.clock())
    assert p.r.hget(p.keys.job(wf), "wf_gen") == b"2"
    return wf


def _inbox(p: Pool, worker: str) -> list[tuple[str, dict[str, bytes]]]:
    return entries(p.r.xrange(p.keys.inbox(worker)))


def test_a_replay_goes_to_the_inbox_of_the_worker_that_keeps_its_workflow(p: Pool) -> None:
    p.beat("w1")
    _open_inbox(p, "w1")
    wf = _step_done(p, "w1")
    assert p.dispatched("wf") == []  # not in the dispatch stream: any worker would take it
    ((_, replay),) = _inbox(p, "w1")
    assert (replay["kind"], replay["gen"]) == (b"wf", b"2")
    assert p.r.hmget(p.keys.job(wf), "wf_keeper", "wf_route") == [b"w1", b"w1"]
    assert p.stat("replays_routed") == 1
    # w1 reads it with the dispatch stream, as its reader does, and decides
    read: Any = p.r.xreadgroup(GROUP, "w1", {p.keys.dispatch: ">", p.keys.inbox("w1"): ">"})
    assert [e["gen"] for _, stream in read for _, e in entries(stream)] == [b"2"]
    assert _decide(p, wf, 2, [["deliver", 1, [1]], ["return", encode(7)]], "w1") == \
        Code.SUCCEEDED
    assert _inbox(p, "w1") == []  # acknowledged and deleted with the decision
    assert p.r.xpending(p.keys.inbox("w1"), GROUP)["pending"] == 0


@pytest.mark.parametrize(("beats", "inbox", "worker"), [
    (False, True, "w1"),  # its worker is silent
    (True, False, "w1"),  # its worker has no inbox (one that keeps nothing live)
    (True, True, None),  # the decision named no worker
])
def test_a_replay_goes_to_any_worker_unless_its_keeper_beats_and_has_an_inbox(
        p: Pool, beats: bool, inbox: bool, worker: str | None) -> None:
    if beats:
        p.beat("w1")
    if inbox:
        _open_inbox(p, "w1")
    wf = _step_done(p, worker)
    assert [e["gen"] for _, e in p.dispatched("wf")] == [b"2"]
    assert _inbox(p, "w1") == []
    assert p.r.hget(p.keys.job(wf), "wf_route") == b""
    assert p.stat("replays_routed") == 0


def test_the_reaper_hands_a_replay_an_inbox_held_too_long_to_any_worker(p: Pool) -> None:
    """A worker whose slots are all busy (or whose event loop is held) reads no entry: a replay
    waiting for it would hold its workflow up for as long."""
    p.beat("w1")
    _open_inbox(p, "w1")
    wf = _step_done(p, "w1")
    ((entry_id, _),) = _inbox(p, "w1")
    routed_at = int(entry_id.split("-")[0])
    p.reap(routed_at + limits.INBOX_WAIT_MS - 1)
    assert len(_inbox(p, "w1")) == 1  # not yet
    p.reap(routed_at + limits.INBOX_WAIT_MS)
    assert _inbox(p, "w1") == []
    assert [e["gen"] for _, e in p.dispatched("wf")] == [b"3"]
    assert p.r.hmget(p.keys.job(wf), "wf_keeper", "wf_route") == [b"", b""]
    assert p.stat("replays_rerouted") == 1
    # its keeper's late decision is stale; the new generation's counts
    assert _decide(p, wf, 2, [["deliver", 1, [1]]], "w1") == Code.STALE_REPLAY
    assert _decide(p, wf, 3, [["deliver", 1, [1]], ["return", encode(1)]], "w2") == \
        Code.SUCCEEDED


def test_the_reaper_takes_back_at_once_the_replays_of_a_silent_worker(p: Pool) -> None:
    p.beat("w1")
    _open_inbox(p, "w1")
    wf = _step_done(p, "w1")
    p.r.delete(p.keys.heartbeat("w1"))
    p.reap(p.clock())
    assert _inbox(p, "w1") == []
    assert [e["gen"] for _, e in p.dispatched("wf")] == [b"3"]
    assert p.r.hget(p.keys.job(wf), "wf_route") == b""


def test_an_inbox_key_of_another_type_is_passed_over_not_written(p: Pool) -> None:
    """Regression: the inbox was only checked to exist, so a key of another type there (not
    ours: written by someone else) failed the script's XADD after its first writes."""
    p.beat("w1")
    p.r.set(p.keys.inbox("w1"), "not a stream")
    wf = _step_done(p, "w1")
    assert [e["gen"] for _, e in p.dispatched("wf")] == [b"2"]
    assert p.r.hget(p.keys.job(wf), "wf_route") == b""
    assert p.r.get(p.keys.inbox("w1")) == b"not a stream"


def test_a_replay_the_reaper_cannot_read_costs_no_other_replay_in_its_inbox(p: Pool) -> None:
    """Regression: an error on one entry set aside the whole inbox and dropped it, so the other
    workflows whose replays were there waited for ever."""
    p.beat("w1")
    _open_inbox(p, "w1")
    broken, fine = _step_done(p, "w1"), _step_done(p, "w1")
    assert len(_inbox(p, "w1")) == 2
    p.r.delete(p.keys.job(broken))
    p.r.set(p.keys.job(broken), "clobbered")  # its hash, by someone else
    p.r.delete(p.keys.heartbeat("w1"))
    p.reap(p.clock())
    assert _inbox(p, "w1") == []
    ((_, replay),) = p.dispatched("wf")
    assert (replay["id"], replay["gen"]) == (fine.encode(), b"3")
    assert p.r.xlen(p.keys.rejected) == 1


def test_a_gone_workers_consumer_leaves_the_group_with_its_inbox(p: Pool) -> None:
    """An inbox is made by its worker: nothing else would ever drop it, so each restart of a
    worker would leave one behind."""
    p.beat("w1")
    _open_inbox(p, "w1")
    _step_done(p, "w1")
    p.r.delete(p.keys.heartbeat("w1"))

    def gone() -> bool:
        p.reap(p.clock())
        names = [c["name"] for c in p.r.xinfo_consumers(p.keys.dispatch, GROUP)]
        return b"w1" not in names and "w1" not in names

    wait_until(gone, timeout=10)  # once idle past the grace
    assert not p.r.exists(p.keys.inbox("w1"))
    assert [e["gen"] for _, e in p.dispatched("wf")] == [b"3"]  # its replay went first


def test_two_workers_replay_each_workflow_where_it_is_kept(
        pools: Pools, redis_client: redis.Redis) -> None:
    """End to end: after its first replay, every replay of a workflow goes to the worker that
    keeps it, so none is replayed from the start (measured before: with two workers half
    the replays went to the other one, which read the whole journal and ran it again)."""
    pool = pools("inbox-e2e", max_parallelism=8)
    pool.job(name="noop")(lambda: None)

    @pool.workflow(name="three")
    async def three(ctx: WorkflowContext) -> int:
        for _ in range(3):
            await ctx.step("noop")
        return 3

    with running_worker(pool, worker_id="a"), running_worker(pool, worker_id="b"):
        ids = [pool.start_workflow(three) for _ in range(20)]
        for wf in ids:
            assert pool.wait(wf, timeout=30).result == 3
    stats = pool.stats().counters
    assert stats["replays"] == 4 * len(ids)  # a first, then one after each step
    assert stats.get("replays_routed", 0) == 3 * len(ids)
