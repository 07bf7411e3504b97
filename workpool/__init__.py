"""workpool: a job-queue engine on Redis with an explicit, Lua-enforced job state machine."""

from workpool.aio import AsyncWorkpool
from workpool.errors import (
    ConfigurationError,
    JobFailed,
    JobNotFound,
    NonRetryableError,
    PayloadTooLarge,
    RedisServerNotFound,
    RedisUnavailable,
    SerializationError,
    UnknownJobName,
    WaitTimeout,
    WorkpoolError,
)
from workpool.ops import PoolStats
from workpool.pool import Workpool
from workpool.types import JobStatus, Result, Retry, State

__all__ = [
    "AsyncWorkpool",
    "ConfigurationError",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "NonRetryableError",
    "PayloadTooLarge",
    "PoolStats",
    "RedisServerNotFound",
    "RedisUnavailable",
    "Result",
    "Retry",
    "SerializationError",
    "State",
    "UnknownJobName",
    "WaitTimeout",
    "Workpool",
    "WorkpoolError",
]
