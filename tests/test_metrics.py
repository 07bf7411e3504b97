"""Prometheus metrics: the scripts count each transition by job name (and time attempts and
first starts) in Redis, `pool.metrics()` reads them with the pool's gauges, and the endpoint
serves them; every value scraped is checked against what the test made happen."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
from click.testing import CliRunner
from helpers import CliProcs, eventually, free_port, running_worker
from helpers.scripts import Pool, leased, wait_until
from prometheus_client.parser import text_string_to_metric_families

from workpool import Retry, Workpool
from workpool.cli.main import cli
from workpool.operate.prometheus import serve
from workpool.wire import metrics
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP
from workpool.wire.protocol import SPEC_FIELDS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
FAR = 60_000


@pytest.fixture
def p(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    """Pool `m` (3 attempts, 1 s backoff), a silent worker lost at the first reap, the lease
    held."""
    with leased(Workpool("m", redis_url, max_parallelism=10,
                         retry=Retry(max_attempts=3, initial_backoff=1.0)),
                redis_client, silence_grace_ms=0) as pool:
        yield pool


def scrape(*pools: Workpool) -> Samples:
    """GET /metrics from a server for `pools`: every sample by name and labels."""
    server = serve(pools, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def _due(p: Pool, job_id: str) -> int:
    """When a pending job was due (its spec's due_at: its enqueue time here)."""
    spec = msgpack.unpackb(p.r.hget(p.keys.unstarted, job_id), raw=True)
    return int(spec[SPEC_FIELDS.index("due_at")])


def _lbl(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_every_transition_is_counted_by_job_name_and_timed(p: Pool) -> None:
    c = p.client
    ok, bad = c.enqueue("work", 1), c.enqueue("work", 2, retry=Retry(max_attempts=2))
    slow = c.enqueue("work", 3, timeout=0.001, retry=Retry(max_attempts=1))
    gone = c.enqueue("mail", 4, retry=Retry(max_attempts=2))
    dropped = c.enqueue("work", 5, run_after=3600)
    t0 = p.clock()
    assert len(p.ingest(t0).outcomes) == 5
    c.cancel(dropped)
    assert p.ingest(t0).outcomes == [(dropped, Code.CANCELED)]
    due = {job: _due(p, job) for job in (ok, bad, slow, gone)}

    t1 = t0 + 3000  # each waited about 3 s for its first start
    assert p.start(t1).ids == [ok, bad, slow, gone]
    p.beat("w1")
    assert len(p.deliver("w1", count=3)) == 3
    assert len(p.deliver("w2", count=1)) == 1  # w2 never beats: lost at the first reap
    p.finish_run(ok, 1, ok=True)
    assert p.apply(t1 + 300).codes == [Code.SUCCEEDED]
    p.finish_run(bad, 1, ok=False)
    assert p.apply(t1 + 20).codes == [Code.RETRY_SCHEDULED]
    wait_until(lambda: min(int(e["time_since_delivered"]) for e in p.r.xpending_range(
        p.keys.dispatch, GROUP, "-", "+", 10)) >= 1)
    reaped = p.reap(t1 + 1000)  # slow timed out (its last attempt), gone's worker is lost
    assert (reaped.timed_out, reaped.lost) == (1, 1)
    p.finish_run(slow, 1, ok=True)
    assert p.apply(t1 + 1001).codes == [Code.STALE_COMPLETION]

    t2 = t1 + FAR  # both retries are due
    assert sorted(p.start(t2).ids) == sorted([bad, gone])
    assert len(p.deliver("w1", count=2)) == 2
    p.finish_run(bad, 2, ok=False, retryable=False)
    p.finish_run(gone, 2, ok=True)
    assert p.apply(t2 + 50).codes == [Code.FAILED, Code.SUCCEEDED]

    s = scrape(c)
    work, mail, pool = _lbl(pool="m", name="work"), _lbl(pool="m", name="mail"), _lbl(pool="m")
    assert {(n, v) for (n, lbl), v in s.items() if lbl == work and n.endswith("_total")} == {
        ("workpool_jobs_enqueued_total", 4), ("workpool_jobs_started_total", 4),
        ("workpool_jobs_succeeded_total", 1), ("workpool_jobs_failed_total", 2),
        ("workpool_jobs_canceled_total", 1), ("workpool_jobs_retried_total", 1)}
    assert {(n, v) for (n, lbl), v in s.items() if lbl == mail and n.endswith("_total")} == {
        ("workpool_jobs_enqueued_total", 1), ("workpool_jobs_started_total", 2),
        ("workpool_jobs_succeeded_total", 1), ("workpool_jobs_retried_total", 1)}
    assert s["workpool_jobs_lost_total", _lbl(pool="m", name="work", reason="timeout")] == 1
    assert s["workpool_jobs_lost_total", _lbl(pool="m", name="mail", reason="worker_lost")] == 1
    assert ("workpool_jobs_lost_total", _lbl(pool="m", name="work", reason="worker_lost")) \
        not in s
    assert (s["workpool_stale_completions_total", pool], s["workpool_up", pool]) == (1, 1)

    # attempt durations: work 300, 20, 1000 (the reaper's), 50 ms; mail 1000, 50 ms
    duration = "workpool_job_duration_seconds"
    assert _buckets(s, duration, work) == {0.025: 1, 0.05: 2, 0.5: 3, 1.0: 4}
    assert _buckets(s, duration, mail) == {0.05: 1, 1.0: 2}
    assert s[f"{duration}_sum", work] == pytest.approx(1.37)
    assert (s[f"{duration}_count", work], s[f"{duration}_count", mail]) == (4, 2)
    wait = "workpool_job_queue_wait_seconds"  # first starts only: the retries are not counted
    assert s[f"{wait}_count", work] == 3
    assert s[f"{wait}_sum", work] == pytest.approx(sum(t1 - due[j] for j in (ok, bad, slow))
                                                   / 1000)
    assert _buckets(s, wait, mail) == {5.0: 1}  # 3 s and a little: in the bucket up to 5 s


def _buckets(s: Samples, family: str, labels: frozenset[tuple[str, str]]) -> dict[float, float]:
    """The cumulative count at each bound where it grows (bound in seconds)."""
    found = sorted((float(dict(lbl)["le"]), v) for (n, lbl), v in s.items()
                   if n == f"{family}_bucket" and lbl - {("le", dict(lbl)["le"])} == labels)
    assert len(found) == len(metrics.BOUNDS_MS) + 1
    out, last = {}, 0.0
    for bound, v in found:
        if v != last:
            out[bound] = v
            last = v
    return out


def test_the_counters_live_in_redis_so_a_new_leader_goes_on_from_them(p: Pool) -> None:
    job = p.client.enqueue("work")
    p.ingest(p.clock())
    assert scrape(p.client)["workpool_leader_changes_total", _lbl(pool="m")] == 1
    p.r.pexpire(p.keys.lease, 1)
    eventually(lambda: not p.r.exists(p.keys.lease), what="the lease lapsed")
    lease = p.acquire("another")
    assert lease.code == Code.OK
    assert p.start(p.clock(), lease.token).ids == [job]
    s = scrape(p.client)
    assert s["workpool_leader_changes_total", _lbl(pool="m")] == 2
    work = _lbl(pool="m", name="work")
    assert (s["workpool_jobs_enqueued_total", work], s["workpool_jobs_started_total", work]) == \
        (1, 1)


def test_the_gauges_show_what_waits_and_for_how_long(p: Pool) -> None:
    low = p.client.enqueue("work")  # the older, in the lower band of `ready`
    p.client.enqueue("work", priority=5)
    p.ingest(p.clock())
    due = _due(p, low)
    before = p.clock()
    s = scrape(p.client)
    after = p.clock()
    pool = _lbl(pool="m")
    age = s["workpool_oldest_pending_age_seconds", pool]
    assert (before - due) / 1000 <= age <= (after - due) / 1000  # the older of the two bands
    assert s["workpool_jobs", _lbl(pool="m", state="pending")] == 2
    assert (s["workpool_jobs_ready", pool], s["workpool_running", pool]) == (2, 0)
    assert (s["workpool_max_parallelism", pool], s["workpool_paused", pool]) == (10, 0)
    assert s["workpool_jobs_held", _lbl(pool="m", reason="rate_limit")] == 0


def test_names_past_the_cap_are_counted_together(p: Pool) -> None:
    many = [f"job{i}" for i in range(metrics.MAX_NAMES + 2)]
    p.client.enqueue_many("n0", [()])  # a name before the flood keeps its own count
    p.ingest(p.clock())
    for name in many:
        p.client.enqueue(name)
    while p.ingest(p.clock()).outcomes:
        pass
    names = p.client.metrics().names
    assert len(names) == metrics.MAX_NAMES + 1
    assert names["n0"].counters == {metrics.Metric.ENQUEUED: 1}
    assert names[metrics.OTHER].counters[metrics.Metric.ENQUEUED] == 3


def test_a_pool_whose_redis_is_down_shows_up_0_and_the_others_as_usual(p: Pool) -> None:
    down = Workpool("down", f"redis://127.0.0.1:{free_port()}/0")
    try:
        s = scrape(p.client, down)
    finally:
        down.close()
    assert (s["workpool_up", _lbl(pool="m")], s["workpool_up", _lbl(pool="down")]) == (1, 0)
    assert ("workpool_running", _lbl(pool="down")) not in s


def test_the_metrics_command_serves_a_running_pool(redis_url: str, tmp_path: Path) -> None:
    pool = Workpool("served", redis_url, max_parallelism=4)
    pool.job(name="double")(lambda x: 2 * x)
    procs = CliProcs(redis_url, tmp_path)
    try:
        with running_worker(pool):
            assert [pool.wait(j, timeout=30).result for j in
                    [pool.enqueue("double", i) for i in range(3)]] == [0, 2, 4]
            proc = procs.spawn("metrics", "metrics", "served", "--port", "0")
            url = eventually(lambda: _served_at(procs.log("metrics")), what="the URL printed")
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = reply.read().decode()
        assert proc.poll() is None
    finally:
        procs.kill_all()
        pool.close()
    s = {(x.name, frozenset(x.labels.items())): x.value
         for f in text_string_to_metric_families(body) for x in f.samples}
    assert s["workpool_jobs_succeeded_total", _lbl(pool="served", name="double")] == 3
    assert s["workpool_workers", _lbl(pool="served")] == 1


def _served_at(log: str) -> str | None:
    for line in log.splitlines():
        if line.startswith("serving the metrics of"):
            return line.rsplit(" at ", 1)[1]
    return None


@pytest.mark.parametrize(("args", "error"), [
    (["metrics", "a", "--port", "70000"], "Invalid value for '--port'"),
    (["metrics", "a", "a"], "a pool is named twice"),
    (["metrics"], "Missing argument 'POOL...'"),
])
def test_the_metrics_command_refuses_bad_options(args: list[str], error: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert error in result.output
