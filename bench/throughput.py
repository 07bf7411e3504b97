"""End-to-end throughput of no-op jobs on real worker processes, on a private redis-server.

Enqueues N no-op jobs with enqueue_many in chunks (the enqueue rate), then starts K workers
(`python -m workpool worker throughput:pool`) and measures jobs/s from the first start to the
last finish, both read from the job hashes (Redis clock).

    python bench/throughput.py [--jobs 20000] [--workers 2] [--concurrency 32]
                               [--max-parallelism 64] [--chunk 1000] [--kind sync|async]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workpool import Workpool
from workpool.embedded import RedisServer

BENCH_DIR = Path(__file__).resolve().parent
MAXP_ENV = "BENCH_MAX_PARALLELISM"  # the workers import this module: the limit travels by env
pool = Workpool("bench", max_parallelism=int(os.environ.get(MAXP_ENV, "64")), retention=3600.0)


@pool.job()
def noop() -> None:
    """Does nothing (runs in the worker's thread pool)."""


@pool.job()
async def anoop() -> None:
    """Does nothing (runs on the worker's event loop)."""


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-parallelism", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1000, help="jobs per enqueue_many call")
    parser.add_argument("--kind", choices=["sync", "async"], default="sync")
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args()


def _enqueue(job: str, jobs: int, chunk: int) -> tuple[list[str], float]:
    started = time.perf_counter()
    ids: list[str] = []
    for first in range(0, jobs, chunk):
        ids += pool.enqueue_many(job, [()] * min(chunk, jobs - first))
    return ids, time.perf_counter() - started


def _finished(jobs: int, timeout: float) -> float:
    """Poll the counters until every job succeeded; return the wall time it took."""
    started = time.perf_counter()
    while pool.stats().counters.get("succeeded", 0) < jobs:
        if time.perf_counter() - started > timeout:
            msg = f"not finished after {timeout} s: {pool.stats()}"
            raise TimeoutError(msg)
        time.sleep(0.05)
    return time.perf_counter() - started


def _span_ms(ids: list[str]) -> tuple[int, int]:
    """(first started_at, last finished_at) over the jobs, in Redis milliseconds."""
    first, last = 2**63, 0
    for i in range(0, len(ids), 2000):
        pipe = pool.redis.pipeline(transaction=False)
        for job_id in ids[i:i + 2000]:
            pipe.hmget(pool.keys.job(job_id), "started_at", "finished_at")
        for started_at, finished_at in pipe.execute():
            first, last = min(first, int(started_at)), max(last, int(finished_at))
    return first, last


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    """Run the benchmark once and print its figures and settings."""
    o = _options()
    job = "noop" if o.kind == "sync" else "anoop"
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(Path(tmp)) as server:
        pool.use_url(server.url)
        ids, enqueue_s = _enqueue(job, o.jobs, o.chunk)
        env = {**os.environ, MAXP_ENV: str(o.max_parallelism),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR),
                                                           os.environ.get("PYTHONPATH")]))}
        procs = [subprocess.Popen(
            [sys.executable, "-m", "workpool", "--redis-url", server.url, "--log-level",
             "WARNING", "worker", "throughput:pool", "--concurrency", str(o.concurrency),
             "--worker-id", f"bench-{i}"], env=env) for i in range(o.workers)]
        try:
            wall_s = _finished(o.jobs, o.timeout)
            first, last = _span_ms(ids)
        finally:
            _stop(procs)
        version = pool.redis.info("server")["redis_version"]
        pool.close()
    span_s = (last - first) / 1000
    print(f"settings: jobs={o.jobs} kind={o.kind} ({job}) chunk={o.chunk} workers={o.workers} "
          f"concurrency={o.concurrency} max_parallelism={o.max_parallelism} executor=thread "
          f"worker_log_level=WARNING redis={version} appendfsync=everysec "
          f"python={platform.python_version()} cpus={os.cpu_count()} {platform.machine()}")
    print(f"enqueue:  {o.jobs} jobs in {enqueue_s:.2f} s = {o.jobs / enqueue_s:,.0f} jobs/s")
    print(f"run:      {o.jobs} jobs from first start to last finish in {span_s:.2f} s = "
          f"{o.jobs / span_s:,.0f} jobs/s (Redis clock)")
    print(f"wall:     {wall_s:.2f} s from launching the workers to the last finish "
          f"(includes process start-up) = {o.jobs / wall_s:,.0f} jobs/s")


if __name__ == "__main__":
    main()
