"""workpool: a job-queue engine on Redis with an explicit, Lua-enforced job state machine."""

from workpool.client.aio import AsyncWorkpool
from workpool.client.pool import Workpool
from workpool.client.stats import PoolStats
from workpool.current import Running, current
from workpool.errors import (
    ConfigurationError,
    JobFailed,
    JobNotFound,
    NonDeterministicWorkflow,
    NonRetryableError,
    PayloadTooLarge,
    RedisRefused,
    RedisServerNotFound,
    RedisUnavailable,
    SerializationError,
    StepFailed,
    UnknownJobName,
    WaitTimeout,
    WorkpoolError,
)
from workpool.types import JobStatus, RateLimit, Result, Retry, State
from workpool.wire.options import EnqueueOptions, ManyOptions, StepOptions
from workpool.wire.settings import LiveSettings
from workpool.workflow.context import WorkflowContext
from workpool.workflow.machine import Done, Machine, Next, StateContext, Wait
from workpool.workflow.status import StepStatus, WorkflowChange, WorkflowStatus

__all__ = [
    "AsyncWorkpool",
    "ConfigurationError",
    "Done",
    "EnqueueOptions",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "LiveSettings",
    "Machine",
    "ManyOptions",
    "Next",
    "NonDeterministicWorkflow",
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
    "StateContext",
    "StepFailed",
    "StepOptions",
    "StepStatus",
    "UnknownJobName",
    "Wait",
    "WaitTimeout",
    "WorkflowChange",
    "WorkflowContext",
    "WorkflowStatus",
    "Workpool",
    "WorkpoolError",
    "current",
]
