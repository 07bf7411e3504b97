"""Celery with its Redis broker as a peer: the same no-op job and record as every adapter (_common).

No bulk enqueue API: `apply_async` in a loop on one acquired producer (one connection).
Worker: solo pool ("blocking, inline, fast"; gevent/eventlet need extra installs; measured here
~0.6 ms worker CPU per job against ~0.7 for threads x32 and ~1.1 for prefork x32, same wall rate),
so --concurrency is 1; worker_prefetch_multiplier 128 ("many short-running tasks ... Say 64, or
128": docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits), early ack (default),
no result backend (ignore_result), rate limits off, no gossip/mingle/heartbeat chatter.
"""

from __future__ import annotations

import os
from typing import Any

from _common import options, paced, record, timed
from celery import Celery

PREFETCH = 128  # per concurrency slot; the solo pool has one

app = Celery("bench", broker=os.environ.get("BENCH_URL"))
app.conf.update(
    worker_prefetch_multiplier=PREFETCH,
    task_ignore_result=True,
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def noop(sent_ms: float) -> None:
    record(app.conf.broker_url, sent_ms)


task: Any = app.task(name="noop", ignore_result=True)(noop)  # registered without a decorator


def main() -> None:
    o = options()
    app.conf.broker_url = o.url
    if o.command == "worker":
        app.worker_main(["worker", "--pool=solo", "--concurrency=1",
                         "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                         "--without-heartbeat"])
    elif o.command == "enqueue":
        def bulk() -> None:
            with app.producer_or_acquire() as producer:
                for _ in range(o.n):
                    task.apply_async((0.0,), producer=producer)
        timed(o.n, "apply_async loop, one producer (no bulk API)", bulk)
    elif o.command == "enqueue-one":
        def one_by_one() -> None:
            for _ in range(o.n):
                task.delay(0.0)
        timed(o.n, "delay", one_by_one)
    else:
        def send(sent_ms: float) -> Any:
            return task.delay(sent_ms)
        paced(o.url, o.n, o.rate, send)


if __name__ == "__main__":
    main()
