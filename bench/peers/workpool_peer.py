"""workpool as a peer: the same no-op job and record as every other adapter (see _common).

Best settings: async job on the worker's event loop, max_parallelism 256 (no admission limit
in the way), enqueue_many in chunks of 5,000, logs as `workpool worker` writes them (INFO).
With BENCH_JOB_KIND=sync (bench/peers.py's `workpool-sync`) the job is a plain function, run on
the worker's threads, as most Python job code is.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from _common import POOL_NAME, arecord, options, paced, record, timed

from workpool import Workpool
from workpool.core.logs import configure_logging
from workpool.process import worker

pool = Workpool(POOL_NAME, os.environ.get("BENCH_URL"), max_parallelism=256, retention=600.0)
CHUNK = 5000


if os.environ.get("BENCH_JOB_KIND") == "sync":
    @pool.job(name="noop")
    def noop(sent_ms: float) -> None:
        record(pool.url, sent_ms)
else:
    @pool.job(name="noop")
    async def noop(sent_ms: float) -> None:  # type: ignore[misc]
        await arecord(pool.url, sent_ms)


async def _work(concurrency: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker(pool, concurrency=concurrency).run(stop)


def main() -> None:
    o = options()
    pool.use_url(o.url)
    if o.command == "worker":
        configure_logging("console", "INFO")  # what the `workpool worker` command does
        asyncio.run(_work(o.concurrency))
    elif o.command == "enqueue":
        def bulk() -> None:
            for first in range(0, o.n, CHUNK):
                pool.enqueue_many(noop, [(0.0,)] * min(CHUNK, o.n - first))
        timed(o.n, f"enqueue_many x{CHUNK}", bulk)
    elif o.command == "enqueue-one":
        def one_by_one() -> None:
            for _ in range(o.n):
                pool.enqueue(noop, 0.0)
        timed(o.n, "enqueue", one_by_one)
    else:
        def send(sent_ms: float) -> Any:
            return pool.enqueue(noop, sent_ms)
        paced(o.url, o.n, o.rate, send)


if __name__ == "__main__":
    main()
