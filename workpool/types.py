"""Plain data types of the public API: retry policy, job states, status and result."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from workpool.core import validate
from workpool.errors import ConfigurationError, JobFailed
from workpool.wire import limits
from workpool.wire.protocol import decode, text


@dataclass(frozen=True)
class Retry:
    """Retry policy: attempt n (from 1) waits initial_backoff * base**(n-1) * jitter[0.5, 1.5),
    never more than max_backoff (itself at most 7 days, `limits.MAX_RETRY_DELAY_MS`)."""

    max_attempts: int = 5  #: total attempts, the first included
    initial_backoff: float = 0.25  #: seconds before the first retry (before jitter)
    base: float = 2.0  #: growth factor of the delay per attempt
    max_backoff: float = limits.DEFAULT_MAX_BACKOFF_MS / 1000  #: seconds one retry waits at most

    def __post_init__(self) -> None:
        validate.integer("Retry.max_attempts", self.max_attempts, 1, limits.MAX_ATTEMPTS)
        validate.number("Retry.base", self.base, 1, limits.MAX_BACKOFF_BASE)
        initial = validate.seconds_ms("Retry.initial_backoff", self.initial_backoff,
                                      limits.MAX_RETRY_DELAY_MS)
        if validate.seconds_ms("Retry.max_backoff", self.max_backoff,
                               limits.MAX_RETRY_DELAY_MS) < initial:
            validate.fail("Retry.max_backoff", f"at least initial_backoff "
                          f"({self.initial_backoff!r})", self.max_backoff)

    @property
    def wire(self) -> dict[str, str]:
        """The policy's enqueue entry fields."""
        return {"max_attempts": str(self.max_attempts),
                "initial_backoff_ms": str(round(self.initial_backoff * 1000)),
                "base": repr(float(self.base)),
                "max_backoff_ms": str(round(self.max_backoff * 1000))}


NO_RETRY = Retry(max_attempts=1)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` starts per `per` seconds across all workers (a token bucket of capacity
    `limit`, refilled at limit/per on Redis's clock)."""

    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        validate.integer("RateLimit.limit", self.limit, 1, limits.MAX_RATE_LIMIT)
        validate.number("RateLimit.per", self.per, 0.001, limits.MAX_RATE_PER_MS / 1000)

    @property
    def spec(self) -> str:
        """The wire form `limit/per_ms` the scripts read."""
        return f"{self.limit}/{round(self.per * 1000)}"

    @classmethod
    def parse(cls, text: str, name: str = "rate limit") -> RateLimit:
        """`50/1s`, `50/1.5`, `10/500ms`, `100/1m`, `5/s`: a limit per a period (seconds by
        default); `name` is the argument the text came from, for the error."""
        limit, sep, per = text.partition("/")
        unit = next((u for u in ("ms", "s", "m", "h") if per.endswith(u)), "")
        try:
            seconds = float(per[: len(per) - len(unit)] or 1) * _UNITS.get(unit, 1.0)
            return cls(int(limit), seconds if sep else 1.0)
        except (ValueError, ConfigurationError) as exc:
            msg = f"{name} {text!r}: expected LIMIT/PERIOD such as 50/1s, 10/500ms, 100/1m ({exc})"
            raise ConfigurationError(msg) from None


def rate_limit_of(name: str, value: Any) -> RateLimit | None:
    """A rate limit given as a RateLimit, as text (`"5/s"`), or None (no limit)."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        return RateLimit.parse(value, name)
    return validate.fail(name, "a RateLimit, a text such as '50/1s', or None", value)


class State(str, Enum):
    """Where a job is in its life; `done` and `canceled` are terminal."""

    PENDING = "pending"  #: accepted, waiting for its due time and a free slot
    RUNNING = "running"  #: an attempt is handed to a worker and holds a slot
    RETRYING = "retrying"  #: the last attempt failed; the next waits for its backoff, no slot
    DONE = "done"  #: finished; `outcome` says succeeded or failed
    CANCELED = "canceled"  #: canceled before it started (or between attempts)

    @property
    def terminal(self) -> bool:
        """True for done and canceled."""
        return self in (State.DONE, State.CANCELED)


class Canceled(str, Enum):
    """What a cancel did (`Workpool.cancel`), once the main loop applied it."""

    CANCELED = "canceled"  #: it was pending or retrying: it is canceled; on_complete runs
    MARKED = "marked"  #: it was running: that attempt finishes, and it is never retried
    FINISHED = "finished"  #: it had finished already: nothing changed
    UNKNOWN = "unknown"  #: no such job (never enqueued here, or past its retention)
    SENT = "sent"  #: no main loop applied it in time; it will, in order, when one runs

    @property
    def description(self) -> str:
        """A sentence for people (the CLI prints it)."""
        return _CANCELED[self]


_CANCELED = {
    Canceled.CANCELED: "canceled: it had not started (or was between attempts); its "
                       "on_complete handler runs with kind canceled",
    Canceled.MARKED: "marked: it is running; that attempt finishes, and it is never retried",
    Canceled.FINISHED: "not canceled: it had finished already",
    Canceled.UNKNOWN: "no such job in this pool (never enqueued, or past its retention)",
    Canceled.SENT: "cancel requested: no main loop has applied it yet (it will, in order)",
}

Configured = Literal["applied", "sent"]  #: a configure() a main loop applied, or one waiting

Kind = Literal["succeeded", "failed", "canceled"]


@dataclass(frozen=True)
class Result:
    """What a finished job ended with: handed to on_complete handlers and returned by wait()."""

    kind: Kind
    value: Any = None  #: the job's return value when it succeeded
    error: str | None = None  #: the last attempt's error message when it failed
    error_type: str | None = None  #: the error's class name (or WorkerLost, Timeout, ...)

    @property
    def ok(self) -> bool:
        """True when the job succeeded."""
        return self.kind == "succeeded"

    def unwrap(self) -> Any:
        """The return value, or JobFailed naming the error if the job did not succeed."""
        if self.kind != "succeeded":
            msg = f"job {self.kind}" + (f": {self.error_type}: {self.error}" if self.error else "")
            raise JobFailed(msg)
        return self.value


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job, as stored in Redis."""

    id: str
    state: State
    name: str = ""
    attempts: int = 0  #: attempts started so far
    max_attempts: int = 0
    outcome: Literal["succeeded", "failed"] | None = None  #: set when state is done
    result: Any = None  #: return value when succeeded
    #: the latest failed attempt's error, if any (kept on success: it says why a retry ran)
    error: str | None = None
    error_type: str | None = None
    cancel_requested: bool = False  #: a cancel reached the job (a running one is never retried)
    enqueued_at: float | None = None  #: seconds since the epoch (Redis clock)
    finished_at: float | None = None
    callback: str | None = None  #: on_complete delivery: pending or delivered
    rerun_of: str | None = None  #: the finished job this one runs again (`run_again`)

    @property
    def terminal(self) -> bool:
        """True once the job is done or canceled."""
        return self.state.terminal

    def to_result(self) -> Result:
        """The job's Result; only meaningful once it is terminal."""
        if self.state == State.CANCELED:
            return Result("canceled", error=self.error, error_type=self.error_type)
        if self.outcome == "succeeded":
            return Result("succeeded", value=self.result)
        return Result("failed", error=self.error, error_type=self.error_type)


def _seconds(raw: bytes | None) -> float | None:
    return int(raw) / 1000 if raw else None


def status_from_hash(job_id: str, h: dict[str, bytes]) -> JobStatus:
    """Build a JobStatus from a job hash (text field names, raw values)."""
    enc = text(h.get("enc")) or "msgpack"
    outcome = text(h.get("outcome"))
    return JobStatus(
        id=job_id,
        state=State(text(h["state"])),
        name=text(h.get("name")),
        attempts=int(h.get("attempts") or 0),
        max_attempts=int(h.get("max_attempts") or 0),
        outcome=outcome if outcome in ("succeeded", "failed") else None,  # type: ignore[arg-type]
        result=decode(h.get("result") or b"", enc),
        error=text(h.get("error")) or None,
        error_type=text(h.get("error_type")) or None,
        cancel_requested=h.get("cancel") == b"1",
        enqueued_at=_seconds(h.get("enqueued_at")),
        finished_at=_seconds(h.get("finished_at")),
        callback=text(h.get("cb")) or None,
        rerun_of=text(h.get("rerun_of")) or None,
    )
