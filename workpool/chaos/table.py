"""Prints a chaos report as the table README's "Guarantees" section quotes."""

from __future__ import annotations

from workpool.chaos.checker import Report


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def render(report: Report, header: str) -> str:
    """The report as plain-text rows: the run, the faults, the checks, the recovery times."""
    rows = [header, "",
            f"jobs enqueued (invoked)   {report.jobs}",
            f"  acknowledged            {report.acked}",
            f"  indeterminate           {report.indeterminate}",
            f"attempts started          {report.attempts}",
            "final outcomes            " + ", ".join(
                f"{k} {v}" for k, v in sorted(report.outcomes.items())),
            "faults injected           " + ", ".join(
                f"{k} {v}" for k, v in sorted(report.faults.items())), "",
            f"{'check':<28}{'count':>8}  must be 0"]
    for name, count in report.violations().items():
        rows.append(f"{name:<28}{count:>8}  {'ok' if count == 0 else 'VIOLATED'}")
    rows += ["",
             f"stale completions rejected  {report.stale_rejected}",
             f"re-runs after a fault       {report.reruns_after_fault} (at-least-once, fenced)",
             f"on_complete re-runs (fault) {report.callback_reruns_after_fault}",
             f"zombie attempts (paused, fenced): given away {report.zombie_runs}, begun late "
             f"{report.zombie_starts}, longest run after resume "
             f"{report.zombie_seconds_max:.3f} s",
             f"max attempts running        {report.max_running}", "",
             f"{'recovery latency (s)':<44}{'n':>5}{'p50':>8}{'p99':>8}{'max':>8}"]
    for label, values in sorted(report.recovery.items()):
        if values:
            rows.append(f"{label:<44}{len(values):>5}{percentile(values, 0.5):>8.2f}"
                        f"{percentile(values, 0.99):>8.2f}{max(values):>8.2f}")
    for name in ("lost", "lost_callbacks", "duplicated", "unexpected", "canceled_then_started",
                 "stale_accepted"):
        found: list[str] = getattr(report, name)
        if found:
            rows.append(f"{name}: {', '.join(found[:10])}{' ...' if len(found) > 10 else ''}")
    if report.breach_times:
        rows.append("parallelism breaches at: " + ", ".join(
            f"{t:.3f}" for t in report.breach_times[:10]))
    rows.append("" if report.ok else "VIOLATIONS FOUND")
    return "\n".join(rows)
