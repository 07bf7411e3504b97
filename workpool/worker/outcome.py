"""The outcome of one attempt or delivery, typed, and how any exception maps to one. Its
fields are what a worker appends to pendingCompletion (docs/protocol.md, "Internal: dispatch
and pendingCompletion")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workpool.core import failures
from workpool.errors import FINAL_ERRORS, UnknownJobName
from workpool.worker.threads import AttemptTimedOut, Escaped

_NUMBERED = {"run": "attempt", "cb": "n", "wf": "gen"}  #: the field that numbers an outcome


@dataclass(slots=True)  # not frozen: one is made per attempt, and frozen ones build slower
class Outcome:
    """How an attempt (`kind` run, numbered `attempt`), an on_complete delivery (`kind` cb,
    numbered `n`) or a workflow's replay (`kind` wf, numbered `gen`, its decision in `cmds`)
    ended: ok with a result, or an error that a retry may or may not change."""

    kind: Literal["run", "cb", "wf"]
    job_id: str
    number: str  #: the attempt (run) or the delivery (cb) it reports on
    ok: bool
    result: bytes | None = None  #: the encoded return value (run, ok)
    retryable: bool | None = None  #: None: the engine's default for the kind
    error_type: str | None = None
    error: str | None = None
    #: the worker that ran it (run: its attempt record says so) or decided (wf: it keeps the
    #: workflow live)
    worker: str | None = None

    def fields(self) -> dict[str, str | bytes]:
        """The outcome's wire fields."""
        out: dict[str, str | bytes] = {"kind": self.kind, "id": self.job_id,
                                       _NUMBERED[self.kind]: self.number,
                                       "ok": "1" if self.ok else "0"}
        if self.result is not None:
            out["cmds" if self.kind == "wf" else "result"] = self.result
        if self.retryable is not None:
            out["retryable"] = "1" if self.retryable else "0"
        if self.error_type is not None:
            out["error_type"] = self.error_type
        if self.error is not None:
            out["error"] = self.error
        if self.worker is not None:
            out["worker"] = self.worker
        return out


class ChildError(Exception):
    """A job's error as its child process reported it (type, text, retryable)."""

    def __init__(self, kind: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind, self.retryable = kind, retryable


def failed(job_id: str, attempt: int, exc: BaseException, *, retryable: bool,
           kind: str | None = None, trace: bool = True) -> Outcome:
    """The outcome of an attempt that failed with `exc` (any exception at all)."""
    return Outcome("run", job_id, str(attempt), ok=False, retryable=retryable,
                   error_type=kind or failures.error_type(exc),
                   error=failures.describe(exc, with_traceback=trace))


def failure_of(job_id: str, attempt: int, exc: Exception) -> Outcome:
    """The outcome of an attempt that ended with `exc`: the job's own error, its timeout, its
    child process's report or death, or an error no retry could change."""
    if isinstance(exc, AttemptTimedOut):
        return failed(job_id, attempt, exc, retryable=True, kind="Timeout", trace=False)
    if isinstance(exc, ChildError):
        return Outcome("run", job_id, str(attempt), ok=False, retryable=exc.retryable,
                       error_type=exc.kind, error=failures.cut(str(exc)))
    if isinstance(exc, Escaped):
        return failed(job_id, attempt, exc.original, retryable=True)
    final = isinstance(exc, FINAL_ERRORS)  # its message says it all
    return failed(job_id, attempt, exc, retryable=not final, trace=not final)


def delivery_failed(job_id: str, n: str, exc: Exception) -> Outcome:
    """The outcome of an on_complete delivery that raised (a handler this worker does not
    have: not retryable, so the delivery is given up rather than tried forever)."""
    original = exc.original if isinstance(exc, Escaped) else exc
    kind = "Timeout" if isinstance(exc, AttemptTimedOut) else failures.error_type(original)
    return Outcome("cb", job_id, n, ok=False,
                   retryable=False if isinstance(exc, UnknownJobName) else None,
                   error=f"{kind}: {failures.describe(original)}")


def replay_failed(workflow_id: str, gen: str, exc: BaseException) -> Outcome:
    """The outcome of a replay that could not decide (its code does not match the journal, or
    this worker does not know the workflow): the main loop replays it again later."""
    return Outcome("wf", workflow_id, gen, ok=False,
                   error=f"{failures.error_type(exc)}: {failures.describe(exc)}")
