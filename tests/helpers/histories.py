"""Hand-written chaos histories for the checker's tests: events as the run's processes record
them, and final states as Redis would give them."""

from __future__ import annotations

from typing import Any

from workpool.chaos.checker import FinalJob, check
from workpool.chaos.history import Event
from workpool.chaos.report import Report

__all__ = ["Event", "FinalJob", "Report"]

W1, W2, RUNNER = 101, 102, 100


def ev(e: str, t: float, pid: int = RUNNER, **fields: Any) -> Event:
    return {"e": e, "t": t, "pid": pid, **fields}


def enqueued(job: str, t: float = 0.0, kind: str = "fast", args: tuple[int, ...] = ()
             ) -> list[Event]:
    return [ev("invoke_enqueue", t, job=job, kind=kind, args=list(args)),
            ev("ack_enqueue", t + 0.001, job=job)]


def started(job: str, attempt: int, pid: int, t: float, *, d: float | None = None,
            to: float | None = None) -> Event:
    return ev("start", t, pid, job=job, a=attempt, d=t - 0.001 if d is None else d, to=to)


def ran(job: str, attempt: int, pid: int, t0: float, t1: float, *, r: str = "ok",
        err: str | None = None, d: float | None = None, to: float | None = None
        ) -> list[Event]:
    return [started(job, attempt, pid, t0, d=d, to=to),
            ev("end", t1, pid, job=job, a=attempt, r=r, err=err)]


def delivered(job: str, t: float, pid: int = W1, *, n: int = 1, value: Any = "attempt 1",
              kind: str = "succeeded", error_type: str | None = None) -> Event:
    return ev("cb", t, pid, job=job, n=n, ok=True, kind=kind, value=value,
              error_type=error_type, t0=t - 0.01, d=t - 0.02)


def fault(kind: str, t: float, target: int | None = None, until: float | None = None
          ) -> list[Event]:
    began = [ev("fault", t, kind=kind, target=target)]
    return began if until is None else [*began, ev("fault_end", until, kind=kind,
                                                   target=target)]


def done(attempts: int = 1, **kw: Any) -> FinalJob:
    fields: dict[str, Any] = {"state": "done", "outcome": "succeeded", "attempts": attempts,
                              "value": f"attempt {attempts}", "cb": "delivered", **kw}
    return FinalJob(**fields)


def failed(attempts: int, error_type: str, error: str = "", **kw: Any) -> FinalJob:
    return FinalJob(state="done", outcome="failed", attempts=attempts, error=error,
                    error_type=error_type, cb="delivered", **kw)


def canceled() -> FinalJob:
    return FinalJob(state="canceled", outcome="canceled", attempts=0, cb="delivered")


def checked(events: list[Event], final: dict[str, FinalJob], maxp: int = 1) -> Report:
    return check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=maxp)
