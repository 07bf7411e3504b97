"""Each attempt's record in its job's hash (`t:<n>`, ATTEMPT order): when it started and ended,
the worker that ran it (as its outcome says, or the reaper found it), how it ended, its
error; the latest ATTEMPTS_KEPT only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import msgpack
import pytest
import redis
from helpers.scripts import Pool, leased

from workpool import Retry, Workpool
from workpool.wire import limits
from workpool.wire.codes import Code
from workpool.wire.protocol import ATTEMPT_FIELDS, ATTEMPT_PREFIX


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """Pool `a` (30 attempts, no backoff); a silent worker is lost at the first reap."""
    with leased(Workpool("a", redis_url, retry=Retry(max_attempts=30, initial_backoff=0)),
                redis_client, silence_grace_ms=0) as pool:
        yield pool


def records(p: Pool, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's attempt records by attempt number."""
    h = cast("dict[bytes, bytes]", p.r.hgetall(p.keys.job(job_id)))
    return {int(k.decode()[len(ATTEMPT_PREFIX):]): dict(zip(ATTEMPT_FIELDS, msgpack.unpackb(v),
                                                            strict=True))
            for k, v in h.items() if k.decode().startswith(ATTEMPT_PREFIX)}


def test_each_attempt_says_who_ran_it_when_and_how_it_ended(p: Pool) -> None:
    job_id, t = p.running_job(worker="w1")
    p.finish_run(job_id, 1, ok=False, worker="w1", error="boom\n  File x", error_type="IOError")
    assert p.apply(t + 20).codes == [Code.RETRY_SCHEDULED]
    assert p.start(t + 30).ids == [job_id]
    p.beat("w2")
    p.deliver("w2")
    p.finish_run(job_id, 2, ok=True, worker="w2")
    assert p.apply(t + 75).codes == [Code.SUCCEEDED]
    assert records(p, job_id) == {
        1: {"started_at": t, "finished_at": t + 20, "worker": "w1", "outcome": "failed",
            "error_type": "IOError", "error": "boom\n  File x"}}
    h = p.job(job_id)  # the attempt that ended it: the job's own fields
    assert (h["started_at"], h["finished_at"], h["worker"], h["outcome"]) == \
        (str(t + 30).encode(), str(t + 75).encode(), b"w2", b"succeeded")


def test_the_reaper_records_the_worker_it_found_lost(p: Pool) -> None:
    job_id, t = p.running_job(worker=None)
    p.deliver("gone")  # never beats: lost at the first reap
    assert p.reap(t + 100).lost == 1
    (rec,) = records(p, job_id).values()  # retried: its record
    assert (rec["worker"], rec["outcome"], rec["error_type"], rec["finished_at"]) == \
        ("gone", "failed", "WorkerLost", t + 100)


def test_a_job_keeps_the_records_of_its_latest_attempts(p: Pool) -> None:
    job_id, t = p.running_job(worker="w1")
    last = limits.ATTEMPTS_KEPT + 2
    for n in range(1, last + 1):
        if n > 1:
            assert p.start(t + n * 10).ids == [job_id]
            p.deliver("w1")
        p.finish_run(job_id, n, ok=False, worker="w1", error=f"failure {n}")
        p.apply(t + n * 10 + 5)
    kept = records(p, job_id)
    assert sorted(kept) == list(range(3, last + 1))
    assert kept[last]["error"] == f"failure {last}"
    assert p.state(job_id) == "retrying"


def test_a_workers_name_is_kept_at_most_an_ids_length(p: Pool) -> None:
    """Regression: the worker named in an outcome was written whole into the job's hash (an
    outcome entry is untrusted input)."""
    job_id, t = p.running_job(worker="w1")
    p.finish_run(job_id, 1, ok=True, worker="w" * 5000)
    assert p.apply(t + 1).codes == [Code.SUCCEEDED]
    assert p.job(job_id)["worker"] == b"w" * limits.MAX_ID_BYTES
