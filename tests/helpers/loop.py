"""A main loop alone (no Worker) on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workpool import Workpool
from workpool.mainloop.loop import MainLoop


@contextmanager
def main_loop(pool: Workpool, owner: str | None = None,
              reap_interval: float | None = None) -> Iterator[MainLoop]:
    """A MainLoop for `pool` alone (no Worker) on its own event loop in a background thread;
    stopped (its lease released) when the block ends."""
    loop = MainLoop(pool, owner=owner, reap_interval=reap_interval)
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        held["events"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await loop.run(held["stop"])

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread below
            held["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"main-loop-{pool.name}", daemon=True)
    thread.start()
    assert ready.wait(10), "the main loop did not start"
    try:
        yield loop
    finally:
        if "stop" in held and thread.is_alive():
            held["events"].call_soon_threadsafe(held["stop"].set)
        thread.join(15)
        assert not thread.is_alive(), "the main loop did not stop within 15 s"
        if "error" in held:
            raise held["error"]
