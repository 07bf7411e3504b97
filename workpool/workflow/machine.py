"""Workflows as explicit state machines (`pool.machine`): each state is a function run as a step
(a job) that returns where to go next; the engine's own workflow function drives them, so the
user's code has no replay rules: a state's code runs once per visit, and a deploy that
changes it affects only the visits not started yet."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from workpool.core import validate
from workpool.core.registry import JobSpec, Registry, WorkflowSpec, check_name
from workpool.errors import ConfigurationError, WaitTimeout
from workpool.types import Retry
from workpool.wire import limits
from workpool.workflow.context import WorkflowContext

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Next:
    """Go to `state` with `data`."""

    state: str
    data: Any = None


@dataclass(frozen=True)
class Done:
    """End the workflow with `result`."""

    result: Any = None


@dataclass(frozen=True)
class Wait:
    """Wait for event `event` (`pool.send_event`), then go to `then` with `data`; the event's
    payload is its `ctx.event`. Past `timeout` seconds, go to `on_timeout` (None: the workflow
    fails with WaitTimeout)."""

    event: str
    then: str
    data: Any = None
    timeout: float | None = None
    on_timeout: str | None = None


@dataclass(frozen=True)
class StateContext:
    """What a state's function gets beside its data."""

    workflow_id: str
    state: str
    event: Any = None  #: the payload of the event a Wait ended with, else None


def _wire(outcome: Any, state: str) -> dict[str, Any]:
    """A state's return value as its step's result (plain data, encodable)."""
    if isinstance(outcome, Next):
        return {"next": outcome.state, "data": outcome.data}
    if isinstance(outcome, Done):
        return {"done": outcome.result}
    if isinstance(outcome, Wait):
        return {"wait": outcome.event, "then": outcome.then, "data": outcome.data,
                "timeout": outcome.timeout, "on_timeout": outcome.on_timeout}
    msg = f"state {state!r} returned {outcome!r}: return workpool.Next(...), Done(...) or " \
          "Wait(...)"
    raise TypeError(msg)


class Machine:
    """A workflow whose states are registered functions (`@machine.state(name)`)."""

    def __init__(self, registry: Registry, name: str, start: str, *, max_steps: int) -> None:
        self.workflow_name, self.start = check_name(name), check_name(start, "start")
        self._registry, self.states = registry, set[str]()
        registry.add_workflow(WorkflowSpec(name, self._drive, max_steps))

    def state(self, name: str, *, retry: Retry | None = None,
              timeout: float | None = None) -> Callable[[F], F]:
        """Register `fn(ctx: StateContext, data)` (sync or async) as state `name`: it runs as
        a job (`<machine>.<state>`, with this retry and timeout) and returns Next, Done or
        Wait."""
        check_name(name, "state")
        if retry is not None:
            validate.instance("retry", retry, Retry, "a workpool.Retry or None")
        if timeout is not None:
            validate.seconds_ms("timeout", timeout, limits.MAX_TIMEOUT_MS, positive=True)
        job = f"{self.workflow_name}.{name}"

        def register(fn: F) -> F:
            if not callable(fn):
                validate.fail("the decorated state", "a function", fn)
            self._registry.add_job(JobSpec(check_name(job), _runner(fn, name), retry, timeout))
            self.states.add(name)
            return fn

        return register

    async def _drive(self, ctx: WorkflowContext, data: Any) -> Any:
        """The engine's workflow function for this machine: visit states until one is Done."""
        state, event = self.start, None
        while True:
            out = await ctx.step(f"{self.workflow_name}.{state}", data, event,
                                 ctx.workflow_id)
            if "done" in out:
                return out["done"]
            if "next" in out:
                state, data, event = out["next"], out["data"], None
                continue
            try:
                event = await ctx.wait_for_event(out["wait"], timeout=out["timeout"])
                state = out["then"]
            except WaitTimeout:
                if out["on_timeout"] is None:
                    raise
                state, event = out["on_timeout"], None
            data = out["data"]


def _runner(fn: Callable[..., Any], state: str) -> Callable[..., Any]:
    """The job that runs state `state`: its function's return value as plain data."""
    if inspect.iscoroutinefunction(fn):
        async def run_async(data: Any, event: Any, workflow_id: str) -> dict[str, Any]:
            return _wire(await fn(StateContext(workflow_id, state, event), data), state)
        return run_async

    def run(data: Any, event: Any, workflow_id: str) -> dict[str, Any]:
        return _wire(fn(StateContext(workflow_id, state, event), data), state)
    return run


def check_machine(machine: Machine) -> None:
    """A machine whose start state is registered (ConfigurationError names what is missing)."""
    if machine.start not in machine.states:
        msg = f"machine {machine.workflow_name!r} starts in state {machine.start!r}, which no " \
              "@machine.state registered"
        raise ConfigurationError(msg)
