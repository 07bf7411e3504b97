"""What a chaos run's history says of each job: what the client asked (its kind and arguments,
its cancels and what they answered), every attempt's start and end as its worker recorded
them, and every on_complete run; and what Redis says of it at the end (FinalJob)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from workpool.chaos.history import Event

MAX_ATTEMPTS = 4  #: the chaos pool's Retry(max_attempts=...)


@dataclass(frozen=True)
class FinalJob:
    """A job's state in Redis after quiescence."""

    state: str
    outcome: str
    attempts: int
    value: object = None
    error: str = ""
    error_type: str = ""
    cancel_attempt: int | None = None
    cb: str = ""


@dataclass(frozen=True)
class Start:
    """One attempt begun: when, by which worker process, admitted when (`d`, Redis time), with
    what timeout (`to`, s; None: none)."""

    t: float
    job: str
    attempt: int
    pid: int
    d: float
    to: float | None = None

    @property
    def admitted(self) -> float:
        """When the main loop had admitted it for sure: the dispatch entry's time is whole
        milliseconds (cut down), so the admission lies in [d, d + 1 ms); the start record comes
        after it too."""
        return min(self.t, self.d + 0.001) if self.d else self.t


@dataclass(frozen=True)
class Cancel:
    """A cancel the client sent and what it answered (`result`: a workpool.Canceled value, or
    '' if the call failed)."""

    invoked: float
    answered: float | None
    result: str


@dataclass
class JobHistory:
    """Everything the history says of one job."""

    kind: str = ""
    args: tuple[object, ...] = ()
    starts: list[Start] = field(default_factory=list)
    ends: dict[tuple[int, int], Event] = field(default_factory=dict)  # (attempt, pid) -> end
    cbs: list[Event] = field(default_factory=list)  # successful on_complete runs
    cancels: list[Cancel] = field(default_factory=list)

    def end_of(self, s: Start) -> Event | None:
        return self.ends.get((s.attempt, s.pid))

    def superseded_at(self, s: Start) -> float | None:
        """When the first later attempt of this job started (None: none did)."""
        return min((o.t for o in self.starts if o.attempt > s.attempt), default=None)

    def by_attempt(self) -> list[Start]:
        return sorted(self.starts, key=lambda s: (s.attempt, s.t))


def read(events: list[Event]) -> dict[str, JobHistory]:
    """Each job's history, from the events of every process."""
    jobs: dict[str, JobHistory] = defaultdict(JobHistory)
    invoked: dict[str, float] = {}
    for e in events:
        kind = e["e"]
        if kind == "invoke_enqueue":
            jobs[e["job"]].kind, jobs[e["job"]].args = e["kind"], tuple(e.get("args") or ())
        elif kind == "start":
            jobs[e["job"]].starts.append(Start(e["t"], e["job"], e["a"], e["pid"],
                                               e.get("d") or 0.0, e.get("to")))
        elif kind == "end":
            jobs[e["job"]].ends[(e["a"], e["pid"])] = e
        elif kind == "crash":  # its child is about to os._exit: the attempt ends here
            jobs[e["job"]].ends[(e["a"], e["pid"])] = {**e, "r": "crashed"}
        elif kind == "cb" and e["ok"]:
            jobs[e["job"]].cbs.append(e)
        elif kind == "invoke_cancel":
            invoked[e["job"]] = e["t"]
        elif kind in ("ack_cancel", "cancel_error"):
            jobs[e["job"]].cancels.append(Cancel(invoked.pop(e["job"], e["t"]), e["t"] if
                                                 kind == "ack_cancel" else None,
                                                 e.get("result", "") if kind == "ack_cancel"
                                                 else ""))
    for job, t in invoked.items():  # a cancel whose call never returned (the run ended)
        jobs[job].cancels.append(Cancel(t, None, ""))
    return jobs
