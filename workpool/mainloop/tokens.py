"""A shard's share of its sharded pool's max_parallelism and rate limit: the grant (slots) and
the permits (starts) its main loop asks the coordinator for (grantTokens) every refresh period,
reporting what the shard runs and could start, and passes to startJobs as its caps. A grant
is fresh for one lease TTL from when it was asked: a loop that cannot reach the coordinator
that long starts nothing (a shard whose lease lapses starts nothing), and a loop that lost its
shard's lease forgets it."""

from __future__ import annotations

import time

import redis.asyncio

from workpool.core.config import PoolConfig
from workpool.errors import ConfigurationError
from workpool.wire.calls import Engine, Now
from workpool.wire.codes import Code
from workpool.wire.replies import StartReply
from workpool.wire.scripts import Replies


class Grant:
    """The slots one shard's main loop may run at most, and when to ask again."""

    def __init__(self, config: PoolConfig, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self.tokens = 0
        self.permits: int | None = None  #: starts the pool's rate limit allows (None: no limit)
        self._fresh_until = 0.0  #: monotonic: the grant is usable until then
        self._ask_at = 0.0  #: monotonic: when to ask again
        self._period = config.lease_ttl / 3
        self._ttl_ms = round(config.lease_ttl * 1000)

    @classmethod
    def of(cls, config: PoolConfig, engine: Engine) -> Grant | None:
        """A shard's grant (None for a pool of one shard); a sharded pool's own configuration
        has no main loop, its shards' have one each."""
        if config.shards > 1 and config.shard is None:
            msg = "a sharded pool has a main loop per shard: workpool.process.main_loops(pool) " \
                  "runs them all (a worker runs each shard's)"
            raise ConfigurationError(msg)
        return cls(config, engine) if config.shard is not None else None

    def cap(self, now: float) -> int:
        """What startJobs may run up to now: the grant while fresh, else nothing."""
        return self.tokens if now < self._fresh_until else 0

    def caps(self, now: float) -> tuple[int, int | None]:
        """startJobs' caps now: running within the grant, starts within the permits (None: no
        rate limit); nothing once the grant lapsed."""
        if self.permits is None:
            return self.cap(now), None
        return self.cap(now), self.permits if now < self._fresh_until else 0

    def due(self, now: float, start: StartReply) -> bool:
        """Time to ask: the period is over, or jobs wait that the grant leaves no slot for (or
        the permits no start)."""
        starved = start.ready > 0 and (self.permits == 0 or (
            start.running >= self.cap(now) and self.tokens < start.max_parallelism))
        return now >= self._ask_at or (starved and now >= self._ask_at - self._period / 2)

    async def after_start(self, client: redis.asyncio.Redis, token: str, start: StartReply,
                          now: float, clock: Now) -> bool:
        """Count a startJobs call's starts against the permits, and ask again when due; False
        if this loop's epoch is stale at the coordinator."""
        if self.permits is not None:
            self.permits = max(0, self.permits - start.started)
        return not self.due(now, start) or await self.refresh(client, token, start, clock)

    async def refresh(self, client: redis.asyncio.Redis, token: str, start: StartReply,
                      clock: Now) -> bool:
        """Ask the coordinator with what the shard runs now; False if this loop's epoch is
        stale there (another leader of the shard asked since)."""
        asked = time.monotonic()
        calls = Replies()
        granted = calls.add(self.engine.grant(
            self.config.shards, int(token.split(":", 1)[0]), running=start.running,
            demand=start.running + start.ready, maxp=start.max_parallelism,
            fresh_ms=self._ttl_ms, now=clock, rate=start.rate, want=start.ready,
            unused=self.permits or 0))
        await calls.arun(client, self.config.replication)
        reply = granted.value
        self._ask_at = asked + self._period
        if reply.code != Code.OK:
            self.forget()
            return False
        self.tokens, self._fresh_until = reply.tokens, asked + self.config.lease_ttl
        self.permits = None if reply.permits < 0 else reply.permits
        return True

    def forget(self) -> None:
        """The loop lost its shard's lease: the grant is the next leader's to ask for."""
        self.tokens, self._fresh_until, self._ask_at, self.permits = 0, 0.0, 0.0, None
