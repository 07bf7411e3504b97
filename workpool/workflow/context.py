"""`WorkflowContext`: what a workflow function calls. Each call is matched, in the order the code
makes it, to its journal entry (one the journal does not have yet is asked for in the replay's
decision) and gives a future; results reach the futures only as the journal's activations
deliver them, in the order the workflow first saw them, so a replay sees what the first run
saw, in the same order (workflow/replay.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from workpool.core import validate
from workpool.core.config import PoolConfig
from workpool.core.registry import check_name
from workpool.core.requests import enqueue_entries, name_of, workflow_entry
from workpool.errors import StepFailed, WaitTimeout
from workpool.wire import limits
from workpool.wire.options import STEP_OPTIONS, JobRef
from workpool.wire.protocol import decode
from workpool.workflow.journal import Entry

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from workpool.wire.options import StepOptions


class WorkflowContext:
    """The workflow's view of its journal during one replay (deterministic: everything it
    returns comes from the journal, the workflow's id and the order of the calls)."""

    def __init__(self, config: PoolConfig, workflow_id: str, journal: dict[int, Entry],
                 *, started_at_ms: int, loop: asyncio.AbstractEventLoop,
                 trace: Mapping[str, str] | None = None) -> None:
        self._config, self._journal, self._loop = config, journal, loop
        self._trace = dict(trace or {})  # the workflow's trace context: its steps go on in it
        self._workflow_id = workflow_id
        self._next = 1  # the number of the next journal entry the code asks for
        self._now_ms = started_at_ms
        self._rng: random.Random | None = None  # made on first use: 2.5 KB a kept workflow
        self.commands: list[list[Any]] = []  #: what this replay asks for, in order
        #: the entries the code awaits, not delivered yet: n -> (future, name, its result)
        self.waiting: dict[int, tuple[asyncio.Future[Any], str, Callable[[Entry], Any]]] = {}
        self.mismatch: str | None = None  #: why the code no longer matches the journal
        self.closed = False  #: the replay is over: nothing more may be asked

    @property
    def workflow_id(self) -> str:
        """This workflow's id."""
        return self._workflow_id

    def now(self) -> float:
        """Seconds since the epoch: when the workflow started, then the latest end among the
        journal entries delivered to the code so far (the same in every replay)."""
        return self._now_ms / 1000

    def random(self) -> float:
        """A float in [0, 1): the same sequence in every replay (seeded by the workflow id)."""
        if self._rng is None:
            self._rng = random.Random(self._workflow_id)
        return self._rng.random()

    def step(self, job: JobRef, *args: Any, **options: Unpack[StepOptions]) -> asyncio.Future[Any]:
        """Run `job(*args)` as a job of the pool (retries, timeout, limits as for any job) and
        give its result, once; StepFailed if it ends failed or canceled. A step is matched to
        its journal entry by its number (the order of the calls) and its job's name; its
        arguments are not compared (a changed argument does not change a step asked for) nor
        encoded again."""
        name, enc = name_of(self._config, job, "job"), self._config.encoding

        def command(n: int) -> list[Any]:  # a step the journal has is not encoded again
            (fields,) = enqueue_entries(self._config, name, [args], options,
                                        allowed=STEP_OPTIONS, call="ctx.step")
            return ["step", n, _flat({**fields, **self._trace})]

        return self._ask("step", name, command, lambda e: decode(e.result, enc))

    def workflow(self, workflow: Callable[..., Any] | str, *args: Any,
                 kwargs: Mapping[str, Any] | None = None) -> asyncio.Future[Any]:
        """Run a child workflow and give its result; StepFailed if it fails or is canceled.
        It is canceled with this one."""
        fields = {**workflow_entry(self._config, workflow, args, kwargs=kwargs, key=None,
                                   on_complete=None, context=None), **self._trace}
        name, enc = str(fields["name"]), str(fields["enc"])
        return self._ask("workflow", name, lambda n: ["child", n, _flat(fields)],
                         lambda e: decode(e.result, enc))

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """Wait `seconds` (from now(), the workflow's time) without holding a worker: the main
        loop ends the wait, and the workflow is replayed then."""
        until = self._until("seconds", seconds)
        return self._ask("sleep", "", lambda n: ["sleep", n, until], lambda e: None)

    def wait_for_event(self, name: str, timeout: float | None = None) -> asyncio.Future[Any]:
        """The payload of the next event `name` sent to this workflow (`pool.send_event`),
        each event delivered to one wait once; one sent before the workflow waits is kept for
        it. WaitTimeout if none comes within `timeout` seconds (None: no limit)."""
        check_name(name, "event name")  # the rule send_event applies: it could never come else
        until = 0 if timeout is None else self._until("timeout", timeout)
        enc = self._config.encoding
        return self._ask("event", name, lambda n: ["event", n, name, until],
                         lambda e: decode(e.result, enc))

    def patched(self, patch: str) -> bool:
        """True where the code takes a new path introduced by a change named `patch`: always
        in a workflow that reaches this point under the new code (a marker is recorded), and
        False in one that passed it under the old code (its journal has no marker here), so a
        running workflow keeps the path it began."""
        validate.string("patch", patch, limits.MAX_NAME_BYTES)
        entry = self._journal.get(self._next)
        if entry is None:
            self.commands.append(["patch", self._next, patch])
        elif entry.kind != "patch" or entry.name != patch:
            return False
        self._next += 1
        return True

    def _until(self, argument: str, seconds: float) -> int:
        """When (ms, the workflow's time) a wait of `seconds` ends; ConfigurationError naming
        `argument` past what a timer can hold (the main loop would refuse the decision)."""
        return self._now_ms + validate.seconds_ms(argument, seconds,
                                                  limits.MAX_RUN_AT_MS - self._now_ms)

    def _ask(self, kind: str, name: str, command: Callable[[int], list[Any]],
             result: Callable[[Entry], Any]) -> asyncio.Future[Any]:
        """Journal entry n (the next number) of `kind` and `name`: a future its activation
        resolves; if the journal has no entry n yet, `command(n)` is asked for."""
        if self.closed:
            msg = "the workflow's replay is over: await its calls inside the workflow function"
            raise RuntimeError(msg)
        n = self._next
        entry = self._journal.get(n)
        if entry is None:  # asked for (its arguments checked first: a bad one takes no number)
            self.commands.append(command(n))
        elif entry.kind != kind or entry.name != name:
            self.mismatch = self.mismatch or (
                f"entry {n}: the journal has {entry.kind} {entry.name!r} there, the code now "
                f"asks for {kind} {name!r}")
        self._next += 1
        future = self._loop.create_future()
        self.waiting[n] = (future, name, result)
        return future

    def ended(self) -> list[int]:
        """The entries the code waits for whose end the journal has (an activation's worth)."""
        return sorted(n for n in self.waiting
                      if (e := self._journal.get(n)) is not None and e.state != "pending")

    def deliver(self, n: int) -> None:
        """Entry n's end reaches the code: its result, or its error raised where it awaits."""
        if n not in self.waiting or n not in self._journal:
            self.mismatch = self.mismatch or (
                f"activation of entry {n}: the code does not wait for it (it asked for "
                f"{self._next - 1} entries)")
            return
        future, name, result = self.waiting.pop(n)
        entry = self._journal[n]
        self._now_ms = max(self._now_ms, entry.finished_at)
        if future.cancelled():
            return
        if entry.outcome == "succeeded":
            future.set_result(result(entry))
        elif entry.error_type == "WaitTimeout":
            future.set_exception(WaitTimeout(entry.error))
        else:
            future.set_exception(StepFailed(n, name, entry.outcome, entry.error_type or None,
                                            entry.error or None))

    def learn(self, entries: Mapping[int, Entry]) -> None:
        """Newer versions of journal entries (read since the last replay)."""
        self._journal.update(entries)

    @property
    def asked(self) -> int:
        """How many journal entries the code has asked for (patch markers included)."""
        return self._next - 1


def _flat(fields: Mapping[str, Any]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]
