"""Recovery latency per fault kind, from the history: how long after a fault the pool did
again what the fault stopped. Redis downtime is subtracted where the engine could not act."""

from __future__ import annotations

import bisect
from collections import defaultdict

from workpool.chaos.history import Event
from workpool.chaos.jobs import JobHistory, Start
from workpool.chaos.timeline import REDIS_FAULTS, Timeline

_WORKER = {"kill_worker": "worker SIGKILL to job running again",
           "kill_leader": "leader SIGKILL to its jobs running again",
           "pause_worker": "worker SIGSTOP to job running again"}
#: faults of the server or the wire: from the fault's end to the next admission of any job
_SERVER = (*REDIS_FAULTS, "script_flush", "client_kill", "poison")
_HUNG = ("stuck", "stubborn", "hog")


def latencies(events: list[Event], jobs: dict[str, JobHistory],
              tl: Timeline) -> dict[str, list[float]]:
    """Every recovery latency of the run, by what recovered from what."""
    out: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e["e"] == "lease_handover" and e["after"] is not None:
            out["lease handover after leader SIGKILL"].append(e["after"])
    _worker_faults(out, events, jobs, tl)
    admissions = sorted(s.admitted for h in jobs.values() for s in h.starts)
    for w in tl.windows:
        if w.kind in _SERVER:
            i = bisect.bisect_left(admissions, w.ended)
            if i < len(admissions):
                out[f"{w.kind}: over to next job admitted"].append(admissions[i] - w.ended)
    for hist in jobs.values():
        for s in hist.starts:
            nxt = _next_start(hist, s)
            if nxt is not None and hist.kind in _HUNG and s.to is not None:
                out["hung code: timeout to job running again"].append(
                    nxt - s.admitted - s.to)
    for e in events:
        if e["e"] == "crash":
            nxt = min((s.t for s in jobs[e["job"]].starts if s.attempt > e["a"]), default=None)
            if nxt is not None:
                out["child crash to job running again"].append(nxt - e["t"])
    return dict(out)


def _next_start(hist: JobHistory, s: Start) -> float | None:
    return min((o.t for o in hist.starts if o.attempt > s.attempt), default=None)


def _worker_faults(out: dict[str, list[float]], events: list[Event],
                   jobs: dict[str, JobHistory], tl: Timeline) -> None:
    """From a worker's SIGKILL (or SIGSTOP) to each attempt it held running again elsewhere;
    the "no other fault meanwhile" rows keep recoveries no leader loss, Redis fault or second
    fault to the same worker slowed."""
    by_pid: dict[int, list[tuple[Start, JobHistory]]] = defaultdict(list)
    for hist in jobs.values():
        for s in hist.starts:
            by_pid[s.pid].append((s, hist))
    for e in events:
        if e["e"] != "fault" or e["kind"] not in _WORKER:
            continue
        t, label = e["t"], _WORKER[e["kind"]]
        for s, hist in by_pid.get(e["target"], ()):
            end = hist.end_of(s)
            nxt = _next_start(hist, s)
            if s.t > t or (end is not None and end["t"] <= t) or nxt is None or nxt <= t:
                continue  # not running at the fault, or superseded before it
            out[label].append(nxt - t - tl.redis_down_between(t, nxt))
            if not tl.disrupted(t, nxt, e["target"]):
                out[label + " (no other fault meanwhile)"].append(nxt - t)
