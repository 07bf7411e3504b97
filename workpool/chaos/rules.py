"""The per-job rules of the chaos checker, one function per promise of the README. Each adds
what it finds to the report; every transition of a job is one Lua script, so checking the jobs
one at a time suffices (Porcupine's P-compositionality)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from workpool.chaos.jobs import MAX_ATTEMPTS, Cancel, FinalJob, JobHistory, Start
from workpool.chaos.timeline import SIGNAL_SLACK, Timeline
from workpool.types import Canceled

if TYPE_CHECKING:
    from workpool.chaos.report import Report

#: the jobs' own planned errors (their message names the attempt) and whether they retry
JOB_ERRORS = {"FlakyError": True, "DoomedError": False}
#: what the engine (or the worker) fails an attempt with, and whether it retries
ENGINE_ERRORS = {"WorkerLost": True, "Timeout": True, "ChildProcessLost": True,
                 "WorkerError": True, "PayloadTooLarge": False}
#: the kinds that can never succeed: every attempt fails, or its result is refused
NEVER_SUCCEED = ("doomed", "bulky", "hang", "stubborn", "stuck")
#: the kinds that fail their attempts before the `args[0]`-th (so every one past MAX_ATTEMPTS)
FAIL_UNTIL = ("flaky", "crash")
#: the failures planned by a kind of job, and only by it
OWN_ERRORS = {"DoomedError": ("doomed",), "PayloadTooLarge": ("bulky",),
              "FlakyError": FAIL_UNTIL, "ChildProcessLost": ("crash",)}


def tag(attempt: int) -> str:
    return f"attempt {attempt}"


def final_end(end: dict[str, object]) -> bool:
    """An attempt end that, once applied, leaves nothing to retry: a returned value (or one
    the size cap refuses), or a non-retryable error."""
    return end["r"] == "ok" or (end["r"] == "error" and JOB_ERRORS.get(str(end.get("err")))
                                is False)


def runs(rep: Report, job: str, hist: JobHistory, tl: Timeline) -> None:
    """No attempt begins twice, none after a newer one began, and none after an attempt that
    ended the job, unless a fault on that attempt's worker during its run (from admission to
    the next start), or its running past its timeout, explains why its outcome never landed."""
    ordered = hist.by_attempt()
    for attempt, group in itertools.groupby(ordered, key=lambda s: s.attempt):
        if len(list(group)) > 1:
            rep.duplicated.append(f"{job}: attempt {attempt} began more than once")
    for s in ordered:
        later = hist.superseded_at(s)
        if later is not None and later < s.t:
            rep.started_late.append(f"{job}: attempt {s.attempt} began after a later one")
    for s, nxt in itertools.pairwise(ordered):
        end = hist.end_of(s)
        if nxt.attempt == s.attempt or end is None or not final_end(end):
            continue
        if tl.hit(s.pid, s.admitted, nxt.t) or _past_timeout(s, end["t"]):
            rep.reruns_after_fault += 1
        else:
            rep.duplicated.append(f"{job}: attempt {nxt.attempt} ran after attempt "
                                  f"{s.attempt} ended it ({end['r']}) with no fault on its run")


def _past_timeout(s: Start, ended: float) -> bool:
    return s.to is not None and ended + SIGNAL_SLACK >= s.admitted + s.to


def callbacks(rep: Report, job: str, fin: FinalJob, hist: JobHistory, tl: Timeline) -> None:
    """One delivery closed; every handler run saw the job's final result; a handler succeeded
    again only after a fault on the earlier run's worker during that delivery (its outcome
    never landed), or a pause of the later run's worker between its delivery's hand-out and
    its run (a superseded delivery, woken)."""
    if not hist.cbs or fin.cb != "delivered":
        rep.lost_callbacks.append(job)
    ok = fin.outcome == "succeeded"  # (its Result drops the error an earlier attempt left)
    want = (fin.outcome, str(fin.value), "" if ok else fin.error_type)
    for c in hist.cbs:
        seen = (c.get("kind"), str(c.get("value")), c.get("error_type") or "")
        if seen != want:
            rep.duplicated.append(f"{job}: on_complete delivery {c['n']} saw {seen}, not the "
                                  f"final result {want}")
    for prev, nxt in itertools.pairwise(hist.cbs):
        if tl.hit(prev["pid"], prev.get("d") or prev["t"], nxt["t"]) or \
                tl.pause_overlapping(nxt["pid"], nxt.get("d") or nxt["t"], nxt["t"]):
            rep.callback_reruns_after_fault += 1
        else:
            rep.duplicated.append(f"{job}: on_complete succeeded again, delivery {nxt['n']}")


def cancels(rep: Report, job: str, fin: FinalJob, hist: JobHistory) -> None:
    """Judged from what each cancel answered the client (not from what Redis says): after
    CANCELED, MARKED or FINISHED no attempt is admitted, and after CANCELED or FINISHED none
    begins (after MARKED the one running may record its start late); CANCELED ends the job
    canceled, MARKED and FINISHED end it done. A job nobody canceled never ends canceled."""
    if fin.state == "canceled" and not hist.cancels:
        rep.cancel_contradicted.append(f"{job}: canceled, though no cancel was sent")
    for c in hist.cancels:
        if c.answered is None or c.result not in _STOPS:
            continue
        # admitted after the answer (its dispatch time is a lower bound): after the cancel
        admitted = [s for s in hist.starts if (s.d or s.t) > c.answered]
        begun = [s for s in hist.starts if s.t > c.answered] if c.result != Canceled.MARKED \
            else []  # the attempt a marked cancel found running may record its start late
        for s in sorted({*admitted, *begun}, key=lambda s: s.t)[:1]:
            rep.canceled_then_started.append(f"{job}: attempt {s.attempt} began after the "
                                             f"cancel answered {c.result}")
        _cancel_outcome(rep, job, fin, c)


#: what a cancel's answer leaves a job to end as (UNKNOWN: the acknowledged job is gone)
_ENDS_AS = {Canceled.CANCELED: ("canceled",), Canceled.MARKED: ("done",),
            Canceled.FINISHED: ("done",), Canceled.UNKNOWN: ()}
_STOPS = tuple(_ENDS_AS)


def _cancel_outcome(rep: Report, job: str, fin: FinalJob, c: Cancel) -> None:
    if fin.state not in _ENDS_AS[Canceled(c.result)]:
        rep.cancel_contradicted.append(f"{job}: the cancel answered {c.result}, the job "
                                       f"ended {fin.state} ({fin.outcome})")


def outcome(rep: Report, job: str, fin: FinalJob, hist: JobHistory) -> None:
    """The applied outcome is the final attempt's own (stale_accepted), and it is the one its
    kind plans, with the attempt count the retry rules give (wrong_outcome)."""
    ends = {a: e for (a, _), e in hist.ends.items() if a == fin.attempts}
    last = max((s.attempt for s in hist.starts), default=0)
    if last > fin.attempts:
        rep.stale_accepted.append(f"{job}: attempt {last} ran, the final state counts "
                                  f"{fin.attempts}")
    own = ends.get(fin.attempts)
    if fin.outcome == "succeeded" and (fin.value != tag(fin.attempts) or own is None or
                                       own["r"] != "ok"):
        rep.stale_accepted.append(f"{job}: succeeded with {fin.value!r}, not the value of its "
                                  f"final attempt {fin.attempts}")
    elif fin.outcome == "failed" and fin.error_type in JOB_ERRORS and (
            tag(fin.attempts) not in fin.error or own is None or own["r"] != "error"):
        rep.stale_accepted.append(f"{job}: failed with an error of another attempt than its "
                                  f"final {fin.attempts}")
    elif fin.error_type == "PayloadTooLarge" and (own is None or own["r"] != "ok"):
        rep.stale_accepted.append(f"{job}: refused a result its final attempt never returned")
    _planned(rep, job, fin, hist)


def _planned(rep: Report, job: str, fin: FinalJob, hist: JobHistory) -> None:
    kind = hist.kind
    always_fails = kind in NEVER_SUCCEED or (
        kind in FAIL_UNTIL and int(str(hist.args[0])) > MAX_ATTEMPTS)
    if fin.outcome == "succeeded" and always_fails:
        rep.wrong_outcome.append(f"{job}: a {kind} job succeeded")
    if fin.outcome != "failed":
        return
    retries = JOB_ERRORS.get(fin.error_type, ENGINE_ERRORS.get(fin.error_type))
    if retries is None:
        rep.wrong_outcome.append(f"{job}: failed with an unexpected {fin.error_type}")
    elif retries and fin.attempts < MAX_ATTEMPTS and not hist.cancels:
        rep.wrong_outcome.append(f"{job}: failed with a retryable {fin.error_type} after "
                                 f"{fin.attempts} of {MAX_ATTEMPTS} attempts")
    elif fin.attempts > MAX_ATTEMPTS:
        rep.wrong_outcome.append(f"{job}: {fin.attempts} attempts, more than {MAX_ATTEMPTS}")
    elif fin.error_type in OWN_ERRORS and (kind not in OWN_ERRORS[fin.error_type] or not (
            always_fails or hist.cancels)):  # (a cancel stops the retries that would succeed)
        rep.wrong_outcome.append(f"{job}: a {kind} job failed with {fin.error_type}")
