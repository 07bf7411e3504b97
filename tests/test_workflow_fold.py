"""A workflow's step goes to the inbox of the worker that keeps the workflow live, and that
worker folds the workflow's next decision into the step's outcome, applied with the step's end
when nothing else happened since; the reaper moves a step its worker has not read out of a
busy or silent inbox, and treats one it has read as any attempt (statemachine.md, "Folds").
Random interleavings of folds against the model: tests/test_workflow_model.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import redis
from helpers.scripts import Pool, entries, leased, wait_until

from workpool import WorkflowContext, Workpool
from workpool.wire import limits
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP
from workpool.wire.protocol import JOURNAL_FIELDS, encode
from workpool.workflow import journal
from workpool.workflow.replay import Replayer

STEP = ["name", "work"]


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """A pool with a job `work`, worker w1 beating with its inbox open, and the lease held."""
    client = Workpool("fold", redis_url)
    client.job(name="work")(lambda *a: None)
    with leased(client, redis_client) as pool:
        pool.beat("w1")
        pool.r.xgroup_createconsumer(pool.keys.dispatch, GROUP, "w1")
        pool.r.xgroup_create(pool.keys.inbox("w1"), GROUP, id="0", mkstream=True)
        yield pool


def _decided(p: Pool, cmds: list[Any]) -> str:
    """A workflow whose first decision, by w1 (so its keeper), is `cmds`; its id."""
    wf = p.client.start_workflow("flow")
    assert p.ingest(p.clock()).codes == [Code.WORKFLOW_STARTED]
    p.r.xadd(p.keys.pending_completion, {
        "kind": "wf", "id": wf, "gen": "1", "ok": "1", "worker": "w1",
        "cmds": msgpack.packb(cmds, use_bin_type=False)})
    assert p.apply(p.clock()).codes == [Code.REPLAY_APPLIED]
    return wf


def _inbox(p: Pool) -> list[tuple[str, dict[str, bytes]]]:
    return entries(p.r.xrange(p.keys.inbox("w1")))


def _read(p: Pool) -> None:
    """w1 reads its inbox, as its reader does."""
    p.r.xreadgroup(GROUP, "w1", {p.keys.inbox("w1"): ">"})


def _fold(cmds: list[Any], basis: str, token: str, at: int) -> dict[str, str | bytes]:
    return {"wf_cmds": msgpack.packb(cmds, use_bin_type=False), "wf_basis": basis,
            "wf_token": token, "wf_at": str(at), "worker": "w1"}


def test_a_step_goes_to_its_keeper_which_folds_the_next_decision_into_its_end(p: Pool) -> None:
    wf = _decided(p, [["step", 1, STEP]])
    assert p.start(p.clock()).ids == [f"{wf}:1"]
    assert p.dispatched() == []  # not for any worker: for the one that keeps the workflow
    ((entry_id, run),) = _inbox(p)
    assert (run["kind"], run["id"], run["attempt"]) == (b"run", f"{wf}:1".encode(), b"1")
    assert p.r.hmget(p.keys.job(f"{wf}:1"), "route", "dispatch") == [b"w1", entry_id.encode()]
    _read(p)
    at = p.clock()
    p.finish_run(f"{wf}:1", 1, ok=True, result=5, fold=_fold(
        [["deliver", 1, [1]], ["step", 2, STEP]], "1", f"{wf}:1/1", at))
    assert p.apply(at).outcomes == [(f"{wf}:1", Code.SUCCEEDED), (wf, Code.REPLAY_APPLIED)]
    h = p.r.hgetall(p.keys.job(wf))
    assert (h[b"wf_entry"], h[b"wf_applied"], h[b"wf_steps"], h[b"wf_acts"]) == \
        (b"", f"{wf}:1/1".encode(), b"2", b"1")  # no replay went out: the fold decided
    assert msgpack.unpackb(h[b"a:1"]) == [1]
    rec = dict(zip(JOURNAL_FIELDS, msgpack.unpackb(h[b"j:1"], raw=True), strict=False))
    assert (rec["outcome"], rec["finished_at"]) == (b"succeeded", at)  # the time it saw
    assert not p.r.exists(p.keys.wf_new(wf))
    assert p.state(f"{wf}:2") == "pending"
    assert (_inbox(p), p.r.xpending(p.keys.inbox("w1"), GROUP)["pending"]) == ([], 0)
    assert (p.stat("replays"), p.stat("folds"), p.stat("steps_routed")) == (1, 1, 1)


def test_a_fold_made_before_another_entry_ended_is_refused_and_none_of_it_written(
        p: Pool) -> None:
    wf = _decided(p, [["step", 1, STEP], ["step", 2, STEP]])
    assert len(p.start(p.clock()).ids) == 2
    p.finish_run(f"{wf}:2", 1, ok=True)
    p.apply(p.clock())  # step 2's end: a replay goes out
    p.finish_run(f"{wf}:1", 1, ok=True, fold=_fold(
        [["deliver", 1, [1]], ["step", 3, STEP]], "1", f"{wf}:1/1", p.clock()))
    assert p.apply(p.clock()).outcomes == [(f"{wf}:1", Code.SUCCEEDED)]
    h = p.r.hmget(p.keys.job(wf), "wf_steps", "wf_acts", "wf_applied", "wf_dirty")
    assert h == [b"2", None, b"1", b"1"]  # the replay out goes again with both ends
    assert p.r.smembers(p.keys.wf_new(wf)) == {b"1", b"2"}
    assert (p.stat("folds"), p.stat("folds_refused")) == (0, 1)


def test_a_step_whose_keepers_inbox_is_not_a_stream_goes_to_any_worker(p: Pool) -> None:
    """The inbox key is checked to be a stream: a key of another type there (someone else's)
    would fail startJobs's XADD after its first writes."""
    p.r.delete(p.keys.inbox("w1"))
    p.r.set(p.keys.inbox("w1"), "not a stream")
    wf = _decided(p, [["step", 1, STEP]])
    assert p.start(p.clock()).ids == [f"{wf}:1"]
    assert [e["id"] for _, e in p.dispatched("run")] == [f"{wf}:1".encode()]
    assert p.r.hget(p.keys.job(f"{wf}:1"), "route") == b""
    assert p.r.get(p.keys.inbox("w1")) == b"not a stream"


def test_the_reaper_moves_a_step_its_busy_keeper_did_not_read_to_any_worker(p: Pool) -> None:
    """A worker whose slots are all busy reads nothing: its workflow's step would wait."""
    wf = _decided(p, [["step", 1, STEP]])
    p.start(p.clock())
    ((entry_id, _),) = _inbox(p)
    routed_at = int(entry_id.split("-")[0])
    p.reap(routed_at + limits.INBOX_WAIT_MS - 1)
    assert len(_inbox(p)) == 1  # not yet
    p.reap(routed_at + limits.INBOX_WAIT_MS)
    assert _inbox(p) == []
    ((moved, run),) = p.dispatched("run")
    assert (run["id"], run["attempt"]) == (f"{wf}:1".encode(), b"1")  # the same attempt
    assert p.r.hmget(p.keys.job(f"{wf}:1"), "route", "dispatch") == [b"", moved.encode()]
    assert p.stat("steps_rerouted") == 1
    p.finish_run(f"{wf}:1", 1, ok=True)
    assert p.apply(p.clock()).outcomes == [(f"{wf}:1", Code.SUCCEEDED)]
    assert p.dispatched("run") == []


def test_a_step_its_keeper_read_fails_only_once_the_keeper_is_lost(p: Pool) -> None:
    """Regression: the reaper handed on every entry of a silent worker's inbox at once, so a
    step it was running lost its entry (never WorkerLost: it waited for a timeout, if any),
    and a worker only paused was not given its grace."""
    wf = _decided(p, [["step", 1, STEP]])
    p.start(p.clock())
    _read(p)
    t, grace = p.clock() + 10 * limits.INBOX_WAIT_MS, p.engine.settings.silence_grace_ms
    p.reap(t)  # however long after: it is running there
    assert (len(_inbox(p)), p.state(f"{wf}:1")) == (1, "running")
    p.r.delete(p.keys.heartbeat("w1"))
    p.reap(t + grace)  # silent: suspected first
    assert (len(_inbox(p)), p.state(f"{wf}:1")) == (1, "running")
    p.reap(t + 2 * grace)
    assert p.job(f"{wf}:1")["error_type"] == b"WorkerLost"
    assert (_inbox(p), p.stat("workers_lost_attempts")) == ([], 1)


def test_a_routed_steps_timeout_is_measured_from_its_read_in_the_inbox(p: Pool) -> None:
    """Regression: the reaper looked for the attempt's delivery in the dispatch stream only,
    found none, and put its deadline off for ever."""
    g = Pool(p.r, p.client, Engine(p.keys, replace(p.engine.settings, silence_grace_ms=0)),
             p.token)  # no grace: the reaper times the attempt out at its timeout
    wf = _decided(g, [["step", 1, [*STEP, "timeout_ms", "1"]]])
    g.start(g.clock())
    _read(g)
    wait_until(lambda: int(g.r.xpending_range(g.keys.inbox("w1"), GROUP, "-", "+", 1)[0]
                           ["time_since_delivered"]) >= 1)
    assert g.reap(g.clock()).timed_out == 1
    assert g.job(f"{wf}:1")["error_type"] == b"Timeout"


def test_a_worker_folds_only_for_code_that_waits_for_that_step_alone() -> None:
    """A gather waits for more: delivering one step decides nothing, and a fold the engine
    refused would leave the coroutine ahead of the journal (the next replay starts over, a
    fan-out's whole journal each time)."""
    pool = Workpool("folding")
    pool.job(name="work")(lambda *a: None)

    @pool.workflow(name="one_by_one")
    async def one_by_one(ctx: WorkflowContext) -> None:
        await ctx.step("work", 1)
        await ctx.step("work", 2)

    @pool.workflow(name="both")
    async def both(ctx: WorkflowContext) -> None:
        await asyncio.gather(ctx.step("work", 1), ctx.step("work", 2))

    replayer = Replayer(pool.config)
    done = journal.Entry(kind="step", name="work", state="done", outcome="succeeded",
                         result=encode(None), attempts=1, finished_at=2000)
    base = {"enc": b"msgpack", "args": encode([]), "started_at": b"1000", "wf_steps": b"0",
            "wf_acts": b"0"}
    try:
        for name in ("one_by_one", "both"):
            replayer.replay(pool.registry.workflow(name), name, {**base, "name": name.encode()},
                            "1")
        assert replayer.fold("both", 1, done, "both:1/1") is None
        folded = replayer.fold("one_by_one", 1, done, "one_by_one:1/1")
        assert folded is not None
        basis, cmds = folded
        assert basis == "1"
        assert [c[:2] for c in msgpack.unpackb(cmds, raw=True)] == [[b"deliver", 1],
                                                                   [b"step", 2]]
    finally:
        replayer.close()
