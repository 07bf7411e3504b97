"""Typed calls of the main-loop transition scripts for one pool, and their parsed replies.

The main loop, the model-based tests and the CLI all drive the state machine through these,
so the KEYS/ARGV order of each script is written down exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workpool.wire.codes import Code
from workpool.wire.keys import GROUP, Keys
from workpool.wire.limits import DEFAULT_MAX_BACKOFF_MS
from workpool.wire.protocol import text
from workpool.wire.scripts import Call, script

_RETRY_DEFAULTS = {"max_attempts": "5", "initial_backoff_ms": "250", "base": "2.0",
                   "max_backoff_ms": str(DEFAULT_MAX_BACKOFF_MS)}


@dataclass(frozen=True)
class EngineSettings:
    """Per-pool limits the scripts need as arguments."""

    batch: int = 256  #: entries or jobs one script call handles at most
    max_payload: int = 1 << 20  #: bytes of args + kwargs + context per job
    max_result: int = 1 << 20  #: bytes of a result kept (a larger one fails its attempt)
    retention_ms: int = 24 * 3600 * 1000  #: how long finished jobs are kept
    #: retry fields (Retry.wire) for entries that omit them (plain XADD clients)
    retry: Mapping[str, str] = field(default_factory=lambda: dict(_RETRY_DEFAULTS))
    silence_grace_ms: int = 0  #: a silent worker is lost after this long suspected (reapLost)


@dataclass(frozen=True)
class BatchReply:
    """Reply of ingestRequests / applyOutcomes: (job id, code) per entry applied."""

    code: Code
    applied: int
    last_entry_id: str
    outcomes: list[tuple[str, Code]]

    @property
    def codes(self) -> list[Code]:
        """Just the codes, in entry order."""
        return [c for _, c in self.outcomes]


@dataclass(frozen=True)
class StartReply:
    """Reply of startJobs."""

    code: Code
    started: int
    running: int
    max_parallelism: int
    next_due_ms: int | None
    next_callback_ms: int | None
    now_ms: int
    next_admission_ms: int | None  #: when a rate limit lets a held job go
    promoted: int  #: due jobs moved to the ready set by this call
    ids: list[str]


@dataclass(frozen=True)
class ReapReply:
    """Reply of reapLost."""

    code: Code
    timed_out: int
    lost: int
    redelivered: int


@dataclass(frozen=True)
class LeaseReply:
    """Reply of acquireLease: the live token when the caller holds the lease."""

    code: Code
    token: str
    ttl_ms: int


def _opt_ms(value: Any) -> int | None:
    return None if int(value) < 0 else int(value)


class Engine:
    """Builds the script calls of one pool."""

    def __init__(self, keys: Keys, settings: EngineSettings | None = None) -> None:
        self.keys = keys
        self.settings = settings or EngineSettings()

    def acquire(self, owner: str, ttl_ms: int, default_max_parallelism: int,
                declared: Mapping[str, str] | None = None) -> Call:
        """Take or renew the main-loop lease; a fresh holder writes its declared settings."""
        k = self.keys
        pairs = [x for item in (declared or {}).items() for x in item]
        return Call(script("acquireLease"), [k.lease, k.epoch, k.dispatch, k.defaults],
                    [owner, ttl_ms, GROUP, default_max_parallelism, *pairs])

    def release(self, token: str) -> Call:
        """Give the lease up (graceful stop)."""
        return Call(script("releaseLease"), [self.keys.lease], [token])

    def ingest(self, token: str, now: int | None = None) -> Call:
        """Apply a batch of client requests (enqueue, cancel, config)."""
        k, s = self.keys, self.settings
        defaults = ",".join(s.retry[f] for f in _RETRY_DEFAULTS)
        return Call(
            script("ingestRequests"),
            [k.lease, k.pending_start, k.incoming, k.due, k.stats, k.rejected, k.config,
             k.dispatch],
            [token, k.prefix, s.batch, s.max_payload, _now(now), s.retention_ms, defaults, GROUP],
        )

    def start(self, token: str, now: int | None = None) -> Call:
        """Start due jobs while slots are free; hand out due callback deliveries."""
        k = self.keys
        return Call(
            script("startJobs"),
            [k.lease, k.config, k.due, k.running, k.dispatch, k.deadlines, k.callbacks_due,
             k.stats],
            [token, k.prefix, self.settings.batch, _now(now)],
        )

    def apply(self, token: str, seed: str, now: int | None = None) -> Call:
        """Apply a batch of worker outcomes."""
        k, s = self.keys, self.settings
        return Call(
            script("applyOutcomes"),
            [k.lease, k.pending_completion, k.running, k.deadlines, k.dispatch, k.due,
             k.callbacks_due, k.stats, k.rejected],
            [token, k.prefix, s.batch, _now(now), seed, s.retention_ms, GROUP, s.max_result],
        )

    def reap(self, token: str, seed: str, now: int | None = None,
             sent_ms: int | None = None) -> Call:
        """End attempts of dead workers and timed-out attempts. `sent_ms`: Redis time at send,
        given only by a caller that saw Redis answer promptly for the last grace."""
        k, s = self.keys, self.settings
        return Call(
            script("reapLost"),
            [k.lease, k.dispatch, k.running, k.deadlines, k.due, k.stats],
            [token, k.prefix, s.batch, _now(now), seed, s.retention_ms, GROUP,
             s.silence_grace_ms, _now(sent_ms)],
        )


def _now(now: int | None) -> str | int:
    return "" if now is None else now


def parse_batch(reply: Sequence[Any]) -> BatchReply:
    """Parse ingestRequests / applyOutcomes replies."""
    rest = reply[3:]
    pairs = [(text(rest[i]), Code(rest[i + 1])) for i in range(0, len(rest), 2)]
    return BatchReply(Code(reply[0]), int(reply[1]), text(reply[2]), pairs)


def parse_start(reply: Sequence[Any]) -> StartReply:
    """Parse a startJobs reply."""
    return StartReply(Code(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]),
                      _opt_ms(reply[4]), _opt_ms(reply[5]), int(reply[6]), _opt_ms(reply[7]),
                      int(reply[8]), [text(i) for i in reply[9:]])


def parse_reap(reply: Sequence[Any]) -> ReapReply:
    """Parse a reapLost reply."""
    return ReapReply(Code(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]))


def parse_lease(reply: Sequence[Any]) -> LeaseReply:
    """Parse an acquireLease reply."""
    return LeaseReply(Code(reply[0]), text(reply[1]), int(reply[2]))
