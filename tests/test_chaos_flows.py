"""The chaos checker's workflow rules on hand-written histories: a clean workflow passes, and
each promise broken (a step result that changes between replays or is not the step's own, a
step admitted after its workflow's cancel answered, an event received twice or lost, a sleep
that ends early, a workflow that fails or never ends) is caught."""

from __future__ import annotations

from typing import Any

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
    ev,
    ran,
)

from workpool.chaos.program import entries

WF = "key:wf1"
PROGRAM: list[Any] = [["step", "fast", []], ["sleep", 1.0], ["wait", 20.0]]
P = f"{WF}#2"


def seen(n: int, v: Any, t: float, pid: int = W1, wf: str = WF) -> Event:
    return ev("wf_seen", t, pid, wf=wf, n=n, v=v)


def flow(*, got: Any = P, woke: float = 3.1, extra: tuple[Event, ...] = ()
         ) -> tuple[list[Event], dict[str, FinalJob]]:
    """WF: its step runs, it sleeps 1 s from ctx.now() = 2.0, it receives P; delivered."""
    value = ["attempt 1", None, got]
    events = [ev("invoke_workflow", 0.0, job=WF, program=PROGRAM),
              ev("ack_enqueue", 0.01, job=WF),
              *ran(f"{WF}:1", 1, W1, 1.0, 1.1), seen(1, "attempt 1", 1.5),
              ev("wf_sleep", 1.6, W1, wf=WF, n=2, s=1.0, now=2.0),
              ev("wf_woke", woke, W1, wf=WF, n=2), seen(2, None, woke + 0.01),
              ev("invoke_event", 3.5, job=WF, p=P), ev("ack_event", 3.51, job=WF, p=P),
              seen(3, got, 3.6), delivered(WF, 4.0, value=value), *extra]
    return events, {WF: done(value=value), f"{WF}:1": done()}


def violations(report: Report) -> dict[str, int]:
    return {k: v for k, v in report.violations().items() if v}


def test_the_entries_are_numbered_as_the_engine_numbers_them() -> None:
    program = [["step", "a", []], ["par", [["b", [1]], ["c", []]]], ["child", []], ["sleep", 1]]
    assert [(n, e[0], e[1] if e[0] == "step" else None) for n, e in entries(program)] == [
        (1, "step", "a"), (2, "step", "b"), (3, "step", "c"), (4, "child", None),
        (5, "sleep", None)]


def test_a_clean_workflow_breaks_no_rule() -> None:
    events, final = flow()
    report = checked(events, final)
    assert violations(report) == {}
    assert (report.flows, report.sleeps, report.events_sent, report.events_received) == \
        (1, 1, 1, 1)


def test_a_step_result_that_changes_between_replays_is_caught() -> None:
    events, final = flow(extra=(seen(1, "attempt 2", 5.0, W2),))
    assert violations(checked(events, final)) == {"step_result_changed": 1}


def test_a_step_result_that_is_not_the_steps_own_is_caught() -> None:
    events, final = flow()
    final[f"{WF}:1"] = done(2)  # its job says attempt 2 succeeded; the replays saw attempt 1
    events += ran(f"{WF}:1", 2, W2, 1.2, 1.3)
    report = checked(events, final)
    assert report.step_result_changed and "its step ended succeeded" in \
        report.step_result_changed[0]


def test_a_result_other_than_what_the_replays_saw_is_caught() -> None:
    events, final = flow()
    final[WF] = done(value=["attempt 9", None, P])
    events = [e for e in events if e["e"] != "cb"] + [delivered(WF, 4.0,
                                                                value=["attempt 9", None, P])]
    assert violations(checked(events, final)) == {"step_result_changed": 1}


def test_a_step_admitted_after_the_workflows_cancel_answered_is_caught() -> None:
    def canceled_at(t: float) -> Report:
        events, final = flow()  # its step is admitted at 0.999
        events = [e for e in events if e["e"] != "cb"] + [
            ev("invoke_cancel", t - 0.01, job=WF), ev("ack_cancel", t, job=WF, result="canceled"),
            ev("cb", 4.0, W1, job=WF, n=1, ok=True, kind="canceled", value=None,
               error_type=None, d=3.9)]
        return checked(events, {**final, WF: canceled()})

    assert canceled_at(1.2).canceled_then_started == []
    assert canceled_at(0.5).canceled_then_started == [
        f"{WF}:1: a step of {WF} was admitted after its cancel answered"]


def test_an_event_received_twice_or_never_sent_is_caught() -> None:
    program = [["wait", 20.0], ["wait", 20.0]]
    base = [ev("invoke_workflow", 0.0, job=WF, program=program), ev("ack_enqueue", 0.01, job=WF),
            ev("invoke_event", 0.5, job=WF, p=P), ev("ack_event", 0.51, job=WF, p=P)]
    twice = [*base, seen(1, P, 1.0), seen(2, P, 1.1), delivered(WF, 2.0, value=[P, P])]
    assert violations(checked(twice, {WF: done(value=[P, P])})) == {"event_duplicated": 1}
    strange = [*base, seen(1, P, 1.0), seen(2, "forged", 1.1),
               delivered(WF, 2.0, value=[P, "forged"])]
    report = checked(strange, {WF: done(value=[P, "forged"])})
    assert violations(report) == {"event_duplicated": 1}
    assert "never sent" in report.event_duplicated[0]


def test_an_acknowledged_event_a_wait_timed_out_without_is_lost() -> None:
    def timed_out_at(t: float) -> Report:
        events, final = flow(got="timeout")
        events = [e for e in events if e["e"] != "ack_event"] + [
            ev("ack_event", 3.51, job=WF, p=P), ev("wf_timeout", t, W1, wf=WF, n=3)]
        return checked(events, final)

    assert violations(timed_out_at(9.0)) == {"event_lost": 1}
    assert violations(timed_out_at(4.0)) == {}  # acknowledged as the wait timed out: a race


def test_a_sleep_that_ends_early_is_caught() -> None:
    events, final = flow(woke=2.9)  # 1 s from ctx.now() = 2.0 ends at 3.0
    report = checked(events, final)
    assert violations(report) == {"sleep_early": 1}
    assert "0.100 s early" in report.sleep_early[0]


def test_a_workflow_that_fails_or_is_canceled_unasked_has_the_wrong_outcome() -> None:
    events, final = flow()
    events = [e for e in events if e["e"] != "cb"]
    fails = FinalJob(state="done", outcome="failed", attempts=0, error_type="StepFailed",
                     cb="delivered")
    report = checked([*events, ev("cb", 4.0, W1, job=WF, n=1, ok=True, kind="failed",
                                  value=None, error_type="StepFailed", d=3.9)],
                     {**final, WF: fails})
    assert violations(report) == {"wrong_outcome": 1}
    report = checked([*events, ev("cb", 4.0, W1, job=WF, n=1, ok=True, kind="canceled",
                                  value=None, error_type=None, d=3.9)],
                     {**final, WF: canceled()})
    assert violations(report) == {"cancel_contradicted": 1, "wrong_outcome": 1}


def test_a_step_or_child_that_never_ends_is_lost() -> None:
    events, final = flow()
    final[f"{WF}:1"] = FinalJob(state="running", outcome="", attempts=1)
    assert violations(checked(events, final)) == {"lost": 1}
    program = [["child", [["step", "fast", []]]]]
    child = f"{WF}:1"
    events = [ev("invoke_workflow", 0.0, job=WF, program=program), ev("ack_enqueue", 0.01, job=WF),
              delivered(WF, 2.0, value=["attempt 1"]), seen(1, ["attempt 1"], 1.0)]
    report = checked(events, {WF: done(value=[["attempt 1"]]),
                              child: FinalJob(state="running", outcome="", attempts=0)})
    assert report.lost == [f"{child}: a child workflow never ended"]
