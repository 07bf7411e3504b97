"""workpool: a job-queue engine on Redis with an explicit, Lua-enforced job state machine."""

from workpool.client.aio import AsyncWorkpool
from workpool.client.pool import Workpool
from workpool.client.stats import PoolStats
from workpool.current import Running, current
from workpool.errors import (
    ConfigurationError,
    JobFailed,
    JobNotFound,
    NonRetryableError,
    PayloadTooLarge,
    RedisRefused,
    RedisServerNotFound,
    RedisUnavailable,
    SerializationError,
    UnknownJobName,
    WaitTimeout,
    WorkpoolError,
)
from workpool.types import JobStatus, RateLimit, Result, Retry, State
from workpool.wire.options import EnqueueOptions, ManyOptions
from workpool.wire.settings import LiveSettings

__all__ = [
    "AsyncWorkpool",
    "ConfigurationError",
    "EnqueueOptions",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "LiveSettings",
    "ManyOptions",
    "NonRetryableError",
    "PayloadTooLarge",
    "PoolStats",
    "RateLimit",
    "RedisRefused",
    "RedisServerNotFound",
    "RedisUnavailable",
    "Result",
    "Retry",
    "Running",
    "SerializationError",
    "State",
    "UnknownJobName",
    "WaitTimeout",
    "Workpool",
    "WorkpoolError",
    "current",
]
