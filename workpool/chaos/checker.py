"""Checks a chaos run from its history and the jobs' final states, the way Jepsen's queue
checker does: per job (rules.py), plus two sweeps over every attempt (parallelism.py).

The rules are the README's promises, each as strict as its wording (docs/guarantees.md lists
them): a re-run is explained only by a fault on the earlier run's own worker during that run,
or by its running past its timeout; cancels are judged from what they answered the client;
the outcome applied is the final attempt's own and the one its job planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workpool.chaos import rules
from workpool.chaos.history import Event
from workpool.chaos.jobs import FinalJob, read
from workpool.chaos.parallelism import Parallelism, sweep
from workpool.chaos.recovery import latencies
from workpool.chaos.timeline import Timeline

__all__ = ["FinalJob", "Report", "check"]

TERMINAL = ("done", "canceled")


@dataclass
class Report:
    """What the checker found; every list names the jobs at fault, each with why."""

    jobs: int = 0
    acked: int = 0
    indeterminate: int = 0
    attempts: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    lost_callbacks: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    started_late: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    canceled_then_started: list[str] = field(default_factory=list)
    cancel_contradicted: list[str] = field(default_factory=list)
    stale_accepted: list[str] = field(default_factory=list)
    wrong_outcome: list[str] = field(default_factory=list)
    parallelism: Parallelism = field(default_factory=Parallelism)
    stale_rejected: int = 0
    entries_rejected: int = 0  #: malformed stream entries the engine set aside (poison)
    reruns_after_fault: int = 0
    callback_reruns_after_fault: int = 0
    recovery: dict[str, list[float]] = field(default_factory=dict)

    def violations(self) -> dict[str, int]:
        """Each guarantee's violation count (all must be 0)."""
        found = {name: len(getattr(self, name)) for name in (
            "lost", "lost_callbacks", "duplicated", "started_late", "unexpected")}
        return {**found, "parallelism_breaches": self.parallelism.admitted_breaches,
                **{name: len(getattr(self, name)) for name in (
                    "canceled_then_started", "cancel_contradicted", "stale_accepted",
                    "wrong_outcome")}}

    @property
    def ok(self) -> bool:
        return not any(self.violations().values())


def check(events: list[Event], final: dict[str, FinalJob], max_parallelism: int,
          stale_rejected: int = 0, entries_rejected: int = 0) -> Report:
    """Run every check; `final` maps each job id found in Redis to its final state."""
    rep = Report(stale_rejected=stale_rejected, entries_rejected=entries_rejected)
    tl = Timeline.of(events)
    jobs = read(events)
    invoked = {e["job"] for e in events if e["e"] == "invoke_enqueue"}
    acked = {e["job"] for e in events if e["e"] == "ack_enqueue"}
    rep.jobs, rep.acked = len(invoked), len(acked)
    rep.indeterminate = sum(1 for e in events if e["e"] == "indeterminate_enqueue")
    for e in events:
        if e["e"] == "fault":
            rep.faults[e["kind"]] = rep.faults.get(e["kind"], 0) + 1
    rep.attempts = sum(len(h.starts) for h in jobs.values())
    ran = {job for job, h in jobs.items() if h.starts or h.cbs}
    rep.unexpected = sorted((ran | set(final)) - invoked)
    for job in sorted(acked | ((ran | set(final)) & invoked)):
        fin, hist = final.get(job), jobs[job]
        rules.runs(rep, job, hist, tl)
        if fin is None or fin.state not in TERMINAL:
            if job in acked:
                rep.lost.append(job)
            continue
        rep.outcomes[fin.outcome] = rep.outcomes.get(fin.outcome, 0) + 1
        rules.callbacks(rep, job, fin, hist, tl)
        rules.cancels(rep, job, fin, hist)
        rules.outcome(rep, job, fin, hist)
    rep.parallelism = sweep({j: h for j, h in jobs.items() if h.starts}, final, tl,
                            max_parallelism)
    rep.recovery = latencies(events, jobs, tl)
    return rep
