"""A worker's heartbeat: a thread of its own keeps `hb:<worker>` alive (PX ttl, every ttl/3),
even while jobs hog the event loop. It survives whatever Redis answers (an outage, OOM, BUSY,
READONLY, MISCONF): it logs, tries again soon (a short outage must not outlast the key's TTL)
and beats on. It also notes when it could not beat for long, which the worker's own fencing
needs."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from workpool.core.failures import describe, error_type
from workpool.server.backoff import Backoff
from workpool.server.connection import sync_client


class Heartbeat:
    """The thread that keeps one worker's heartbeat key alive."""

    def __init__(self, url: str, key: str, ttl: float, value: Callable[[], str], log: Any, *,
                 lapsed: Callable[[], object], ended: Callable[[], object]) -> None:
        self.url, self.key, self.ttl, self.value, self.log = url, key, ttl, value, log
        self._lapsed, self._ended = lapsed, ended
        self.beat_at = time.monotonic()  #: when the key was last written
        self.resumed_at = -math.inf  #: the first beat after a gap of over half a TTL
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workpool-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat from now on, in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the key then expires, unless the worker deletes it)."""
        self._stop.set()
        self._thread.join()

    def beaten(self) -> None:
        """The key was just written (by the thread, or once by the worker at its start)."""
        previous, self.beat_at = self.beat_at, time.monotonic()
        gap = self.beat_at - previous
        if gap > self.ttl / 2:
            self.resumed_at = self.beat_at  # stalled (paused, or Redis away) until now
        if gap > self.ttl:
            self._lapsed()  # we may have been reaped meanwhile

    def _run(self) -> None:
        ttl_ms, interval = round(self.ttl * 1000), self.ttl / 3
        backoff = Backoff(0.05, interval)
        client = sync_client(self.url, socket_timeout=max(1.0, self.ttl / 3))
        try:
            while not self._stop.is_set():
                try:
                    client.set(self.key, self.value(), px=ttl_ms)
                    self.beaten()
                    backoff.reset()
                    delay = interval
                except Exception as exc:  # any refusal: back off and beat again
                    self.log.warning("heartbeat failed, retrying", error_type=error_type(exc),
                                     error=describe(exc, with_traceback=False))
                    delay = backoff.next()
                self._stop.wait(delay)
        finally:
            client.close()
            self._ended()
