"""The workflow scripts called directly: a replay's decision is checked in full before its first
write, and only the replay out now counts; and a worker's replayer on its own (end to end:
tests/test_workflows.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from helpers.scripts import Pool, leased

from workpool import NonDeterministicWorkflow, WorkflowContext, Workpool
from workpool.wire.codes import Code
from workpool.wire.protocol import encode
from workpool.workflow.replay import Replayer, fresh_start


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """A pool with a job `work` and a workflow `flow`, and the lease held."""
    client = Workpool("t", redis_url)
    client.job(name="work")(lambda *a: None)

    @client.workflow(name="flow")
    async def flow(ctx: WorkflowContext) -> None:
        await ctx.step("work")

    with leased(client, redis_client) as pool:
        yield pool


def _started(p: Pool) -> str:
    """A workflow started and ingested: replay 1 is out."""
    wf = p.client.start_workflow("flow")
    assert p.ingest(p.clock()).outcomes == [(wf, Code.WORKFLOW_STARTED)]
    return wf


def _decide(p: Pool, wf: str, gen: int, cmds: list[Any], ok: str = "1") -> Code:
    p.r.xadd(p.keys.pending_completion, {"kind": "wf", "id": wf, "gen": str(gen), "ok": ok,
                                         "cmds": msgpack.packb(cmds, use_bin_type=False)})
    ((_, code),) = p.apply(p.clock()).outcomes
    return code


def _snapshot(p: Pool, wf: str) -> tuple[Any, ...]:
    """What a decision writes: the journal and its counts, the jobs created (steps), timers,
    and the dispatch stream (replays)."""
    raw: dict[bytes, bytes] = p.r.hgetall(p.keys.job(wf))  # type: ignore[assignment]
    h = {k: v for k, v in raw.items()
         if k.startswith((b"j:", b"a:")) or k in (b"wf_steps", b"wf_acts", b"wf_gen")}
    return (h, p.r.hlen(p.keys.unstarted), p.r.zcard(p.keys.wf_timers),
            p.r.xlen(p.keys.dispatch))


@pytest.mark.parametrize("cmds", [
    [["sleep", 1, "nan"]],  # a time that is not one: ZADD would fail after the first write
    [["sleep", 1, 2**62]],
    [["step", 1, ["name", "work"]], ["event", 3, "go", 0]],  # numbered out of order
    [["step", 1, ["name", "work"]], ["deliver", 1, [1]]],  # delivers an entry not ended
    [["step", 1, ["name", "work"]], ["return", "a"], ["return", "b"]],
    [["step", 1, ["name"]]],
    # more fields than an entry has: unpacking them for XADD failed after the first writes
    [["step", 1, ["name", "work", *["f", "v"] * 5000]]],
    [["step", 1, 7]],
    [["unknown", 1]],
])
def test_a_decision_that_cannot_be_applied_is_set_aside_whole_with_nothing_written(
        p: Pool, cmds: list[Any]) -> None:
    wf = _started(p)
    before = _snapshot(p, wf)
    assert _decide(p, wf, 1, cmds) == Code.REJECTED
    journal, created, timers, dispatch = before
    assert _snapshot(p, wf) == (journal, created, timers, dispatch - 1)  # its replay withdrawn
    assert p.r.xlen(p.keys.rejected) == 1
    # the workflow is not left waiting for that replay: it is replayed again later
    assert p.r.hget(p.keys.job(wf), "wf_entry") == b""
    assert b"its decision was set aside" in (p.r.hget(p.keys.job(wf), "wf_blocked") or b"")
    assert p.r.zscore(p.keys.replays_due, wf) is not None


def test_only_the_replay_out_now_decides(p: Pool) -> None:
    wf = _started(p)
    before = _snapshot(p, wf)
    assert _decide(p, wf, 2, [["step", 1, ["name", "work"]]]) == Code.STALE_REPLAY
    assert _snapshot(p, wf) == before
    assert _decide(p, wf, 1, [["step", 1, ["name", "work", "op", "cancel"]]]) == \
        Code.REPLAY_APPLIED
    assert p.start(p.clock()).ids == [f"{wf}:1"]  # created by the decision: an op is no matter
    assert _decide(p, wf, 1, [["step", 2, ["name", "work"]]]) == Code.STALE_REPLAY
    assert p.stat("stale_replays") == 2


def test_a_step_entry_a_client_writes_is_set_aside_and_touches_no_workflow(p: Pool) -> None:
    """Regression: ingest trusted fields wf and wf_n on any enqueue, so a client's XADD could
    become a running workflow's step (with its own job and arguments), or, malformed, fail
    that step in the journal. Steps are created by the decision's own script: any entry
    carrying wf or wf_n is set aside, and the step is the workflow's own."""
    wf = _started(p)
    forged: dict[str, str | bytes] = {"op": "enqueue", "id": f"{wf}:1", "wf": wf, "wf_n": "1",
                                      "name": "work", "args": encode([666])}
    for extra in ({}, {"enc": "bogus"}, {"op": "workflow", "max_steps": "10"}, {"wf": "x"}):
        p.r.xadd(p.keys.pending_start, {**forged, **extra})  # type: ignore[dict-item]
    p.r.xadd(p.keys.pending_start, {"op": "enqueue", "name": "work", "wf_n": "1"})
    assert p.ingest(p.clock()).codes == [Code.REJECTED] * 5
    assert _decide(p, wf, 1, [["step", 1, ["name", "work", "args", encode([1])]]]) == \
        Code.REPLAY_APPLIED
    t = p.clock()
    assert p.start(t).ids == [f"{wf}:1"]
    ((_, attempt),) = p.dispatched("run")
    assert msgpack.unpackb(attempt["args"]) == [1]  # the workflow's own step
    rec = msgpack.unpackb(p.r.hget(p.keys.job(wf), "j:1"), raw=True)
    assert rec[2] == b"pending"


@pytest.mark.parametrize(("fields", "why"), [
    (["name", "work", "enc", "bogus"], b"field enc must be msgpack or json"),
    (["name", "work", "args", encode({"not": "a list"})], b"field args must encode an array"),
    (["name", "work", "max_attempts", "0"], b"field max_attempts is not a number"),
    (["name", "no such name!"], b"field name must be a name"),
])
def test_a_step_an_enqueue_would_refuse_fails_at_once_and_the_workflow_goes_on(
        p: Pool, fields: list[str], why: bytes) -> None:
    """A step is checked as an enqueue entry is: one that an enqueue would refuse is not
    created; its journal entry fails (Rejected, saying why) and the workflow is replayed."""
    wf = _started(p)
    assert _decide(p, wf, 1, [["step", 1, fields]]) == Code.REPLAY_APPLIED
    rec = msgpack.unpackb(p.r.hget(p.keys.job(wf), "j:1"), raw=False)
    assert rec[2:4] == ["done", "failed"] and why.decode() in rec[5] and rec[6] == "Rejected"
    assert p.r.hlen(p.keys.unstarted) == 0 and not p.r.exists(p.keys.job(f"{wf}:1"))
    assert p.r.hmget(p.keys.job(wf), "wf_gen", "wf_entry")[0] == b"2"  # replayed at once


def test_a_step_whose_id_a_job_took_fails_at_once(p: Pool) -> None:
    """Regression: a step whose id `<workflow>:<n>` a client's job already had was a
    DUPLICATE_ENQUEUE, and its journal entry stayed pending: the workflow waited forever."""
    wf = _started(p)
    p.r.xadd(p.keys.pending_start, {"op": "enqueue", "id": f"{wf}:1", "name": "work"})
    assert p.ingest(p.clock()).codes == [Code.ENQUEUED]
    assert _decide(p, wf, 1, [["step", 1, ["name", "work"]]]) == Code.REPLAY_APPLIED
    rec = msgpack.unpackb(p.r.hget(p.keys.job(wf), "j:1"), raw=False)
    assert rec[2:4] == ["done", "failed"] and "is taken" in rec[5]


def test_a_first_replay_carries_the_workflows_start_and_a_later_one_does_not(p: Pool) -> None:
    wf = _started(p)
    ((_, first),) = p.dispatched("wf")
    h = fresh_start(first)
    assert h is not None and h["name"] == b"flow" and h["wf_gen"] == b"1"
    replayer = Replayer(p.client.config)
    try:  # the decision from the entry alone: step 1 asked
        cmds = msgpack.unpackb(replayer.replay(p.client.registry.workflow("flow"), wf, h, "1"),
                               raw=True)
        assert cmds[0][:2] == [b"step", 1]
    finally:
        replayer.close()
    assert _decide(p, wf, 1, [["step", 1, ["name", "work"]]]) == Code.REPLAY_APPLIED
    p.ingest(p.clock())
    t = p.clock()
    assert p.start(t).ids == [f"{wf}:1"]
    p.finish_run(f"{wf}:1", 1, ok=True)
    p.apply(t)
    (_, later), = [e for e in p.dispatched("wf") if e[1]["gen"] == b"2"]
    assert "started_at" not in later and fresh_start(later) is None


def test_cancel_all_cancels_running_workflows_and_starts_not_applied_yet(p: Pool) -> None:
    """Regression: cancel_all skipped both (a running workflow is in no job set; an unkeyed
    start not applied yet was taken for something other than an enqueue), so a workflow went on
    asking for steps after everything was canceled."""
    running = _started(p)
    waiting = p.client.start_workflow("flow")  # unkeyed, not applied yet
    assert p.client.cancel_all() == 2
    assert p.ingest(p.clock()).codes == [Code.WORKFLOW_STARTED, Code.CANCELED, Code.CANCELED]
    assert (p.state(running), p.state(waiting)) == ("canceled", "canceled")


def test_an_event_whose_key_no_client_could_send_is_set_aside(p: Pool) -> None:
    wf = _started(p)
    for key in ("", "k" * 509):
        p.r.xadd(p.keys.pending_start, {"op": "event", "id": wf, "name": "go", "key": key})
    assert p.ingest(p.clock()).codes == [Code.REJECTED, Code.REJECTED]
    fields: list[bytes] = p.r.hkeys(p.keys.job(wf))  # type: ignore[assignment]
    assert not [f for f in fields if f.startswith(b"k:")]


def test_an_event_whose_write_redis_refuses_is_applied_later_not_set_aside(p: Pool) -> None:
    """Regression (found by the chaos run): out of memory, Redis refused the event's first
    write; the entry was then set aside as rejected (the reject's own SREM, not refused, let
    the record in) and the event was lost. Now the call fails whole and the event waits."""
    wf = _started(p)
    p.client.send_event(wf, "go", "payload", key="k")
    p.r.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError, match="OOM"):
            p.ingest(p.clock())
    finally:
        p.r.config_set("maxmemory", 0)
    assert p.r.xlen(p.keys.rejected) == 0 and p.r.xlen(p.keys.pending_start) == 1
    assert p.ingest(p.clock()).codes == [Code.EVENT_KEPT]


def test_an_event_ends_the_oldest_wait_for_its_name(p: Pool) -> None:
    wf = _started(p)
    assert _decide(p, wf, 1, [["event", 1, "go", 0], ["event", 2, "go", 0]]) == \
        Code.REPLAY_APPLIED
    p.client.send_event(wf, "go", "first")
    assert p.ingest(p.clock()).codes == [Code.EVENT_DELIVERED]
    states = [msgpack.unpackb(p.r.hget(p.keys.job(wf), f"j:{n}"), raw=True)[2]
              for n in (1, 2)]
    assert states == [b"done", b"pending"]


def _entry_state(p: Pool, wf: str, n: int) -> tuple[bytes, bytes]:
    rec = msgpack.unpackb(p.r.hget(p.keys.job(wf), f"j:{n}"), raw=True)
    return rec[2], rec[3]


def test_an_event_sent_by_a_waits_deadline_beats_its_timeout_however_late_it_is_ingested(
        p: Pool) -> None:
    """Regression (chaos run, seed 2036): an event was acknowledged 8 s before its wait's
    deadline, Redis then refused scripts for 12 s, and the main loop, back, ran startJobs (the
    timer due) before ingesting the event: the wait timed out, the event was kept unused."""
    wf = _started(p)
    t = p.clock()
    assert _decide(p, wf, 1, [["event", 1, "go", t + 1000]]) == Code.REPLAY_APPLIED
    p.client.send_event(wf, "go", "on time")  # appended before the deadline, not ingested
    p.start(t + 5000)  # the loop is back after the deadline, and starts before it ingests
    assert _entry_state(p, wf, 1) == (b"pending", b"")
    assert p.ingest(p.clock()).codes == [Code.EVENT_DELIVERED]
    assert _entry_state(p, wf, 1) == (b"done", b"succeeded")
    assert p.r.zcard(p.keys.wf_timers) == 0


def test_an_event_sent_after_a_waits_deadline_holds_no_timeout_back(p: Pool) -> None:
    wf = _started(p)
    t = p.clock()
    assert _decide(p, wf, 1, [["event", 1, "go", t - 10]]) == Code.REPLAY_APPLIED
    p.client.send_event(wf, "go", "too late")  # appended after the deadline
    p.start(p.clock())
    assert _entry_state(p, wf, 1) == (b"done", b"failed")
    assert p.ingest(p.clock()).codes == [Code.EVENT_KEPT]


def test_an_entry_that_ends_while_a_replay_is_out_is_replayed_after_its_decision(
        p: Pool) -> None:
    wf = _started(p)
    steps = [["step", 1, ["name", "work"]], ["step", 2, ["name", "work"]]]
    assert _decide(p, wf, 1, steps) == Code.REPLAY_APPLIED
    p.ingest(p.clock())
    t = p.clock()
    assert sorted(p.start(t).ids) == [f"{wf}:1", f"{wf}:2"]
    p.finish_run(f"{wf}:1", 1, ok=True)
    p.apply(t)  # replay 2 goes out
    p.finish_run(f"{wf}:2", 1, ok=True)
    p.apply(t)  # ends while replay 2 is out: no replay now, one after its decision
    assert p.r.hmget(p.keys.job(wf), "wf_gen", "wf_dirty") == [b"2", b"1"]
    assert _decide(p, wf, 2, [["deliver", 1, [1]]]) == Code.REPLAY_APPLIED
    gen, entry = p.r.hmget(p.keys.job(wf), "wf_gen", "wf_entry")
    assert gen == b"3" and entry


def test_an_entry_that_ends_after_a_replay_could_not_decide_waits_for_its_backoff(
        p: Pool) -> None:
    """Regression: an entry ending after a replay could not decide handed the next replay out
    at once, past the backoff, so code that no longer matches was replayed at every end."""
    wf = _started(p)
    steps = [["step", 1, ["name", "work"]], ["step", 2, ["name", "work"]]]
    assert _decide(p, wf, 1, steps) == Code.REPLAY_APPLIED
    p.ingest(p.clock())
    t = p.clock()
    p.start(t)
    p.finish_run(f"{wf}:1", 1, ok=True)
    p.apply(t)  # replay 2 goes out
    assert _decide(p, wf, 2, [], ok="0") == Code.REPLAY_RETRY
    p.finish_run(f"{wf}:2", 1, ok=True)
    p.apply(t)
    assert p.r.hmget(p.keys.job(wf), "wf_gen", "wf_entry") == [b"2", b""]
    assert p.score(p.keys.replays_due, wf) is not None
    assert p.r.smembers(p.keys.wf_new(wf)) == {b"1", b"2"}  # for the replay when it is due


def test_a_fan_out_of_more_entries_than_lua_can_unpack_is_replayed_and_delivered(
        p: Pool) -> None:
    """Regression: the entries ended and not delivered yet were read with one HMGET of every
    one (Lua's unpack takes some 8,000 values), so a wide fan-out failed the script that
    hands the replay out, after its first writes, and the activation that delivers them."""
    wf, n = _started(p), 9000
    assert _decide(p, wf, 1, [], ok="0") == Code.REPLAY_RETRY  # its next replay waits
    pipe = p.r.pipeline(transaction=False)  # a journal of n ended steps (as if they ran)
    for first in range(1, n + 1, 1000):
        pipe.hset(p.keys.job(wf), mapping={f"j:{i}": _entry("work", ended=True)
                                            for i in range(first, min(first + 1000, n + 1))})
    pipe.hset(p.keys.job(wf), "wf_steps", n)
    pipe.sadd(p.keys.wf_new(wf), *range(1, n + 1))
    pipe.execute()
    p.start(p.clock() + 5000)  # the replay due goes out, carrying every ended entry
    ((_, replay),) = [e for e in p.dispatched("wf") if e[1]["gen"] == b"2"]
    assert len(msgpack.unpackb(replay["ended"], raw=True)) == 2 * n
    assert _decide(p, wf, 2, [["deliver", 1, list(range(1, n + 1))]]) == Code.REPLAY_APPLIED
    assert p.r.scard(p.keys.wf_new(wf)) == 0


def test_a_workflow_that_awaits_something_not_of_its_context_stops_its_replay() -> None:
    """Regression: it sent an empty decision and waited for ever, nothing to wake it."""
    pool = Workpool("foreign")

    @pool.workflow(name="foreign")
    async def foreign(ctx: WorkflowContext) -> None:
        await asyncio.Event().wait()

    replayer = Replayer(pool.config)
    base = {"name": b"foreign", "enc": b"msgpack", "args": encode([]), "started_at": b"1000",
            "wf_steps": b"0", "wf_acts": b"0"}
    try:
        with pytest.raises(NonDeterministicWorkflow, match="not one of its context's calls"):
            replayer.replay(pool.registry.workflow("foreign"), "w", base, "1")
    finally:
        replayer.close()


def test_closing_a_coroutine_that_will_not_stop_gives_up_instead_of_spinning() -> None:
    """Regression: code that caught the cancel and awaited a step again spun close() for
    ever (at worker stop, or when the least recent coroutine was dropped)."""
    pool = Workpool("stubborn")
    pool.job(name="work")(lambda *a: None)

    @pool.workflow(name="stubborn")
    async def stubborn(ctx: WorkflowContext) -> None:
        first, second = ctx.step("work", 1), ctx.step("work", 2)
        try:
            await second
        except asyncio.CancelledError:
            await first  # never ends: nothing delivers it any more

    replayer = Replayer(pool.config)
    base = {"name": b"stubborn", "enc": b"msgpack", "args": encode([]), "started_at": b"1000",
            "wf_steps": b"0", "wf_acts": b"0"}
    replayer.replay(pool.registry.workflow("stubborn"), "w", base, "1")
    closer = threading.Thread(target=replayer.close, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() spun on the coroutine"


def _entry(name: str, *, ended: bool) -> bytes:
    """A journal entry as the scripts pack it (JOURNAL_FIELDS order)."""
    return bytes(msgpack.packb(["step", name, "done" if ended else "pending",
                                "succeeded" if ended else "", encode(None) if ended else "",
                                "", "", 1, 1000, 2000 if ended else ""], use_bin_type=False))


def test_a_kept_coroutine_whose_decision_was_not_the_one_applied_starts_over() -> None:
    """Worker A keeps a workflow live and decides replay 2 (it saw step 1 end first), but that
    decision is stale: worker B's replay 3 (which saw steps 1 and 2 end together) is applied,
    with as many entries and activations. A must not go on from its own history."""
    pool = Workpool("kept")
    pool.job(name="work")(lambda *a: None)

    @pool.workflow(name="race")
    async def race(ctx: WorkflowContext) -> object:
        first, second = ctx.step("work", 1), ctx.step("work", 2)
        done, _ = await asyncio.wait([first, second], return_when=asyncio.FIRST_COMPLETED)
        return await ctx.step("work", len(done))

    replayer = Replayer(pool.config)
    base = {"name": b"race", "enc": b"msgpack", "args": encode([]), "started_at": b"1000"}
    try:
        replayer.replay(pool.registry.workflow("race"), "w", {**base, "wf_steps": b"0",
                                                              "wf_acts": b"0"}, "1")
        a = replayer.resume("w", {"wf_steps": b"2", "wf_acts": b"0", "wf_applied": b"1",
                                  "j:1": _entry("work", ended=True)}, "2")
        assert a is not None and msgpack.unpackb(a, raw=True)[0] == [b"deliver", 1, [1]]
        # B's replay 3 applied: activation 1 = [1, 2], step 3 asked; step 3 ended since
        after_b = {"wf_steps": b"3", "wf_acts": b"1", "wf_applied": b"3",
                   "j:3": _entry("work", ended=True)}
        assert replayer.resume("w", after_b, "4") is None
        assert not replayer.keeps("w")
    finally:
        replayer.close()


def test_replays_run_from_within_the_workers_event_loop_which_they_leave_running() -> None:
    """A worker runs replays on its own event loop (no thread hand-off): each turn of the
    workflow's loop sets the worker's aside and puts it back, a replay that fails included."""
    pool = Workpool("inline")
    pool.job(name="work")(lambda *a: None)

    @pool.workflow(name="inline")
    async def inline(ctx: WorkflowContext, bad: bool) -> str:
        await ctx.step("work", 1)
        if bad:
            await asyncio.sleep(1)  # not a context call: the replay fails
        return "done"

    spec, replayer = pool.registry.workflow("inline"), Replayer(pool.config)
    ended = {"wf_steps": b"1", "wf_acts": b"0", "wf_applied": b"1",
             "j:1": _entry("work", ended=True)}

    async def worker() -> list[Any]:
        outer, seen = asyncio.get_running_loop(), []
        for bad in (False, True):
            base = {"name": b"inline", "enc": b"msgpack", "args": encode([bad]),
                    "started_at": b"1000", "wf_steps": b"0", "wf_acts": b"0"}
            replayer.replay(spec, f"w{bad}", base, "1")
            try:
                seen.append(msgpack.unpackb(replayer.resume(f"w{bad}", ended, "2") or b"\xc0",
                                            raw=True)[-1])
            except NonDeterministicWorkflow as exc:
                seen.append(type(exc))
            assert asyncio.get_running_loop() is outer
            await asyncio.sleep(0)  # the worker's loop still runs
        replayer.close()
        return seen

    assert asyncio.run(worker()) == [[b"return", encode("done")], NonDeterministicWorkflow]
