"""What `pool.testing` offers (workpool/testing/ implements it, the pytest plugin attaches it):
described here, so the client's face can name it without importing the composer that runs a
main loop and a worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workpool.types import JobStatus


@dataclass(frozen=True)
class Enqueued:
    """A job enqueued and not started yet, as `pool.testing.enqueued()` reads it."""

    id: str
    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


class TestingKit(Protocol):
    """A pool's testing kit: the real engine, run on demand, with a clock that can jump."""

    def run_until_idle(self, timeout: float = 10.0) -> list[JobStatus]:
        """Run the pool's main loop and a worker in this process until nothing is left to do
        now; the jobs that ended meanwhile, oldest first."""

    def advance(self, seconds: float) -> None:
        """Move the pool's clock on: backoffs, run_after, cron ticks and workflow sleeps
        that much later come due at once."""

    def enqueued(self, name: str | None = None) -> list[Enqueued]:
        """The jobs enqueued and not started yet (of job `name`), oldest first."""

    def assert_enqueued(self, name: str, args: Sequence[Any] | None = None,
                        kwargs: Mapping[str, Any] | None = None) -> Enqueued:
        """The first enqueued job of `name` with these args (and these kwargs among its own);
        AssertionError listing what is enqueued if there is none."""

    def refute_enqueued(self, name: str, args: Sequence[Any] | None = None) -> None:
        """AssertionError if a job of `name` (with these args) is enqueued."""
