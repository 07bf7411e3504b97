"""What a chaos run's check found: per guarantee, the jobs at fault and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from workpool.chaos.parallelism import Parallelism


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
    step_result_changed: list[str] = field(default_factory=list)
    event_duplicated: list[str] = field(default_factory=list)
    event_lost: list[str] = field(default_factory=list)
    sleep_early: list[str] = field(default_factory=list)
    flows: int = 0  #: workflows started (children too)
    sleeps: int = 0
    events_sent: int = 0
    events_received: int = 0
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
                    "wrong_outcome", "step_result_changed", "event_duplicated", "event_lost",
                    "sleep_early")}}

    @property
    def ok(self) -> bool:
        return not any(self.violations().values())
