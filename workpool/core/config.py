"""`PoolConfig`: what every actor needs to know of one pool (its name and keys, where its Redis
is, its limits and TTLs, retry defaults, the registered jobs and crons). The client builds it
from its arguments; the worker and the main loop take it, never the client object."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from workpool.core import validate
from workpool.core.registry import Registry, check_name
from workpool.core.schedule import CronJob
from workpool.server.connection import check_url, resolve_url
from workpool.server.replication import Replication
from workpool.types import RateLimit, Retry, rate_limit_of
from workpool.wire import limits
from workpool.wire.calls import EngineSettings
from workpool.wire.keys import Keys
from workpool.wire.options import EnqueueOptions, entry_fields
from workpool.wire.protocol import Encoding, Fields, check_job_id, check_kwargs, enqueue_fields
from workpool.wire.settings import check_max_per_key, declared_settings
from workpool.wire.shards import shard_of


@dataclass
class PoolConfig:
    """One pool's configuration, checked when made (ConfigurationError names the argument)."""

    name: str
    redis_url: str | None = None  #: as given; `url` resolves it on first use
    max_parallelism: int = 10
    retry: Retry = field(default_factory=Retry)
    retention: float = 24 * 3600.0
    max_payload_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    lease_ttl: float = 5.0
    heartbeat_ttl: float = 10.0
    encoding: Encoding = "msgpack"
    rate_limit: RateLimit | None = None
    max_per_key: int | None = None
    registry: Registry = field(default_factory=Registry)
    crons: list[CronJob] = field(default_factory=list)
    #: ms the main loop's clock runs ahead of Redis's (0 but under pool.testing.advance)
    clock_offset_ms: int = 0
    replicas: int = 0  #: replicas that must confirm each write (WAIT) before a call returns
    replica_timeout: float = 1.0  #: s to wait for them, then NotReplicated
    shards: int = 1  #: shards of the pool, each its own slot, main loop and scripts
    shard: int | None = None  #: which shard this configuration is of (None: the whole pool)

    def __post_init__(self) -> None:
        check_name(self.name)
        validate.integer("max_parallelism", self.max_parallelism, 0, limits.MAX_SETTING)
        validate.instance("retry", self.retry, Retry, "a workpool.Retry or None")
        self.retention_ms = validate.seconds_ms("retention", self.retention,
                                                limits.MAX_RETENTION_MS, positive=True)
        validate.integer("max_payload_bytes", self.max_payload_bytes, 1, limits.MAX_PAYLOAD_BYTES)
        validate.integer("max_result_bytes", self.max_result_bytes, 1, limits.MAX_PAYLOAD_BYTES)
        validate.seconds_ms("lease_ttl", self.lease_ttl, limits.MAX_TTL_MS, positive=True)
        validate.seconds_ms("heartbeat_ttl", self.heartbeat_ttl, limits.MAX_TTL_MS,
                            positive=True)
        if self.encoding not in ("msgpack", "json"):
            validate.fail("encoding", "'msgpack' or 'json'", self.encoding)
        self.rate_limit = rate_limit_of("rate_limit", self.rate_limit)
        if self.max_per_key is not None:
            check_max_per_key(self.max_per_key)
        if self.redis_url is not None:
            check_url("redis_url", self.redis_url)
        validate.integer("shards", self.shards, 1, limits.MAX_SHARDS)
        if self.shard is not None:
            validate.integer("shard", self.shard, 0, self.shards - 1)
        self.keys = Keys(self.name, self.shard)
        #: the keys of every shard (the pool's own when it has one shard)
        self.shard_keys = [Keys(self.name, i) for i in range(self.shards)] \
            if self.shards > 1 else [self.keys]
        self.replication = Replication.of(self.replicas, self.replica_timeout)


    def keys_for(self, job_id: str) -> Keys:
        """The keys of the shard that holds job (or workflow) `job_id` (checked first)."""
        return self.shard_keys[shard_of(check_job_id(job_id), self.shards)]

    def shard_configs(self) -> list[PoolConfig]:
        """One configuration per shard (the same code, limits and URL), or this one alone."""
        if self.shards == 1:
            return [self]
        return [replace(self, shard=i, redis_url=self.url) for i in range(self.shards)]

    @property
    def url(self) -> str:
        """The Redis URL (the given one, else $WORKPOOL_REDIS_URL, else the embedded server)."""
        if self.redis_url is None:
            self.redis_url = resolve_url(None)
        return self.redis_url

    def engine_settings(self, batch: int = 256) -> EngineSettings:
        """Limits the main-loop scripts apply for this pool."""
        return EngineSettings(
            batch=batch, max_payload=self.max_payload_bytes, max_result=self.max_result_bytes,
            retention_ms=self.retention_ms, retry=self.retry.wire,
            silence_grace_ms=round(self.heartbeat_ttl * 500),  # a beat comes every ttl/3
        )

    def declared_settings(self) -> dict[str, str]:
        """Rate and key limits this code declares; a new main-loop holder writes them."""
        return declared_settings(self.rate_limit, self.max_per_key, self.registry)

    def entries(self, name: str, args_list: Iterable[Sequence[Any]], options: EnqueueOptions,
                handler: str | None = None) -> list[Fields]:
        """Enqueue entries of job `name`, one per argument tuple, with the options resolved
        against its registration (its retry and timeout, else the pool's); raises before
        anything is written."""
        spec = self.registry.jobs.get(name)
        retry = options.get("retry")
        if retry is not None:
            validate.instance("retry", retry, Retry, "a workpool.Retry or None")
        timeout = options.get("timeout")
        shared = entry_fields(
            options, name=name, enc=self.encoding, handler=handler,
            retry=(retry or (spec.retry if spec else None) or self.retry).wire,
            timeout=timeout if timeout is not None else (spec.timeout if spec else None))
        kwargs = check_kwargs(options.get("kwargs"))
        out = []
        for args in args_list:
            if not isinstance(args, list | tuple):
                validate.fail("args_list", "an iterable of argument tuples (or lists)", args)
            out.append(enqueue_fields(shared, args, kwargs, self.max_payload_bytes))
        return out


class HasConfig(Protocol):
    """Anything that carries a pool's configuration (a `Workpool`, say)."""

    @property
    def config(self) -> PoolConfig: ...


def config_of(pool: PoolConfig | HasConfig) -> PoolConfig:
    """The configuration itself, given it or a pool that carries it."""
    return pool if isinstance(pool, PoolConfig) else pool.config
