"""When each fault of a chaos run hit what: the processes killed (or replaced by an execv
restart), paused and resumed, and the windows during which Redis was down, frozen or refusing.
The checker explains a re-run, and cuts an attempt's slot short, only by what this says."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from workpool.chaos.history import Event

SIGNAL_SLACK = 0.05  #: s between recording a fault and its signal landing
#: faults during which Redis cannot make progress (down, frozen, or refusing writes)
REDIS_FAULTS = ("kill_redis", "redis_unreachable", "redis_oom", "redis_busy", "redis_readonly")
#: faults that last: recorded by `fault` when they begin and `fault_end` when they are over
LASTING = ("pause_worker", *REDIS_FAULTS)
#: faults that stall every recovery while they last, a leader's loss included
DISRUPTIVE = ("kill_leader", *REDIS_FAULTS)


@dataclass(frozen=True)
class Window:
    """One fault from when it was recorded to when it was over (equal for an instant one)."""

    kind: str
    began: float
    ended: float
    target: int | str | None = None


@dataclass
class Timeline:
    """Every fault of the history, per process and per kind."""

    ends: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    paused: dict[int, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))
    windows: list[Window] = field(default_factory=list)
    #: (time, pid) each time the leader was known (_leader_named)
    leaders: list[tuple[float, int]] = field(default_factory=list)
    last: float = 0.0  #: the last event of the run

    @classmethod
    def of(cls, events: list[Event]) -> Timeline:
        """Read the faults (recorded `fault` ... `fault_end`) and process boots."""
        tl = cls()
        open_: dict[tuple[str, object], Event] = {}
        for e in events:
            tl.last = max(tl.last, e["t"])
            leader = _leader_named(e)
            if leader is not None:
                tl.leaders.append((e["t"], leader))
            kind = e["e"]
            if kind == "boot":  # a process image began: whatever the pid ran before ended
                tl.ends[e["pid"]].append(e["t"])
            elif kind == "fault":
                if e["kind"] in ("kill_worker", "kill_leader"):
                    tl.ends[e["target"]].append(e["t"])
                if e["kind"] in LASTING:
                    open_[(e["kind"], e.get("target"))] = e
                else:
                    tl._close(e, e["t"])
            elif kind == "fault_end":
                began = open_.pop((e["kind"], e.get("target")), None)
                if began is not None:
                    tl._close(began, e["t"])
        for began in open_.values():  # never over (a process paused to the end): for ever
            tl._close(began, float("inf"))
        for times in tl.ends.values():
            times.sort()
        return tl

    def _close(self, began: Event, ended: float) -> None:
        kind, target = began["kind"], began.get("target")
        if kind == "pause_worker":
            self.paused[began["target"]].append((began["t"], ended))
        self.windows.append(Window(kind, began["t"], ended, target))

    def end_after(self, pid: int, t: float) -> float | None:
        """The first kill or restart of `pid` at or after `t` (a start recorded as the signal
        landed still dies with it)."""
        times = self.ends.get(pid, [])
        i = bisect.bisect_left(times, t - SIGNAL_SLACK)
        return times[i] if i < len(times) else None

    def killed_in(self, pid: int, after: float, before: float) -> bool:
        """Was `pid` killed or restarted in [after, before]?"""
        end = self.end_after(pid, after)
        return end is not None and end <= before

    def pause_overlapping(self, pid: int, after: float,
                          before: float) -> tuple[float, float] | None:
        """The first pause of `pid` that overlapped [after, before]."""
        return next((p for p in self.paused.get(pid, ())
                     if p[0] - SIGNAL_SLACK <= before and p[1] >= after), None)

    def hit(self, pid: int, after: float, before: float) -> bool:
        """Was `pid` paused at some moment of [after, before], or killed within it?"""
        return self.killed_in(pid, after, before) or \
            self.pause_overlapping(pid, after, before) is not None

    def redis_down_between(self, after: float, before: float) -> float:
        """Seconds of [after, before] during which Redis was down, frozen or refusing."""
        return sum(max(0.0, min(w.ended, before) - max(w.began, after))
                   for w in self.windows if w.kind in REDIS_FAULTS)

    def disrupted(self, after: float, before: float, target: int | None = None) -> bool:
        """Did a leader's loss or a Redis fault happen in (after, before), another fault to
        `target`, or any fault to the leader of the moment (a pause of the one that just took
        over stalls the recovery it would run as surely as its kill)?"""
        return any(after < w.began < before for w in self.windows
                   if w.kind in DISRUPTIVE or (target is not None and w.target == target)
                   or (w.target is not None and w.target == self._leader_at(w.began)))

    def _leader_at(self, t: float) -> int | None:
        """The last leader known at `t`."""
        i = bisect.bisect_right(self.leaders, (t, float("inf")))
        return self.leaders[i - 1][1] if i else None


def _leader_named(e: Event) -> int | None:
    """The lease holder an event names: the one a kill_leader fault hit, the one that held the
    lease after it (lease_handover), the one another fault recorded (`leader`)."""
    if e["e"] == "fault" and e["kind"] == "kill_leader":
        return int(e["target"])
    if e["e"] in ("fault", "lease_handover") and e.get("leader") is not None:
        return int(e["leader"])
    return None
