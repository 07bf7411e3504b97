"""Typed calls of the main-loop transition scripts for one pool (each reads its own reply).

The main loop, the model-based tests and the CLI all drive the state machine through these,
so the KEYS/ARGV order of each script is written down exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from workpool.wire.keys import GROUP, Keys
from workpool.wire.limits import DEFAULT_MAX_BACKOFF_MS
from workpool.wire.replies import (
    BatchReply,
    CodeReply,
    GrantReply,
    LeaseReply,
    ReapReply,
    StartReply,
    parse_batch,
    parse_code,
    parse_grant,
    parse_lease,
    parse_reap,
    parse_start,
)
from workpool.wire.scripts import Call, script

#: a script's clock: ms (tests), None for Redis TIME, or "+<ms>" for Redis TIME that much later
#: (a pool whose clock pool.testing moved on)
Now = int | str | None

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


class Engine:
    """Builds the script calls of one pool."""

    def __init__(self, keys: Keys, settings: EngineSettings | None = None) -> None:
        self.keys = keys
        self.settings = settings or EngineSettings()

    def acquire(self, owner: str, ttl_ms: int, default_max_parallelism: int,
                declared: Mapping[str, str] | None = None) -> Call[LeaseReply]:
        """Take or renew the main-loop lease; a fresh holder writes its declared settings."""
        k = self.keys
        pairs = [x for item in (declared or {}).items() for x in item]
        return Call(script("acquireLease"), [k.lease, k.epoch, k.dispatch, k.defaults],
                    [owner, ttl_ms, GROUP, default_max_parallelism, *pairs], parse_lease)

    def release(self, token: str) -> Call[CodeReply]:
        """Give the lease up (graceful stop)."""
        return Call(script("releaseLease"), [self.keys.lease], [token], parse_code)

    def ingest(self, token: str, now: Now = None) -> Call[BatchReply]:
        """Apply a batch of client requests (enqueue, cancel, config)."""
        k, s = self.keys, self.settings
        return Call(
            script("ingestRequests"),
            [k.lease, k.pending_start, k.incoming, k.due, k.stats, k.rejected, k.config,
             k.dispatch],
            [token, k.prefix, s.batch, s.max_payload, _now(now), s.retention_ms,
             self._defaults(), GROUP],
            parse_batch,
        )

    def _defaults(self) -> str:
        """The pool's retry defaults for entries (and steps) that omit them, as scripts read
        them: "max_attempts,initial_backoff_ms,base,max_backoff_ms"."""
        return ",".join(self.settings.retry[f] for f in _RETRY_DEFAULTS)

    def start(self, token: str, now: Now = None, cap: int | None = None,
              starts: int | None = None) -> Call[StartReply]:
        """Start due jobs while slots are free (a shard: within its grant `cap` and its rate
        permits `starts` too); hand out due callback deliveries."""
        k = self.keys
        return Call(
            script("startJobs"),
            [k.lease, k.config, k.due, k.running, k.dispatch, k.deadlines, k.callbacks_due,
             k.stats],
            [token, k.prefix, self.settings.batch, _now(now), "" if cap is None else cap,
             "" if starts is None else starts],
            parse_start,
        )

    def grant(self, shards: int, epoch: int, *, running: int, demand: int, maxp: int,
              fresh_ms: int, now: Now = None, rate: str = "", want: int = 0,
              unused: int = 0) -> Call[GrantReply]:
        """A shard's grant of its sharded pool's slots and rate permits, from the coordinator
        (grantTokens)."""
        assert self.keys.shard is not None, "only a shard asks for slots"
        return Call(script("grantTokens"), [self.keys.tokens],
                    [self.keys.shard, shards, epoch, running, demand, maxp, fresh_ms, _now(now),
                     rate, want, unused], parse_grant)

    def apply(self, token: str, seed: str, now: Now = None) -> Call[BatchReply]:
        """Apply a batch of worker outcomes."""
        k, s = self.keys, self.settings
        return Call(
            script("applyOutcomes"),
            [k.lease, k.pending_completion, k.running, k.deadlines, k.dispatch, k.due,
             k.callbacks_due, k.stats, k.rejected],
            [token, k.prefix, s.batch, _now(now), seed, s.retention_ms, GROUP, s.max_result,
             s.max_payload, self._defaults()],
            parse_batch,
        )

    def reap(self, token: str, seed: str, now: Now = None,
             sent_ms: int | None = None) -> Call[ReapReply]:
        """End attempts of dead workers and timed-out attempts. `sent_ms`: Redis time at send,
        given only by a caller that saw Redis answer promptly for the last grace."""
        k, s = self.keys, self.settings
        return Call(
            script("reapLost"),
            [k.lease, k.dispatch, k.running, k.deadlines, k.due, k.stats],
            [token, k.prefix, s.batch, _now(now), seed, s.retention_ms, GROUP,
             s.silence_grace_ms, _now(sent_ms)],
            parse_reap,
        )


def _now(now: Now) -> str | int:
    return "" if now is None else now

