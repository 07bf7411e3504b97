"""Plain data types of the public API: retry policy, job states, status and result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from workpool.errors import ConfigurationError, JobFailed
from workpool.protocol import decode, text


@dataclass(frozen=True)
class Retry:
    """Retry policy: attempt n (from 1) waits initial_backoff * base**(n-1) * jitter[0.5, 1.5)."""

    max_attempts: int = 5  #: total attempts, the first included
    initial_backoff: float = 0.25  #: seconds before the first retry (before jitter)
    base: float = 2.0  #: growth factor of the delay per attempt

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            msg = f"Retry.max_attempts must be an integer >= 1, got {self.max_attempts!r}"
            raise ConfigurationError(msg)
        if not math.isfinite(self.initial_backoff) or self.initial_backoff < 0:
            msg = f"Retry.initial_backoff must be seconds >= 0, got {self.initial_backoff!r}"
            raise ConfigurationError(msg)
        if not math.isfinite(self.base) or self.base < 1:
            msg = f"Retry.base must be >= 1, got {self.base!r}"
            raise ConfigurationError(msg)


NO_RETRY = Retry(max_attempts=1)


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` starts per `per` seconds across all workers (a token bucket of capacity
    `limit`, refilled at limit/per on Redis's clock)."""

    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or self.limit < 1:
            msg = f"RateLimit.limit must be an integer >= 1, got {self.limit!r}"
            raise ConfigurationError(msg)
        if not math.isfinite(self.per) or self.per < 0.001:
            msg = f"RateLimit.per must be at least 0.001 seconds, got {self.per!r}"
            raise ConfigurationError(msg)

    @property
    def spec(self) -> str:
        """The wire form `limit/per_ms` the scripts read."""
        return f"{self.limit}/{round(self.per * 1000)}"

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`50/1s`, `50/1.5`, `10/500ms`, `100/1m`: a limit per a period (seconds by default)."""
        limit, sep, per = text.partition("/")
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        try:
            unit = next((u for u in ("ms", "s", "m", "h") if per.endswith(u)), "")
            seconds = float(per[: len(per) - len(unit)] or 1) * units.get(unit, 1.0)
            return cls(int(limit), seconds if sep else 1.0)
        except ValueError:
            msg = f"rate limit {text!r}: expected LIMIT/PERIOD such as 50/1s, 10/500ms, 100/1m"
            raise ConfigurationError(msg) from None


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
    error: str | None = None  #: last attempt's error, if any
    error_type: str | None = None
    cancel_requested: bool = False  #: a cancel reached the job (a running one is never retried)
    enqueued_at: float | None = None  #: seconds since the epoch (Redis clock)
    finished_at: float | None = None
    callback: str | None = None  #: on_complete delivery: pending or delivered

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
    )
