"""Workflows against plain jobs on a private redis-server (no persistence), W worker processes:

- sequential: one workflow of N no-op steps, each awaited before the next, against N no-op
  jobs enqueued one after another, each once `wait()` saw the previous one done (the chain a
  user writes by hand); total time and Redis CPU per step or job;
- concurrent: M workflows of 3 no-op steps started at once, against 3 x M no-op jobs enqueued
  at once; steps (jobs) per second from the first start to the last end;
- fan-out: one workflow gathering F no-op steps at once, against F jobs enqueued at once.

    python bench/workflows.py [--steps 1000] [--workflows 10000] [--fan 2000] [--workers 2]
                              [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from throughput import _counter, _stop, _until, anoop, pool, redis_cpu_s, spawn_workers

from workpool import WorkflowContext
from workpool.server.embedded import RedisServer

SPEC = "workflows:pool"


@pool.workflow(max_steps=100_000)
async def chain(ctx: WorkflowContext, steps: int) -> int:
    """`steps` no-op steps, one after another."""
    for _ in range(steps):
        await ctx.step(anoop)
    return steps


@pool.workflow()
async def three(ctx: WorkflowContext) -> None:
    """Three no-op steps, one after another."""
    for _ in range(3):
        await ctx.step(anoop)


@pool.workflow(max_steps=100_000)
async def fan(ctx: WorkflowContext, width: int) -> int:
    """`width` no-op steps at once."""
    return len(await asyncio.gather(*(ctx.step(anoop) for _ in range(width))))


def _timed(client: redis.Redis, run: Any) -> tuple[float, float]:
    """(seconds, Redis CPU seconds) that `run()` took."""
    cpu, began = redis_cpu_s(client), time.perf_counter()
    run()
    return time.perf_counter() - began, redis_cpu_s(client) - cpu


def sequential(client: redis.Redis, steps: int) -> None:
    def by_hand() -> None:
        for _ in range(steps):
            pool.wait(pool.enqueue(anoop), timeout=60)

    def as_workflow() -> None:
        pool.wait(pool.start_workflow(chain, steps), timeout=3600)

    for label, run in (("jobs chained by wait()", by_hand), ("one workflow", as_workflow)):
        seconds, cpu = _timed(client, run)
        print(f"  {label:<24}{steps / seconds:>10,.0f} /s{seconds:>9.2f} s"
              f"{cpu / steps * 1e6:>10.1f} us Redis CPU each")


def concurrent(client: redis.Redis, workflows: int) -> float:
    """One round, plain jobs then workflows; the ratio of their rates (steps per job)."""
    def plain() -> None:
        done = _counter("succeeded")
        for first in range(0, 3 * workflows, 5000):
            pool.enqueue_many(anoop, [()] * min(5000, 3 * workflows - first))
        _until(lambda: _counter("succeeded") - done >= 3 * workflows, 3600, "the jobs")

    def flows() -> None:
        for first in range(0, workflows, 1000):
            pipe = pool.redis.pipeline(transaction=True)
            for _ in range(min(1000, workflows - first)):
                pool.start_workflow(three, transaction=pipe)
            pipe.execute()
        _until(lambda: not client.scard(pool.keys.workflows) and
               _counter("workflows_started") >= workflows, 3600, "the workflows")

    rates = []
    for label, run in ((f"{3 * workflows} jobs", plain),
                       (f"{workflows} 3-step workflows", flows)):
        seconds, cpu = _timed(client, run)
        rates.append(3 * workflows / seconds)
        print(f"  {label:<24}{rates[-1]:>10,.0f} steps/s{seconds:>9.2f} s"
              f"{cpu / (3 * workflows) * 1e6:>10.1f} us Redis CPU per step")
    return rates[1] / rates[0]


def fan_out(client: redis.Redis, width: int) -> None:
    def plain() -> None:
        done = _counter("succeeded")
        pool.enqueue_many(anoop, [()] * width)
        _until(lambda: _counter("succeeded") - done >= width, 3600, "the jobs")

    def wide() -> None:
        pool.wait(pool.start_workflow(fan, width), timeout=3600)

    for label, run in ((f"{width} jobs", plain), (f"one workflow of {width}", wide)):
        seconds, cpu = _timed(client, run)
        print(f"  {label:<24}{width / seconds:>10,.0f} steps/s{seconds:>9.2f} s"
              f"{cpu / width * 1e6:>10.1f} us Redis CPU per step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--workflows", type=int, default=10_000)
    p.add_argument("--fan", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-parallelism", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1,
                   help="concurrent rounds back to back (the machine's speed moves)")
    o = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(
            Path(tmp) / "redis", extra_args=["--appendonly", "no"]) as server:
        client = redis.Redis.from_url(server.url)
        pool.use_url(server.url)
        procs = spawn_workers(server.url, o, SPEC, o.workers, "wf")
        try:
            pool.wait(pool.enqueue(anoop), timeout=60)  # the workers are up
            print(f"workflows: {o.workers} workers x {o.concurrency}, redis "
                  f"{client.info('server')['redis_version']}, python "
                  f"{platform.python_version()}, {os.cpu_count()} cpus")
            print(f"sequential, {o.steps} steps")
            sequential(client, o.steps)
            print(f"concurrent, {o.workflows} workflows of 3 steps")
            ratios = [concurrent(client, o.workflows) for _ in range(o.rounds)]
            counters = pool.stats().counters
            print(f"  workflows' steps per job: {', '.join(f'{r:.2f}x' for r in ratios)}; "
                  f"median {statistics.median(ratios):.2f}x; replays "
                  f"{counters.get('replays', 0):,}, sent where kept "
                  f"{counters.get('replays_routed', 0):,}")
            print(f"fan-out, one workflow gathering {o.fan} steps")
            fan_out(client, o.fan)
        finally:
            _stop(procs)
            pool.close()


if __name__ == "__main__":
    main()
