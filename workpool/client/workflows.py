"""A pool's workflow calls (`Workpool` inherits them): registering workflows and state
machines, starting them, sending them events, reading and watching them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from workpool.client import ops, watching
from workpool.client.drive import stream
from workpool.client.sharded import placed
from workpool.core import tracing, validate
from workpool.core.config import PoolConfig
from workpool.core.registry import Registry, WorkflowSpec, check_name
from workpool.core.requests import event_entry, workflow_entry
from workpool.wire import limits
from workpool.wire.keys import Keys
from workpool.wire.options import JobRef
from workpool.wire.protocol import Fields, check_job_id, new_job_id
from workpool.workflow.machine import Machine, check_machine
from workpool.workflow.status import WorkflowChange, WorkflowStatus

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class WorkflowCalls:
    """The workflow half of `Workpool`'s API (its configuration, keys, registry and client
    come from the pool)."""

    config: PoolConfig
    keys: Keys
    registry: Registry

    @property
    def redis(self) -> redis.Redis:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _drive(self, op: ops.Ops[T]) -> T:
        raise NotImplementedError

    def _send(self, entries: list[Fields], transaction: Pipeline | None = None) -> list[str]:
        """Append enqueue or workflow start entries (into the caller's `transaction` if one is
        given, each named by us then), in a PRODUCER span when traces are on; their ids."""
        with tracing.producing(self.config.name, entries) as sent:
            if transaction is None:
                by_id: dict[int, str] = {}  # each shard's, in one round trip each
                for keys, group in placed(self.config, entries):
                    by_id.update(zip(map(id, group), self._drive(ops.enqueue(keys, group)),
                                     strict=True))
                ids = [by_id[id(entry)] for entry in entries]
            else:  # its replies are the caller's: the entries name their jobs themselves
                for entry in entries:
                    entry.setdefault("id", new_job_id())
                for keys, group in placed(self.config, entries):
                    for command in ops.enqueue_commands(keys, group):
                        transaction.execute_command(*command)
                ids = [str(entry["id"]) for entry in entries]
            sent(ids)
        return ids

    def workflow(self, name: str | None = None, *, timeout: float | None = None,
                 max_steps: int = 10_000) -> Callable[[F], F]:
        """Register `async def fn(ctx: WorkflowContext, *args, **kwargs)` as a durable workflow
        (by default under its `__name__`): each `await ctx.step(job, ...)` runs a job of this
        pool, and the function is replayed against its journal, so its code must decide the
        same way every time (see README, "Workflows"). `timeout`: seconds from its start after
        which it fails (Timeout; its steps not ended are canceled); `max_steps`: the most
        journal entries one run may ask for; one more fails it."""
        if name is not None:
            check_name(name)
        validate.integer("max_steps", max_steps, 1, limits.MAX_WORKFLOW_STEPS)
        if timeout is not None:
            validate.seconds_ms("timeout", timeout, limits.MAX_TIMEOUT_MS, positive=True)

        def register(fn: F) -> F:
            if not callable(fn) or not inspect.iscoroutinefunction(fn):
                validate.fail("the decorated workflow", "an async def function", fn)
            self.registry.add_workflow(WorkflowSpec(check_name(name or fn.__name__), fn,
                                                    max_steps, timeout))
            return fn

        return register

    def machine(self, name: str, *, start: str, max_steps: int = 10_000) -> Machine:
        """A workflow as an explicit state machine: register each state with
        `@machine.state(name)` (a function of (ctx, data) returning workpool.Next, Done or
        Wait, run as a job), then `start_workflow(machine, data)`. No replay rules apply to
        the states: the engine drives them."""
        validate.integer("max_steps", max_steps, 1, limits.MAX_WORKFLOW_STEPS)
        return Machine(self.registry, name, start, max_steps=max_steps)

    def start_workflow(self, workflow: Callable[..., Any] | Machine | str, *args: Any,
                       key: str | None = None, kwargs: Mapping[str, Any] | None = None,
                       on_complete: JobRef | None = None, context: Any = None,
                       transaction: Pipeline | None = None) -> str:
        """Start a workflow; returns its id (status, wait and cancel take it as a job's).

        `key` makes the start idempotent (same key, same workflow, within the retention);
        `on_complete(workflow_id, result, context)` is called once it ended; `transaction`: a
        caller's MULTI pipeline to join (the workflow exists iff it commits)."""
        if isinstance(workflow, Machine):
            check_machine(workflow)
        entry = workflow_entry(self.config, workflow, args, kwargs=kwargs, key=key,
                               on_complete=on_complete, context=context)
        return self._send([entry], transaction)[0]

    def send_event(self, workflow_id: str, name: str, payload: Any = None, *,
                   key: str | None = None) -> None:
        """Send event `name` with `payload` to a workflow: it ends the workflow's oldest
        `wait_for_event(name)`, or is kept for the next one; dropped if the workflow is not
        running when the main loop applies it. With `key`, a send is taken once: another
        event with that key for that workflow is dropped, so a send that failed without
        saying whether it landed (RedisUnavailable) can be repeated."""
        self._drive(ops.send_event(self.config.keys_for(workflow_id), event_entry(
            self.config, workflow_id, name, payload, key)))

    def watch(self, workflow_id: str, timeout: float | None = None) -> Iterator[WorkflowChange]:
        """Every change of a workflow as it happens, in order, none missed: its state (running,
        then done or canceled) and each journal entry asked for and ended; caught up from the
        journal first, then following its notifications; ends once the workflow ended
        (WaitTimeout after `timeout` s)."""
        return stream(self.redis, self.url, watching.watch(self.config.keys_for(workflow_id),
                                                           workflow_id, timeout))

    def running_workflows(self, limit: int = 1000) -> list[WorkflowStatus]:
        """Up to `limit` of the workflows running now."""
        every = [w for keys in self.config.shard_keys
                 for w in self._drive(ops.running_workflows(keys, limit))]
        return every[:limit]

    def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's state, outcome and each step; JobNotFound if it has none."""
        return self._drive(ops.workflow_status(self.config.keys_for(check_job_id(workflow_id)),
                                               workflow_id))
