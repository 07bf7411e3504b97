"""Two counts of attempts at once, from the workers' own records:

- admitted: what the engine holds a slot for, from the attempt's admission (its dispatch
  entry's Redis time) to its end record, cut short where the engine gave the attempt away
  (its worker paused and was declared lost, its timeout passed, its worker was killed). Each
  interval lies within the engine's slot, so any overlap past max_parallelism is a real breach.
- executing: what user code was doing, from the start record to the attempt's own end record
  (or its process's kill or restart, or the end of the run): a paused process's attempt that
  runs on after it wakes, or code that ignores its timeout, counts as long as it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workpool.chaos.jobs import FinalJob, JobHistory, Start
from workpool.chaos.timeline import Timeline

LOST_TYPES = ("WorkerLost", "Timeout")  #: outcomes by which the engine ended an attempt itself


@dataclass
class Parallelism:
    """Both counts, and the attempts that ran on after the engine had given them away."""

    max_admitted: int = 0
    admitted_breaches: int = 0
    breach_times: list[float] = field(default_factory=list)
    max_executing: int = 0
    #: the same, leaving out code that ran on past its timeout (it cannot be stopped in a
    #: thread, and is counted above for as long as it runs)
    max_executing_within_timeouts: int = 0
    executing_over_limit_s: float = 0.0  #: total time more attempts executed than the limit
    executing_over_limit_longest_s: float = 0.0
    #: attempts that executed on after their replacement had started, by why they were given
    #: away ("pause", "timeout", "kill"), with the longest such tail (after a pause: from the
    #: process's waking)
    stale: dict[str, int] = field(default_factory=dict)
    stale_longest_s: dict[str, float] = field(default_factory=dict)
    never_ended: int = 0  #: attempts still executing when the run ended (code that never returns)


def sweep(jobs: dict[str, JobHistory], final: dict[str, FinalJob], tl: Timeline,
          max_parallelism: int) -> Parallelism:
    """Both counts over every attempt of the run."""
    par = Parallelism()
    admitted: list[tuple[float, int]] = []
    executing: list[tuple[float, int]] = []
    within: list[tuple[float, int]] = []
    for job, hist in jobs.items():
        for s in hist.starts:
            began, cut, ended = _interval(par, s, hist, final.get(job), tl)
            if cut > began:
                admitted += [(began, 1), (cut, -1)]
            executing += [(s.t, 1), (ended, -1)]
            timeout = s.admitted + s.to if s.to is not None else ended
            within += [(s.t, 1), (max(s.t, min(ended, timeout)), -1)]
    running = 0
    for _, step in sorted(within):
        running += step
        par.max_executing_within_timeouts = max(par.max_executing_within_timeouts, running)
    running = 0
    for t, step in sorted(admitted):  # at equal times an end (-1) sorts before a start
        running += step
        par.max_admitted = max(par.max_admitted, running)
        if step > 0 and running > max_parallelism:
            par.admitted_breaches += 1
            par.breach_times.append(t)
    running, over_since = 0, None
    for t, step in sorted(executing):
        running += step
        par.max_executing = max(par.max_executing, running)
        if running > max_parallelism and over_since is None:
            over_since = t
        elif running <= max_parallelism and over_since is not None:
            par.executing_over_limit_s += t - over_since
            par.executing_over_limit_longest_s = max(par.executing_over_limit_longest_s,
                                                     t - over_since)
            over_since = None
    return par


def _interval(par: Parallelism, s: Start, hist: JobHistory, fin: FinalJob | None,
              tl: Timeline) -> tuple[float, float, float]:
    """(admitted, cut, ended): the slot is [admitted, cut], the code ran [s.t, ended]."""
    end = hist.end_of(s)
    died = tl.end_after(s.pid, s.t)
    ended = end["t"] if end is not None else (died if died is not None else tl.last)
    given_away = hist.superseded_at(s) is not None or (
        fin is not None and fin.attempts == s.attempt and fin.error_type in LOST_TYPES)
    cut, why, pause = ended, "", None
    if died is not None and died < cut:  # a child of a killed worker may run on
        cut, why = died, "kill"
    if given_away:
        pause = tl.pause_overlapping(s.pid, s.admitted, ended)
        if pause is not None and pause[0] < cut:
            cut, why = max(pause[0], s.admitted), "pause"
        if s.to is not None and s.admitted + s.to < cut:
            cut, why = s.admitted + s.to, "timeout"
    if s.to is not None and s.admitted + s.to < cut:
        # code past its timeout never holds its slot longer: the engine ends the attempt at
        # the timeout (the worker's timer, else the reaper), though no later start may record
        # it (its next attempt went to a worker killed before it began)
        cut = s.admitted + s.to
    replaced = hist.superseded_at(s)
    if why and replaced is not None and ended > replaced:
        par.stale[why] = par.stale.get(why, 0) + 1
        since = max(replaced, pause[1]) if why == "pause" and pause is not None else replaced
        par.stale_longest_s[why] = max(par.stale_longest_s.get(why, 0.0), ended - since)
    par.never_ended += end is None and died is None
    return s.admitted, cut, ended
