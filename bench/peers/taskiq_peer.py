"""Taskiq (+ taskiq-redis) as a peer: the same no-op job and record as every adapter (see _common).

Broker: RedisStreamBroker, taskiq-redis's only broker with acknowledgements (ListQueueBroker and
PubSubBroker have none: https://github.com/taskiq-python/taskiq-redis README); XREADGROUP blocks,
so a job wakes an idle worker at once, xread_count 100 (its default; 10 and 500 ran slower),
XACK after the job (--ack-type when_saved, the default; no result backend), consumer_id "0" so
the group also reads jobs enqueued before a worker started. No bulk API: `.kiq` in a loop.
Worker: what `taskiq worker --workers 1` runs in its child (start_listen), in the foreground,
with --max-async-tasks = --concurrency and --log-level WARNING (INFO logs a line per job).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from _common import arecord, asend_all, options
from taskiq.cli.worker.args import WorkerArgs
from taskiq.cli.worker.run import start_listen
from taskiq_redis import RedisStreamBroker

XREAD_COUNT = 100
_url = ""


async def noop(sent_ms: float) -> None:
    await arecord(_url, sent_ms)


def make_broker() -> tuple[Any, Any]:
    """The broker and the registered `noop` task."""
    broker = RedisStreamBroker(_url, consumer_id="0", xread_count=XREAD_COUNT)
    return broker, broker.register_task(noop, task_name="noop")


def work(concurrency: int) -> None:
    """One worker in the foreground; start_listen's SIGTERM/SIGINT handler stops it."""
    # the broker argument is required by the CLI parser; the instance replaces it below
    args: Any = WorkerArgs.from_cli(["taskiq_peer:broker", "--max-async-tasks", str(concurrency),
                                     "--log-level", "WARNING"])
    logging.basicConfig(level=args.log_level, format=args.log_format)  # as the CLI's parent does
    args.broker, _ = make_broker()
    start_listen(args)


async def _client_command(command: str, n: int, rate: float) -> None:
    broker, task = make_broker()
    await broker.startup()

    async def send(sent_ms: float) -> None:
        await task.kiq(sent_ms)

    try:
        await asend_all(command, _url, n, rate, api="kiq loop (no bulk API)", send=send)
    finally:
        await broker.shutdown()


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
