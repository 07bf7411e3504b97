"""RQ as a peer: the same no-op job and record as every other adapter (see _common).

Best settings: SimpleWorker (runs jobs in-process, no fork per job; RQ's docs/benchmark.md,
https://github.com/rq/rq/blob/master/docs/benchmark.md, measure it ~6x faster than Worker for
tiny jobs), logging at WARNING (no per-job log lines). An RQ worker runs one job at a time and
has no concurrency knob, so --concurrency is ignored. It waits on the queue with a blocking pop
(no poll interval to tune). Bulk enqueue: Queue.enqueue_many (one pipeline per chunk of 5,000;
python-rq.org/docs "Bulk Job Enqueueing"). Other settings are RQ's defaults.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from _common import POOL_NAME, options, paced, record, timed
from rq import Queue, SimpleWorker

JOB = "rq_peer.noop"  # by import path: RQ's worker imports this module to run the job
CHUNK = 5000


def noop(sent_ms: float) -> None:
    record(os.environ["BENCH_URL"], sent_ms)


def main() -> None:
    o = options()
    os.environ["BENCH_URL"] = o.url  # the job's client, in the module RQ imports by name
    queue = Queue(POOL_NAME, connection=redis.Redis.from_url(o.url))
    if o.command == "worker":
        SimpleWorker([queue], connection=queue.connection).work(logging_level="WARNING")
    elif o.command == "enqueue":
        def bulk() -> None:
            for first in range(0, o.n, CHUNK):
                queue.enqueue_many([Queue.prepare_data(JOB, (0.0,))
                                    for _ in range(min(CHUNK, o.n - first))])
        timed(o.n, f"enqueue_many x{CHUNK}", bulk)
    elif o.command == "enqueue-one":
        def one_by_one() -> None:
            for _ in range(o.n):
                queue.enqueue(JOB, 0.0)
        timed(o.n, "enqueue", one_by_one)
    else:
        def send(sent_ms: float) -> Any:
            return queue.enqueue(JOB, sent_ms)
        paced(o.url, o.n, o.rate, send)


if __name__ == "__main__":
    main()
