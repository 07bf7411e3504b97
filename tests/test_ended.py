"""The `ended` indexes the scripts keep (statemachine.md): every terminal job at its end, the
failed ones apart, trimmed to the retention; `pool.ended_jobs()` pages through them newest
first. The model test checks the indexes against the model after every step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
import redis
from helpers.scripts import Pool, leased

from workpool import ConfigurationError, Retry, State, Workpool, WorkpoolError
from workpool.wire.codes import Code
from workpool.wire.protocol import text


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """Pool `e`, one attempt a job, a retention of 10 s, the lease held."""
    with leased(Workpool("e", redis_url, retry=Retry(max_attempts=1), retention=10.0),
                redis_client) as pool:
        yield pool


def _ended(p: Pool) -> tuple[str, ...]:
    """A job that failed at t + 20, one that succeeded at t + 10, one canceled at t + 5
    (newest first), t returned first."""
    ok, bad, dropped = (p.client.enqueue("work", i) for i in range(3))
    t = p.clock()
    p.ingest(t)
    p.client.cancel(dropped)
    assert p.ingest(t + 5).codes == [Code.CANCELED]
    assert sorted(p.start(t + 6).ids) == sorted([ok, bad])
    p.finish_run(ok, 1, ok=True)
    assert p.apply(t + 10).codes == [Code.SUCCEEDED]
    p.finish_run(bad, 1, ok=False)
    assert p.apply(t + 20).codes == [Code.FAILED]
    return str(t), bad, ok, dropped


def test_ended_jobs_are_listed_newest_first_and_paged(p: Pool) -> None:
    t, bad, ok, dropped = _ended(p)
    jobs = p.client.ended_jobs()
    assert [(j.id, j.state, j.finished_at) for j in jobs] == [
        (bad, State.DONE, (int(t) + 20) / 1000), (ok, State.DONE, (int(t) + 10) / 1000),
        (dropped, State.CANCELED, (int(t) + 5) / 1000)]
    assert [j.id for j in p.client.ended_jobs(failed=True)] == [bad]
    first = p.client.ended_jobs(limit=2)
    assert [j.id for j in first] == [bad, ok]
    assert [j.id for j in p.client.ended_jobs(before=first[-1].finished_at)] == [dropped]


def test_the_indexes_keep_what_ended_within_the_retention(p: Pool) -> None:
    t, bad, ok, _ = _ended(p)
    late = p.client.enqueue("work", 9)
    now = int(t) + 10_015  # the retention (10 s) after t + 15: ok and dropped are out of it
    p.ingest(now)
    assert p.start(now).ids == [late]
    p.finish_run(late, 1, ok=True)
    assert p.apply(now).codes == [Code.SUCCEEDED]
    assert _members(p, p.keys.ended) == [bad, late]
    assert _members(p, p.keys.ended_failed) == [bad]
    assert ok not in [j.id for j in p.client.ended_jobs()]


def _members(p: Pool, zset: str) -> list[str]:
    return [text(m) for m in cast("list[bytes]", p.r.zrange(zset, 0, -1))]


@pytest.mark.parametrize(("options", "named"), [
    ({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"failed": 1}, "failed"),
    ({"before": -1}, "before"), ({"before": float("nan")}, "before")])
def test_ended_jobs_refuses_bad_options_naming_them(p: Pool, options: dict[str, object],
                                                    named: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{named} must be"):
        p.client.ended_jobs(**options)  # type: ignore[arg-type]


def test_a_finished_job_runs_again_as_a_new_job_linked_to_it(p: Pool) -> None:
    old = p.client.enqueue("work", 1, kwargs={"k": 2}, priority=3, timeout=9.0,
                           concurrency_key="ck", on_complete="h", context={"c": 1})
    p.ingest(p.clock())
    assert p.start(p.clock()).ids == [old]
    p.finish_run(old, 1, ok=False, retryable=False)
    p.apply(p.clock())
    new = p.client.run_again(old)
    assert p.ingest(p.clock()).outcomes == [(new, Code.ENQUEUED)]
    was, now = p.job(old), p.job(new)
    same = ("name", "args", "kwargs", "priority", "timeout_ms", "ckey", "on_complete",
            "context", "max_attempts")
    assert {f: now.get(f) for f in same} == {f: was.get(f) for f in same}
    assert (p.client.status(new).rerun_of, p.client.status(new).state) == (old, State.PENDING)
    assert p.client.status(old).state == State.DONE  # the old one stays as it ended


@pytest.mark.parametrize("how", ["pending", "unknown"])
def test_only_a_finished_job_runs_again(p: Pool, how: str) -> None:
    job = p.client.enqueue("work") if how == "pending" else "nothing-here"
    p.ingest(p.clock())
    with pytest.raises(WorkpoolError, match="finished"):
        p.client.run_again(job)


def test_cancel_many_sends_every_cancel_and_the_loop_applies_them(p: Pool) -> None:
    jobs = [p.client.enqueue("work", i) for i in range(3)]
    p.ingest(p.clock())
    assert p.client.cancel_many(jobs[:2]) == 2
    p.ingest(p.clock())
    assert [p.client.status(j).state for j in jobs] == [State.CANCELED, State.CANCELED,
                                                        State.PENDING]
    with pytest.raises(ConfigurationError):
        p.client.cancel_many([""])
