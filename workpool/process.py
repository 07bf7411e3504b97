"""One process of a pool, composed from the actors: a worker that also stands as a main-loop
candidate (the usual deployment: every worker process may lead), or a worker alone. The CLI,
the demo and embedding programs build workers here; the actors never import each other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from workpool.core.config import HasConfig, PoolConfig, config_of
from workpool.mainloop.loop import MainLoop
from workpool.worker.supervisor import Worker


def worker(pool: PoolConfig | HasConfig, *, main_loop: bool = True,
           **options: Any) -> Worker | Shards:
    """A Worker for `pool` (options as Worker's); with `main_loop` it also competes for the
    pool's main-loop lease under its own id, and stops if that loop stops. A sharded pool's:
    one such Worker per shard, run together (Shards)."""
    config = config_of(pool)
    if config.shards > 1:
        return Shards([_worker(c, main_loop, options) for c in config.shard_configs()])
    return _worker(config, main_loop, options)


def _worker(config: PoolConfig, main_loop: bool, options: dict[str, Any]) -> Worker:
    async def lead(owner: str, stop: asyncio.Event) -> None:
        await MainLoop(config, owner=owner).run(stop)

    return Worker(config, alongside=lead if main_loop else None, **options)


def main_loops(pool: PoolConfig | HasConfig,
               ) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """What runs the pool's main loop alone (`workpool loop`): a sharded pool's, one per
    shard, each a lease of its own; until the stop event is set."""
    configs = config_of(pool).shard_configs()

    async def run(stop: asyncio.Event) -> None:
        await asyncio.gather(*(MainLoop(c).run(stop) for c in configs))

    return run


class Shards:
    """The workers of every shard of a sharded pool in one process (each with its own
    main-loop candidate, heartbeat and reader, up to `concurrency` jobs a shard): one that
    stops, asked or failed, stops the others."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.id = workers[0].id
        self.config = workers[0].config

    async def run(self, stop: asyncio.Event) -> None:
        """Run every shard's worker until `stop` is set or one of them stops; raise the first
        failure."""
        inner = asyncio.Event()
        runs = [asyncio.create_task(w.run(inner), name=f"shard {w.config.shard}")
                for w in self.workers]
        asked = asyncio.create_task(stop.wait())
        await asyncio.wait([*runs, asked], return_when=asyncio.FIRST_COMPLETED)
        inner.set()
        asked.cancel()
        for outcome in await asyncio.gather(*runs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
