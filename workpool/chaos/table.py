"""Prints a chaos report as the table README's "Guarantees" section quotes."""

from __future__ import annotations

from workpool.chaos.report import Report


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def render(report: Report, header: str) -> str:
    """The report as plain-text rows: the run, the faults, the checks, both parallelism
    counts, the recovery times."""
    par = report.parallelism
    rows = [header, "",
            f"jobs enqueued (invoked)   {report.jobs}",
            f"  acknowledged            {report.acked}",
            f"  indeterminate           {report.indeterminate}",
            f"attempts started          {report.attempts}",
            f"workflows (with children) {report.flows}: {report.sleeps} sleeps, events "
            f"{report.events_sent} sent, {report.events_received} received",
            "final outcomes            " + ", ".join(
                f"{k} {v}" for k, v in sorted(report.outcomes.items())),
            "faults injected           " + ", ".join(
                f"{k} {v}" for k, v in sorted(report.faults.items())), "",
            f"{'check':<28}{'count':>8}  must be 0"]
    for name, count in report.violations().items():
        rows.append(f"{name:<28}{count:>8}  {'ok' if count == 0 else 'VIOLATED'}")
    stale = ", ".join(f"{why} {n} (longest {par.stale_longest_s.get(why, 0.0):.3f} s)"
                      for why, n in sorted(par.stale.items())) or "none"
    rows += ["",
             f"attempts admitted at once, most     {par.max_admitted} (the engine's count)",
             f"attempts executing at once, most    {par.max_executing} "
             f"(over the limit {par.executing_over_limit_s:.3f} s in all, longest "
             f"{par.executing_over_limit_longest_s:.3f} s); {par.max_executing_within_timeouts} "
             "leaving out code past its timeout",
             f"ran on after their replacement began {stale}",
             f"still executing when the run ended  {par.never_ended} (code that never returns)",
             f"stale completions rejected          {report.stale_rejected}",
             f"malformed entries set aside         {report.entries_rejected}",
             f"re-runs explained by a fault        {report.reruns_after_fault} (at-least-once)",
             f"on_complete re-runs (fault)         {report.callback_reruns_after_fault}", "",
             f"{'recovery latency (s)':<48}{'n':>5}{'p50':>8}{'p99':>8}{'max':>8}"]
    for label, values in sorted(report.recovery.items()):
        if values:
            rows.append(f"{label:<48}{len(values):>5}{percentile(values, 0.5):>8.2f}"
                        f"{percentile(values, 0.99):>8.2f}{max(values):>8.2f}")
    for name in report.violations():
        found = getattr(report, name, None)
        if isinstance(found, list) and found:
            rows.append(f"{name}: {'; '.join(found[:10])}{' ...' if len(found) > 10 else ''}")
    if par.breach_times:
        rows.append("parallelism breaches at: " + ", ".join(
            f"{t:.3f}" for t in par.breach_times[:10]))
    rows.append("" if report.ok else "VIOLATIONS FOUND")
    return "\n".join(rows)
