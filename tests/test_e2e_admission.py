"""Admission control end to end: real `workpool worker` processes (started from the CLI) run the
pools of `e2e_admission_app`, whose jobs record their own starts on Redis's clock; the tests
judge rate limits, serial keys, cron ticks and live configuration from those records.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from e2e_admission_app import (
    QUICK,
    RATE,
    SPANS,
    STARTS,
    TICKS,
    config_pool,
    cron_pool,
    key_pool,
    limited,
    now_us,
    quick,
    rate_pool,
    serial,
)
from helpers import CliProcs, eventually

from workpool import Workpool
from workpool.cli.main import cli
from workpool.wire.protocol import text

pytestmark = pytest.mark.topologies  # each test on one server and on a cluster

FINISH_TIMEOUT = 30.0
WOKEN_DEADLINE = 0.5  # seconds: well under the idle loop's shortest timer (the 1 s reap)


class Procs(CliProcs):
    """CLI worker processes of `e2e_admission_app`."""

    def worker(self, pool: str, worker_id: str, concurrency: int = 16) -> subprocess.Popen[bytes]:
        """A worker (with its main-loop candidate) of `e2e_admission_app:<pool>`."""
        return self.spawn(worker_id, "worker", f"e2e_admission_app:{pool}", "--worker-id",
                          worker_id, "--concurrency", str(concurrency))


@pytest.fixture
def procs(redis_url: str, tmp_path: Path) -> Iterator[Procs]:
    started = Procs(redis_url, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture(autouse=True)
def pools(redis_url: str) -> Iterator[None]:
    """The app's pools, pointed at the clean test server."""
    every = (rate_pool, key_pool, cron_pool, config_pool)
    for pool in every:
        pool.use_url(redis_url)
    try:
        yield
    finally:
        for pool in every:
            pool.close()


def _start(procs: Procs, r: redis.Redis, pool: Workpool, name: str, *ids: str) -> set[int]:
    """Start workers of `e2e_admission_app:<name>` and wait for their heartbeats; their pids."""
    started = {procs.worker(name, worker_id).pid for worker_id in ids}
    eventually(lambda: all(r.exists(pool.keys.heartbeat(w)) for w in ids), 20.0,
               f"heartbeats of {ids}")
    return started


def _succeeded(pool: Workpool, n: int, timeout: float = FINISH_TIMEOUT) -> None:
    eventually(lambda: pool.stats().counters.get("succeeded", 0) >= n, timeout,
               f"{n} jobs of {pool.name} succeeded")


def _most_in_window(times: Sequence[int], span: int) -> int:
    """The most of the sorted `times` inside any closed window of length `span`."""
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] > span:
            first += 1
        best = max(best, last - first + 1)
    return best


def _over_token_bucket(times: Sequence[int], limit: int, per: int, slack: int) -> list[str]:
    """Pairs of sorted start times (us) breaking the token-bucket bound: a window of length T
    holds at most limit (a full bucket) + limit * (T + slack) / per (the refill) starts.
    Integer arithmetic: epoch times as floats are off by about 1e-7 s."""
    return [f"{j - i + 1} starts in {(times[j] - times[i]) / 1e6:.6f} s"
            for i in range(len(times)) for j in range(i, len(times))
            if (j - i + 1 - limit) * per > limit * (times[j] - times[i] + slack)]


def test_a_job_rate_limit_holds_across_three_worker_processes(
    procs: Procs, redis_client: redis.Redis,
) -> None:
    pids = _start(procs, redis_client, rate_pool, "rate_pool", "r-a", "r-b", "r-c")
    ids = rate_pool.enqueue_many(limited, [(i,) for i in range(40)])
    _succeeded(rate_pool, 40)

    runs = [text(x).split(":") for x in redis_client.lrange(STARTS, 0, -1)]
    assert sorted(int(i) for _, _, i in runs) == list(range(40))  # each ran exactly once
    assert {int(pid) for _, pid, _ in runs} == pids  # every process ran some
    # Admission times (set by startJobs, ms) and the jobs' own start records (later), in us.
    admitted = {int(i): 1000 * int(text(redis_client.hget(rate_pool.keys.job(ids[int(i)]),
                                                           "started_at"))) for _, _, i in runs}
    recorded = {int(i): int(us) for us, _, i in runs}
    lag = max(recorded[i] - admitted[i] for i in admitted) + 1000  # +1 ms: started_at is in ms
    limit, per = RATE.limit, round(RATE.per * 1_000_000)
    # A token bucket of capacity `limit` refilled at limit/per: a window of T holds at most
    # limit + limit*T/per starts (a full bucket, then the refill), so 2*limit within `per`.
    by_script = sorted(admitted.values())
    assert _over_token_bucket(by_script, limit, per, 0) == []
    # The records lag admission by up to `lag`, which widens each window by that much.
    by_jobs = sorted(recorded.values())
    assert _over_token_bucket(by_jobs, limit, per, lag) == []
    most = _most_in_window(by_jobs, per)
    assert (most - 2 * limit) * per <= limit * lag
    steady = (len(by_script) - 1 - limit) * 1e6 / (by_script[-1] - by_script[limit])
    print(f"40 starts over {(by_jobs[-1] - by_jobs[0]) / 1e6:.2f} s; after the burst of {limit}:"
          f" {steady:.2f} starts/s (limit {RATE.limit}/{RATE.per:g}s); most in any 1 s window: "
          f"{most} (bound {2 * limit}); records lag admission by <= {lag / 1000:.0f} ms")


def test_a_serial_key_never_runs_two_jobs_at_once_while_other_keys_and_unkeyed_jobs_proceed(
    procs: Procs, redis_client: redis.Redis,
) -> None:
    pids = _start(procs, redis_client, key_pool, "key_pool", "k-a", "k-b")
    keys = ["u1", "u2", None, None]
    for i in range(24):
        key = keys[i % 4]
        key_pool.enqueue(serial, key, i, 120, concurrency_key=key)
    _succeeded(key_pool, 24)

    spans: list[dict[str, Any]] = [json.loads(x) for x in redis_client.lrange(SPANS, 0, -1)]
    assert sorted(s["i"] for s in spans) == list(range(24))
    assert {s["pid"] for s in spans} == pids
    by_key = {k: sorted((s for s in spans if s["key"] == k), key=lambda s: s["start"])
              for k in ("u1", "u2", None)}
    for key in ("u1", "u2"):
        chain = by_key[key]
        assert len(chain) == 6
        overlaps = [(a["i"], b["i"]) for a, b in pairwise(chain) if b["start"] < a["end"]]
        assert overlaps == [], f"key {key}: jobs ran at once"
    assert any(a["start"] < b["end"] and b["start"] < a["end"]
               for a in by_key["u1"] for b in by_key["u2"])  # keys run concurrently
    unkeyed = by_key[None]
    # Unkeyed jobs ran side by side and never queued behind the keys' serial chains.
    assert any(a["start"] < b["end"] and b["start"] < a["end"]
               for a, b in pairwise(unkeyed))
    assert max(s["start"] for s in unkeyed) < min(by_key[k][-1]["start"] for k in ("u1", "u2"))
    processes = {k: len({s["pid"] for s in by_key[k]}) for k in ("u1", "u2")}
    first = min(s["start"] for s in spans)
    print(f"processes per serial key: {processes}; unkeyed jobs all started within "
          f"{(max(s['start'] for s in unkeyed) - first) / 1000:.0f} ms")


def _cron_jobs(r: redis.Redis) -> dict[int, dict[str, str]]:
    """The cron job hashes of `tick`, by tick time (ms)."""
    prefix = cron_pool.keys.job("cron:tick:")
    return {int(text(k)[len(prefix):]): {text(f): text(v) for f, v in r.hgetall(k).items()}
            for k in r.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*")}


def _runs(r: redis.Redis) -> list[tuple[int, int]]:
    """(start us, pid) of each `tick` run, in order."""
    return [(int(us), int(pid)) for us, pid in (text(x).split(":") for x in r.lrange(TICKS, 0, -1))]


def _settled(r: redis.Redis) -> dict[int, dict[str, str]] | None:
    """The tick jobs, once every one of them finished and each run is recorded."""
    jobs = _cron_jobs(r)
    done = all(j.get("state") == "done" for j in jobs.values())
    return jobs if jobs and done and len(_runs(r)) == len(jobs) else None


def test_cron_on_three_processes_enqueues_one_job_per_tick_even_when_the_leader_is_killed(
    procs: Procs, redis_client: redis.Redis,
) -> None:
    r = redis_client
    _start(procs, r, cron_pool, "cron_pool", "c-a", "c-b", "c-c")
    eventually(lambda: len(_runs(r)) >= 4, 10.0, "4 ticks ran")
    before = eventually(lambda: _settled(r), 5.0, "the last tick's job finished")
    leader = text(r.get(cron_pool.keys.lease)).split(":", 1)[1]
    killed_at = now_us(r) // 1000
    procs.kill(leader)  # a tick is ~1 s away: no tick job is running now

    eventually(lambda: sum(t > killed_at for t in _cron_jobs(r)) >= 7, 20.0,
               "7 ticks after the kill")
    jobs = eventually(lambda: _settled(r), 5.0, "the tick jobs finished")
    ticks = sorted(jobs)
    runs = sorted(_runs(r))
    assert len(runs) == len(ticks)  # one run per tick: none doubled, none lost
    assert all((j["outcome"], j["attempts"]) == ("succeeded", "1") for j in jobs.values())
    assert all(t % 1000 == 0 for t in ticks)
    assert all(us // 1000 >= t for (us, _), t in zip(runs, ticks, strict=True))
    gaps = [b - a for a, b in pairwise(ticks)]
    before_kill = [b - a for a, b in pairwise(sorted(before))]
    assert set(before_kill) == {1000}  # a tick every second while the leader lives
    # The 5 s lease handover is within the ticks' grace (60 s): every tick of it ran, late.
    assert set(gaps) == {1000}, gaps
    assert int(r.hget(cron_pool.keys.cron, "tick") or 0) == ticks[-1]
    new_leader = text(r.get(cron_pool.keys.lease)).split(":", 1)[1]
    assert new_leader != leader
    print(f"{len(ticks)} ticks, {len(runs)} runs; leader {leader} killed, {new_leader} took "
          f"over; tick gaps (ms): {gaps}; run pids: {sorted({p for _, p in runs})}")


def _cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--redis-url", url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _stats(url: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_cli(url, "stats", "adm-config", "--json"))
    return out


def _quick_runs(r: redis.Redis) -> int:
    return int(r.llen(QUICK))


def test_live_configuration_from_the_cli_pauses_resumes_and_limits_a_running_pool(
    procs: Procs, redis_client: redis.Redis, redis_url: str,
) -> None:
    r = redis_client
    assert "configuration sent" in _cli(redis_url, "config", "adm-config", "--pause")
    _start(procs, r, config_pool, "config_pool", "g-a", "g-b")
    config_pool.enqueue_many(quick, [(i,) for i in range(20)])
    eventually(lambda: _stats(redis_url)["ready"] == 20, 10.0, "20 jobs ready")
    shown = _cli(redis_url, "stats", "adm-config")
    assert re.search(r"^running\s+0 of max_parallelism \d+ \(PAUSED\)$", shown, re.M), shown
    assert re.search(r"^ready\s+20 due", shown, re.M), shown
    assert _quick_runs(r) == 0

    woken = time.monotonic()
    _cli(redis_url, "config", "adm-config", "--resume")
    _succeeded(config_pool, 20, WOKEN_DEADLINE)  # no timer fires that soon: the entry woke it
    resumed_in = time.monotonic() - woken
    assert not _stats(redis_url)["paused"]

    _cli(redis_url, "config", "adm-config", "--job-rate-limit", "quick=1/60s")
    config_pool.enqueue_many(quick, [(i,) for i in range(20, 30)])
    held = eventually(lambda: _stats(redis_url)["held_by_rate"], 10.0, "jobs held by rate")
    assert held == 9  # the bucket held one token: one started, nine wait for the next minute
    assert eventually(lambda: _quick_runs(r) == 21, 10.0, "the one token's job ran")
    shown = _cli(redis_url, "stats", "adm-config")
    assert re.search(r"^held\s+9 by job rate limits", shown, re.M), shown
    assert "rate:quick=1/60000" in shown, shown

    released = time.monotonic()
    _cli(redis_url, "config", "adm-config", "--job-rate-limit", "quick=none")
    _succeeded(config_pool, 30, WOKEN_DEADLINE)
    released_in = time.monotonic() - released
    after = _stats(redis_url)
    assert (after["held_by_rate"], after["ready"], after["running"]) == (0, 0, 0)
    assert _quick_runs(r) == 30
    print(f"resume -> 20 jobs done in {resumed_in * 1000:.0f} ms; rate limit lifted -> 9 held "
          f"jobs done in {released_in * 1000:.0f} ms")
