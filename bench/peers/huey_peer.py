"""Huey as a peer: the same no-op job and record as every other adapter (see _common).

Best settings: RedisHuey with blocking=True (its default: workers BRPOP the queue, so the
consumer's polling delay -d/-m/-b never applies), a consumer of --concurrency thread workers
(-k thread -w C; greenlets would need gevent), started through Huey.create_consumer, the
Python API behind huey_consumer (huey.readthedocs.io consumer.html, api.html), logging left
unconfigured (no per-task INFO lines). Huey has no bulk enqueue: the "enqueue" command uses
TaskWrapper.map, one LPUSH round trip per job on one connection. Other settings: defaults.
"""

from __future__ import annotations

from typing import Any

from _common import POOL_NAME, options, paced, record, timed
from huey import RedisHuey

_url = ""


def noop(sent_ms: float) -> None:
    record(_url, sent_ms)


def main() -> None:
    global _url  # noqa: PLW0603 - the job's client connects here
    o = options()
    _url = o.url
    huey = RedisHuey(POOL_NAME, url=o.url)
    task: Any = huey.task(name="noop")(noop)
    if o.command == "worker":
        huey.create_consumer(workers=o.concurrency, worker_type="thread").run()
    elif o.command == "enqueue":
        timed(o.n, "map (one LPUSH per job)", lambda: task.map([(0.0,)] * o.n))
    elif o.command == "enqueue-one":
        def one_by_one() -> None:
            for _ in range(o.n):
                task(0.0)
        timed(o.n, "task call", one_by_one)
    else:
        paced(o.url, o.n, o.rate, task)


if __name__ == "__main__":
    main()
