"""Whether workpool's cost per job grows with the backlog: the same rates with 10^4, 10^5 and
10^6 pending jobs already queued, beside 10^5 delayed and 10^5 finished (retained) jobs.

On a private redis-server with two worker processes: first the finished and delayed jobs are
made; then, for each backlog size (grown in place), with the pool paused, pending no-op jobs are
enqueued (enqueue_many) up to backlog + the measured batch; the pool is resumed until the batch
has run (jobs/s, first to last completion of the batch), then paused again; topped up and run
again, `--rounds` times, the median counts (a batch lasts about a second: one alone is at
the mercy of the machine's noise), with the Redis server's CPU time per job over the batch
(the engine's own cost, which noise hardly moves). Also: Redis memory
per pending job (used_memory delta over the jobs added, empty payload), and the slowest script
call (SLOWLOG, every EVALSHA over 1 ms) while the largest backlog runs.

    python bench/scale.py [--backlogs 10000,100000,1000000] [--batch 20000] [--rounds 3]
                          [--delayed 100000] [--finished 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from throughput import _stop, _until, options, pool, redis_cpu_s, spawn_workers

from workpool.server.embedded import RedisServer
from workpool.wire.scripts import scripts

CHUNK = 10_000
SLOW_US = 1000


def _counter(name: str) -> int:
    return int(pool.redis.hget(pool.keys.stats, name) or 0)


def _enqueue(n: int, **options: float) -> float:
    """Enqueue n no-op jobs in chunks; returns jobs/s."""
    began = time.perf_counter()
    for first in range(0, n, CHUNK):
        pool.enqueue_many("anoop", [()] * min(CHUNK, n - first), **options)  # type: ignore[arg-type]
    return n / (time.perf_counter() - began)


def _ingested(total: int) -> None:
    _until(lambda: _counter("enqueued") >= total, 1800, f"{total} jobs ingested")


def _run_batch(batch: int) -> tuple[float, float]:
    """Resume until `batch` more jobs succeeded, pause again: jobs/s over the batch, and the
    Redis server's CPU time per job (us), which the machine's noise moves far less."""
    base, cpu = _counter("succeeded"), redis_cpu_s(pool.redis)
    pool.configure(paused=False)
    _until(lambda: _counter("succeeded") > base, 60, "the first job of the batch")
    began = time.perf_counter()
    _until(lambda: _counter("succeeded") >= base + batch, 1800, "the batch done")
    rate = (batch - 1) / (time.perf_counter() - began)
    pool.configure(paused=True)
    return rate, (redis_cpu_s(pool.redis) - cpu) * 1e6 / batch


def _slowest_script() -> tuple[float, str]:
    """The slowest EVALSHA in SLOWLOG (ms) and the script's name."""
    names = {s.sha: s.name for s in scripts().values()}
    worst, name = 0.0, "-"
    for entry in pool.redis.slowlog_get(10_000):
        command = entry["command"].split()
        if command and command[0].upper() in (b"EVALSHA", "EVALSHA") and \
                entry["duration"] / 1000 > worst:
            sha = command[1].decode() if isinstance(command[1], bytes) else command[1]
            worst, name = entry["duration"] / 1000, names.get(sha, sha[:12])
    return worst, name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlogs", default="10000,100000,1000000")
    p.add_argument("--batch", type=int, default=20000)
    p.add_argument("--delayed", type=int, default=100_000)
    p.add_argument("--finished", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3, help="batches run per backlog (median)")
    o = p.parse_args()
    settings = options([])
    rows: list[tuple[int, float, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(
            Path(tmp), extra_args=["--appendonly", "no"]) as server:
        pool.use_url(server.url)
        workers = spawn_workers(server.url, settings, "throughput:pool", 2, "scale")
        try:
            _enqueue(o.finished)
            _until(lambda: _counter("succeeded") >= o.finished, 1800, "finished jobs made")
            pool.configure(paused=True)
            _enqueue(o.delayed, run_after=86400.0)
            total = o.finished + o.delayed
            _ingested(total)
            pending = 0
            for backlog in map(int, o.backlogs.split(",")):
                add = backlog + o.batch - pending
                before = int(pool.redis.info("memory")["used_memory"])
                enqueue_rate = _enqueue(add)
                total += add
                _ingested(total)
                per_job = (int(pool.redis.info("memory")["used_memory"]) - before) / add
                pool.redis.config_set("slowlog-log-slower-than", SLOW_US)
                pool.redis.config_set("slowlog-max-len", 10_000)
                pool.redis.slowlog_reset()
                runs = [_run_batch(o.batch)]
                for _ in range(o.rounds - 1):  # top the backlog up again, run another batch
                    _enqueue(o.batch)
                    total += o.batch
                    _ingested(total)
                    runs.append(_run_batch(o.batch))
                rows.append((backlog, enqueue_rate, statistics.median(r for r, _ in runs),
                             statistics.median(c for _, c in runs), per_job))
                pending = backlog
            slowest = _slowest_script()
            version = pool.redis.info("server")["redis_version"]
        finally:
            _stop(workers)
            pool.close()
    print(f"scale: 2 worker processes x {settings.concurrency}, max_parallelism "
          f"{settings.max_parallelism}, {o.delayed} delayed + {o.finished} finished jobs "
          f"retained, batch {o.batch} (median of {o.rounds}), redis {version} (no "
          f"persistence), python "
          f"{platform.python_version()}, {os.cpu_count()} cpus")
    print(f"{'pending backlog':>16}{'enqueue_many/s':>16}{'run jobs/s':>12}"
          f"{'redis us/job':>14}{'bytes/pending job':>19}")
    for backlog, enq, run, cpu_us, per_job in rows:
        print(f"{backlog:>16,}{enq:>16,.0f}{run:>12,.0f}{cpu_us:>14,.1f}{per_job:>19,.0f}")
    print(f"slowest script call at the largest backlog: {slowest[0]:.1f} ms ({slowest[1]})")


if __name__ == "__main__":
    main()
