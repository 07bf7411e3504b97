"""Model-based test: interleavings of client, worker and leader actions (random, and one golden
hand-written one) drive the real Lua scripts on a real redis-server, and a pure-Python model
interpreting `statemachine.TABLE` predicts every reply code and every key the scripts write."""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from workpool.codes import Code
from workpool.engine import Engine, parse_batch, parse_lease, parse_reap, parse_start
from workpool.keys import GROUP, Keys
from workpool.protocol import enqueue_fields, text
from workpool.scripts import Call, run
from workpool.statemachine import (
    ABSENT,
    CANCELED,
    FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    step,
)

T = TypeVar("T")
POOL = Keys("model")
T0 = 1_000_000  #: model clock start (ms); passed to every script as `now`
LEASE_TTL = 600_000
BATCH = 256  #: EngineSettings().batch
WORKERS = ("w1", "w2", "w3")
PICK = st.integers(0, 1 << 16)  #: index into a sorted list of candidates
KEYS = st.sampled_from(["a", "b", "a0", "aa", "0", "ab"])  #: few ids, prefixes of each other
HASH_OF = {PENDING: ("pending", None), RUNNING: ("running", None),
           RETRYING: ("retrying", None), SUCCEEDED: ("done", "succeeded"),
           FAILED: ("done", "failed"), CANCELED: ("canceled", "canceled")}


def jitter(seed: str, job_id: str, attempt: int) -> float:
    """The scripts' deterministic retry jitter in [0.5, 1.5)."""
    digest = hashlib.sha1(f"{seed}:{job_id}:{attempt}".encode()).hexdigest()
    return 0.5 + int(digest[:8], 16) / 2**32


def zset_order(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Members as Redis orders a ZSET: by score, then by member bytes."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0].encode()))


@dataclass(eq=False)
class Entry:
    """A dispatch stream entry the model expects: kind run (num = attempt) or cb (num = n)."""

    kind: str
    job: str
    num: int
    eid: str = ""  #: learned from Redis right after the script that added it
    holder: str | None = None  #: consumer it was delivered to (in the group's PEL)


@dataclass
class Job:
    """The model of one job hash."""

    id: str
    max_attempts: int
    backoff_ms: int
    base: float
    on_complete: bool
    state: str = PENDING
    attempts: int = 0
    cancel: bool = False
    run_entry: Entry | None = None
    cb: str | None = None
    cb_n: int = 0
    cb_entry: Entry | None = None
    terminal_transitions: int = 0
    delivery_records: int = 0  #: on_complete records (cb entries with n=1) created
    maxp_at_start: int = 0  #: max_parallelism in force when its current attempt started


@dataclass(frozen=True)
class JobSpec:
    """Options of one enqueue."""

    max_attempts: int = 1
    backoff_ms: int = 0
    base: float = 2.0
    on_complete: bool = False
    run_after_ms: int = 0  #: > 0: not due yet


SPECS = st.builds(JobSpec, max_attempts=st.sampled_from([3, 2, 1]),
                  backoff_ms=st.sampled_from([0, 10, 250, 1000]),
                  base=st.sampled_from([1.0, 1.5, 2.0]), on_complete=st.booleans(),
                  run_after_ms=st.sampled_from([0, 0, 0, 50, 2000]))


@dataclass
class Request:
    """A pendingStart entry: enqueue, cancel or config."""

    eid: str
    op: str
    job_id: str = ""
    well_formed: bool = True
    spec: JobSpec = JobSpec()
    due: int = 0
    maxp: int = 0


@dataclass
class Outcome:
    """A pendingCompletion entry, as a worker writes it."""

    kind: str  #: run | cb
    job_id: str
    num: int  #: attempt (run) or n (cb)
    ok: bool
    retryable: bool = True

    def fields(self) -> dict[str, str | bytes]:
        """The raw stream fields (see workpool/worker.py)."""
        key = "attempt" if self.kind == "run" else "n"
        f: dict[str, str | bytes] = {"kind": self.kind, "id": self.job_id, key: str(self.num),
                                     "ok": "1" if self.ok else "0"}
        if self.kind == "run" and self.ok:
            f["result"] = b"\xc0"  # msgpack nil
        elif self.kind == "run":
            f.update(retryable="1" if self.retryable else "0", error_type="ValueError",
                     error="boom")
        elif not self.ok:
            f["error"] = "ValueError: callback failed"
        return f


class WorkpoolModel(RuleBasedStateMachine):
    """Drives the real scripts; after every step Redis must equal the model."""

    url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(self.url)
        self.r.flushall()
        self.pubsub = self.r.pubsub()
        self.pubsub.psubscribe(POOL.done_channel("*"))
        self.engine = Engine(POOL)
        self.now, self.seq, self.epoch, self.maxp = T0, 0, 0, 0
        self.token = ""
        self.old_tokens: list[str] = []
        self.jobs: dict[str, Job] = {}
        self.ghosts: set[str] = set()  #: ids used but never enqueued: no hash may exist
        self.due: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.cb_due: dict[str, float] = {}
        self.dispatch: list[Entry] = []
        self.requests: list[Request] = []
        self.outcomes: list[tuple[str, Outcome]] = []
        self.sent: list[Outcome] = []  #: every outcome appended, for duplicates and replays
        self.incoming: set[str] = set()
        self.alive: set[str] = set()
        self.stats: Counter[str] = Counter()  #: counters the stats hash must show
        self.seen_eids: set[str] = set()
        self.records_seen: Counter[str] = Counter()  #: Redis side: cb n=1 entries per job
        self.published: Counter[str] = Counter()  #: Redis side: done-channel messages per job
        self.syncs = 0

    def teardown(self) -> None:
        self.pubsub.close()
        self.r.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, call: Call) -> Any:
        reply = run(self.r, [call])[0]
        self._sync_dispatch()
        return reply

    def _next_eid(self) -> str:
        self.seq += 1
        return f"{self.now}-{self.seq}"

    def _sync_dispatch(self) -> None:
        """Match the dispatch stream to the model's entries, learning ids of new ones."""
        real = self.r.execute_command("XRANGE", POOL.dispatch, "-", "+")
        assert len(real) == len(self.dispatch), (real, self.dispatch)
        for (eid_b, raw), e in zip(real, self.dispatch, strict=True):
            eid = text(eid_b)
            f = {k: text(raw.get(k.encode())) for k in ("kind", "id", "attempt", "n")}
            key = "attempt" if e.kind == "run" else "n"
            assert (f["kind"], f["id"], f[key]) == (e.kind, e.job, str(e.num)), (f, e)
            assert e.eid in ("", eid)
            e.eid = eid
            if eid not in self.seen_eids:
                self.seen_eids.add(eid)
                if f["kind"] == "cb" and f["n"] == "1":
                    self.records_seen[f["id"]] += 1

    def _drop(self, e: Entry | None) -> None:
        if e is not None and e in self.dispatch:
            self.dispatch.remove(e)

    def _snapshot(self) -> dict[bytes, bytes]:
        keys = sorted(self.r.execute_command("KEYS", "*"))
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("DUMP", k)
        return dict(zip(keys, pipe.execute(), strict=True))

    # -- model transitions (each decided by statemachine.step) ---------------------------------

    def _finish(self, job: Job, target: str) -> None:
        job.state = target
        job.terminal_transitions += 1
        if job.on_complete:
            entry = Entry("cb", job.id, 1)
            self.dispatch.append(entry)
            job.cb, job.cb_n, job.cb_entry = "pending", 1, entry
            job.delivery_records += 1

    def _attempt_ends(self, event: str, job: Job | None, attempt: int, retryable: bool,
                      seed: str) -> Code:
        """succeed / fail / lose of attempt `attempt`: done, retrying, or stale."""
        current = job is not None and job.state == RUNNING and job.attempts == attempt
        may_retry = (current and job is not None and retryable and not job.cancel
                     and job.attempts < job.max_attempts)
        row = step(event, job.state if job else ABSENT,
                   {"current_attempt": current, "current_attempt_may_retry": may_retry})
        if row.target is None or job is None:
            self.stats["stale_completions"] += 1
            return row.code
        self.running.pop(job.id)
        self._drop(job.run_entry)
        if row.target == RETRYING:
            delay = job.backoff_ms * job.base ** (job.attempts - 1) * jitter(seed, job.id,
                                                                           job.attempts)
            self.due[job.id] = self.now + math.floor(delay)
            job.state = RETRYING
        else:
            self._finish(job, row.target)
        return row.code

    def _callback_ends(self, out: Outcome) -> Code:
        job = self.jobs.get(out.job_id)
        current = job is not None and job.cb == "pending" and job.cb_n == out.num
        row = step("deliver_ok" if out.ok else "deliver_fail", job.state if job else ABSENT,
                   {"delivery_current": current})
        if job is None or row.code == Code.STALE_CALLBACK:
            self.stats["stale_callbacks"] += 1
            return row.code
        self._drop(job.cb_entry)
        job.cb_entry = None
        if row.code == Code.CALLBACK_DELIVERED:
            job.cb = "delivered"
        else:
            job.cb_n = out.num + 1
            self.cb_due[job.id] = self.now + min(60000, 1000 * 2 ** (out.num - 1))
        return row.code

    def _ingest_one(self, req: Request) -> Code:
        if req.op == "config":
            self.maxp = req.maxp
            return Code.CONFIGURED
        job = self.jobs.get(req.job_id)
        state = job.state if job else ABSENT
        if req.op == "cancel":
            fresh = job is not None and not job.cancel
            row = step("cancel", state, {"not_cancel_requested": fresh})
            if job is None:
                self.ghosts.add(req.job_id)
            elif row.target == CANCELED:
                del self.due[job.id]
                job.cancel = True
                self._finish(job, CANCELED)
            elif row.code == Code.CANCEL_MARKED:
                job.cancel = True
            return row.code
        self.incoming.discard(req.job_id)
        row = step("enqueue", state, {"malformed": not req.well_formed})
        if row.target == PENDING:
            self.ghosts.discard(req.job_id)
            s = req.spec
            self.jobs[req.job_id] = Job(req.job_id, s.max_attempts, s.backoff_ms, s.base,
                                        s.on_complete)
            self.due[req.job_id] = req.due
        elif row.code == Code.DUPLICATE_ENQUEUE:
            self.stats["duplicate_enqueues"] += 1
        else:
            self.stats["rejected"] += 1
            if job is None:
                self.ghosts.add(req.job_id)
        return row.code

    # -- actions (each asserts the script's reply equals the model's prediction) --------------

    def boot(self, max_parallelism: int) -> str:
        """The first main loop takes the lease and seeds max_parallelism; worker w1 is alive."""
        lease = parse_lease(self._call(self.engine.acquire("owner-0", LEASE_TTL, max_parallelism)))
        self.epoch, self.maxp = 1, max_parallelism
        assert (lease.code, lease.token) == (Code.OK, "1:owner-0")
        self.token = lease.token
        self.set_heartbeat("w1", alive=True)
        return self.token

    def enqueue_job(self, job_id: str | None, spec: JobSpec = JobSpec(), *,
                    well_formed: bool = True) -> str:
        """Append an enqueue entry as a client does (no id: the entry id is the job id)."""
        eid = self._next_eid()
        fields = enqueue_fields(
            job_id=job_id or "", name="task", args=[self.seq], kwargs=None, enc="msgpack",
            max_payload=1 << 20, max_attempts=spec.max_attempts, initial_backoff=0.0,
            base=spec.base, timeout=None, run_at=None, run_after=None,
            on_complete="record" if spec.on_complete else None, context={"n": self.seq})
        fields["initial_backoff_ms"] = str(spec.backoff_ms)
        if spec.run_after_ms:
            fields["run_after_ms"] = str(spec.run_after_ms)
        if job_id is None:
            del fields["id"]
        if not well_formed:
            del fields["name"]
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(POOL.pending_start, fields, id=eid)  # type: ignore[arg-type]
        if job_id is not None:
            pipe.sadd(POOL.incoming, job_id)
            self.incoming.add(job_id)
        pipe.execute()
        job_id = job_id or eid
        self.requests.append(Request(eid, "enqueue", job_id, well_formed, spec,
                                     self.now + spec.run_after_ms))
        return job_id

    def cancel_job(self, job_id: str) -> str:
        """Append a cancel request; returns its entry id."""
        eid = self._next_eid()
        self.r.xadd(POOL.pending_start, {"op": "cancel", "id": job_id}, id=eid)
        self.requests.append(Request(eid, "cancel", job_id))
        return eid

    def configure(self, max_parallelism: int) -> str:
        """Append a live-configuration request; returns its entry id."""
        eid = self._next_eid()
        self.r.xadd(POOL.pending_start, {"op": "config", "max_parallelism": max_parallelism},
                    id=eid)
        self.requests.append(Request(eid, "config", maxp=max_parallelism))
        return eid

    def ingest(self) -> list[tuple[str, Code]]:
        """ingestRequests: the model applies the same entries, in order."""
        batch, self.requests = self.requests[:BATCH], self.requests[BATCH:]
        expected = [(r.eid if r.op == "config" else r.job_id, self._ingest_one(r)) for r in batch]
        reply = parse_batch(self._call(self.engine.ingest(self.token, self.now)))
        assert reply.code == Code.OK
        assert reply.outcomes == expected
        assert reply.last_entry_id == (batch[-1].eid if batch else "")
        return reply.outcomes

    def start(self) -> list[str]:
        """startJobs: due jobs by (due, id) while running < max_parallelism, then callbacks."""
        free, started = min(self.maxp - len(self.running), BATCH), []
        if free > 0:
            for job_id, _ in [kv for kv in zset_order(self.due) if kv[1] <= self.now][:free]:
                del self.due[job_id]
                job = self.jobs[job_id]
                row = step("start", job.state, {"due_and_slot_free": True})
                assert row.target == RUNNING
                job.state, job.attempts, job.maxp_at_start = RUNNING, job.attempts + 1, self.maxp
                job.run_entry = Entry("run", job_id, job.attempts)
                self.dispatch.append(job.run_entry)
                self.running[job_id] = self.now
                started.append(job_id)
        for job_id, _ in [kv for kv in zset_order(self.cb_due) if kv[1] <= self.now][:BATCH]:
            del self.cb_due[job_id]
            job = self.jobs[job_id]
            if job.cb == "pending":
                job.cb_entry = Entry("cb", job_id, job.cb_n)
                self.dispatch.append(job.cb_entry)
        reply = parse_start(self._call(self.engine.start(self.token, self.now)))
        first_due = zset_order(self.due)[0][1] if self.due else None
        first_cb = zset_order(self.cb_due)[0][1] if self.cb_due else None
        assert reply.code == Code.OK
        assert (reply.ids, reply.started, reply.running, reply.max_parallelism) == (
            started, len(started), len(self.running), self.maxp)
        assert (reply.next_due_ms, reply.next_callback_ms, reply.now_ms) == (
            first_due, first_cb, self.now)
        if started:
            assert reply.running <= self.maxp
        return reply.ids

    def report(self, out: Outcome) -> str:
        """A worker appends an outcome to pendingCompletion; returns its entry id."""
        eid = text(self.r.execute_command("XADD", POOL.pending_completion, "*",
                                          *[x for kv in out.fields().items() for x in kv]))
        self.outcomes.append((eid, out))
        self.sent.append(out)
        return eid

    def apply(self, seed: str) -> list[tuple[str, Code]]:
        """applyOutcomes: the model applies the same outcomes, in order."""
        batch, self.outcomes = self.outcomes[:BATCH], self.outcomes[BATCH:]
        expected = []
        for _, out in batch:
            if out.kind == "run":
                code = self._attempt_ends("succeed" if out.ok else "fail",
                                          self.jobs.get(out.job_id), out.num, out.retryable, seed)
            else:
                code = self._callback_ends(out)
            expected.append((out.job_id, code))
        reply = parse_batch(self._call(self.engine.apply(self.token, seed, self.now)))
        assert reply.code == Code.OK
        assert reply.outcomes == expected
        assert reply.last_entry_id == (batch[-1][0] if batch else "")
        return reply.outcomes

    def read(self, worker: str, count: int) -> list[Entry]:
        """A worker takes new dispatch entries with XREADGROUP."""
        expected = [e for e in self.dispatch if e.holder is None][:count]
        reply = self.r.execute_command("XREADGROUP", "GROUP", GROUP, worker, "COUNT", count,
                                       "STREAMS", POOL.dispatch, ">")
        got = [text(eid) for eid, _ in reply[0][1]] if reply else []
        assert got == [e.eid for e in expected]
        for e in expected:
            e.holder = worker
        return expected

    def set_heartbeat(self, worker: str, *, alive: bool) -> None:
        """A worker's heartbeat key appears (long TTL) or is gone (the worker died)."""
        if alive:
            self.r.set(POOL.heartbeat(worker), "1", px=LEASE_TTL)
            self.alive.add(worker)
        else:
            self.r.delete(POOL.heartbeat(worker))
            self.alive.discard(worker)

    def reap(self, seed: str) -> tuple[int, int]:
        """reapLost: entries held by consumers without a heartbeat end their attempt (WorkerLost)
        or are handed out again (callbacks); live consumers' entries are left alone."""
        lost = redelivered = 0
        holders = {e.holder for e in self.dispatch if e.holder is not None}
        for consumer in sorted(holders - self.alive, key=str.encode):
            for e in [e for e in self.dispatch if e.holder == consumer]:
                job = self.jobs[e.job]
                if e.kind == "run" and job.run_entry is e and job.state == RUNNING:
                    code = self._attempt_ends("lose", job, e.num, True, seed)
                    assert code in (Code.RETRY_SCHEDULED, Code.FAILED)
                    lost += 1
                    continue
                self._drop(e)
                if e.kind == "cb" and job.cb == "pending" and job.cb_entry is e:
                    job.cb_n += 1
                    job.cb_entry = Entry("cb", job.id, job.cb_n)
                    self.dispatch.append(job.cb_entry)
                    redelivered += 1
        reply = parse_reap(self._call(self.engine.reap(self.token, seed, self.now)))
        assert (reply.code, reply.timed_out, reply.lost, reply.redelivered) == (
            Code.OK, 0, lost, redelivered)
        return lost, redelivered

    def change_leader(self, *, expire: bool, max_parallelism: int) -> str:
        """The lease expires (or its key is deleted); a new owner takes over with a new epoch."""
        if expire:
            self.r.pexpire(POOL.lease, 1)
            deadline = time.monotonic() + 5
            while self.r.exists(POOL.lease) and time.monotonic() < deadline:
                pass
        else:
            self.r.delete(POOL.lease)
        self.old_tokens.append(self.token)
        self.epoch += 1
        owner = f"owner-{self.epoch}"
        lease = parse_lease(self._call(self.engine.acquire(owner, LEASE_TTL, max_parallelism)))
        assert (lease.code, lease.token) == (Code.OK, f"{self.epoch}:{owner}")
        self.token = lease.token
        old_owner = self.old_tokens[-1].split(":", 1)[1]
        refused = parse_lease(self._call(self.engine.acquire(old_owner, LEASE_TTL, 1)))
        assert (refused.code, refused.token) == (Code.NOT_LEADER, "")
        return self.token

    def old_leader_call(self, token: str, script: str, seed: str = "s") -> Code:
        """A fenced-off leader's script call: NOT_LEADER, and not one key changes."""
        calls = {"ingest": self.engine.ingest(token, self.now),
                 "apply": self.engine.apply(token, seed, self.now),
                 "start": self.engine.start(token, self.now),
                 "reap": self.engine.reap(token, seed, self.now),
                 "release": self.engine.release(token)}
        before = self._snapshot()
        code = Code(self._call(calls[script])[0])
        assert code == Code.NOT_LEADER
        assert self._snapshot() == before
        return code

    # -- hypothesis rules (few, with a `what` choice each, so every kind of actor acts often) -

    @initialize(maxp=st.integers(1, 3),
                first=st.lists(st.tuples(KEYS, SPECS), min_size=1, max_size=4))
    def boot_pool(self, maxp: int, first: list[tuple[str, JobSpec]]) -> None:
        self.boot(maxp)
        for key, spec in first:
            self.enqueue_job("key:" + key, spec)
        self.ingest()

    @rule(how=st.sampled_from(["key", "key", "reuse", "entry-id", "malformed"]),
          key=KEYS, pick=PICK, spec=SPECS)
    def client_enqueues(self, how: str, key: str, pick: int, spec: JobSpec) -> None:
        job_id: str | None = "key:" + key
        if how == "reuse" and self.jobs:
            job_id = sorted(self.jobs)[pick % len(self.jobs)]
        elif how == "entry-id":
            job_id = None
        elif how == "malformed":  # may hit an existing id: validation comes first (REJECTED)
            job_id = key
        self.enqueue_job(job_id, spec, well_formed=how != "malformed")

    @rule(what=st.sampled_from(["running", "waiting", "any", "unknown", "config"]), pick=PICK,
          maxp=st.sampled_from([0, 1, 1, 2, 2, 3, 3]))
    def client_cancels_or_configures(self, what: str, pick: int, maxp: int) -> None:
        """Cancel a running, a pending/retrying, any (finished too) or an unknown job; or
        change max_parallelism (0 pauses the pool)."""
        if what == "config":
            self.configure(maxp)
            return
        ids = {"running": sorted(self.running), "waiting": sorted(self.due),
               "any": sorted(set(self.jobs) | {r.job_id for r in self.requests
                                               if r.op == "enqueue"})}
        choice = ids.get(what) or ids["any"]
        self.cancel_job(choice[pick % len(choice)] if choice and what != "unknown"
                        else f"ghost:{pick % 3}")

    @rule(what=st.sampled_from(["tick", "tick+reap", "tick", "tick+reap", "ingest", "apply",
                                "start", "reap"]),
          seed=st.sampled_from(["s1", "s2"]))
    def main_loop(self, what: str, seed: str) -> None:
        """The leader runs a whole tick (as MainLoop does) or one script of it."""
        if what.startswith("tick") or what == "ingest":
            self.ingest()
        if what.startswith("tick") or what == "apply":
            self.apply(seed)
        if what.startswith("tick") or what == "start":
            self.start()
        if what in ("tick+reap", "reap"):
            self.reap(seed)

    @rule(ms=st.sampled_from([1, 10, 100, 1000, 5000]))
    def advance_time(self, ms: int) -> None:
        """The clock passed to every script moves on (backoff, run_after, callback retries)."""
        self.now += ms

    @rule(what=st.sampled_from(["current", "current", "current", "old", "repeat", "callback",
                                "callback", "closed-callback"]),
          pick=PICK, ok=st.booleans(), retryable=st.booleans(), twice=st.booleans())
    def worker_reports(self, what: str, pick: int, ok: bool, retryable: bool,
                       twice: bool) -> None:
        """Outcomes of current attempts and deliveries, of superseded ones, and repeats: `what`,
        else the first kind that has a candidate."""
        choices = self._report_choices(pick, ok, retryable)
        out = choices.get(what) or next(iter(choices.values()), None)
        if out is not None:
            for _ in range(1 + twice):
                self.report(out)

    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 4), reports=st.booleans(),
          results=st.lists(st.sampled_from(["retryable", "ok", "fatal"]), min_size=1,
                           max_size=3))
    def worker_works(self, worker: str, count: int, reports: bool, results: list[str]) -> None:
        """A worker takes entries and (unless it stops first) reports on each, cycling through
        `results` (retryable / fatal failure or success; callbacks fail on fatal only)."""
        entries = self.read(worker, count)
        for i, e in enumerate(entries if reports else []):
            result = results[i % len(results)]
            ok = result != "fatal" if e.kind == "cb" else result == "ok"
            self.report(Outcome(e.kind, e.job, e.num, ok, result == "retryable"))

    def _report_choices(self, pick: int, ok: bool, retryable: bool) -> dict[str, Outcome]:
        choices: dict[str, Outcome] = {}
        if self.running:
            job = self.jobs[sorted(self.running)[pick % len(self.running)]]
            choices["current"] = Outcome("run", job.id, job.attempts, ok, retryable)
        cbs = [e for e in self.dispatch if e.kind == "cb"]
        if cbs:
            e = cbs[pick % len(cbs)]
            choices["callback"] = Outcome("cb", e.job, e.num, ok)
        old = sorted((j.state != RUNNING, j.id, a) for j in self.jobs.values()
                     for a in range(1, j.attempts + 1) if j.state != RUNNING or a < j.attempts)
        if old:  # superseded attempts of running jobs first, then those of any job
            _, job_id, attempt = old[pick % (sum(not o[0] for o in old) or len(old))]
            choices["old"] = Outcome("run", job_id, attempt, ok, retryable)
        closed = sorted((j.id, n) for j in self.jobs.values() if j.state in TERMINAL
                        for n in range(1, max(j.cb_n, 1) + (j.cb != "pending")))
        if closed:
            job_id, n = closed[pick % len(closed)]
            choices["closed-callback"] = Outcome("cb", job_id, n, ok)
        if self.sent:
            choices["repeat"] = self.sent[pick % len(self.sent)]
        return choices

    @rule(what=st.sampled_from(["read", "read", "read", "beat", "die"]),
          worker=st.sampled_from(WORKERS), count=st.integers(1, 3))
    def worker_acts(self, what: str, worker: str, count: int) -> None:
        """A worker takes dispatch entries, or its heartbeat appears, or it dies."""
        if what == "read":
            self.read(worker, count)
        else:
            self.set_heartbeat(worker, alive=what == "beat")

    @rule(what=st.sampled_from(["change", "expire", "old-leader", "old-leader", "contender"]),
          pick=PICK,
          script=st.sampled_from(["ingest", "apply", "start", "reap", "release"]),
          maxp=st.integers(1, 3))
    def leadership(self, what: str, pick: int, script: str, maxp: int) -> None:
        """The lease moves to a new owner; old owners and contenders are fenced off."""
        if what in ("change", "expire"):
            self.change_leader(expire=what == "expire", max_parallelism=maxp)
        elif what == "old-leader" and self.old_tokens:
            self.old_leader_call(self.old_tokens[pick % len(self.old_tokens)], script)
        else:
            refused = parse_lease(self._call(self.engine.acquire("intruder", LEASE_TTL, 3)))
            assert refused.code == Code.NOT_LEADER
            owner = self.token.split(":", 1)[1]
            renewed = parse_lease(self._call(self.engine.acquire(owner, LEASE_TTL, 3)))
            assert (renewed.code, renewed.token) == (Code.OK, self.token)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def job_hashes_agree(self) -> None:
        """State, outcome, attempt, cancel mark and delivery of every job the model knows."""
        if not self.token:
            return
        ids = sorted(set(self.jobs) | self.ghosts)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.execute_command("HMGET", POOL.job(i), "state", "outcome", "attempts", "cancel",
                                 "cb", "cb_n")
        for i, got in zip(ids, pipe.execute(), strict=True):
            job = self.jobs.get(i)
            want: tuple[str | None, ...] = (None,) * 6
            if job is not None:
                want = (*HASH_OF[job.state], str(job.attempts), "1" if job.cancel else None,
                        job.cb, str(job.cb_n) if job.cb else None)
            assert tuple(None if g is None else text(g) for g in got) == want, i

    @invariant()
    def running_never_exceeds_max_parallelism(self) -> None:
        """The running ZSET is the model's, and no larger than the limit its jobs started under."""
        if not self.token:
            return
        got = self.r.execute_command("ZRANGE", POOL.running, 0, -1, "WITHSCORES")
        assert [(text(m), s) for m, s in got] == zset_order(self.running)
        if self.running:
            assert len(self.running) <= max(self.jobs[i].maxp_at_start for i in self.running)

    @invariant()
    def queues_agree(self) -> None:
        """Due times (retry jitter included), callback retries, streams, counters, the PEL."""
        if not self.token:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.execute_command("ZRANGE", POOL.due, 0, -1, "WITHSCORES")
        pipe.execute_command("ZRANGE", POOL.callbacks_due, 0, -1, "WITHSCORES")
        pipe.execute_command("SMEMBERS", POOL.incoming)
        pipe.execute_command("XLEN", POOL.pending_start)
        pipe.execute_command("XLEN", POOL.pending_completion)
        pipe.execute_command("HGETALL", POOL.stats)
        pipe.xpending_range(POOL.dispatch, GROUP, "-", "+", 10_000)
        due, cb_due, incoming, n_start, n_done, stats, pel = pipe.execute()
        assert [(text(m), s) for m, s in due] == zset_order(self.due)
        assert [(text(m), s) for m, s in cb_due] == zset_order(self.cb_due)
        assert {text(m) for m in incoming} == self.incoming
        assert (n_start, n_done) == (len(self.requests), len(self.outcomes))
        counters = {text(k): int(v) for k, v in stats.items()}
        for name, n in self.stats.items():
            assert counters.get(name, 0) == n, name
        retrying = sum(j.state == RETRYING for j in self.jobs.values())
        assert counters.get("retrying", 0) == retrying
        assert {text(p["message_id"]): text(p["consumer"]) for p in pel} == {
            e.eid: e.holder for e in self.dispatch if e.holder is not None}

    @invariant()
    def one_terminal_state_and_one_delivery_record_per_job(self) -> None:
        """Counted on the Redis side: done-channel messages, and cb entries with n=1."""
        if not self.token:
            return
        self.syncs += 1
        sentinel = f"sync-{self.syncs}"
        self.r.publish(POOL.done_channel("~"), sentinel)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=1.0)
            if msg is None or msg["type"] != "pmessage":
                continue
            job_id = text(msg["channel"])[len(POOL.done_channel("")):]
            if job_id == "~":
                if text(msg["data"]) == sentinel:
                    break
                continue
            self.published[job_id] += 1
            assert text(msg["data"]) == HASH_OF[self.jobs[job_id].state][0]
        else:
            raise AssertionError("the sync message never arrived")
        for job in self.jobs.values():
            finished = int(job.state in TERMINAL)
            assert job.terminal_transitions == finished == self.published[job.id], job.id
            records = finished if job.on_complete else 0
            assert job.delivery_records == records == self.records_seen[job.id], job.id
        assert set(self.published) <= set(self.jobs)
        assert set(self.records_seen) <= set(self.jobs)

    def checked(self, value: T) -> T:
        """Check every invariant (for hand-written scenarios), then hand `value` back."""
        self.job_hashes_agree()
        self.running_never_exceeds_max_parallelism()
        self.queues_agree()
        self.one_terminal_state_and_one_delivery_record_per_job()
        return value


def test_random_interleavings_of_clients_workers_and_leaders_match_the_model(
    redis_url: str,
) -> None:
    WorkpoolModel.url = redis_url
    run_state_machine_as_test(WorkpoolModel, settings=settings(stateful_step_count=40))


def test_a_golden_interleaving_replays_with_the_codes_the_table_predicts(redis_url: str) -> None:
    WorkpoolModel.url = redis_url
    m = WorkpoolModel()
    try:
        _golden_retry_and_cancel(m)
        _golden_lost_worker_and_callbacks(m)
        _golden_live_worker_and_cancels(m)
    finally:
        m.teardown()


# The golden interleaving, in three phases: every reply is spelled out, and `ok` checks every
# invariant after each step.


def _golden_retry_and_cancel(m: WorkpoolModel) -> None:
    ok, c = m.checked, Code
    ok(m.boot(max_parallelism=1))
    ok(m.enqueue_job("key:b", JobSpec(max_attempts=2)))
    ok(m.enqueue_job("key:a", JobSpec(max_attempts=2, backoff_ms=100, on_complete=True)))
    ok(m.enqueue_job("key:a", JobSpec(max_attempts=3)))
    ok(m.enqueue_job("key:c", JobSpec(run_after_ms=2000)))
    ok(m.enqueue_job("key:d", JobSpec(on_complete=True)))
    ok(m.cancel_job("key:d"))
    ok(m.cancel_job("ghost:x"))
    assert ok(m.ingest()) == [("key:b", c.ENQUEUED), ("key:a", c.ENQUEUED),
                              ("key:a", c.DUPLICATE_ENQUEUE), ("key:c", c.ENQUEUED),
                              ("key:d", c.ENQUEUED), ("key:d", c.CANCELED),
                              ("ghost:x", c.CANCEL_NOOP)]
    assert [(e.kind, e.job, e.num) for e in ok(m.read("w1", 5))] == [("cb", "key:d", 1)]
    # a and b are due at once: the lower id starts first, and only one fits; c is not due yet
    assert ok(m.start()) == ["key:a"]
    ok(m.report(Outcome("cb", "key:d", 1, ok=True)))
    ok(m.report(Outcome("run", "key:a", 1, ok=False, retryable=True)))
    assert ok(m.apply("s")) == [("key:d", c.CALLBACK_DELIVERED), ("key:a", c.RETRY_SCHEDULED)]
    assert m.due["key:a"] == T0 + math.floor(100 * jitter("s", "key:a", 1))
    assert ok(m.start()) == ["key:b"]
    # cancel of a running job marks it; its failure is then final although attempts are left
    ok(m.cancel_job("key:b"))
    ok(m.cancel_job("key:b"))
    assert ok(m.ingest()) == [("key:b", c.CANCEL_MARKED), ("key:b", c.CANCEL_NOOP)]
    ok(m.report(Outcome("run", "key:b", 1, ok=False, retryable=True)))
    ok(m.report(Outcome("run", "key:a", 1, ok=True)))
    assert ok(m.apply("s")) == [("key:b", c.FAILED), ("key:a", c.STALE_COMPLETION)]


def _golden_lost_worker_and_callbacks(m: WorkpoolModel) -> None:
    ok, c = m.checked, Code
    m.now += 150
    assert ok(m.start()) == ["key:a"]
    ok(m.report(Outcome("run", "key:a", 1, ok=True)))  # superseded while attempt 2 runs
    assert ok(m.apply("s")) == [("key:a", c.STALE_COMPLETION)]
    assert [(e.kind, e.job, e.num) for e in ok(m.read("w2", 5))] == [("run", "key:a", 2)]
    assert ok(m.reap("s")) == (1, 0)  # w2 has no heartbeat: WorkerLost on the last attempt
    assert m.jobs["key:a"].state == FAILED
    ok(m.change_leader(expire=False, max_parallelism=3))
    assert ok(m.old_leader_call("1:owner-0", "start")) == c.NOT_LEADER
    # on_complete of a: fails once, is handed out again after 1 s, and w3 dies holding it
    assert [(e.kind, e.job, e.num) for e in ok(m.read("w1", 5))] == [("cb", "key:a", 1)]
    ok(m.report(Outcome("cb", "key:a", 1, ok=False)))
    assert ok(m.apply("s")) == [("key:a", c.CALLBACK_RETRY)]
    m.now += 1000
    assert ok(m.start()) == []  # hands out delivery n=2 of a; c is still not due
    assert [(e.kind, e.job, e.num) for e in ok(m.read("w3", 5))] == [("cb", "key:a", 2)]
    assert ok(m.reap("s")) == (0, 1)
    ok(m.report(Outcome("cb", "key:a", 2, ok=True)))  # the dead worker was only slow
    ok(m.report(Outcome("cb", "key:a", 3, ok=True)))
    ok(m.report(Outcome("cb", "key:a", 3, ok=True)))
    assert ok(m.apply("s")) == [("key:a", c.STALE_CALLBACK), ("key:a", c.CALLBACK_DELIVERED),
                                ("key:a", c.STALE_CALLBACK)]


def _golden_live_worker_and_cancels(m: WorkpoolModel) -> None:
    ok, c = m.checked, Code
    m.now += 1000
    assert ok(m.start()) == ["key:c"]
    m.set_heartbeat("w2", alive=True)
    assert [(e.kind, e.job) for e in ok(m.read("w2", 5))] == [("run", "key:c")]
    assert ok(m.reap("s")) == (0, 0)  # w2 is alive: its entry is left alone
    ok(m.cancel_job("key:c"))
    assert ok(m.ingest()) == [("key:c", c.CANCEL_MARKED)]
    ok(m.report(Outcome("run", "key:c", 1, ok=True)))
    assert ok(m.apply("s")) == [("key:c", c.SUCCEEDED)]  # the marked attempt's outcome stands
    # a retrying job is canceled at once; a finished one is left alone
    ok(m.enqueue_job("key:e", JobSpec(max_attempts=3, backoff_ms=10_000)))
    assert ok(m.ingest()) == [("key:e", c.ENQUEUED)]
    assert ok(m.start()) == ["key:e"]
    ok(m.report(Outcome("run", "key:e", 1, ok=False, retryable=True)))
    assert ok(m.apply("s")) == [("key:e", c.RETRY_SCHEDULED)]
    ok(m.cancel_job("key:e"))
    ok(m.cancel_job("key:a"))
    assert ok(m.ingest()) == [("key:e", c.CANCELED), ("key:a", c.CANCEL_NOOP)]
    assert {i: j.state for i, j in m.jobs.items()} == {
        "key:a": FAILED, "key:b": FAILED, "key:c": SUCCEEDED, "key:d": CANCELED,
        "key:e": CANCELED}
