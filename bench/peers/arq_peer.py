"""arq as a peer: the same no-op job and record as every other adapter (see _common).

arq has no bulk enqueue: `enqueue` awaits `ArqRedis.enqueue_job` in a loop on one connection.
Worker (arq.worker.Worker, as the `arq` CLI builds it): max_jobs = --concurrency asyncio tasks;
poll_delay 1 ms (default 0.5 s): arq polls its queue's sorted set, it has no blocking pop, so
this bounds start latency; 0 makes an idle worker spin (~60% of a core, lower throughput here),
1 ms costs ~12% of a core per idle worker. keep_result 0 (results are never read; "if 0 the
result is not kept"), log_results off. Worker docstring: https://arq-docs.helpmanual.io/
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import arecord, asend_all, options
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func

POLL_DELAY = 0.001
_url = ""


async def noop(ctx: dict[str, Any], sent_ms: float) -> None:
    await arecord(_url, sent_ms)


def work(concurrency: int) -> None:
    """One worker in the foreground; arq's own SIGTERM/SIGINT handlers stop it."""
    Worker(functions=[func(noop, name="noop")], redis_settings=RedisSettings.from_dsn(_url),
           max_jobs=concurrency, poll_delay=POLL_DELAY, keep_result=0, log_results=False).run()


async def _client_command(command: str, n: int, rate: float) -> None:
    pool: Any = await create_pool(RedisSettings.from_dsn(_url))

    async def send(sent_ms: float) -> None:
        await pool.enqueue_job("noop", sent_ms)

    try:
        await asend_all(command, _url, n, rate, api="enqueue_job loop (no bulk API)", send=send)
    finally:
        await pool.aclose()


def main() -> None:
    global _url  # noqa: PLW0603 - the job's client is made from it in the worker process
    o = options()
    _url = o.url
    if o.command == "worker":
        work(o.concurrency)
    else:
        asyncio.run(_client_command(o.command, o.n, o.rate))


if __name__ == "__main__":
    main()
