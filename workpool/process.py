"""One process of a pool, composed from the actors: a worker that also stands as a main-loop
candidate (the usual deployment: every worker process may lead), or a worker alone. The CLI,
the demo and embedding programs build workers here; the actors never import each other."""

from __future__ import annotations

import asyncio
from typing import Any

from workpool.core.config import HasConfig, PoolConfig, config_of
from workpool.mainloop.loop import MainLoop
from workpool.worker.supervisor import Worker


def worker(pool: PoolConfig | HasConfig, *, main_loop: bool = True, **options: Any) -> Worker:
    """A Worker for `pool` (options as Worker's); with `main_loop` it also competes for the
    pool's main-loop lease under its own id, and stops if that loop stops."""
    config = config_of(pool)

    async def lead(owner: str, stop: asyncio.Event) -> None:
        await MainLoop(config, owner=owner).run(stop)

    return Worker(config, alongside=lead if main_loop else None, **options)
