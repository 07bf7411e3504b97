"""Durable workflows against a real redis-server and a real worker: steps run as jobs, the
workflow function is replayed against its journal, and every end is recorded once."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner
from helpers import Pools, eventually, running_worker

from workpool import (
    ConfigurationError,
    Done,
    Next,
    NonRetryableError,
    Retry,
    State,
    StateContext,
    StepFailed,
    Wait,
    WaitTimeout,
    WorkflowChange,
    WorkflowContext,
    Workpool,
)
from workpool.cli.main import cli
from workpool.wire.protocol import text

WAIT = 30.0


@pytest.fixture
def pool(pools: Pools, redis_client: redis.Redis) -> Iterator[Workpool]:
    """A pool with a job that records each run (`wf:runs:<x>`), one that fails, one that waits
    for a gate key, and an on_complete handler that records each call."""
    p = pools("wf", max_parallelism=8)

    @p.job(name="double")
    def double(x: int) -> int:
        redis_client.incr(f"wf:runs:{x}")
        return 2 * x

    @p.job(name="broken")
    def broken(x: int) -> int:
        redis_client.incr(f"wf:broken:{x}")
        raise NonRetryableError(f"no luck with {x}")

    @p.job(name="gated")
    async def gated(gate: str) -> str:
        redis_client.incr(f"wf:gated:{gate}")
        while not redis_client.exists(f"wf:gate:{gate}"):
            await asyncio.sleep(0.01)  # the test opens the gate
        return gate

    @p.on_complete(name="record")
    def record(workflow_id: str, result: object, context: object) -> None:
        redis_client.rpush("wf:completed", f"{workflow_id}:{context}")

    yield p


def test_a_workflow_runs_its_steps_in_order_each_once_and_returns(
        pool: Workpool, redis_client: redis.Redis) -> None:
    seen: list[int] = []

    @pool.workflow()
    async def chain(ctx: WorkflowContext, x: int) -> int:
        a = await ctx.step("double", x)
        b = await ctx.step("double", a)
        seen.append(b)
        return int(await ctx.step("double", b)) + 1

    with running_worker(pool):
        wf = pool.start_workflow(chain, 3, on_complete="record", context="c")
        st = pool.wait(wf, timeout=WAIT)
    assert st.state == State.DONE and st.outcome == "succeeded" and st.result == 25
    status = pool.workflow_status(wf)
    assert [(s.number, s.name, s.state, s.outcome, s.result) for s in status.steps] == [
        (1, "double", "done", "succeeded", 6), (2, "double", "done", "succeeded", 12),
        (3, "double", "done", "succeeded", 24)]
    assert [int(redis_client.get(f"wf:runs:{x}") or 0) for x in (3, 6, 12)] == [1, 1, 1]
    assert set(seen) == {12}  # every replay past step 2 saw the same result
    eventually(lambda: redis_client.llen("wf:completed") == 1, WAIT, "on_complete once")
    assert [text(x) for x in redis_client.lrange("wf:completed", 0, -1)] == [f"{wf}:c"]


def test_parallel_steps_run_at_once_and_gather_their_results(pool: Workpool,
                                                            redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def fan_out(ctx: WorkflowContext, n: int) -> list[int]:
        return list(await asyncio.gather(*(ctx.step("double", i) for i in range(n))))

    with running_worker(pool):
        wf = pool.start_workflow(fan_out, 6)
        st = pool.wait(wf, timeout=WAIT)
    assert st.result == [0, 2, 4, 6, 8, 10]
    steps = pool.workflow_status(wf).steps
    assert sorted(s.number for s in steps) == [1, 2, 3, 4, 5, 6]
    assert all(int(redis_client.get(f"wf:runs:{i}") or 0) == 1 for i in range(6))


def test_a_failed_step_raises_step_failed_which_the_workflow_can_catch_to_compensate(
        pool: Workpool, redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def careful(ctx: WorkflowContext) -> str:
        try:
            await ctx.step("broken", 1)
        except StepFailed as exc:
            await ctx.step("double", 100)  # the compensation
            return f"compensated {exc.step} {exc.error_type}"
        return "unreachable"

    @pool.workflow()
    async def careless(ctx: WorkflowContext) -> str:
        await ctx.step("broken", 2)
        return "unreachable"

    with running_worker(pool):
        good = pool.start_workflow(careful)
        bad = pool.start_workflow(careless)
        assert pool.wait(good, timeout=WAIT).result == "compensated 1 NonRetryableError"
        failed = pool.wait(bad, timeout=WAIT)
    assert failed.outcome == "failed" and failed.error_type == "StepFailed"
    assert "no luck with 2" in (failed.error or "")
    assert redis_client.get("wf:broken:1") == b"1" and redis_client.get("wf:runs:100") == b"1"


def test_an_uncaught_exception_fails_the_workflow_with_its_error(pool: Workpool) -> None:
    @pool.workflow()
    async def oops(ctx: WorkflowContext) -> None:
        await ctx.step("double", 1)
        raise ValueError("bad input")

    with running_worker(pool):
        st = pool.wait(pool.start_workflow(oops), timeout=WAIT)
    assert (st.outcome, st.error_type) == ("failed", "ValueError")
    assert "bad input" in (st.error or "")


def test_canceling_a_workflow_cancels_its_waiting_steps_and_starts_none_after(
        pool: Workpool, redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def held(ctx: WorkflowContext) -> str:
        await ctx.step("gated", "g1")
        await ctx.step("double", 7)  # never asked for: the workflow is canceled before
        return "done"

    with running_worker(pool):
        wf = pool.start_workflow(held, on_complete="record", context="x")
        eventually(lambda: redis_client.get("wf:gated:g1") == b"1", WAIT, "step 1 running")
        pool.cancel(wf)
        st = pool.wait(wf, timeout=WAIT)
        assert st.state == State.CANCELED
        redis_client.set("wf:gate:g1", 1)  # step 1 ends now: recorded, not acted on
        step = pool.wait(f"{wf}:1", timeout=WAIT)
        assert step.outcome == "succeeded"
        eventually(lambda: pool.workflow_status(wf).steps[0].state == "done", WAIT,
                   "the step's end recorded in the journal")
        eventually(lambda: redis_client.llen("wf:completed") == 1, WAIT, "on_complete once")
    status = pool.workflow_status(wf)
    assert status.state == State.CANCELED and len(status.steps) == 1
    assert redis_client.get("wf:runs:7") is None


def test_starting_with_the_same_key_gives_one_workflow(pool: Workpool,
                                                       redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def once(ctx: WorkflowContext, x: int) -> int:
        return int(await ctx.step("double", x))

    with running_worker(pool):
        first = pool.start_workflow(once, 5, key="only")
        second = pool.start_workflow(once, 5, key="only")
        assert first == second
        assert pool.wait(first, timeout=WAIT).result == 10
    assert redis_client.get("wf:runs:5") == b"1"
    assert pool.stats().counters.get("workflows_started") == 1


def test_now_and_random_are_the_same_in_every_replay(pool: Workpool) -> None:
    seen: dict[str, set[tuple[float, float]]] = {"start": set(), "after 1": set()}

    @pool.workflow()
    async def steady(ctx: WorkflowContext) -> None:
        seen["start"].add((ctx.now(), ctx.random()))
        await ctx.step("double", 1)
        seen["after 1"].add((ctx.now(), ctx.random()))
        await ctx.step("double", 2)

    with running_worker(pool):
        wf = pool.start_workflow(steady)
        pool.wait(wf, timeout=WAIT)
    (start,), (after,) = seen["start"], seen["after 1"]  # one value each, in 3 replays
    status = pool.workflow_status(wf)
    assert start[0] == status.started_at and after[0] == status.steps[0].finished_at
    assert start[1] != after[1]  # the sequence goes on; each place gets the same draw


def test_more_steps_than_max_steps_fail_the_workflow(pool: Workpool) -> None:
    @pool.workflow(max_steps=2)
    async def greedy(ctx: WorkflowContext) -> None:
        for i in range(5):
            await ctx.step("double", i)

    with running_worker(pool):
        st = pool.wait(pool.start_workflow(greedy), timeout=WAIT)
    assert (st.outcome, st.error_type) == ("failed", "TooManySteps")
    assert len(pool.workflow_status(st.id).steps) == 2


def test_code_that_no_longer_matches_the_journal_waits_and_resumes_once_it_does(
        pool: Workpool, redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def drifting(ctx: WorkflowContext) -> int:
        old_code = bool(redis_client.exists("wf:old-code"))  # a deploy, as this test plays it
        await ctx.wait_for_event("a" if old_code else "b")
        return int(await ctx.step("double", 2))

    redis_client.set("wf:old-code", 1)
    with running_worker(pool, worker_id="old"):
        wf = pool.start_workflow(drifting)
        eventually(lambda: pool.workflow_status(wf).steps, WAIT, "waiting for event a")
    redis_client.delete("wf:old-code")  # the new code waits for another event at entry 1
    with running_worker(pool, worker_id="new"):  # a new worker replays it from the start
        pool.send_event(wf, "a")
        blocked = eventually(lambda: pool.workflow_status(wf).blocked, WAIT, "mismatch shown")
        assert "NonDeterministicWorkflow" in blocked and "entry 1" in blocked, blocked
        assert pool.workflow_status(wf).state == State.RUNNING
        redis_client.set("wf:old-code", 1)  # a fix deployed: the code matches its journal again
        done = pool.wait(wf, timeout=WAIT)
    assert done.result == 4
    assert pool.workflow_status(wf).blocked is None


def test_a_wait_for_an_event_no_one_could_send_fails_the_workflow_at_once(
        pool: Workpool) -> None:
    @pool.workflow()
    async def unreachable(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("two words")  # send_event refuses such a name

    with running_worker(pool):
        st = pool.wait(pool.start_workflow(unreachable), timeout=WAIT)
    assert (st.outcome, st.error_type) == ("failed", "ConfigurationError")
    assert "event name" in (st.error or "")
    with pytest.raises(ConfigurationError, match="name"):
        pool.send_event(st.id, "two words")


def test_a_sleep_longer_than_a_timer_can_hold_fails_where_it_is_asked(pool: Workpool) -> None:
    @pool.workflow()
    async def forever(ctx: WorkflowContext) -> str:
        try:
            await ctx.sleep(10**10)  # past the year 2286: the main loop would refuse it
        except ConfigurationError as exc:
            return str(exc)
        return "slept"

    with running_worker(pool):
        st = pool.wait(pool.start_workflow(forever), timeout=WAIT)
    assert st.outcome == "succeeded" and "seconds" in str(st.result)


def test_bad_workflow_calls_are_refused_before_anything_is_written(
        pool: Workpool, redis_client: redis.Redis) -> None:
    async def unregistered(ctx: WorkflowContext) -> None:
        return None

    with pytest.raises(ConfigurationError, match="max_steps"):
        pool.workflow(max_steps=0)
    with pytest.raises(ConfigurationError, match="async def"):
        pool.workflow()(lambda ctx: None)
    before = redis_client.xlen(pool.keys.pending_start)
    with pytest.raises(Exception, match="not registered"):
        pool.start_workflow(unregistered)
    for key in ("", "k" * 509, 7):
        with pytest.raises(ConfigurationError, match="key"):
            pool.send_event("some-id", "go", key=key)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="key"):  # its steps' ids would be too long
        pool.start_workflow("flow", key="k" * 500)
    assert redis_client.xlen(pool.keys.pending_start) == before


def test_a_sleep_holds_no_worker_and_ends_no_earlier_than_asked(pool: Workpool) -> None:
    @pool.workflow()
    async def napping(ctx: WorkflowContext) -> float:
        before = ctx.now()
        await ctx.sleep(0.3)
        return ctx.now() - before

    with running_worker(pool, concurrency=1):
        wf = pool.start_workflow(napping)
        other = pool.enqueue("double", 50)  # the one slot is free while the workflow sleeps
        assert pool.wait(other, timeout=WAIT).result == 100
        assert pool.workflow_status(wf).state == State.RUNNING
        slept = pool.wait(wf, timeout=WAIT).result
    assert slept >= 0.3
    (nap,) = pool.workflow_status(wf).steps
    assert nap.name == "" and nap.state == "done"


def test_an_event_ends_its_wait_once_and_one_sent_early_is_kept_for_the_next_wait(
        pool: Workpool) -> None:
    """An event sent again with the same key (a retried send) is taken once."""
    @pool.workflow()
    async def approval(ctx: WorkflowContext) -> list[object]:
        first = await ctx.wait_for_event("approved")
        second = await ctx.wait_for_event("approved")
        try:
            await ctx.wait_for_event("never", timeout=0.2)
        except WaitTimeout:
            return [first, second, "timed out"]
        return [first, second]

    with running_worker(pool):
        wf = pool.start_workflow(approval)
        eventually(lambda: pool.workflow_status(wf).steps, WAIT, "the first wait recorded")
        pool.send_event(wf, "approved", {"by": "ops"}, key="ops-1")
        pool.send_event(wf, "approved", "again")  # kept until the second wait
        pool.send_event(wf, "approved", {"by": "ops"}, key="ops-1")  # the same send again
        done = pool.wait(wf, timeout=WAIT)
        pool.send_event(wf, "approved", "late")  # the workflow ended: dropped
        eventually(lambda: pool.stats().counters.get("events_dropped") == 1, WAIT, "dropped")
    assert done.result == [{"by": "ops"}, "again", "timed out"]
    counters = pool.stats().counters
    assert counters.get("waits_timed_out") == 1
    assert counters.get("events_delivered", 0) + counters.get("events_kept", 0) == 2
    assert counters.get("events_duplicate") == 1


def test_a_child_workflow_runs_to_its_end_and_is_canceled_with_its_parent(
        pool: Workpool, redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def child(ctx: WorkflowContext, x: int) -> int:
        return int(await ctx.step("double", x))

    @pool.workflow()
    async def parent(ctx: WorkflowContext) -> int:
        return int(await ctx.workflow(child, 21)) + 1

    @pool.workflow()
    async def stuck_child(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("never")

    @pool.workflow()
    async def stuck_parent(ctx: WorkflowContext) -> None:
        await ctx.workflow(stuck_child)

    with running_worker(pool):
        assert pool.wait(pool.start_workflow(parent), timeout=WAIT).result == 43
        wf = pool.start_workflow(stuck_parent)
        eventually(lambda: redis_client.exists(pool.keys.job(f"{wf}:1")), WAIT, "child began")
        pool.cancel(wf)
        assert pool.wait(wf, timeout=WAIT).state == State.CANCELED
        assert pool.wait(f"{wf}:1", timeout=WAIT).state == State.CANCELED


def test_patched_keeps_running_workflows_on_the_path_they_began(
        pool: Workpool, redis_client: redis.Redis) -> None:
    @pool.workflow()
    async def evolving(ctx: WorkflowContext) -> str:
        await ctx.wait_for_event("go")
        new = redis_client.exists("wf:deployed") and ctx.patched("v2")
        await ctx.step("double", 2 if new else 1)
        return "v2" if new else "v1"

    with running_worker(pool):
        old = pool.start_workflow(evolving)
        eventually(lambda: pool.workflow_status(old).steps, WAIT, "waiting")
        pool.send_event(old, "go")
        assert pool.wait(old, timeout=WAIT).result == "v1"
        redis_client.set("wf:deployed", 1)  # the new code: replays of `old` would take v1
        fresh = pool.start_workflow(evolving)
        eventually(lambda: pool.workflow_status(fresh).steps, WAIT, "waiting")
        pool.send_event(fresh, "go")
        assert pool.wait(fresh, timeout=WAIT).result == "v2"
    assert [s.name for s in pool.workflow_status(fresh).steps] == ["go", "v2", "double"]


def test_the_asyncio_face_starts_signals_and_reads_workflows(pool: Workpool) -> None:
    @pool.workflow()
    async def greeter(ctx: WorkflowContext, who: str) -> str:
        return f"{await ctx.wait_for_event('name')} greets {who}"

    async def start() -> str:
        try:
            return await pool.aio.start_workflow(greeter, "you", key="greet")
        finally:
            await pool.aio.aclose()

    async def finish(wf: str) -> tuple[str, str]:
        try:
            await pool.aio.send_event(wf, "name", "workpool")
            st = await pool.aio.wait(wf, timeout=WAIT)
            return (await pool.aio.workflow_status(wf)).steps[0].kind, str(st.result)
        finally:
            await pool.aio.aclose()

    with running_worker(pool):
        wf = asyncio.run(start())
        eventually(lambda: [w.id for w in pool.running_workflows()] == [wf], WAIT, "listed")
        assert asyncio.run(finish(wf)) == ("event", "workpool greets you")
    assert wf == "key:greet"
    assert pool.running_workflows() == []


def test_the_cli_starts_shows_signals_lists_and_cancels_a_workflow(
        pool: Workpool, redis_url: str) -> None:
    @pool.workflow(name="waiter")
    async def waiter(ctx: WorkflowContext, n: int) -> int:
        return int(await ctx.wait_for_event("go")) + n

    def run(*args: str) -> str:
        out = CliRunner().invoke(cli, ["--redis-url", redis_url, "workflow", *args])
        assert out.exit_code == 0, out.output
        return out.output.strip()

    def started(output: str) -> str:  # the id printed (the in-process worker logs here too)
        (found,) = re.findall(r"^\d+-\d+$", output, re.MULTILINE)
        return str(found)

    with running_worker(pool):
        wf = started(run("start", "wf", "waiter", "1"))
        eventually(lambda: "event go pending" in run("status", wf, "--pool", "wf"), WAIT,
                   "the wait shown")
        assert wf in run("list", "--pool", "wf")
        run("event", wf, "go", "41", "--key", "first", "--pool", "wf")
        assert pool.wait(wf, timeout=WAIT).result == 42
        assert '"result": 42' in run("status", wf, "--pool", "wf", "--json")
        other = started(run("start", "wf", "waiter", "2"))
        eventually(lambda: pool.workflow_status(other).steps, WAIT, "waiting")
        assert "canceled" in run("cancel", other, "--pool", "wf")
    assert pool.workflow_status(other).state == State.CANCELED


def test_watch_reports_every_change_in_order_live_and_again_from_the_journal(
        pool: Workpool) -> None:
    @pool.workflow()
    async def watched(ctx: WorkflowContext) -> int:
        a = await ctx.step("double", 1)
        go = await ctx.wait_for_event("go")
        return int(await ctx.step("double", a + go))

    def described(changes: list[WorkflowChange]) -> list[tuple[object, ...]]:
        return [(c.kind, c.number, c.entry_kind, c.name, c.state, c.outcome) for c in changes]

    with running_worker(pool):
        wf = pool.start_workflow(watched)
        live = []
        for change in pool.watch(wf, timeout=WAIT):
            live.append(change)
            if change.kind == "asked" and change.name == "go":
                pool.send_event(wf, "go", 10)
        again = list(pool.watch(wf, timeout=WAIT))
    assert described(live) == [
        ("state", 0, "", "", "running", None),
        ("asked", 1, "step", "double", "pending", None),
        ("ended", 1, "step", "double", "done", "succeeded"),
        ("asked", 2, "event", "go", "pending", None),
        ("ended", 2, "event", "go", "done", "succeeded"),
        ("asked", 3, "step", "double", "pending", None),
        ("ended", 3, "step", "double", "done", "succeeded"),
        ("state", 0, "", "", "done", "succeeded")]
    assert described(again) == described(live)
    assert all(a.at is not None and b.at is not None and a.at <= b.at
               for a, b in itertools.pairwise(live))


def test_a_workflow_past_its_timeout_fails_and_its_waiting_steps_are_canceled(
        pool: Workpool, redis_client: redis.Redis) -> None:
    @pool.workflow(timeout=0.5)
    async def slow(ctx: WorkflowContext) -> None:
        await asyncio.gather(ctx.step("gated", "t"), ctx.wait_for_event("never"))

    pool.configure(max_parallelism=1, wait=0)
    with running_worker(pool, concurrency=2):  # a replay takes a reader slot, not a job slot
        blocker = pool.enqueue("gated", "first")  # holds the pool's one slot: step 1 waits
        eventually(lambda: redis_client.get("wf:gated:first"), WAIT, "the slot taken")
        wf = pool.start_workflow(slow)
        st = pool.wait(wf, timeout=WAIT)
        assert (st.outcome, st.error_type) == ("failed", "Timeout")
        assert pool.status(f"{wf}:1").state == State.CANCELED
        redis_client.set("wf:gate:first", 1)
        pool.wait(blocker, timeout=WAIT)
    assert st.finished_at is not None and st.enqueued_at is not None
    assert redis_client.get("wf:gated:t") is None  # step 1 never ran
    with pytest.raises(ConfigurationError, match="timeout"):
        pool.workflow(timeout=0)


def test_a_state_machine_visits_its_states_each_once_waits_for_an_event_and_ends(
        pool: Workpool, redis_client: redis.Redis) -> None:
    support = pool.machine("support", start="triage")

    @support.state("triage")
    def triage(ctx: StateContext, data: dict[str, int]) -> Next:
        redis_client.incr("wf:visits:triage")
        return Next("draft", {"ticket": data["ticket"], "tries": 0})

    @support.state("draft", retry=Retry(max_attempts=3, initial_backoff=0.01))
    async def draft(ctx: StateContext, data: dict[str, int]) -> Wait:
        redis_client.incr("wf:visits:draft")
        return Wait("approved", then="send", data=data, timeout=30)

    @support.state("send")
    def send(ctx: StateContext, data: dict[str, int]) -> Done:
        redis_client.incr("wf:visits:send")
        return Done(f"ticket {data['ticket']} answered, approved by {ctx.event['by']}")

    with pytest.raises(ConfigurationError, match="starts in state"):
        pool.start_workflow(pool.machine("empty", start="nowhere"))
    with running_worker(pool):
        wf = pool.start_workflow(support, {"ticket": 9})
        eventually(lambda: any(s.kind == "event" for s in pool.workflow_status(wf).steps),
                   WAIT, "waiting for approval")
        pool.send_event(wf, "approved", {"by": "ops"})
        st = pool.wait(wf, timeout=WAIT)
    assert st.result == "ticket 9 answered, approved by ops"
    assert [(s.kind, s.name) for s in pool.workflow_status(wf).steps] == [
        ("step", "support.triage"), ("step", "support.draft"), ("event", "approved"),
        ("step", "support.send")]
    assert [redis_client.get(f"wf:visits:{s}") for s in ("triage", "draft", "send")] == \
        [b"1", b"1", b"1"]
