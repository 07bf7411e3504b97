"""What every peer adapter shares: the command line, the job's completion record (one
pipelined round trip, the same for every queue), pacing for the latency runs, and JSON output.

An adapter is `python bench/peers/<name>_peer.py COMMAND --url URL ...`, run in the peers'
virtualenv (bench/peers.py makes it). Commands:
  enqueue   --n N             enqueue N no-op jobs with the queue's fastest bulk API
  enqueue-one --n N           enqueue N no-op jobs one call each
  paced     --n N --rate R    enqueue N jobs, R per second (0: each after the previous ran)
  worker    --concurrency C   run one worker process in the foreground until SIGTERM/SIGINT
Each enqueue command prints one JSON line: {"n": N, "seconds": S, "api": "..."}.
Every job is `noop(sent_ms)`; it records `INCR bench:done` and `RPUSH bench:lat
"<sent_ms>:<start_ms>"` in one pipeline, so the driver reads completions and latencies alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

DONE, LAT = "bench:done", "bench:lat"
POOL_NAME = "bench"


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["enqueue", "enqueue-one", "paced", "worker"])
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=32)
    return p.parse_args()


def now_ms() -> float:
    return time.time() * 1000


_sync: dict[str, redis.Redis] = {}
_async: dict[str, redis.asyncio.Redis] = {}


def record(url: str, sent_ms: float) -> None:
    """The job's body: one pipelined round trip that says it ran, and when (one client per
    process and URL, made on first use)."""
    client = _sync.get(url) or _sync.setdefault(url, redis.Redis.from_url(url))
    pipe = client.pipeline(transaction=False)
    pipe.incr(DONE)
    pipe.rpush(LAT, f"{sent_ms}:{now_ms():.3f}")
    pipe.execute()


async def arecord(url: str, sent_ms: float) -> None:
    """`record` for jobs that run on an event loop."""
    client = _async.get(url) or _async.setdefault(url, redis.asyncio.Redis.from_url(url))
    pipe = client.pipeline(transaction=False)
    pipe.incr(DONE)
    pipe.rpush(LAT, f"{sent_ms}:{now_ms():.3f}")
    await pipe.execute()


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def timed(n: int, api: str, run: Callable[[], None]) -> None:
    began = time.perf_counter()
    run()
    emit(n=n, seconds=time.perf_counter() - began, api=api)


async def atimed(n: int, api: str, run: Callable[[], Awaitable[None]]) -> None:
    began = time.perf_counter()
    await run()
    emit(n=n, seconds=time.perf_counter() - began, api=api)


def _wait_done(client: redis.Redis, target: int) -> None:
    while int(client.get(DONE) or 0) < target:
        time.sleep(0.0002)  # polling the completion counter: the latency run's own clock


def paced(url: str, n: int, rate: float, enqueue_one: Callable[[float], None]) -> None:
    """Enqueue n jobs at `rate` per second, or (rate 0) each once the previous one ran."""
    client = redis.Redis.from_url(url)
    base = int(client.get(DONE) or 0)
    began = time.perf_counter()
    for i in range(n):
        if rate:
            time.sleep(max(0.0, began + i / rate - time.perf_counter()))  # the schedule
        enqueue_one(now_ms())
        if not rate:
            _wait_done(client, base + i + 1)
    emit(n=n, seconds=time.perf_counter() - began, api="paced")


async def asend_all(command: str, url: str, n: int, rate: float, *, api: str,
                    send: Callable[[float], Awaitable[None]]) -> None:
    """`paced`, or `enqueue`/`enqueue-one` as n single sends timed, for queues whose client is
    async (and that have no bulk API: `api` says so)."""
    if command == "paced":
        await apaced(url, n, rate, send)
        return

    async def loop() -> None:
        for _ in range(n):
            await send(0.0)

    await atimed(n, api, loop)


async def apaced(url: str, n: int, rate: float,
                 enqueue_one: Callable[[float], Awaitable[None]]) -> None:
    """`paced` for queues whose client is async."""
    client = redis.Redis.from_url(url)
    base = int(client.get(DONE) or 0)
    began = time.perf_counter()
    for i in range(n):
        if rate:
            await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
        await enqueue_one(now_ms())
        if not rate:
            while int(client.get(DONE) or 0) < base + i + 1:
                await asyncio.sleep(0.0002)
    emit(n=n, seconds=time.perf_counter() - began, api="paced")
