"""What the running job or on_complete handler is: its job id and the attempt (or delivery)
it runs under, so side effects outside Redis can be keyed or fenced by it."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from workpool.errors import WorkpoolError


@dataclass(frozen=True)
class Running:
    """The run the current code belongs to; `attempt` is 0 in an on_complete handler."""

    job_id: str
    name: str
    attempt: int  #: the fencing token of this run: only its outcome is applied
    delivery: int = 0  #: the on_complete delivery number (0 inside a job)
    worker_id: str = ""
    #: when the main loop handed this attempt (or delivery) out: Redis time, s since the epoch
    dispatched_at: float = 0.0


_RUNNING: contextvars.ContextVar[Running] = contextvars.ContextVar("workpool_running")


def current() -> Running:
    """The job attempt or on_complete delivery this code runs in (raises outside of one)."""
    try:
        return _RUNNING.get()
    except LookupError:
        msg = "workpool.current() is only available inside a job or an on_complete handler"
        raise WorkpoolError(msg) from None


def enter(running: Running) -> contextvars.Token[Running]:
    """Mark the current context as running `running` (the worker calls this)."""
    return _RUNNING.set(running)
