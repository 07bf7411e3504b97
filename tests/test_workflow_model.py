"""Model-based test of workflows: random interleavings of starts (malformed ones, and ones with
a timeout), decisions (current, stale, undecided, malformed, ending, over max_steps, asking
for steps, sleeps, waits and child workflows), step outcomes, events sent before and after the
wait (with and without a key), cancels at every point, timers firing, lost workers and a stale
leader drive the real Lua scripts on a real redis-server, and a Python model built from
`WORKFLOW_TABLE` predicts every reply code and what the scripts write: each workflow's state,
replay generation, journal, activations, waits, kept events, event keys and timers, and the
state of each step's job. Every row of the table is taken in the run: its examples are fixed
(derandomized), so that holds on every machine; test_workflow_scripts.py pins sequences such a
fixed set can miss (the oldest wait served first, a replay after the one out)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import pytest
import redis
from helpers.scripts import LEASE_MS, OWNER, Pool
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from workpool import Retry, WorkflowContext, Workpool
from workpool.core.requests import enqueue_entries, workflow_entry
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.counters import Counter
from workpool.wire.keys import GROUP
from workpool.wire.protocol import JOURNAL_FIELDS, encode, text
from workpool.wire.replies import parse_lease
from workpool.wire.scripts import run
from workpool.wire.statemachine import (
    ABSENT,
    CANCELED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    WORKFLOW_TABLE,
    Row,
    step,
)

MAX_STEPS = 6
TIMEOUT_MS = 3000  #: the workflow `timed`'s timeout
KEYS = ("a", "b", "c")
EVENTS = ("go", "stop")
T0 = 2_000_000_000_000  #: the model's clock (ms), passed to every script as `now`
J = {name: i for i, name in enumerate(JOURNAL_FIELDS)}
HASH_STATE = {RUNNING: (b"running", None), SUCCEEDED: (b"done", b"succeeded"),
              FAILED: (b"done", b"failed"), CANCELED: (b"canceled", b"canceled")}


ROWS_TAKEN: set[Row] = set()


def code_of(event: str, state: str, **facts: bool) -> tuple[Code, str]:
    """The table's code for `event` in `state`, and the state after it."""
    row = step(event, state, facts, table=WORKFLOW_TABLE)
    ROWS_TAKEN.add(row)
    return row.code, row.target or state


@dataclass
class Entry:
    """A journal entry as the model keeps it."""

    kind: str  #: step, workflow (a child), sleep or event
    name: str
    state: str = "pending"  #: pending, done or canceled
    outcome: str = ""
    result: bytes = b""


@dataclass
class Wf:
    """A workflow as the model keeps it."""

    state: str = RUNNING
    gen: int = 1
    out: bool = True  #: a replay is out (wf_entry set)
    dirty: bool = False
    fails: int = 0
    acts: int = 0
    entries: dict[int, Entry] = field(default_factory=dict)
    new: set[int] = field(default_factory=set)  #: ended, not delivered to its code yet
    waits: dict[str, list[int]] = field(default_factory=dict)
    kept: dict[str, list[bytes]] = field(default_factory=dict)
    parent: tuple[str, int] | None = None  #: a child's workflow and entry
    keys: set[str] = field(default_factory=set)  #: the event keys it took


class WorkflowMachine(RuleBasedStateMachine):
    """The real scripts, and the model beside them."""

    p: Pool

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.wfs: dict[str, Wf] = {}
        self.jobs: dict[str, str] = {}  #: step job -> pending, running, marked, or its end
        self.timers: dict[str, int] = {}  #: wfTimers member -> when
        self.due: dict[str, int] = {}  #: replaysDue
        self.worker, self.workers = "w0", 0
        self.stale = 0
        self.p.r.flushdb()
        self.p.token = parse_lease(run(self.p.r, [self.p.engine.acquire(OWNER, LEASE_MS, 10)])[0]
                                   ).token
        self._new_worker()
        config = self.p.client.config
        self.step_fields = _flat(enqueue_entries(config, "work", [()], {},
                                                 allowed=frozenset(), call="ctx.step")[0])
        self.child_fields = _flat(workflow_entry(config, "flow", (), kwargs=None, key=None,
                                                 on_complete=None, context=None))

    # -- the worker: holds every dispatch entry until it is lost ------------------------------
    def _new_worker(self) -> None:
        self.workers += 1
        self.worker = f"w{self.workers}"
        self.p.beat(self.worker)

    def _take(self) -> None:
        self.p.deliver(self.worker, count=10_000)

    # -- model effects ------------------------------------------------------------------------
    def _dispatch(self, wf: Wf) -> None:
        wf.gen, wf.out, wf.dirty = wf.gen + 1, True, False

    def _wake(self, wf: Wf) -> None:
        if wf.state != RUNNING or wf.fails:  # one that could not decide waits for replaysDue
            return
        if wf.out:
            wf.dirty = True
        else:
            self._dispatch(wf)

    def _ended(self, wid: str, n: int, state: str, outcome: str, result: bytes = b"") -> None:
        wf = self.wfs[wid]
        code_of("entry_ends", wf.state)
        e = wf.entries[n]
        e.state, e.outcome, e.result = state, outcome, result
        if wf.state == RUNNING:
            wf.new.add(n)
        self._wake(wf)

    def _step_ends(self, sid: str, outcome: str) -> None:
        wid, n = sid.rsplit(":", 1)
        self.jobs[sid] = outcome
        self._ended(wid, int(n), "canceled" if outcome == "canceled" else "done", outcome)

    def _end(self, wf: Wf, state: str) -> None:
        """A workflow ends: its replay withdrawn, the one due later and its timeout's timer
        dropped; a child's entry in its parent ends too."""
        wf.state, wf.out, wf.new = state, False, set()
        wid = next(w for w, other in self.wfs.items() if other is wf)
        self.due.pop(wid, None)
        self.timers.pop(f"{wid}:0", None)
        if wf.parent is not None:
            outcome = HASH_STATE[state][1] or b""
            self._ended(*wf.parent, "canceled" if state == CANCELED else "done",
                        outcome.decode())

    def _cancel(self, wid: str, state: str = CANCELED) -> None:
        """A running workflow ends (canceled, or failed past its timeout), then its steps and
        children not ended are canceled (a running step only marked)."""
        wf = self.wfs[wid]
        open_ = [n for n, e in sorted(wf.entries.items())
                 if e.kind in ("step", "workflow") and e.state == "pending"]
        self._end(wf, state)
        for n in open_:
            sid = f"{wid}:{n}"
            if sid in self.wfs:
                if self.wfs[sid].state == RUNNING:
                    self._cancel(sid)
            elif self.jobs.get(sid) == "pending":
                self._step_ends(sid, "canceled")
            elif self.jobs.get(sid) == "running":
                self.jobs[sid] = "marked"

    def _create(self, wid: str, ns: list[int]) -> None:
        """The steps and children a decision asked for, created by the script that applies it
        (as the start row has a workflow created); one that ended the workflow creates none:
        their entries say canceled."""
        for n in ns:
            sid = f"{wid}:{n}"
            if self.wfs[wid].state != RUNNING:
                self._ended(wid, n, "canceled", "canceled")
            elif self.wfs[wid].entries[n].kind == "workflow":
                code, _ = code_of("start", ABSENT)
                assert code == Code.WORKFLOW_STARTED
                self.wfs[sid] = Wf(parent=(wid, n))
            else:
                self.jobs[sid] = "pending"

    # -- client requests ----------------------------------------------------------------------
    def _ingest(self, expected: list[Code]) -> None:
        codes = [c for _, c in self.p.ingest(self.now).outcomes]
        assert codes == expected
        self._take()

    def _running(self) -> list[str]:
        return sorted(w for w, wf in self.wfs.items() if wf.state == RUNNING)

    # (the preconditions keep the rules that change little, such as starts of a key taken or
    # events for ended workflows, from crowding out the ones that move workflows on)
    @precondition(lambda self: len(self._running()) < 3)
    @rule(key=st.sampled_from(KEYS), name=st.sampled_from(["flow", "timed"]))
    def start(self, key: str, name: str) -> None:
        wid = self.p.client.start_workflow(name, key=key)
        code, _ = code_of("start", self.wfs[wid].state if wid in self.wfs else ABSENT)
        if code == Code.WORKFLOW_STARTED:
            self.wfs[wid] = Wf()
            if name == "timed":
                self.timers[f"{wid}:0"] = self.now + TIMEOUT_MS
        self._ingest([code])

    @precondition(lambda self: len(self.wfs) < 2)
    @rule(key=st.sampled_from(KEYS))
    def malformed_start(self, key: str) -> None:
        wid = f"key:{key}"
        code, _ = code_of("start", self.wfs[wid].state if wid in self.wfs else ABSENT,
                          malformed=True)
        self.p.r.xadd(self.p.keys.pending_start, {"op": "workflow", "id": wid, "name": "9"})
        self._ingest([code])

    def _any(self, data: st.DataObject) -> str:
        """Mostly a running workflow; else one the model knows (a child too, or ended), or
        one that does not exist."""
        running, mostly = self._running(), data.draw(st.integers(0, 4))
        if running and mostly:
            return data.draw(st.sampled_from(running))
        return data.draw(st.sampled_from(sorted({*self.wfs, *(f"key:{k}" for k in KEYS)})))

    @rule(data=st.data(), name=st.sampled_from(EVENTS), payload=st.integers(0, 99),
          key=st.sampled_from([None, None, "k1", "k2"]))
    def send_event(self, data: st.DataObject, name: str, payload: int, key: str | None) -> None:
        waiting_ones = sorted((w, n) for w, wf in self.wfs.items() for n, ns in wf.waits.items()
                              if ns and wf.state == RUNNING)
        to_a_wait: bool = data.draw(st.booleans())  # half the time, to a wait
        if waiting_ones and to_a_wait:
            wid, name = data.draw(st.sampled_from(waiting_ones))
        else:
            wid = self._any(data)
        raw = encode(payload)
        wf = self.wfs.get(wid)
        waiting = bool(wf and wf.state == RUNNING and wf.waits.get(name))
        code, _ = code_of("event", wf.state if wf else ABSENT, a_wait_for_it=waiting,
                          key_taken=bool(wf and key in wf.keys))
        if key is not None and wf is not None and code in (Code.EVENT_DELIVERED,
                                                           Code.EVENT_KEPT):
            wf.keys.add(key)
        if code == Code.EVENT_DELIVERED:
            assert wf is not None
            n = wf.waits[name].pop(0)
            self.timers.pop(f"{wid}:{n}", None)
            self._ended(wid, n, "done", "succeeded", raw)
        elif code == Code.EVENT_KEPT:
            assert wf is not None
            wf.kept.setdefault(name, []).append(raw)
        self.p.client.send_event(wid, name, payload, key=key)
        self._ingest([code])

    @precondition(lambda self: bool(self.wfs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        wid = self._any(data)
        wf = self.wfs.get(wid)
        code, target = code_of("cancel", wf.state if wf else ABSENT)
        if code == Code.CANCELED:
            self._cancel(wid, target)
        self.p.r.xadd(self.p.keys.pending_start, {"op": "cancel", "id": wid})
        self._ingest([code])

    # -- replays and their decisions -----------------------------------------------------------
    @precondition(lambda self: any(wf.out for wf in self.wfs.values()))
    @rule(data=st.data())
    def decide(self, data: st.DataObject) -> None:
        """Mostly the replay out now decides (or cannot, or sends a malformed decision);
        sometimes one no longer out does: superseded, withdrawn, of an ended workflow."""
        out = sorted(w for w, wf in self.wfs.items() if wf.out)
        if data.draw(st.integers(0, 5)):
            wid = data.draw(st.sampled_from(out))
            kind = data.draw(st.sampled_from(["apply"] * 6 + ["undecided", "malformed"]))
            self._decide(data, wid, self.wfs[wid].gen, kind)
            return
        wid = data.draw(st.sampled_from(sorted(self.wfs)))
        wf = self.wfs[wid]
        off = data.draw(st.sampled_from([-1, 1] if wf.out else [-1, 0, 1]))
        self._decide(data, wid, wf.gen + off, "apply")

    def _decide(self, data: st.DataObject, wid: str, gen: int, kind: str) -> None:
        wf = self.wfs.get(wid)
        cmds: list[Any] = []
        delivered: list[int] = []
        if wf is not None and wf.new and data.draw(st.booleans()):
            delivered = data.draw(st.permutations(sorted(wf.new)))
            delivered = delivered[:data.draw(st.integers(1, len(delivered)))]
            cmds.append(["deliver", wf.acts + 1, delivered])
        first = len(wf.entries) + 1 if wf else 1
        asks = data.draw(st.lists(st.sampled_from(["step", "step", "child", "sleep", "event"]),
                                  max_size=3))
        for i, ask in enumerate(asks):
            n = first + i
            if ask == "step":
                cmds.append(["step", n, self.step_fields])
            elif ask == "child":
                cmds.append(["child", n, self.child_fields])
            elif ask == "sleep":
                cmds.append(["sleep", n, self.now + data.draw(st.sampled_from([0, 1000, 5000]))])
            else:
                timeout = data.draw(st.sampled_from([0, 2000]))
                cmds.append(["event", n, data.draw(st.sampled_from(EVENTS[:1] * 3 + EVENTS)),
                             self.now + timeout if timeout else 0])
        ending = data.draw(st.sampled_from([None] * 6 + ["return", "fail"]))
        if ending == "return":
            cmds.append(["return", encode("r")])
        elif ending == "fail":
            cmds.append(["fail", "boom", "Boom"])
        if kind == "malformed":
            cmds.append(["unknown", 1])
        expected = self._decided(wid, gen, kind, cmds, delivered=delivered, ending=ending)
        fields = {"kind": "wf", "id": wid, "gen": str(gen), "ok": "0" if kind == "undecided"
                  else "1", "cmds": msgpack.packb(cmds, use_bin_type=False)}
        self.p.r.xadd(self.p.keys.pending_completion, fields)  # type: ignore[arg-type]
        assert [c for _, c in self.p.apply(self.now).outcomes] == [expected]
        self._take()

    def _decided(self, wid: str, gen: int, kind: str, cmds: list[Any], *, delivered: list[int],
                 ending: str | None) -> Code:
        """The model's side of a decision: its code; the steps it asked for created."""
        wf = self.wfs.get(wid)
        current = bool(wf and wf.state == RUNNING and wf.out and wf.gen == gen)
        asks = [c for c in cmds if c[0] in ("step", "child", "sleep", "event")]
        too_many = wf is not None and len(wf.entries) + len(asks) > MAX_STEPS
        code, target = code_of(
            "decide", wf.state if wf else ABSENT, current_replay=current,
            current_replay_malformed=current and kind == "malformed",
            current_replay_undecided=current and kind == "undecided",
            current_replay_returned=current and kind == "apply" and ending == "return"
            and not too_many,
            current_replay_failed=current and kind == "apply" and (ending == "fail" or too_many))
        if code == Code.STALE_REPLAY:
            self.stale += 1
            return code
        assert wf is not None
        wf.out = False
        if code in (Code.REJECTED, Code.REPLAY_RETRY):
            self.due[wid] = self.now + min(60_000, 1000 * 2 ** wf.fails)
            wf.fails += 1
            return code
        wf.fails = 0
        if delivered:
            wf.acts += 1
            wf.new -= set(delivered)
        again, steps = wf.dirty, []
        if not too_many:
            for c in asks:
                n = c[1]
                if c[0] in ("step", "child"):
                    wf.entries[n] = Entry("step", "work") if c[0] == "step" else \
                        Entry("workflow", "flow")
                    steps.append(n)
                elif c[0] == "sleep":
                    wf.entries[n] = Entry("sleep", "")
                    self.timers[f"{wid}:{n}"] = c[2]
                elif wf.kept.get(c[2]):
                    wf.entries[n] = Entry("event", c[2], "done", "succeeded",
                                          wf.kept[c[2]].pop(0))
                    wf.new.add(n)
                    again = True
                else:
                    wf.entries[n] = Entry("event", c[2])
                    wf.waits.setdefault(c[2], []).append(n)
                    if c[3]:
                        self.timers[f"{wid}:{n}"] = c[3]
        if target != RUNNING:
            self._end(wf, target)
        elif again:
            self._dispatch(wf)
        self._create(wid, steps)
        return code

    # -- steps, time, loss, fencing ------------------------------------------------------------
    @rule(ms=st.sampled_from([0, 0, 500, 1500, 6000]))
    def tick(self, ms: int) -> None:
        """Time passes, then startJobs: due steps start, due replays go out, due timers end
        their waits."""
        self.now += ms
        pending = sorted(s for s, st_ in self.jobs.items() if st_ == "pending")
        for sid in pending:
            self.jobs[sid] = "running"
        for wid, when in sorted(self.due.items(), key=lambda kv: (kv[1], kv[0].encode())):
            if when <= self.now:
                del self.due[wid]
                wf = self.wfs[wid]
                if wf.state == RUNNING and not wf.out:
                    self._dispatch(wf)
        timed_out: list[str] = []
        for member, when in sorted(self.timers.items(), key=lambda kv: (kv[1], kv[0].encode())):
            if when > self.now:
                continue
            del self.timers[member]
            wid, n_ = member.rsplit(":", 1)
            wf, n = self.wfs[wid], int(n_)
            if n == 0 and wf.state == RUNNING:  # its timeout: a cancel for ingest to apply
                timed_out.append(wid)
                continue
            e = wf.entries.get(n)
            if wf.state != RUNNING or e is None or e.state != "pending":
                continue
            if e.kind == "event":
                wf.waits[e.name].remove(n)
                self._ended(wid, n, "done", "failed")
            else:
                self._ended(wid, n, "done", "succeeded")
        assert sorted(self.p.start(self.now).ids) == pending
        self._take()
        codes = []
        for wid in timed_out:
            wf = self.wfs[wid]
            code, target = code_of("timeout", wf.state)
            if code == Code.FAILED:
                self._cancel(wid, target)
            codes.append(code)
        self._ingest(codes)

    @precondition(lambda self: any(s in ("running", "marked") for s in self.jobs.values()))
    @rule(data=st.data(), ok=st.booleans())
    def step_outcome(self, data: st.DataObject, ok: bool) -> None:
        running = sorted(s for s, st_ in self.jobs.items() if st_ in ("running", "marked"))
        sid = data.draw(st.sampled_from(running))
        self.p.finish_run(sid, 1, ok=ok, result="v")
        self._step_ends(sid, "succeeded" if ok else "failed")
        code = Code.SUCCEEDED if ok else Code.FAILED
        assert [c for _, c in self.p.apply(self.now).outcomes] == [code]
        self._take()

    @precondition(lambda self: any(wf.out for wf in self.wfs.values()))
    @rule()
    def lose_worker(self) -> None:
        """The worker holding every dispatch entry stops heart-beating: its steps fail
        (WorkerLost: no retries here), its current replays go out again, in entry order."""
        held = self.p.r.xpending_range(self.p.keys.dispatch, GROUP, "-", "+", 10_000,
                                       consumername=self.worker)
        for h in held:
            raw: Any = self.p.r.xrange(self.p.keys.dispatch, h["message_id"], h["message_id"])
            f: dict[bytes, bytes] = raw[0][1] if raw else {}
            kind, jid = f.get(b"kind"), text(f.get(b"id", b""))
            if kind == b"run" and self.jobs.get(jid) in ("running", "marked"):
                self._step_ends(jid, "failed")
            elif kind == b"wf":
                wf = self.wfs[jid]
                code, _ = code_of("lose", wf.state,
                                  current_replay=wf.out and int(f[b"gen"]) == wf.gen)
                if code == Code.REDELIVERED:
                    self._dispatch(wf)
        self.p.r.delete(self.p.keys.heartbeat(self.worker))
        self.p.reap(self.now)
        self._new_worker()
        self._take()

    @precondition(lambda self: len(self.wfs) == 1)
    @rule()
    def stale_leader(self) -> None:
        """A leader whose lease was taken over changes nothing."""
        self.p.r.xadd(self.p.keys.pending_start, {"op": "cancel", "id": "key:a"})
        assert self.p.ingest(self.now, token="1:gone").code == Code.NOT_LEADER
        self.p.r.xtrim(self.p.keys.pending_start, maxlen=0)

    # -- what the scripts wrote, against the model ---------------------------------------------
    @invariant()
    def the_workflows_are_as_the_model_says(self) -> None:
        r, keys = self.p.r, self.p.keys
        for wid, wf in self.wfs.items():
            h: dict[bytes, bytes] = r.hgetall(keys.job(wid))  # type: ignore[assignment]
            state, outcome = HASH_STATE[wf.state]
            assert (h[b"state"], h.get(b"outcome")) == (state, outcome), wid
            assert int(h[b"wf_gen"]) == wf.gen
            assert (h[b"wf_entry"] != b"") == wf.out
            assert h.get(b"wf_dirty", b"0") == (b"1" if wf.dirty else b"0")
            assert int(h[b"wf_steps"]) == len(wf.entries)
            assert int(h.get(b"wf_acts", 0)) == wf.acts
            for n, e in wf.entries.items():
                rec = msgpack.unpackb(h[f"j:{n}".encode()], raw=True)
                got = (rec[J["kind"]], rec[J["name"]], rec[J["state"]], rec[J["outcome"]])
                assert got == (e.kind.encode(), e.name.encode(), e.state.encode(),
                               e.outcome.encode()), (wid, n)
                if e.kind == "event" and e.outcome == "succeeded":
                    assert rec[J["result"]] == e.result
            for name in EVENTS:
                waits = msgpack.unpackb(h.get(f"w:{name}".encode(), b"\x90"))
                kept = msgpack.unpackb(h.get(f"e:{name}".encode(), b"\x90"), raw=True)
                assert waits == wf.waits.get(name, []) and kept == wf.kept.get(name, [])
            members: Any = r.smembers(keys.wf_new(wid))
            new = {int(m) for m in members}
            assert new == wf.new
            assert {k[2:].decode() for k in h if k.startswith(b"k:")} == wf.keys
        members = r.smembers(keys.workflows)
        running = {text(m) for m in members}
        assert running == {w for w, wf in self.wfs.items() if wf.state == RUNNING}
        assert self._zset(keys.wf_timers) == self.timers
        assert self._zset(keys.replays_due) == self.due
        assert self.p.stat(Counter.STALE_REPLAYS) == self.stale

    def _zset(self, key: str) -> dict[str, int]:
        pairs: Any = self.p.r.zrange(key, 0, -1, withscores=True)
        return {text(m): int(s) for m, s in pairs}

    @invariant()
    def the_steps_are_as_the_model_says(self) -> None:
        for sid, want in self.jobs.items():
            got = self.p.state(sid)
            expect = {"pending": "pending", "running": "running", "marked": "running",
                      "succeeded": SUCCEEDED, "failed": FAILED, "canceled": CANCELED}[want]
            assert got == expect, sid


def _flat(fields: dict[str, Any]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


@pytest.fixture
def machine_pool(redis_url: str, redis_client: redis.Redis) -> Iterator[Pool]:
    client = Workpool("wfm", redis_url, retry=Retry(max_attempts=1), max_parallelism=100)
    client.job(name="work")(lambda *a: None)

    @client.workflow(name="flow", max_steps=MAX_STEPS)
    async def flow(ctx: WorkflowContext) -> None:
        await ctx.step("work")

    client.workflow(name="timed", max_steps=MAX_STEPS, timeout=TIMEOUT_MS / 1000)(flow)

    # a silent worker is lost at the first reap (no grace)
    engine = Engine(client.keys, replace(client.config.engine_settings(), silence_grace_ms=0))
    try:
        yield Pool(redis_client, client, engine, "")
    finally:
        client.close()


def test_workflows_follow_the_table_in_any_interleaving(machine_pool: Pool) -> None:
    WorkflowMachine.p = machine_pool
    ROWS_TAKEN.clear()
    # derandomized: the same examples in every run, so every row is taken on any machine
    run_state_machine_as_test(WorkflowMachine, settings=settings(
        max_examples=400, stateful_step_count=60, deadline=None, derandomize=True,
        database=None))
    assert [r for r in WORKFLOW_TABLE if r not in ROWS_TAKEN] == []

