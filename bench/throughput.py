"""Throughput of no-op jobs on a private redis-server: enqueue rates, end-to-end rates with W
worker processes, and the main loop's transitions per second on its own.

- enqueue: one `enqueue` call per job (beside a bare redis-py XADD of the same entry, in
  alternating rounds), and `enqueue_many` in chunks (one round trip each);
- end to end: N jobs pre-loaded, then W worker processes (W = 1, 2, 4 by default, each also a
  main-loop candidate); the rate is N over the span from the first start to the last finish,
  read from the job hashes (Redis clock), so process start-up is not counted;
- main loop alone: N jobs pre-loaded, a standalone `workpool loop` process with no worker
  ingests and starts them all (max_parallelism N), then N outcomes are appended at once as a
  worker would and the loop applies them: transitions per second for each step.

    python bench/throughput.py [--jobs 20000] [--workers 1,2,4] [--concurrency 64]
                               [--max-parallelism 256] [--chunk 5000] [--aof]
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
from collections.abc import Callable
from pathlib import Path
from typing import cast

import redis

from workpool import Workpool
from workpool.server.embedded import RedisServer
from workpool.wire.protocol import encode, text

BENCH_DIR = Path(__file__).resolve().parent
MAXP_ENV = "BENCH_MAX_PARALLELISM"  # the workers import this module: the limit travels by env
pool = Workpool("bench", max_parallelism=int(os.environ.get(MAXP_ENV, "256")), retention=3600.0)


@pool.job()
def noop() -> None:
    """Does nothing (runs in the worker's thread pool)."""


@pool.job()
async def anoop() -> None:
    """Does nothing (runs on the worker's event loop)."""


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--single", type=int, default=5000, help="jobs enqueued one call each")
    p.add_argument("--workers", default="1,2,4", help="worker process counts to run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-parallelism", type=int, default=256)
    p.add_argument("--chunk", type=int, default=5000, help="jobs per enqueue_many call")
    p.add_argument("--kind", choices=["sync", "async"], default="async")
    p.add_argument("--aof", action="store_true", help="appendonly yes, appendfsync everysec")
    p.add_argument("--redis-url", default=None, help="use this server (for bench/limit.py)")
    p.add_argument("--quiet", action="store_true", help="no table (bench/limit.py)")
    p.add_argument("--timeout", type=float, default=600.0)
    return p.parse_args(argv)


def _until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            msg = f"{what} not reached within {timeout} s: {pool.stats().counters}"
            raise TimeoutError(msg)
        time.sleep(0.02)  # polling the stats counters


def _counter(name: str) -> int:
    return int(pool.redis.hget(pool.keys.stats, name) or 0)


def redis_cpu_s(client: redis.Redis) -> float:
    """The Redis server's CPU time so far (user + system, seconds): per-job cost figures that
    the machine's noise barely moves."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def enqueue_rates(o: argparse.Namespace, job: str) -> tuple[float, float, float]:
    """(jobs/s one call each, bare XADDs/s of the same entry from the same client, jobs/s with
    enqueue_many) on an empty pool; the one-at-a-time pair in alternating rounds of 500, so
    the machine's noise falls on both alike."""
    pool.redis.flushall()
    (fields,) = pool.build_entries(job, [()])
    spent = {"enqueue": 0.0, "xadd": 0.0}
    for first in range(0, o.single, 500):
        n = min(500, o.single - first)
        began = time.perf_counter()
        for _ in range(n):
            pool.enqueue(job)
        spent["enqueue"] += time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(n):
            pool.redis.xadd("bench:bare", fields)  # type: ignore[arg-type]
        spent["xadd"] += time.perf_counter() - began
    pool.redis.flushall()
    return (o.single / spent["enqueue"], o.single / spent["xadd"],
            o.jobs / preload(job, o.jobs, o.chunk))


def preload(job: str, jobs: int, chunk: int) -> float:
    """Enqueue `jobs` jobs with enqueue_many; returns the seconds it took."""
    began = time.perf_counter()
    for first in range(0, jobs, chunk):
        pool.enqueue_many(job, [()] * min(chunk, jobs - first))
    return time.perf_counter() - began


def _spawn(url: str, o: argparse.Namespace, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, MAXP_ENV: str(o.max_parallelism),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "workpool", "--redis-url", url,
                             "--log-level", "WARNING", *args], env=env)


def spawn_workers(url: str, o: argparse.Namespace, spec: str, count: int,
                  label: str) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes of pool `spec`, named `<label>-<i>`."""
    return [_spawn(url, o, "worker", spec, "--concurrency", str(o.concurrency), "--worker-id",
                   f"{label}-{i}") for i in range(count)]


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


def _span_s() -> float:
    """Seconds from the first start to the last finish over every job (Redis clock)."""
    first, last = 2**63, 0
    for keys in _job_keys():
        pipe = pool.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "started_at", "finished_at")
        for started_at, finished_at in pipe.execute():
            first, last = min(first, int(started_at)), max(last, int(finished_at))
    return (last - first) / 1000


def _job_keys() -> list[list[bytes]]:
    keys = list(pool.redis.scan_iter(match=pool.keys.job("*"), count=5000))
    return [keys[i:i + 2000] for i in range(0, len(keys), 2000)]


def run_workers(url: str, o: argparse.Namespace, job: str, workers: int) -> None:
    """Pre-load N jobs and run them with `workers` worker processes."""
    pool.redis.flushall()
    preload(job, o.jobs, o.chunk)
    procs = spawn_workers(url, o, "throughput:pool", workers, "bench")
    try:
        _until(lambda: _counter("succeeded") >= o.jobs, o.timeout, "all jobs done")
    finally:
        _stop(procs)


def end_to_end(url: str, o: argparse.Namespace, job: str, workers: int) -> float:
    """Jobs/s with `workers` worker processes on a pre-loaded backlog."""
    run_workers(url, o, job, workers)
    rate: float = o.jobs / _span_s()
    return rate


def main_loop_alone(url: str, o: argparse.Namespace, job: str) -> tuple[float, float, float]:
    """(ingest, start, apply) transitions/s of a standalone main loop with no worker."""
    pool.redis.flushall()
    pool.configure(max_parallelism=o.jobs, paused=True)  # ingest everything first
    preload(job, o.jobs, o.chunk)
    loop = _spawn(url, o, "loop", "throughput:pool")
    try:
        _until(lambda: _counter("enqueued") > 0, o.timeout, "the loop is up")
        began = time.perf_counter()
        _until(lambda: _counter("enqueued") >= o.jobs, o.timeout, "all ingested")
        ingested = time.perf_counter()
        pool.configure(paused=False)
        _until(lambda: _counter("started") >= o.jobs, o.timeout, "all started")
        started = time.perf_counter()
        outcomes = _fake_outcomes()
        applied_from = time.perf_counter()
        pipe = pool.redis.pipeline(transaction=False)
        for fields in outcomes:
            pipe.xadd(pool.keys.pending_completion, fields)  # type: ignore[arg-type]
        pipe.execute()
        _until(lambda: _counter("succeeded") >= o.jobs, o.timeout, "all applied")
        applied = time.perf_counter()
    finally:
        _stop([loop])
    return (o.jobs / (ingested - began), o.jobs / (started - ingested),
            o.jobs / (applied - applied_from))


def _fake_outcomes() -> list[dict[str, str | bytes]]:
    """What a worker would append for every started attempt (read from the dispatch stream)."""
    nil = encode(None, "msgpack")
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", pool.redis.xrange(pool.keys.dispatch))
    return [{"kind": "run", "id": text(f[b"id"]), "attempt": text(f[b"attempt"]), "ok": "1",
             "result": nil} for _, f in entries]


def main(argv: list[str] | None = None) -> None:
    """Run every measurement once and print the figures with their settings."""
    o = options(argv)
    job = "noop" if o.kind == "sync" else "anoop"
    extra = [] if o.aof else ["--appendonly", "no"]
    with tempfile.TemporaryDirectory() as tmp:
        server = None if o.redis_url else RedisServer.start(Path(tmp), extra_args=extra)
        url = o.redis_url or server.url  # type: ignore[union-attr]
        pool.use_url(url)
        try:
            if o.quiet:  # no figures, so no reads of the job hashes (bench/limit.py counts)
                run_workers(url, o, job, 2)
                return
            single, bare, batched = enqueue_rates(o, job)
            runs = {w: end_to_end(url, o, job, w) for w in map(int, o.workers.split(","))}
            ingest, start, apply_ = main_loop_alone(url, o, job)
            version = pool.redis.info("server")["redis_version"]
        finally:
            pool.close()
            if server is not None:
                server.stop()
    print(f"throughput: jobs={o.jobs} kind={o.kind} ({job}) chunk={o.chunk} "
          f"concurrency={o.concurrency}/worker max_parallelism={o.max_parallelism} "
          f"redis={version} persistence={'aof everysec' if o.aof else 'none'} "
          f"python={platform.python_version()} cpus={os.cpu_count()} {platform.machine()}")
    print(f"enqueue one call each   {single:>10,.0f} jobs/s ({o.single} jobs); a bare XADD of "
          f"the same entry {bare:,.0f}/s (ratio {bare / single:.2f})")
    print(f"enqueue_many x{o.chunk:<9}{batched:>10,.0f} jobs/s")
    for w, rate in runs.items():
        print(f"end to end, {w} worker{'s' if w > 1 else ' '}   {rate:>10,.0f} jobs/s")
    print(f"main loop alone: ingest {ingest:,.0f}/s, start {start:,.0f}/s, "
          f"apply outcomes {apply_:,.0f}/s transitions")


if __name__ == "__main__":
    main()
