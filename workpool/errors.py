"""Typed exceptions of the public API; each message says what to do about it."""

from __future__ import annotations


class WorkpoolError(Exception):
    """Base class of every error workpool raises on purpose."""


class RedisServerNotFound(WorkpoolError):
    """No redis-server binary to start for the embedded default."""


class RedisUnavailable(WorkpoolError):
    """Redis could not be reached, so the call may or may not have taken effect; retrying is
    safe for an enqueue with `key=`."""


class RedisRefused(RedisUnavailable):
    """Redis answered but refused the call for now: out of memory (OOM), busy running a script
    (BUSY), a read-only replica (READONLY), loading its data, a failed disk write (MISCONF). A
    refused command writes nothing; retry once the server recovers."""


class NotReplicated(RedisUnavailable):
    """Fewer replicas than `replicas=` confirmed a write in time: it is on the master, and a
    failover before the replicas catch up could lose it; retrying is safe for an enqueue with
    `key=`."""


class SerializationError(WorkpoolError, TypeError):
    """Arguments, context or a result could not be encoded with msgpack."""


class PayloadTooLarge(WorkpoolError, ValueError):
    """Encoded arguments and context exceed the pool's `max_payload_bytes`."""


class UnknownJobName(WorkpoolError, LookupError):
    """A job function or handler that is not registered on the pool."""


class JobNotFound(WorkpoolError, LookupError):
    """No job with that id (never enqueued, or its retention expired)."""


class WaitTimeout(WorkpoolError, TimeoutError):
    """`wait()` gave up before the job reached a terminal state."""


class ConfigurationError(WorkpoolError, ValueError):
    """An option has a value workpool cannot use."""


class WorkerFailed(WorkpoolError):
    """A worker could not go on (its scripts cannot load, a vital part of it stopped): it
    stopped taking work, let running attempts finish and exits non-zero, saying why."""


class WorkerStuck(WorkerFailed):
    """Every job thread of a worker is stuck in an attempt that timed out (a thread cannot be
    stopped): it stops so the process can be restarted with fresh threads."""


class NonRetryableError(Exception):
    """Raise from a job to fail it now, without further attempts."""


class JobFailed(WorkpoolError):
    """`Result.unwrap()` on a failed or canceled job."""


class StepFailed(WorkpoolError):
    """Raised where a workflow awaits a step that ended failed (after its retries) or canceled:
    catch it to compensate; left uncaught, it fails the workflow."""

    def __init__(self, step: int, name: str, outcome: str, error_type: str | None,
                 error: str | None) -> None:
        super().__init__(f"step {step} ({name}) ended {outcome}"
                         + (f": {error_type}: {error}" if error else ""))
        self.step, self.name, self.outcome = step, name, outcome
        self.error_type, self.error = error_type, error


class NonDeterministicWorkflow(WorkpoolError):
    """A replay's code asked for something other than what the workflow's journal recorded
    (a step of another job at the same place, say): the workflow waits, unchanged, and its
    replay is tried again, so deploying code that matches resumes it."""


#: Errors no other attempt could change: the job ends failed at once, without a retry.
FINAL_ERRORS = (UnknownJobName, NonRetryableError, SerializationError)
