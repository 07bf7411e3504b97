"""Checks a chaos run from its history and the jobs' final states, the way Jepsen's queue
checker does: per job (every transition of a job is serialized by Lua, so a per-job check
suffices), plus one global sweep for max_parallelism over the workers' own start/end records.

Attempt intervals: from the job's start record to its end record; an attempt whose process was
SIGKILLed ends at the kill; an attempt whose process was SIGSTOPped and that a later attempt
superseded ends at the stop (after it the paused process is a fenced zombie: its outcome is
stale, which is counted separately). Re-runs explained by a fault are at-least-once, not
duplicates: a second run counts as duplicated only when the process of the earlier successful
run was neither paused during or just before that run nor killed or paused between its success
and the re-run.
Faults are recorded just before their signal is sent: an event of the target up to 50 ms later
may still precede the signal.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from workpool.chaos.history import Event

TERMINAL = ("done", "canceled")
_LOST = ("WorkerLost", "Timeout")  # the engine ended the attempt and freed its slot
_ZOMBIE_WINDOW = 10.0  # s after a SIGCONT in which a process may still act on stale work
_SIGNAL_SLACK = 0.05  # s between recording a fault and its signal landing
_DISRUPTIVE = ("kill_leader", "kill_redis", "redis_unreachable")  # stall every recovery


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


@dataclass
class Report:
    """What the checker found; every list is a set of job ids (or descriptions) at fault."""

    jobs: int = 0
    acked: int = 0
    indeterminate: int = 0
    attempts: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    lost_callbacks: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    parallelism_breaches: int = 0
    max_running: int = 0
    canceled_then_started: list[str] = field(default_factory=list)
    stale_accepted: list[str] = field(default_factory=list)
    stale_rejected: int = 0
    reruns_after_fault: int = 0
    callback_reruns_after_fault: int = 0
    zombie_starts: int = 0  #: superseded attempts a resumed process still began
    zombie_runs: int = 0  #: attempts given away while their process was paused
    zombie_seconds_max: float = 0.0  #: longest a zombie went on after its process resumed
    recovery: dict[str, list[float]] = field(default_factory=dict)
    breach_times: list[float] = field(default_factory=list)

    def violations(self) -> dict[str, int]:
        """Each guarantee's violation count (all must be 0)."""
        return {"lost": len(self.lost), "lost_callbacks": len(self.lost_callbacks),
                "duplicated": len(self.duplicated), "unexpected": len(self.unexpected),
                "parallelism_breaches": self.parallelism_breaches,
                "canceled_then_started": len(self.canceled_then_started),
                "stale_accepted": len(self.stale_accepted)}

    @property
    def ok(self) -> bool:
        return not any(self.violations().values())


@dataclass(frozen=True)
class _Start:
    t: float
    job: str
    attempt: int
    pid: int


class _Faults:
    """When each process was killed or paused (SIGSTOP until SIGCONT)."""

    def __init__(self, events: list[Event]) -> None:
        self.killed: dict[int, float] = {}
        self.paused: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.redis_down: list[tuple[float, float]] = []  # killed or frozen until back up
        stopped: dict[int, float] = {}
        down: float | None = None
        for e in events:
            if e["e"] == "fault" and e["kind"] in ("kill_redis", "redis_unreachable"):
                down = e["t"]
            elif e["e"] == "redis_up" and down is not None:
                self.redis_down.append((down, e["t"]))
                down = None
            if e["e"] == "fault" and e["kind"] in ("kill_worker", "kill_leader"):
                self.killed[e["target"]] = e["t"]
            elif e["e"] == "fault" and e["kind"] == "pause_worker":
                stopped[e["target"]] = e["t"]
            elif e["e"] == "resume" and e["target"] in stopped:
                self.paused[e["target"]].append((stopped.pop(e["target"]), e["t"]))
        for pid, t in stopped.items():
            self.paused[pid].append((t, float("inf")))

    def hit(self, pid: int, after: float, before: float) -> bool:
        """Was `pid` killed or paused in [after, before]? (A fault is recorded just before its
        signal is sent: one that lands with `after` counts.)"""
        after -= _SIGNAL_SLACK
        k = self.killed.get(pid)
        return (k is not None and after <= k <= before) or any(
            after <= t <= before for t, _ in self.paused.get(pid, ()))

    def pause_in(self, pid: int, after: float, before: float) -> tuple[float, float] | None:
        """The first pause of `pid` that began in [after, before]."""
        return next((p for p in self.paused.get(pid, ()) if after <= p[0] <= before), None)

    def resumed_in(self, pid: int, after: float, before: float) -> bool:
        """Did `pid` come back from a pause in [after, before]?"""
        return any(after <= r <= before for _, r in self.paused.get(pid, ()))

    def just_resumed(self, pid: int, t: float) -> bool:
        """Was `pid` back from a pause shortly before `t`? (What it does then may be stale.)"""
        return self.resumed_in(pid, t - _ZOMBIE_WINDOW, t)

    def redis_down_between(self, after: float, before: float) -> float:
        """Seconds of [after, before] during which redis-server was down or frozen."""
        return sum(max(0.0, min(b, before) - max(a, after)) for a, b in self.redis_down)


@dataclass
class _JobHistory:
    """What the history says of one job."""

    starts: list[_Start] = field(default_factory=list)
    ends: dict[tuple[int, int], Event] = field(default_factory=dict)  # (attempt, pid) -> end
    cbs: list[Event] = field(default_factory=list)  # successful on_complete runs

    def end_of(self, s: _Start) -> Event | None:
        return self.ends.get((s.attempt, s.pid))

    def superseded_at(self, s: _Start) -> float | None:
        """When the first later attempt of this job started (None: none did)."""
        return min((o.t for o in self.starts if o.attempt > s.attempt), default=None)

    def zombie_start(self, s: _Start, faults: _Faults) -> bool:
        """`s` began after a later attempt had begun, its process just back from a pause."""
        later = self.superseded_at(s)
        return later is not None and later < s.t and faults.just_resumed(s.pid, s.t)


def check(events: list[Event], final: dict[str, FinalJob], max_parallelism: int,
          stale_rejected: int = 0) -> Report:
    """Run every check; `final` maps each job id found in Redis to its final state."""
    rep = Report(stale_rejected=stale_rejected)
    faults = _Faults(events)
    invoked = {e["job"] for e in events if e["e"] == "invoke_enqueue"}
    acked = {e["job"] for e in events if e["e"] == "ack_enqueue"}
    rep.jobs, rep.acked = len(invoked), len(acked)
    rep.indeterminate = sum(1 for e in events if e["e"] == "indeterminate_enqueue")
    jobs: dict[str, _JobHistory] = defaultdict(_JobHistory)
    for e in events:
        kind = e["e"]
        if kind == "start":
            jobs[e["job"]].starts.append(_Start(e["t"], e["job"], e["a"], e["pid"]))
        elif kind == "end":
            jobs[e["job"]].ends[(e["a"], e["pid"])] = e
        elif kind == "cb" and e["ok"]:
            jobs[e["job"]].cbs.append(e)
        elif kind == "fault":
            rep.faults[e["kind"]] = rep.faults.get(e["kind"], 0) + 1
        elif kind == "lease_handover" and e["after"] is not None:
            rep.recovery.setdefault("lease handover after leader SIGKILL", []).append(e["after"])
    rep.attempts = sum(len(h.starts) for h in jobs.values())
    rep.unexpected = sorted((set(jobs) | set(final)) - invoked)
    for job in sorted(acked | ((set(jobs) | set(final)) & invoked)):
        fin, hist = final.get(job), jobs[job]
        if fin is None or fin.state not in TERMINAL:
            if job in acked:
                rep.lost.append(job)
            continue
        rep.outcomes[fin.outcome] = rep.outcomes.get(fin.outcome, 0) + 1
        _check_callbacks(rep, job, fin, hist, faults)
        _check_runs(rep, job, fin, hist, faults)
    _sweep(rep, jobs, final, faults, max_parallelism)
    _recovery(rep, events, jobs)
    return rep


def _check_callbacks(rep: Report, job: str, fin: FinalJob, hist: _JobHistory,
                     faults: _Faults) -> None:
    """One delivery closed; every handler saw the same result; re-runs only after a fault."""
    if not hist.cbs or fin.cb != "delivered":
        rep.lost_callbacks.append(job)
    if len({(c.get("kind"), str(c.get("value")), c.get("error_type")) for c in hist.cbs}) > 1:
        rep.duplicated.append(f"{job}: handlers saw different terminal results")
    for prev, nxt in itertools.pairwise(hist.cbs):
        if faults.hit(prev["pid"], prev["t"], nxt["t"]) or any(
                faults.just_resumed(c["pid"], c["t"]) for c in (prev, nxt)):
            rep.callback_reruns_after_fault += 1
        else:
            rep.duplicated.append(f"{job}: on_complete succeeded again, delivery {nxt['n']}")


def _check_runs(rep: Report, job: str, fin: FinalJob, hist: _JobHistory,
                faults: _Faults) -> None:
    """No run after a success unless a fault explains it; none after a cancel; the applied
    outcome is the final attempt's own."""
    ordered = sorted(hist.starts, key=lambda s: (s.attempt, s.t))
    for s, nxt in itertools.pairwise(ordered):
        end = hist.end_of(s)
        if end is None or end["r"] != "ok" or end["t"] > nxt.t:
            continue  # a run superseded while it still ran (lost, then late) is fenced
        if (faults.hit(s.pid, end["t"], nxt.t) or faults.pause_in(s.pid, s.t, end["t"])
                or faults.just_resumed(s.pid, s.t)):
            # a pause during the run, or just before it (an entry read on waking): the attempt
            # may have been given away before its outcome landed
            rep.reruns_after_fault += 1
        else:
            rep.duplicated.append(f"{job}: attempt {nxt.attempt} ran after "
                                  f"attempt {s.attempt} succeeded")
    for s in ordered:
        later = hist.superseded_at(s)
        if later is not None and later < s.t and not hist.zombie_start(s, faults):
            rep.duplicated.append(f"{job}: attempt {s.attempt} began after a later one")
    if fin.cancel_attempt is not None and any(s.attempt > fin.cancel_attempt for s in ordered):
        rep.canceled_then_started.append(job)
    tag = f"attempt {fin.attempts}"
    final_ok = any(e["r"] == "ok" for (a, _), e in hist.ends.items() if a == fin.attempts)
    if (fin.outcome == "succeeded" and (fin.value != tag or not final_ok)) or (
            fin.outcome == "failed" and fin.error_type == "FlakyError" and tag not in fin.error):
        rep.stale_accepted.append(job)


def _sweep(rep: Report, jobs: dict[str, _JobHistory], final: dict[str, FinalJob],
           faults: _Faults, maxp: int) -> None:
    """Most attempts running at once, from the workers' records (see the module docstring)."""
    points: list[tuple[float, int]] = []
    for job, hist in jobs.items():
        for s in hist.starts:
            interval = _interval(rep, s, hist, final.get(job), faults)
            if interval is not None:
                points += [(interval[0], 1), (interval[1], -1)]
    running = 0
    for t, step in sorted(points):  # at equal times an end (-1) sorts before a start
        running += step
        rep.max_running = max(rep.max_running, running)
        if step > 0 and running > maxp:
            rep.parallelism_breaches += 1
            rep.breach_times.append(t)


def _interval(rep: Report, s: _Start, hist: _JobHistory, fin: FinalJob | None,
              faults: _Faults) -> tuple[float, float] | None:
    """When attempt `s` held a slot; None for a fenced zombie that began after a pause."""
    end = hist.end_of(s)
    killed = faults.killed.get(s.pid)  # (a start recorded as the signal landed dies with it)
    stop = end["t"] if end else (max(killed, s.t) if killed is not None and
                                 killed + _SIGNAL_SLACK >= s.t else float("inf"))
    if hist.zombie_start(s, faults):
        rep.zombie_starts += 1
        rep.zombie_seconds_max = max(rep.zombie_seconds_max, stop - s.t if end else 0.0)
        return None
    given_away = hist.superseded_at(s) is not None or (
        fin is not None and fin.attempts == s.attempt and fin.error_type in _LOST)
    pause = faults.pause_in(s.pid, s.t, stop)
    if pause is None or not given_away:
        return s.t, stop
    rep.zombie_runs += 1
    if end is not None:
        rep.zombie_seconds_max = max(rep.zombie_seconds_max, end["t"] - pause[1])
    return s.t, pause[0]


def _recovery(rep: Report, events: list[Event], jobs: dict[str, _JobHistory]) -> None:
    """From a worker's SIGKILL (or SIGSTOP) to each of its attempts running again elsewhere."""
    labels = {"kill_worker": "worker SIGKILL to job running again",
              "kill_leader": "leader SIGKILL to its jobs running again",
              "pause_worker": "worker SIGSTOP to job running again"}
    faults = _Faults(events)
    others = [e["t"] for e in events if e["e"] == "fault" and e["kind"] in _DISRUPTIVE]
    by_pid: dict[int, list[_Start]] = defaultdict(list)
    for hist in jobs.values():
        for s in hist.starts:
            by_pid[s.pid].append(s)
    for e in events:
        if e["e"] != "fault" or e["kind"] not in labels:
            continue
        t, pid = e["t"], e["target"]
        for s in by_pid.get(pid, ()):
            end = jobs[s.job].end_of(s)
            if s.t > t or (end is not None and end["t"] <= t):
                continue
            nxt = [o.t for o in jobs[s.job].starts if o.attempt > s.attempt]
            if nxt and min(nxt) > t:  # else it had been superseded before this fault
                down = faults.redis_down_between(t, min(nxt))  # not the engine's time
                rep.recovery.setdefault(labels[e["kind"]], []).append(min(nxt) - t - down)
                if not any(t < d < min(nxt) for d in others):
                    rep.recovery.setdefault(labels[e["kind"]] + " (no other fault meanwhile)",
                                            []).append(min(nxt) - t)
