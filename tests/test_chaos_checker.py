"""The chaos checker on hand-written histories. Each rule's violation is caught, including the
histories the checker's earlier, looser rules let pass (each such test says which), and the
at-least-once re-runs that a fault on the run's own worker explains are not violations."""

from __future__ import annotations

from helpers.histories import (
    W1,
    W2,
    Event,
    FinalJob,
    Report,
    canceled,
    checked,
    delivered,
    done,
    enqueued,
    ev,
    failed,
    fault,
    ran,
    started,
)


def one_clean_job() -> tuple[list[Event], dict[str, FinalJob]]:
    return [*enqueued("a"), *ran("a", 1, W1, 1.0, 1.1), delivered("a", 1.2)], {"a": done()}


def twice(first: list[Event], *extra: Event) -> list[Event]:
    """Job a: attempt 1 as given, then attempt 2 on W2 at 5.0, delivered."""
    return [*enqueued("a"), *first, *ran("a", 2, W2, 5.0, 5.1),
            delivered("a", 5.2, W2, value="attempt 2"), *extra]


# -- lost, callbacks, unexpected ---------------------------------------------------------------

def test_a_clean_history_passes_every_check() -> None:
    report = checked(*one_clean_job())
    assert report.ok, report.violations()
    assert (report.acked, report.attempts, report.outcomes) == (1, 1, {"succeeded": 1})


def test_an_acknowledged_job_that_never_ends_is_lost() -> None:
    events, final = one_clean_job()
    final["b"] = FinalJob(state="pending", outcome="", attempts=0)
    assert checked([*events, *enqueued("b", 2.0)], final).lost == ["b"]


def test_a_job_missing_from_redis_is_lost_unless_its_enqueue_was_never_acknowledged() -> None:
    events, final = one_clean_job()
    events += [*enqueued("b", 2.0), ev("invoke_enqueue", 3.0, job="c", kind="fast"),
               ev("indeterminate_enqueue", 3.5, job="c")]
    report = checked(events, final)
    assert (report.lost, report.indeterminate) == (["b"], 1)


def test_a_terminal_job_whose_on_complete_never_succeeded_has_a_lost_callback() -> None:
    events, final = one_clean_job()
    assert checked([e for e in events if e["e"] != "cb"], final).lost_callbacks == ["a"]


def test_work_for_a_job_nobody_enqueued_or_a_job_made_of_a_poison_entry_is_unexpected() -> None:
    events, final = one_clean_job()
    final["poison:1"] = done()
    report = checked([*events, *ran("ghost", 1, W1, 2.0, 2.1)], final)
    assert report.unexpected == ["ghost", "poison:1"]


# -- duplicated: on_complete --------------------------------------------------------------------

def test_a_second_successful_on_complete_without_a_fault_is_a_duplicate() -> None:
    events, final = one_clean_job()
    report = checked([*events, delivered("a", 1.5, n=2)], final)
    assert len(report.duplicated) == 1 and "delivery 2" in report.duplicated[0]


def test_a_second_on_complete_after_its_worker_was_killed_is_at_least_once() -> None:
    events, final = one_clean_job()
    report = checked([*events, *fault("kill_worker", 1.25, W1), delivered("a", 2.5, W2, n=2)],
                     final)
    assert report.ok and report.callback_reruns_after_fault == 1, report.violations()


def test_a_pause_that_ended_before_the_delivery_does_not_explain_a_second_run() -> None:
    # loose rule: any resume of its process within 10 s explained a re-run
    events, final = one_clean_job()
    events += [*fault("pause_worker", 0.1, W1, until=0.5), delivered("a", 2.5, W2, n=2)]
    assert len(checked(events, final).duplicated) == 1


def test_a_superseded_delivery_run_by_a_worker_woken_from_a_pause_is_at_least_once() -> None:
    events, final = one_clean_job()  # delivery 1 ran on W1 at 1.2; a stale one runs late on W2
    stale = {**delivered("a", 4.0, W2, n=0), "d": 0.9}
    assert len(checked([*events, stale], final).duplicated) == 1
    report = checked([*events, stale, *fault("pause_worker", 1.0, W2, 3.9)], final)
    assert report.ok and report.callback_reruns_after_fault == 1, report.violations()


def test_a_handler_that_saw_another_result_than_the_final_one_is_caught() -> None:
    # loose rule: handlers were compared with each other only, never with the job's result
    events = [*enqueued("a"), *ran("a", 1, W1, 1.0, 1.1),
              delivered("a", 1.2, kind="failed", value=None, error_type="FlakyError")]
    report = checked(events, {"a": done()})
    assert report.violations() == {**dict.fromkeys(report.violations(), 0), "duplicated": 1}


# -- duplicated and started_late: attempts ------------------------------------------------------

def test_a_run_after_a_success_is_a_duplicate_unless_a_fault_on_that_run_explains_it() -> None:
    final = {"a": done(attempts=2)}
    assert len(checked(twice(ran("a", 1, W1, 1.0, 1.1)), final).duplicated) == 1
    report = checked(twice(ran("a", 1, W1, 1.0, 1.1), *fault("pause_worker", 1.15, W1, 3.0)),
                     final)
    assert report.ok and report.reruns_after_fault == 1, report.violations()
    report = checked(twice(ran("a", 1, W1, 1.0, 1.1), *fault("kill_worker", 1.2, W1)), final)
    assert report.ok, report.violations()


def test_a_fault_on_another_worker_does_not_explain_a_re_run() -> None:
    final = {"a": done(attempts=2)}
    events = twice(ran("a", 1, W1, 1.0, 1.1), *fault("kill_worker", 1.2, W2))
    assert len(checked(events, final).duplicated) == 1


def test_a_success_that_ended_after_the_next_attempt_began_needs_a_fault_too() -> None:
    # loose rule: it was skipped as "fenced" with no fault required
    final = {"a": done(attempts=2)}
    events = twice(ran("a", 1, W1, 1.0, 5.05))
    report = checked(events, final, maxp=2)
    assert report.violations() == {**dict.fromkeys(report.violations(), 0), "duplicated": 1}
    explained = twice(ran("a", 1, W1, 1.0, 5.05), *fault("pause_worker", 1.1, W1, 5.0))
    assert checked(explained, final).ok


def test_a_pause_well_before_the_run_does_not_explain_a_re_run() -> None:
    # loose rule: any resume within 10 s before the run explained it
    final = {"a": done(attempts=2)}
    events = twice(ran("a", 1, W1, 1.0, 1.1), *fault("pause_worker", 0.1, W1, 0.5))
    assert len(checked(events, final).duplicated) == 1


def test_an_attempt_handed_out_while_its_worker_was_paused_and_begun_on_waking() -> None:
    # admitted (dispatched) during the pause: the pause overlapped that run
    final = {"a": done(attempts=2)}
    events = twice(ran("a", 1, W1, 4.0, 4.1, d=1.5), *fault("pause_worker", 1.0, W1, 3.9))
    report = checked(events, final)
    assert report.ok and report.reruns_after_fault == 1, report.violations()


def test_a_success_past_its_timeout_may_be_run_again() -> None:
    final = {"a": done(attempts=2)}
    events = twice(ran("a", 1, W1, 1.0, 2.0, d=0.9, to=0.5))
    assert checked(events, final).ok
    assert checked(twice(ran("a", 1, W1, 1.0, 1.2, d=0.9, to=0.5)), final).duplicated


def test_a_non_retryable_failure_then_another_attempt_is_a_duplicate() -> None:
    final = {"a": failed(2, "DoomedError", "planned failure of attempt 2")}
    events = [*enqueued("a", kind="doomed"), *ran("a", 1, W1, 1.0, 1.1, r="error",
                                                   err="DoomedError"),
              *ran("a", 2, W2, 5.0, 5.1, r="error", err="DoomedError"),
              delivered("a", 5.2, W2, kind="failed", value=None, error_type="DoomedError")]
    assert len(checked(events, final).duplicated) == 1


def test_an_attempt_begun_after_a_newer_one_started_is_started_late() -> None:
    # loose rule: a statistic (zombie_starts) when its process was just back from a pause
    final = {"a": done(attempts=2)}
    events = [*enqueued("a"), *fault("pause_worker", 1.0, W1, 3.8),
              *ran("a", 2, W2, 3.0, 3.5), delivered("a", 3.6, W2, value="attempt 2"),
              *ran("a", 1, W1, 3.9, 4.0, d=0.5)]
    assert len(checked(events, final).started_late) == 1


def test_the_same_attempt_begun_twice_is_a_duplicate() -> None:
    events, final = one_clean_job()
    report = checked([*events, *ran("a", 1, W2, 1.3, 1.4)], final, maxp=2)
    assert any("began more than once" in d for d in report.duplicated)


# -- cancels, judged from what they answered -----------------------------------------------------

def cancel(job: str, t: float, result: str) -> list[Event]:
    return [ev("invoke_cancel", t, job=job), ev("ack_cancel", t + 0.01, job=job, result=result)]


def test_a_start_after_a_cancel_answered_canceled_is_caught_whatever_redis_says() -> None:
    # loose rule: judged from the engine's own cancel_attempt field, which here hides it
    final = {"a": FinalJob(state="canceled", outcome="canceled", attempts=1, cancel_attempt=1,
                           cb="delivered")}
    events = [*enqueued("a"), *cancel("a", 0.5, "canceled"), *ran("a", 1, W1, 1.0, 1.1),
              delivered("a", 1.2, kind="canceled", value=None)]
    assert len(checked(events, final).canceled_then_started) == 1


def test_a_cancel_answered_marked_lets_the_running_attempt_record_late_but_no_new_one() -> None:
    final = {"a": done(attempts=1)}
    events = [*enqueued("a"), *cancel("a", 0.5, "marked"), *ran("a", 1, W1, 1.0, 1.1, d=0.4),
              delivered("a", 1.2)]
    assert checked(events, final).ok
    final = {"a": done(attempts=2)}
    events = [*enqueued("a"), *ran("a", 1, W1, 0.2, 1.0, r="error", err="FlakyError"),
              *cancel("a", 0.5, "marked"), *ran("a", 2, W2, 2.0, 2.1),
              delivered("a", 2.2, W2, value="attempt 2")]
    assert len(checked(events, final).canceled_then_started) == 1


def test_a_job_that_ends_otherwise_than_its_cancel_answered_is_contradicted() -> None:
    events, final = one_clean_job()
    assert checked([*events, *cancel("a", 0.5, "canceled")], final).cancel_contradicted
    assert checked([*events, *cancel("a", 1.3, "unknown")], final).cancel_contradicted
    assert checked([*events, *cancel("a", 1.3, "finished")], final).ok
    assert checked([*events, *cancel("a", 1.3, "sent")], final).ok


def test_a_job_canceled_though_nobody_canceled_it_is_contradicted() -> None:
    events = [*enqueued("a"), delivered("a", 1.2, kind="canceled", value=None)]
    assert checked(events, {"a": canceled()}).cancel_contradicted
    assert checked([*events, *cancel("a", 0.5, "canceled")], {"a": canceled()}).ok


def test_a_start_after_a_cancel_answered_finished_is_caught() -> None:
    events, final = one_clean_job()
    events += [*cancel("a", 1.3, "finished"), *ran("a", 2, W2, 2.0, 2.1)]
    assert checked(events, final).canceled_then_started


# -- the outcome: the final attempt's own, and the one its job planned -----------------------

def test_an_applied_outcome_of_another_attempt_is_a_stale_completion_accepted() -> None:
    events = [*enqueued("a"), started("a", 1, W1, 1.0),
              *fault("pause_worker", 1.1, W1, 3.9), *ran("a", 2, W2, 3.0, 3.5, r="error",
                                                         err="FlakyError"),
              ev("end", 4.0, W1, job="a", a=1, r="ok"), delivered("a", 4.1, W2)]
    final = {"a": done(attempts=2, value="attempt 1")}  # attempt 1's value, applied late
    assert len(checked(events, final).stale_accepted) == 1


def test_an_attempt_the_final_state_does_not_count_is_caught() -> None:
    events, final = one_clean_job()
    assert checked([*events, *ran("a", 2, W2, 2.0, 2.1, r="error")], final).stale_accepted


def test_a_job_that_fails_on_every_attempt_must_have_used_them_all() -> None:
    # loose rule: a flaky job could never fail, so its failures were never checked
    def run(attempts: int) -> Report:
        events = [*enqueued("a", kind="flaky", args=(5,))]
        for a in range(1, attempts + 1):
            events += ran("a", a, W1, a, a + 0.1, r="error", err="FlakyError")
        events.append(delivered("a", 9.0, kind="failed", value=None, error_type="FlakyError"))
        return checked(events, {"a": failed(attempts, "FlakyError",
                                            f"planned failure of attempt {attempts}")})
    assert run(4).ok, run(4).violations()
    assert run(3).wrong_outcome


def test_a_job_planned_to_succeed_in_the_end_may_fail_only_if_a_cancel_stopped_it() -> None:
    events = [*enqueued("a", kind="flaky", args=(3,)),
              *ran("a", 1, W1, 1.0, 1.1, r="error", err="FlakyError"),
              delivered("a", 1.2, kind="failed", value=None, error_type="FlakyError")]
    final = {"a": failed(1, "FlakyError", "planned failure of attempt 1")}
    assert checked(events, final).wrong_outcome
    assert checked([*events, *cancel("a", 1.05, "marked")], final).ok


def test_a_job_planned_to_fail_that_succeeded_or_failed_otherwise_is_a_wrong_outcome() -> None:
    events = [*enqueued("a", kind="doomed"), *ran("a", 1, W1, 1.0, 1.1), delivered("a", 1.2)]
    assert checked(events, {"a": done()}).wrong_outcome
    events = [*enqueued("a", kind="fast"), *ran("a", 1, W1, 1.0, 1.1, r="error"),
              delivered("a", 1.2, kind="failed", value=None, error_type="DoomedError")]
    report = checked(events, {"a": failed(1, "DoomedError", "planned failure of attempt 1")})
    assert report.wrong_outcome


def test_a_result_over_the_cap_fails_once_with_payload_too_large() -> None:
    events = [*enqueued("a", kind="bulky"), *ran("a", 1, W1, 1.0, 1.1),
              delivered("a", 1.2, kind="failed", value=None, error_type="PayloadTooLarge")]
    assert checked(events, {"a": failed(1, "PayloadTooLarge", "over")}).ok
    assert checked(events, {"a": failed(1, "PayloadTooLarge", "over")}
                   ).violations() == checked(*one_clean_job()).violations()


# -- parallelism: admitted and executing --------------------------------------------------------

def test_attempts_admitted_past_max_parallelism_are_a_breach_from_their_dispatch_time() -> None:
    # loose rule: counted from the start records, which here never overlap
    events = [*enqueued("a"), *enqueued("b"), *ran("a", 1, W1, 1.0, 2.0, d=1.0),
              *ran("b", 1, W2, 2.05, 2.5, d=1.5), delivered("a", 2.1), delivered("b", 2.6, W2)]
    final = {"a": done(), "b": done()}
    report = checked(events, final)
    assert (report.parallelism.admitted_breaches, report.parallelism.max_admitted) == (1, 2)
    assert checked(events, final, maxp=2).ok


def test_a_woken_attempt_counts_as_executing_but_not_as_admitted() -> None:
    events = [*enqueued("a"), started("a", 1, W1, 1.0), *fault("pause_worker", 1.1, W1, 3.9),
              *ran("a", 2, W2, 3.0, 3.5), ev("end", 4.2, W1, job="a", a=1, r="ok"),
              delivered("a", 3.6, W2, value="attempt 2")]
    report = checked(events, {"a": done(attempts=2)})
    assert report.ok, report.violations()
    par = report.parallelism
    assert (par.max_admitted, par.max_executing, par.stale) == (1, 2, {"pause": 1})
    assert round(par.executing_over_limit_s, 3) == 0.5
    assert round(par.stale_longest_s["pause"], 3) == 0.3


def test_code_that_ignores_its_timeout_executes_on_after_its_slot_was_freed() -> None:
    events = [*enqueued("a", kind="stubborn"), *ran("a", 1, W1, 1.0, 3.0, d=1.0, to=0.3),
              *ran("a", 2, W2, 1.5, 1.9, d=1.5, to=0.3, r="cancelled"),
              delivered("a", 2.0, W2, kind="failed", value=None, error_type="Timeout")]
    final = {"a": failed(2, "Timeout", cancel_attempt=None)}
    report = checked([*events, *cancel("a", 1.6, "marked")], final)
    assert report.parallelism.admitted_breaches == 0, report.violations()
    assert report.parallelism.max_executing == 2
    assert report.parallelism.max_executing_within_timeouts == 1
    assert report.parallelism.stale == {"timeout": 1}


def test_code_past_its_timeout_frees_its_slot_though_no_later_attempt_recorded_a_start() -> None:
    # found by a 10-minute run: a hung attempt past its 0.3 s timeout ran on until its process
    # was killed, and its next attempt went to that process, which died before recording it;
    # the slot was counted until the kill, a false breach against the job admitted after it
    events = [*enqueued("a", kind="stuck"), *enqueued("b"),
              started("a", 1, W1, 1.0, d=1.0, to=0.3), *ran("b", 1, W2, 2.0, 2.5, d=2.0),
              *fault("kill_leader", 5.0, W1), delivered("b", 2.6, W2)]
    final = {"a": failed(2, "Timeout"), "b": done()}
    par = checked(events, final).parallelism
    assert (par.admitted_breaches, par.max_admitted, par.max_executing) == (0, 1, 2)


def test_a_killed_or_restarted_process_s_attempts_end_there() -> None:
    events = [*enqueued("a"), *enqueued("b"), started("a", 1, W1, 1.0),
              *fault("kill_worker", 1.2, W1), *ran("a", 2, W2, 1.5, 1.6),
              *ran("b", 1, W2, 1.7, 1.8), delivered("a", 1.65, W2, value="attempt 2"),
              delivered("b", 1.85, W2)]
    final = {"a": done(attempts=2), "b": done()}
    report = checked(events, final)
    assert report.ok, report.violations()
    assert report.recovery["worker SIGKILL to job running again"] == [1.5 - 1.2]
    rebooted = [e if e["e"] != "fault" else ev("boot", 1.2, W1) for e in events]
    assert checked(rebooted, final).ok
    neither = [e for e in events if e["e"] != "fault"]
    assert checked(neither, final).parallelism.admitted_breaches == 2  # a1 never ends


def test_a_start_recorded_just_after_its_process_was_killed_ends_with_the_kill() -> None:
    # the kill is recorded before the signal lands: the process may still record a start
    events = [*enqueued("a"), *enqueued("b"), *fault("kill_leader", 1.0, W1),
              started("a", 1, W1, 1.0004), *ran("a", 2, W2, 3.0, 3.1),
              *ran("b", 1, W2, 3.2, 3.3), delivered("a", 3.15, W2, value="attempt 2"),
              delivered("b", 3.35, W2)]
    final = {"a": done(attempts=2), "b": done()}
    assert checked(events, final).ok
    late = [e if e["e"] != "start" or e["pid"] != W1 else {**e, "t": 1.2, "d": 1.2}
            for e in events]
    assert checked(late, final).parallelism.admitted_breaches > 0


# -- recovery -----------------------------------------------------------------------------------

def test_a_server_fault_s_recovery_runs_to_the_next_admission() -> None:
    events, final = one_clean_job()
    events += [*fault("redis_oom", 2.0, until=4.0), *enqueued("b", 2.5),
               *ran("b", 1, W1, 4.8, 4.9, d=4.7), delivered("b", 5.0)]
    final["b"] = done()
    report = checked(events, final)
    assert report.ok, report.violations()
    assert [round(x, 2) for x in report.recovery["redis_oom: over to next job admitted"]] == [0.7]


def test_a_fault_to_the_leader_that_took_over_disrupts_the_recovery_it_runs() -> None:
    """(seed 2038: the process that took the lease over was paused 2.5 s at once, and its
    recovery counted among those with no other fault meanwhile)"""
    events = [*enqueued("a"), started("a", 1, W1, 0.5), *fault("kill_leader", 1.0, W1),
              ev("lease_handover", 2.8, killed=W1, leader=W2, after=1.8),
              *fault("pause_worker", 2.9, W2, until=5.4), *ran("a", 2, W2, 5.8, 5.9),
              delivered("a", 6.0, W2, value="attempt 2")]
    report = checked(events, {"a": done(2)})
    assert report.ok, report.violations()
    label = "leader SIGKILL to its jobs running again"
    assert [round(x, 2) for x in report.recovery[label]] == [4.8]
    assert label + " (no other fault meanwhile)" not in report.recovery


def test_a_pause_of_the_lease_holder_it_recorded_disrupts_a_worker_s_recovery() -> None:
    """(seed 2039: the lease had moved without a leader kill; the paused process held it)"""
    events = [*enqueued("a"), started("a", 1, W1, 0.5), *fault("kill_worker", 1.0, W1),
              ev("fault", 1.5, kind="pause_worker", target=W2, seconds=3.0, leader=W2),
              ev("fault_end", 4.5, kind="pause_worker", target=W2),
              *ran("a", 2, W2, 5.0, 5.1), delivered("a", 5.2, W2, value="attempt 2")]
    report = checked(events, {"a": done(2)})
    assert report.ok, report.violations()
    label = "worker SIGKILL to job running again"
    assert [round(x, 2) for x in report.recovery[label]] == [4.0]
    assert label + " (no other fault meanwhile)" not in report.recovery
