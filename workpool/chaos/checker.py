"""Checks a chaos run from its history and the jobs' final states, the way Jepsen's queue
checker does: per job (rules.py), per workflow (flowrules.py: its steps are jobs too), plus
two sweeps over every attempt (parallelism.py).

The rules are the README's promises, each as strict as its wording (docs/guarantees.md lists
them): a re-run is explained only by a fault on the earlier run's own worker during that run,
or by its running past its timeout; cancels are judged from what they answered the client;
the outcome applied is the final attempt's own and the one its job planned.
"""

from __future__ import annotations

from workpool.chaos import flowrules, rules
from workpool.chaos.history import Event
from workpool.chaos.jobs import FinalJob, read
from workpool.chaos.parallelism import sweep
from workpool.chaos.recovery import latencies
from workpool.chaos.report import Report
from workpool.chaos.timeline import Timeline

__all__ = ["FinalJob", "check"]

TERMINAL = ("done", "canceled")


def check(events: list[Event], final: dict[str, FinalJob], max_parallelism: int,
          stale_rejected: int = 0, entries_rejected: int = 0) -> Report:
    """Run every check; `final` maps each job id found in Redis to its final state."""
    rep = Report(stale_rejected=stale_rejected, entries_rejected=entries_rejected)
    tl = Timeline.of(events)
    jobs = read(events)
    flows = flowrules.read(events)
    steps = flowrules.steps(flows)
    flowrules.prepare(flows, jobs)
    asked = {e["job"] for e in events if e["e"] in ("invoke_enqueue", "invoke_workflow")}
    invoked = asked | set(flows) | set(steps)  # with the steps and children they ask for
    acked = {e["job"] for e in events if e["e"] == "ack_enqueue"}
    rep.jobs, rep.acked = len(asked), len(acked)
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
            if job in acked or (fin is not None and job in steps):
                rep.lost.append(job)
            continue
        rep.outcomes[fin.outcome] = rep.outcomes.get(fin.outcome, 0) + 1
        if job in asked:  # (a step or child has no on_complete, and is canceled with its root)
            rules.callbacks(rep, job, fin, hist, tl)
            rules.cancels(rep, job, fin, hist)
        if job not in flows:
            rules.outcome(rep, job, fin, hist)
    flowrules.check(rep, flows, jobs, final)
    rep.parallelism = sweep({j: h for j, h in jobs.items() if h.starts}, final, tl,
                            max_parallelism)
    rep.recovery = latencies(events, jobs, tl)
    return rep
