"""Registered job functions and on_complete handlers: workers run only what is registered here."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from workpool.errors import ConfigurationError, UnknownJobName
from workpool.types import RateLimit, Retry

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")


@dataclass(frozen=True)
class JobSpec:
    """A registered job: its name, the function, and per-job options."""

    name: str
    fn: Callable[..., Any]
    retry: Retry | None
    timeout: float | None
    rate_limit: RateLimit | None = None  #: starts of this job name across all workers
    max_per_key: int | None = None  #: running jobs of this name per concurrency key (1 = serial)

    @property
    def is_async(self) -> bool:
        """True for `async def` jobs (run on the worker's event loop, not in a thread)."""
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class HandlerSpec:
    """A registered on_complete handler."""

    name: str
    fn: Callable[..., Any]
    timeout: float | None = 60.0  #: seconds a run may take; then it failed (and is retried)

    @property
    def is_async(self) -> bool:
        """True for `async def` handlers."""
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class WorkflowSpec:
    """A registered workflow: its name, its `async def fn(ctx, *args, **kwargs)`, the most
    journal entries (steps) one run of it may record, and how long it may run."""

    name: str
    fn: Callable[..., Any]
    max_steps: int = 10_000
    timeout: float | None = None  #: seconds from its start after which it fails (Timeout)


def check_name(name: Any, what: str = "name") -> str:
    """Pool, job and handler names travel on the wire: short, printable ASCII, unambiguous."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        msg = f"{what} {name!r} is invalid: use ASCII letters, digits and _ . : - (at most 200 " \
              "characters), starting with a letter or _"
        raise ConfigurationError(msg)
    return name


class Registry:
    """Name -> job / handler. Lookups by a name that came over the wire never import anything."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobSpec] = {}
        self.handlers: dict[str, HandlerSpec] = {}
        self.workflows: dict[str, WorkflowSpec] = {}
        #: id(fn) -> its job's name, then its handler's: name_of is called at every step a
        #: workflow replays, so it must not walk the tables (the specs keep each fn alive)
        self._job_names: dict[int, str] = {}
        self._handler_names: dict[int, str] = {}

    def add_job(self, spec: JobSpec) -> None:
        """Register a job; a second function under the same name is a mistake worth stopping."""
        _add(self.jobs, spec, "job")
        self._job_names.setdefault(id(spec.fn), spec.name)

    def add_handler(self, spec: HandlerSpec) -> None:
        """Register an on_complete handler."""
        _add(self.handlers, spec, "on_complete handler")
        self._handler_names.setdefault(id(spec.fn), spec.name)

    def add_workflow(self, spec: WorkflowSpec) -> None:
        """Register a workflow."""
        _add(self.workflows, spec, "workflow")

    def workflow(self, name: str) -> WorkflowSpec:
        """The workflow registered as `name`, or UnknownJobName listing what is registered."""
        return _get(self.workflows, name, "workflow")

    def job(self, name: str) -> JobSpec:
        """The job registered as `name`, or UnknownJobName listing what is registered."""
        return _get(self.jobs, name, "job")

    def handler(self, name: str) -> HandlerSpec:
        """The on_complete handler registered as `name`."""
        return _get(self.handlers, name, "on_complete handler")

    def name_of(self, fn: Callable[..., Any]) -> str | None:
        """The registered name of a job or handler function, if any (its first as a job, else
        its first as a handler)."""
        return self._job_names.get(id(fn)) or self._handler_names.get(id(fn))


S = TypeVar("S", JobSpec, HandlerSpec, WorkflowSpec)


def _add(table: dict[str, S], spec: S, kind: str) -> None:
    other = table.get(spec.name)
    if other is not None and other.fn is not spec.fn:
        msg = f"{kind} name {spec.name!r} is already registered to {other.fn!r}"
        raise ConfigurationError(msg)
    table[spec.name] = spec


def _get(table: dict[str, S], name: str, kind: str) -> S:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        msg = f"no {kind} named {name!r} is registered on this pool (registered: {known})"
        raise UnknownJobName(msg) from None
