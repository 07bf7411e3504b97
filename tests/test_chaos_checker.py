"""The chaos checker on hand-written histories: each guarantee's violation is caught, and the
at-least-once re-runs a fault explains are not mistaken for violations."""

from __future__ import annotations

from typing import Any

from workpool.chaos.checker import FinalJob, check
from workpool.chaos.history import Event

W1, W2, RUNNER = 101, 102, 100


def ev(e: str, t: float, pid: int = RUNNER, **fields: Any) -> Event:
    return {"e": e, "t": t, "pid": pid, **fields}


def enqueued(job: str, t: float = 0.0) -> list[Event]:
    return [ev("invoke_enqueue", t, job=job, kind="fast"), ev("ack_enqueue", t + 0.001, job=job)]


def ran(job: str, attempt: int, pid: int, t0: float, t1: float, *, r: str = "ok") -> list[Event]:
    return [ev("start", t0, pid, job=job, a=attempt), ev("end", t1, pid, job=job, a=attempt, r=r)]


def delivered(job: str, t: float, pid: int = W1, n: int = 1, value: str = "attempt 1") -> Event:
    return ev("cb", t, pid, job=job, n=n, ok=True, kind="succeeded", value=value,
              error_type=None)


def done(attempts: int = 1, **kw: Any) -> FinalJob:
    fields: dict[str, Any] = {"state": "done", "outcome": "succeeded", "attempts": attempts,
                              "value": f"attempt {attempts}", "cb": "delivered", **kw}
    return FinalJob(**fields)


def one_clean_job() -> tuple[list[Event], dict[str, FinalJob]]:
    return [*enqueued("a"), *ran("a", 1, W1, 1.0, 1.1), delivered("a", 1.2)], {"a": done()}


def test_a_clean_history_passes_every_check() -> None:
    events, final = one_clean_job()
    report = check(events, final, max_parallelism=1)
    assert report.ok, report.violations()
    assert (report.acked, report.attempts, report.outcomes) == (1, 1, {"succeeded": 1})


def test_an_acknowledged_job_that_never_ends_is_lost() -> None:
    events, final = one_clean_job()
    events += enqueued("b", 2.0)
    final["b"] = FinalJob(state="pending", outcome="", attempts=0)
    report = check(events, final, max_parallelism=1)
    assert report.lost == ["b"]


def test_a_job_missing_from_redis_is_lost_unless_its_enqueue_was_never_acknowledged() -> None:
    events, final = one_clean_job()
    events += [*enqueued("b", 2.0), ev("invoke_enqueue", 3.0, job="c", kind="fast"),
               ev("indeterminate_enqueue", 3.5, job="c")]
    report = check(events, final, max_parallelism=1)
    assert (report.lost, report.indeterminate) == (["b"], 1)


def test_a_terminal_job_whose_on_complete_never_succeeded_has_a_lost_callback() -> None:
    events, final = one_clean_job()
    events = [e for e in events if e["e"] != "cb"]
    assert check(events, final, max_parallelism=1).lost_callbacks == ["a"]


def test_work_for_a_job_nobody_enqueued_is_unexpected() -> None:
    events, final = one_clean_job()
    events += ran("ghost", 1, W1, 2.0, 2.1)
    assert check(events, final, max_parallelism=1).unexpected == ["ghost"]


def test_a_second_successful_on_complete_without_a_fault_is_a_duplicate() -> None:
    events, final = one_clean_job()
    events.append(delivered("a", 1.5, n=2))
    report = check(events, final, max_parallelism=1)
    assert len(report.duplicated) == 1 and "delivery 2" in report.duplicated[0]


def test_a_second_on_complete_after_its_worker_was_killed_is_at_least_once() -> None:
    events, final = one_clean_job()
    events += [ev("fault", 1.25, kind="kill_worker", target=W1), delivered("a", 2.5, W2, n=2)]
    report = check(events, final, max_parallelism=1)
    assert report.ok, report.violations()
    assert report.callback_reruns_after_fault == 1


def test_a_run_after_a_success_is_a_duplicate_unless_a_fault_explains_it() -> None:
    events = [*enqueued("a"), *ran("a", 1, W1, 1.0, 1.1), *ran("a", 2, W2, 2.0, 2.1),
              delivered("a", 2.2, W2, value="attempt 2")]
    final = {"a": done(attempts=2)}
    assert len(check(events, final, max_parallelism=1).duplicated) == 1
    events.append(ev("fault", 1.15, kind="pause_worker", target=W1))
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert report.ok and report.reruns_after_fault == 1


def test_a_run_paused_past_its_heartbeat_may_be_run_again_though_it_ended_well() -> None:
    # paused mid-run, reaped as lost; it ended (ok) once resumed, its outcome stale by then
    events = [*enqueued("a"), ev("start", 1.0, W1, job="a", a=1),
              ev("fault", 1.1, kind="pause_worker", target=W1),
              ev("end", 4.0, W1, job="a", a=1, r="ok"), ev("resume", 4.0005, target=W1),
              *ran("a", 2, W1, 5.0, 5.1), delivered("a", 5.2, value="attempt 2")]
    final = {"a": done(attempts=2, error_type="WorkerLost")}
    report = check(events, final, max_parallelism=1)
    assert report.ok and report.reruns_after_fault == 1, report.violations()
    unpaused = [e for e in events if e["e"] not in ("fault", "resume")]
    assert len(check(unpaused, final, max_parallelism=1).duplicated) == 1


def test_a_run_begun_right_after_a_pause_may_be_run_again_though_it_ended_well() -> None:
    # delivered while paused, reaped as lost; begun (and ended ok) on waking, outcome stale
    events = [*enqueued("a"), ev("fault", 1.0, kind="pause_worker", target=W1),
              ev("resume", 4.0, target=W1), *ran("a", 1, W1, 4.001, 4.002),
              *ran("a", 2, W1, 5.0, 5.1), delivered("a", 5.2, value="attempt 2")]
    final = {"a": done(attempts=2, error_type="WorkerLost")}
    report = check(events, final, max_parallelism=1)
    assert report.ok and report.reruns_after_fault == 1, report.violations()


def test_different_results_seen_by_handlers_mean_two_terminal_transitions() -> None:
    events, final = one_clean_job()
    events += [ev("fault", 1.3, kind="kill_worker", target=W1),
               delivered("a", 1.5, W2, n=2, value="attempt 2")]
    report = check(events, final, max_parallelism=1)
    assert any("different terminal results" in d for d in report.duplicated)


def test_more_attempts_running_at_once_than_max_parallelism_is_a_breach() -> None:
    events = [*enqueued("a"), *enqueued("b"), *ran("a", 1, W1, 1.0, 2.0),
              *ran("b", 1, W2, 1.5, 2.5), delivered("a", 2.1), delivered("b", 2.6, W2)]
    final = {"a": done(), "b": done()}
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert (report.parallelism_breaches, report.max_running) == (1, 2)
    assert check(events, final, max_parallelism=2).parallelism_breaches == 0


def test_a_killed_worker_s_attempt_stops_counting_at_the_kill() -> None:
    events = [*enqueued("a"), *enqueued("b"), ev("start", 1.0, W1, job="a", a=1),
              ev("fault", 1.2, kind="kill_worker", target=W1), *ran("a", 2, W2, 1.5, 1.6),
              *ran("b", 1, W2, 1.7, 1.8), delivered("a", 1.65, W2, value="attempt 2"),
              delivered("b", 1.85, W2)]
    final = {"a": done(attempts=2), "b": done()}
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert report.ok, report.violations()
    assert report.recovery["worker SIGKILL to job running again"] == [1.5 - 1.2]


def test_a_start_recorded_just_after_its_process_was_killed_ends_with_the_kill() -> None:
    # the kill is recorded before the signal lands: the process may still record a start
    events = [*enqueued("a"), *enqueued("b"), ev("fault", 1.0, kind="kill_leader", target=W1),
              ev("start", 1.0004, W1, job="a", a=1), *ran("a", 2, W2, 3.0, 3.1),
              *ran("b", 1, W2, 3.2, 3.3), delivered("a", 3.15, W2, value="attempt 2"),
              delivered("b", 3.35, W2)]
    final = {"a": done(attempts=2), "b": done()}
    report = check(events, final, max_parallelism=1)
    assert report.ok, report.violations()
    late = [e if e["e"] != "start" or e["pid"] != W1 else {**e, "t": 1.2} for e in events]
    assert check(late, final, max_parallelism=1).parallelism_breaches > 0


def test_a_paused_worker_s_superseded_attempt_is_a_zombie_not_a_breach() -> None:
    events = [*enqueued("a"), ev("start", 1.0, W1, job="a", a=1),
              ev("fault", 1.1, kind="pause_worker", target=W1), *ran("a", 2, W2, 3.0, 3.5),
              ev("resume", 3.9, target=W1), ev("end", 4.0, W1, job="a", a=1, r="ok"),
              delivered("a", 3.6, W2, value="attempt 2")]
    final = {"a": done(attempts=2)}
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert report.ok, report.violations()
    without_pause = [e for e in events if e["e"] != "fault"]
    assert check(without_pause, final, max_parallelism=1).parallelism_breaches == 1


def test_a_start_after_the_cancel_took_effect_is_caught() -> None:
    events, _ = one_clean_job()
    final = {"a": FinalJob(state="canceled", outcome="canceled", attempts=1, cancel_attempt=0,
                           cb="delivered")}
    events = [e for e in events if e["e"] != "cb"] + [
        ev("cb", 1.2, W1, job="a", n=1, ok=True, kind="canceled", value=None, error_type=None)]
    assert check(events, final, max_parallelism=1).canceled_then_started == ["a"]
    final["a"] = FinalJob(state="done", outcome="succeeded", attempts=1, value="attempt 1",
                          cancel_attempt=1, cb="delivered")
    assert check(events, final, max_parallelism=1).canceled_then_started == []


def test_an_applied_outcome_of_another_attempt_is_a_stale_completion_accepted() -> None:
    events = [*enqueued("a"), ev("start", 1.0, W1, job="a", a=1),
              ev("fault", 1.1, kind="pause_worker", target=W1),
              *ran("a", 2, W2, 3.0, 3.5, r="error"),
              ev("end", 4.0, W1, job="a", a=1, r="ok"), delivered("a", 4.1, W2)]
    final = {"a": done(attempts=2, value="attempt 1")}  # attempt 1's value, applied late
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert report.stale_accepted == ["a"]


def test_a_superseded_attempt_begun_by_a_process_back_from_a_pause_is_a_fenced_zombie() -> None:
    events = [*enqueued("a"), ev("fault", 1.0, kind="pause_worker", target=W1),
              *ran("a", 2, W2, 3.0, 3.5), delivered("a", 3.6, W2, value="attempt 2"),
              ev("resume", 3.8, target=W1), *ran("a", 1, W1, 3.9, 4.0)]
    final = {"a": done(attempts=2)}
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert report.ok, report.violations()
    assert report.zombie_starts == 1
    unexplained = [e for e in events if e["e"] not in ("fault", "resume")]
    report = check(sorted(unexplained, key=lambda e: e["t"]), final, max_parallelism=1)
    assert any("began after a later one" in d for d in report.duplicated)


def test_an_attempt_lost_for_good_while_paused_stops_counting_at_the_pause() -> None:
    events = [*enqueued("a"), *enqueued("b"), ev("start", 1.0, W1, job="a", a=1),
              ev("fault", 1.1, kind="pause_worker", target=W1), *ran("b", 1, W2, 2.0, 2.5),
              ev("resume", 3.0, target=W1), ev("end", 3.2, W1, job="a", a=1, r="cancelled"),
              ev("cb", 2.1, W2, job="a", n=1, ok=True, kind="failed", value=None,
                 error_type="WorkerLost"), delivered("b", 2.6, W2)]
    final = {"a": FinalJob(state="done", outcome="failed", attempts=1, error="lost",
                           error_type="WorkerLost", cb="delivered"), "b": done()}
    report = check(sorted(events, key=lambda e: e["t"]), final, max_parallelism=1)
    assert report.ok, report.violations()
    assert (report.zombie_runs, round(report.zombie_seconds_max, 3)) == (1, 0.2)
