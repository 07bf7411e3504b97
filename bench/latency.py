"""Latency of workpool jobs on a private redis-server: enqueue-to-start and enqueue-to-done.

Two worker processes wait, idle. Then (1) jobs one at a time, each enqueued once the previous
one is done, and (2) a steady load at a share of the measured capacity (default 50%) for a
number of seconds. Each job records when it started (wall clock, the same host as the client);
"done" is the job's finished_at in its hash (Redis's clock, the same host).

    python bench/latency.py [--single 500] [--load 0.5] [--seconds 10] [--capacity N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import redis
from throughput import _span_s, _stop, _until, options, pool, preload, spawn_workers

from workpool.server.embedded import RedisServer
from workpool.wire.protocol import text

STARTS = "bench:starts"  #: job id -> start time (ms), written by the job itself
_client: redis.asyncio.Redis | None = None


@pool.job()
async def stamp() -> None:
    """Record this job's start (one HSET), then end."""
    global _client  # noqa: PLW0603 - one client per worker process
    from workpool import current  # noqa: PLC0415

    if _client is None:
        _client = redis.asyncio.Redis.from_url(pool.url)
    await _client.hset(STARTS, current().job_id, f"{time.time() * 1000:.3f}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _latencies(sent: dict[str, float]) -> tuple[list[float], list[float]]:
    """(enqueue-to-start, enqueue-to-done) in ms for the jobs in `sent`."""
    starts = {text(k): float(v) for k, v in pool.redis.hgetall(STARTS).items()}
    ids = list(sent)
    pipe = pool.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(pool.keys.job(job_id), "finished_at")
    done = [float(f) for f in pipe.execute()]
    return ([starts[j] - sent[j] for j in ids], [d - sent[j] for j, d in zip(ids, done,
                                                                              strict=True)])


def one_at_a_time(n: int) -> dict[str, float]:
    sent: dict[str, float] = {}
    for _ in range(n):
        t = time.time() * 1000
        job_id = pool.enqueue(stamp)
        sent[job_id] = t
        pool.wait(job_id, timeout=30)
    return sent


def _succeeded() -> int:
    return int(pool.redis.hget(pool.keys.stats, "succeeded") or 0)


def steady(rate: float, seconds: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    began, n, base = time.perf_counter(), round(rate * seconds), _succeeded()
    for i in range(n):
        time.sleep(max(0.0, began + i / rate - time.perf_counter()))  # the load's schedule
        sent[pool.enqueue(stamp)] = time.time() * 1000
    _until(lambda: _succeeded() >= base + n, 60, "the load done")
    return sent


def capacity(jobs: int) -> float:
    """No-op jobs/s of the two workers on a pre-loaded backlog (first start to last finish)."""
    pool.redis.flushall()
    preload("anoop", jobs, 5000)
    _until(lambda: _succeeded() >= jobs, 300, "capacity run done")
    return jobs / _span_s()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--single", type=int, default=500)
    p.add_argument("--load", type=float, default=0.5, help="share of measured capacity")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--capacity", type=float, default=None, help="skip measuring it")
    p.add_argument("--capacity-jobs", type=int, default=20000)
    o = p.parse_args()
    settings = options([])
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(
            Path(tmp), extra_args=["--appendonly", "no"]) as server:
        pool.use_url(server.url)
        workers = spawn_workers(server.url, settings, "latency:pool", 2, "lat")
        try:
            cap = o.capacity or capacity(o.capacity_jobs)
            pool.redis.flushall()
            idle = _latencies(one_at_a_time(o.single))
            pool.redis.delete(STARTS)
            rate = cap * o.load
            loaded = _latencies(steady(rate, o.seconds))
            version = pool.redis.info("server")["redis_version"]
        finally:
            _stop(workers)
            pool.close()
    print(f"latency: 2 worker processes x {settings.concurrency}, redis {version} (no "
          f"persistence), python {platform.python_version()}, {os.cpu_count()} cpus; capacity "
          f"{cap:,.0f} jobs/s, load {o.load:.0%} = {rate:,.0f} jobs/s for {o.seconds:.0f} s")
    print(f"{'':<22}{'n':>6}{'start p50':>11}{'p99':>8}{'max':>8}{'done p50':>10}{'p99':>8}"
          f"{'max':>8}  (ms)")
    for label, (start, done) in (("one at a time, idle", idle), ("steady load", loaded)):
        print(f"{label:<22}{len(start):>6}{pct(start, 0.5):>11.2f}{pct(start, 0.99):>8.2f}"
              f"{max(start):>8.2f}{pct(done, 0.5):>10.2f}{pct(done, 0.99):>8.2f}"
              f"{max(done):>8.2f}")


if __name__ == "__main__":
    main()
