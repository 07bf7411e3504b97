"""The workflow rules of the chaos checker: what each workflow's replays recorded (flows.py)
against its program, its steps' final states and the events the client sent.

Its steps are jobs, so the job rules judge them too (runs, parallelism, outcome); a workflow the
client started is judged as a job for being lost, its on_complete and its cancels. What is
added here: a workflow ends succeeded (its program catches every step failure) unless canceled;
a step's or child's result is the same at every replay, and is its job's own; no step is
admitted after a cancel of its workflow answered; an event is received at most once, and an
acknowledged one is not left unreceived while a wait timed out after it; a sleep never ends
before `ctx.now()` at the sleep plus its length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workpool.chaos.history import Event
from workpool.chaos.jobs import FinalJob, JobHistory
from workpool.chaos.program import entries, step_value
from workpool.types import Canceled

if TYPE_CHECKING:
    from workpool.chaos.report import Report

#: s an event's acknowledgement may precede the observed timeout of a wait that never got it
#: (sent just after the deadline: the history has when the timeout was seen, not the deadline)
EVENT_SLACK = 3.0
#: s a sleep may seem to end early: timers are whole milliseconds of Redis time
SLEEP_SLACK = 0.002


@dataclass
class Flow:
    """One workflow of the run (one the client started, or a child) and what its replays saw."""

    program: list[Any]
    root: str  #: the workflow the client started (its own id for one)
    seen: dict[int, list[Any]] = field(default_factory=dict)  #: entry -> value, per replay
    sleeps: dict[int, float] = field(default_factory=dict)  #: entry -> earliest allowed end
    woke: dict[int, float] = field(default_factory=dict)  #: entry -> first time past it
    timeouts: list[float] = field(default_factory=list)  #: when waits were seen timing out
    sent: dict[str, float | None] = field(default_factory=dict)  #: payload -> ack (None: no)


def read(events: list[Event]) -> dict[str, Flow]:
    """Every workflow the programs name, with what the history says of each."""
    flows: dict[str, Flow] = {}
    for e in events:
        if e["e"] == "invoke_workflow":
            _add(flows, e["job"], e["program"], e["job"])
    for e in events:
        kind, fl = e["e"], flows.get(e.get("wf") or e.get("job") or "")
        if fl is None:
            continue
        if kind == "wf_seen":
            fl.seen.setdefault(e["n"], []).append(e["v"])
        elif kind == "wf_sleep":
            fl.sleeps[e["n"]] = e["now"] + e["s"]
        elif kind == "wf_woke":
            fl.woke.setdefault(e["n"], e["t"])
        elif kind == "wf_timeout":
            fl.timeouts.append(e["t"])
        elif kind == "invoke_event":
            fl.sent[e["p"]] = None
        elif kind == "ack_event":
            fl.sent[e["p"]] = e["t"]
    return flows


def _add(flows: dict[str, Flow], wf: str, program: list[Any], root: str) -> None:
    flows[wf] = Flow(program, root)
    for n, e in entries(program):
        if e[0] == "child":
            _add(flows, f"{wf}:{n}", e[1], root)


def steps(flows: dict[str, Flow]) -> dict[str, list[Any]]:
    """Each step's job id -> `[kind, args]`, for every step the programs name."""
    return {f"{wf}:{n}": e[1:] for wf, fl in flows.items() for n, e in entries(fl.program)
            if e[0] == "step"}


def prepare(flows: dict[str, Flow], jobs: dict[str, JobHistory]) -> None:
    """Give each step's history its kind and arguments, and the cancels of its workflow (the
    job rules then judge a step as the job it is)."""
    for job, (kind, args) in steps(flows).items():
        hist = jobs[job]
        hist.kind, hist.args = kind, tuple(args)
        hist.cancels = jobs[flows[job.rsplit(":", 1)[0]].root].cancels


def check(rep: Report, flows: dict[str, Flow], jobs: dict[str, JobHistory],
          final: dict[str, FinalJob]) -> None:
    """Every workflow rule, for every workflow of the run."""
    for wf, fl in flows.items():
        fin = final.get(wf)
        if fin is None:
            continue  # never started (the client gave up, or its parent ended first)
        rep.flows += 1
        if wf != fl.root and fin.state not in ("done", "canceled"):
            rep.lost.append(f"{wf}: a child workflow never ended")
        if fin.outcome == "failed" or (fin.state == "canceled" and not jobs[fl.root].cancels):
            rep.wrong_outcome.append(f"{wf}: a workflow ended {fin.outcome} "
                                     f"{fin.error_type} {fin.error[:200]}")
        _results(rep, wf, fl, fin, final)
        _sleeps(rep, wf, fl)
        _events(rep, wf, fl, fin)
    by_root: dict[str, list[str]] = {}
    for step in steps(flows):
        by_root.setdefault(flows[step.rsplit(":", 1)[0]].root, []).append(step)
    for wf, step_ids in by_root.items():
        _after_cancel(rep, wf, step_ids, jobs)


def _results(rep: Report, wf: str, fl: Flow, fin: FinalJob,
             final: dict[str, FinalJob]) -> None:
    """Each entry's value is the same at every replay and is its step's (or child's) own; the
    workflow's result is what its replays saw."""
    kept: dict[int, Any] = {}
    for n, e in entries(fl.program):
        values = fl.seen.get(n, [])
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            rep.step_result_changed.append(f"{wf}: entry {n} ({e[0]}) gave {values[:4]}")
        if values:
            kept[n] = values[0]
        own = final.get(f"{wf}:{n}") if e[0] in ("step", "child") else None
        if own is not None and own.state in ("done", "canceled") and values and values[0] != \
                step_value(own.outcome, own.value, own.error_type):
            rep.step_result_changed.append(f"{wf}: entry {n} gave {values[0]!r}, its "
                                           f"{e[0]} ended {own.outcome} {own.value!r}")
    if fin.outcome == "succeeded" and fin.value != [kept.get(n) for n, _ in
                                                    entries(fl.program)]:
        rep.step_result_changed.append(f"{wf}: returned {fin.value!r}, its replays saw {kept}")


def _sleeps(rep: Report, wf: str, fl: Flow) -> None:
    for n, until in fl.sleeps.items():
        rep.sleeps += 1
        woke = fl.woke.get(n)
        if woke is not None and woke < until - SLEEP_SLACK:
            rep.sleep_early.append(f"{wf}: sleep {n} ended {until - woke:.3f} s early")


def _events(rep: Report, wf: str, fl: Flow, fin: FinalJob) -> None:
    received = [v[0] for n, e in entries(fl.program) if e[0] == "wait"
                for v in [fl.seen.get(n)] if v and v[0] != "timeout"]
    rep.events_sent += len(fl.sent)
    rep.events_received += len(received)
    for p in sorted(set(received)):
        if received.count(p) > 1 or p not in fl.sent:
            rep.event_duplicated.append(f"{wf}: received {p!r} {received.count(p)} times "
                                        f"({'sent' if p in fl.sent else 'never sent'})")
    if fin.state == "canceled" or not fl.timeouts:
        return
    for p, acked in fl.sent.items():
        if acked is not None and p not in received and max(fl.timeouts) > acked + EVENT_SLACK:
            rep.event_lost.append(f"{wf}: {p!r} acknowledged, a wait timed out "
                                  f"{max(fl.timeouts) - acked:.1f} s later without it")


def _after_cancel(rep: Report, wf: str, step_ids: list[str],
                  jobs: dict[str, JobHistory]) -> None:
    """No step of the workflow (or of its children) admitted after a cancel answered."""
    answered = [c.answered for c in jobs[wf].cancels if c.answered is not None and
                c.result in (Canceled.CANCELED, Canceled.FINISHED)]
    if not answered:
        return
    first = min(answered)
    for job in step_ids:
        if any(s.d and s.d > first for s in jobs[job].starts):
            rep.canceled_then_started.append(f"{job}: a step of {wf} was admitted after its "
                                             "cancel answered")
