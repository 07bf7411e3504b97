"""`WorkflowContext`: what a workflow function calls. In a replay each call is matched, in the
order the code makes it, to its journal entry: a step that ended gives its result (or raises
StepFailed) at once, one still running never resolves in this replay, and one the journal does
not have yet is asked for in the replay's decision."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from workpool.client.requests import enqueue_entries
from workpool.core.config import PoolConfig
from workpool.errors import StepFailed
from workpool.wire.options import STEP_OPTIONS, JobRef
from workpool.wire.protocol import Fields, decode
from workpool.workflow.journal import Entry

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from workpool.wire.options import StepOptions


class WorkflowContext:
    """The workflow's view of its journal during one replay (deterministic: everything it
    returns comes from the journal, the workflow's id and the order of the calls)."""

    def __init__(self, config: PoolConfig, workflow_id: str, journal: dict[int, Entry],
                 *, started_at_ms: int, loop: asyncio.AbstractEventLoop) -> None:
        self._config, self._journal, self._loop = config, journal, loop
        self._workflow_id = workflow_id
        self._next = 1  # the number of the next step the code asks for
        self._now_ms = started_at_ms
        self._rng = random.Random(workflow_id)
        self.new_steps: list[tuple[int, Fields]] = []  #: steps asked for in this replay
        self.mismatch: str | None = None  #: why the code no longer matches the journal
        self.closed = False  #: the replay is over: nothing more may be asked

    @property
    def workflow_id(self) -> str:
        """This workflow's id."""
        return self._workflow_id

    def now(self) -> float:
        """Seconds since the epoch: when the workflow started, then the end of the latest step
        the code has seen end (the same in every replay)."""
        return self._now_ms / 1000

    def random(self) -> float:
        """A float in [0, 1): the same sequence in every replay (seeded by the workflow id)."""
        return self._rng.random()

    def step(self, job: JobRef, *args: Any, **options: Unpack[StepOptions]) -> Awaitable[Any]:
        """Run `job(*args)` as a job of the pool (retries, timeout, limits as for any job) and
        give its result, once; StepFailed if it ends failed or canceled. The step's number is
        the order of this call among the workflow's calls; its arguments are not compared on
        replay (a changed argument does not change a step already asked for)."""
        if self.closed:
            msg = "the workflow's replay is over: await its steps inside the workflow function"
            raise RuntimeError(msg)
        n = self._next
        self._next += 1
        (fields,) = enqueue_entries(self._config, job, [args], options, allowed=STEP_OPTIONS,
                                    call="ctx.step")
        name = str(fields["name"])
        entry = self._journal.get(n)
        if entry is None:
            self.new_steps.append((n, fields))
            return self._loop.create_future()  # its end comes in a later replay
        if entry.kind != "step" or entry.name != name:
            self.mismatch = f"step {n}: the journal has {entry.kind} {entry.name!r} there, the " \
                            f"code now asks for step {name!r}"
            return self._loop.create_future()
        future = self._loop.create_future()
        if entry.state == "pending":
            return future
        self._now_ms = max(self._now_ms, entry.finished_at)
        if entry.outcome == "succeeded":
            future.set_result(decode(entry.result, str(fields["enc"])))
        else:
            future.set_exception(StepFailed(n, name, entry.outcome, entry.error_type or None,
                                            entry.error or None))
        return future
