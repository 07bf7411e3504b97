"""BullMQ's Python package as a peer: the same no-op job and record as every adapter (_common).

Bulk enqueue with Queue.addBulk (one MULTI pipeline per call; "reduces Redis round-trips":
docs.bullmq.io/guide/queues/adding-bulks) in chunks of 5,000; async Worker with `concurrency`
(docs.bullmq.io/guide/workers/concurrency); removeOnComplete (docs.bullmq.io/guide/going-to-
production; the Python Queue applies defaultJobOptions to addBulk only, so both calls pass it).
drainDelay stays at its default: an added job wakes the worker's BZPOPMIN on the marker key at
once, so it bounds only the idle block, not latency. The Python worker does not prefetch.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from _common import apaced, arecord, atimed, options
from bullmq import Queue, Worker

QUEUE = "bench"
CHUNK = 5000
JOB_OPTS = {"removeOnComplete": True}
_url = ""


async def noop(job: Any, token: str) -> None:
    """The processor: BullMQ hands it the job, whose data carries sent_ms."""
    await arecord(_url, job.data["sent_ms"])


async def _work(concurrency: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(QUEUE, noop, {"connection": _url, "concurrency": concurrency})
    await stop.wait()
    await worker.close()


async def _enqueue(command: str, n: int, rate: float) -> None:
    queue = Queue(QUEUE, {"connection": _url})
    try:
        if command == "enqueue":
            async def bulk() -> None:
                for first in range(0, n, CHUNK):
                    jobs = [{"name": "noop", "data": {"sent_ms": 0.0}, "opts": JOB_OPTS}
                            for _ in range(min(CHUNK, n - first))]
                    await queue.addBulk(jobs)
            await atimed(n, f"addBulk x{CHUNK}", bulk)
        elif command == "enqueue-one":
            async def one_by_one() -> None:
                for _ in range(n):
                    await queue.add("noop", {"sent_ms": 0.0}, JOB_OPTS)
            await atimed(n, "add", one_by_one)
        else:
            async def send(sent_ms: float) -> None:
                await queue.add("noop", {"sent_ms": sent_ms}, JOB_OPTS)
            await apaced(_url, n, rate, send)
    finally:
        await queue.close()


def main() -> None:
    global _url  # noqa: PLW0603 - the job's client connects here
    o = options()
    _url = o.url
    if o.command == "worker":
        asyncio.run(_work(o.concurrency))
    else:
        asyncio.run(_enqueue(o.command, o.n, o.rate))


if __name__ == "__main__":
    main()
