"""Dramatiq as a peer: the same no-op job and record as every other adapter (see _common).

Best settings: RedisBroker with its default middleware; one dramatiq.Worker per process (the
Python API the `dramatiq` CLI runs in each of its processes), worker_threads=--concurrency,
worker_timeout=5 ms (default 1000; dramatiq.io/reference.html, Worker and env
dramatiq_worker_timeout): an idle consumer polls Redis with a backoff from 5 ms up to this cap,
so 5 ms is its smallest poll interval. Default prefetch (2 x threads). Dramatiq has no bulk
enqueue: "enqueue" is a loop of Actor.send, one Lua-script round trip per message.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import dramatiq
from _common import options, paced, record, timed
from dramatiq.brokers.redis import RedisBroker

WORKER_TIMEOUT_MS = 5  # = compute_backoff's floor (factor 5 ms): the smallest useful cap
_url = ""


def noop(sent_ms: float) -> None:
    record(_url, sent_ms)


def _work(broker: Any, concurrency: int) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=concurrency,
                             worker_timeout=WORKER_TIMEOUT_MS)
    worker.start()
    stop.wait()
    worker.stop()


def main() -> None:
    global _url  # noqa: PLW0603 - the job's client connects here
    o = options()
    _url = o.url
    broker = RedisBroker(url=o.url)
    actor: Any = dramatiq.actor(noop, actor_name="noop", broker=broker)
    if o.command == "worker":
        _work(broker, o.concurrency)
    elif o.command in ("enqueue", "enqueue-one"):
        def one_by_one() -> None:
            for _ in range(o.n):
                actor.send(0.0)
        timed(o.n, "send loop (no bulk API)" if o.command == "enqueue" else "send", one_by_one)
    else:
        paced(o.url, o.n, o.rate, actor.send)


if __name__ == "__main__":
    main()
