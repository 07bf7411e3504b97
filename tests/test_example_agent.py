"""The support-agent example (examples/support_agent.py) on real worker processes, with a
worker SIGKILLed in the middle of each step in turn: each step's effect happens once, the
workflow succeeds once, its on_complete runs once."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import CliProcs, eventually

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import support_agent  # noqa: E402 - the example, importable from examples/

from workpool import State  # noqa: E402
from workpool.wire.keys import GROUP  # noqa: E402
from workpool.wire.protocol import text  # noqa: E402

WAIT = 60.0


@pytest.fixture
def agent(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliProcs]:
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))
    support_agent.pool.use_url(redis_url)
    procs = CliProcs(redis_url, tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()
        support_agent.pool.close()


def test_a_worker_killed_inside_every_step_loses_nothing_and_repeats_no_effect(
        agent: CliProcs, redis_client: redis.Redis) -> None:
    pool = support_agent.pool
    workers = iter(range(100))

    def start_worker() -> str:
        label = f"w{next(workers)}"
        agent.spawn(label, "worker", "support_agent:pool", "--worker-id", label,
                    "--concurrency", "4")
        return label

    live = [start_worker(), start_worker()]
    for step in ("fetch", "draft", "send"):
        redis_client.set(support_agent.HOLD + step, 1)
    wf = pool.start_workflow(support_agent.support_agent, 7, on_complete=support_agent.record)
    for step in ("fetch", "draft", "send"):
        reached = f"support:reached:{step}"
        if step == "send":
            eventually(lambda: len(pool.workflow_status(wf).steps) >= 3, WAIT, "approval asked")
            pool.send_event(wf, "approved", {"by": "ops"})
        eventually(lambda r=reached: redis_client.llen(r) >= 1, WAIT, f"{step} running")  # type: ignore[misc]
        holder = _holder(redis_client, f"{wf}:{len(pool.workflow_status(wf).steps)}")
        agent.kill(holder)  # SIGKILL inside the step: no outcome, no goodbye
        live.remove(holder)
        live.append(start_worker())
        eventually(lambda r=reached: redis_client.llen(r) >= 2, WAIT,  # type: ignore[misc]
                   f"{step} retried after its worker was lost")
        redis_client.delete(support_agent.HOLD + step)

    st = pool.wait(wf, timeout=WAIT)
    assert (st.state, st.outcome) == (State.DONE, "succeeded"), st
    assert st.result == "sent to the customer of ticket 7, approved by ops"
    effects = {text(k): int(v) for k, v in redis_client.hgetall(support_agent.EFFECTS).items()}
    assert effects == {"fetch": 1, "draft": 1, "send": 1}
    eventually(lambda: redis_client.llen("support:completed") == 1, WAIT, "on_complete")
    steps = pool.workflow_status(wf).steps
    assert [(s.kind, s.name, s.outcome) for s in steps] == [
        ("step", "fetch_ticket", "succeeded"), ("step", "draft_reply", "succeeded"),
        ("event", "approved", "succeeded"), ("step", "send_reply", "succeeded")]
    assert all(s.attempts >= 2 for s in steps if s.kind == "step")  # each one was lost once


def _holder(redis_client: redis.Redis, job_id: str) -> str:
    """The worker (consumer) that holds the running attempt of `job_id`."""
    pool = support_agent.pool
    entry = text(redis_client.hget(pool.keys.job(job_id), "dispatch"))
    (pending,) = redis_client.xpending_range(pool.keys.dispatch, GROUP, min=entry, max=entry,
                                             count=1)
    consumer = pending["consumer"]
    assert isinstance(consumer, bytes)
    return text(consumer)
