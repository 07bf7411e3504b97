"""SAQ as a peer: the same no-op job and record as every other adapter (see _common).

SAQ has no enqueue-only bulk API (`Queue.map` waits for results): `enqueue` awaits
`Queue.enqueue` in a loop on one connection. Worker (saq.Worker, as `saq` the CLI builds it):
concurrency = --concurrency asyncio tasks, each blocked in BLMOVE on the queue list;
dequeue_timeout 0 (its default: BLMOVE's "0 blocks indefinitely", so a job wakes a worker at
once and an idle one never polls); jobs keep their defaults (ttl 600 s, timeout 10 s). Settings
from the Worker docstring, https://saq-py.readthedocs.io/en/latest/saq.html#saq.worker.Worker
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import arecord, asend_all, options
from saq import Queue, Worker

DEQUEUE_TIMEOUT = 0.0
_url = ""


async def noop(ctx: Any, *, sent_ms: float) -> None:
    await arecord(_url, sent_ms)


async def _work(concurrency: int) -> None:
    """One worker in the foreground; SAQ's own SIGTERM/SIGINT handlers stop it."""
    queue: Any = Queue.from_url(_url)
    worker: Any = Worker(queue, functions=[noop], concurrency=concurrency,
                         dequeue_timeout=DEQUEUE_TIMEOUT)
    await queue.connect()
    try:
        await worker.start()
    finally:
        await queue.disconnect()


async def _client_command(command: str, n: int, rate: float) -> None:
    queue: Any = Queue.from_url(_url)
    await queue.connect()

    async def send(sent_ms: float) -> None:
        await queue.enqueue("noop", sent_ms=sent_ms)

    try:
        await asend_all(command, _url, n, rate, api="enqueue loop (no bulk API)", send=send)
    finally:
        await queue.disconnect()


def main() -> None:
    global _url  # noqa: PLW0603 - the job's client is made from it in the worker process
    o = options()
    _url = o.url
    if o.command == "worker":
        asyncio.run(_work(o.concurrency))
    else:
        asyncio.run(_client_command(o.command, o.n, o.rate))


if __name__ == "__main__":
    main()
