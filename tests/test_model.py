"""Model-based test: interleavings of client, worker and leader actions (random, and one golden
hand-written one) drive the real Lua scripts on a real redis-server, and a pure-Python model
interpreting `statemachine.TABLE` predicts every reply code and every key the scripts write,
admission control included (priorities, rate limits, concurrency keys, live settings)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast

import msgpack
import redis
from helpers.scripts import jitter
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from workpool.wire import limits
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP, Keys
from workpool.wire.options import entry_fields
from workpool.wire.protocol import enqueue_fields, job_fields, text
from workpool.wire.replies import StartReply, parse_batch, parse_lease, parse_reap, parse_start
from workpool.wire.scripts import Call, run
from workpool.wire.statemachine import (
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
NAMES = ("mail", "sync", "misc")  #: job names, each with its own settings
CKEYS = ("k1", "k2")  #: concurrency keys
#: Rate specs "limit/per_ms". A bucket key gets PEXPIRE per_ms in *real* time; with per_ms >= 60 s
#: no bucket expires while one example runs, so "absent bucket = full" never disagrees.
RATES = ("1/60000", "2/60000", "3/120000", "10/60000")  #: per job name
POOL_RATES = ("10/60000", "30/60000")  #: pool-wide
#: Rates at the engine's limits (per >= 60 s, as above).
EXTREME_RATES = (f"{limits.MAX_RATE_LIMIT}/60000", f"1/{limits.MAX_RATE_PER_MS}")
RANK = 10**12  #: rank = -priority * RANK + seq
HASH_OF = {PENDING: ("pending", None), RUNNING: ("running", None),
           RETRYING: ("retrying", None), SUCCEEDED: ("done", "succeeded"),
           FAILED: ("done", "failed"), CANCELED: ("canceled", "canceled")}


def _stream_id(eid: str) -> tuple[int, int]:
    """A stream id as a pair that sorts as Redis orders ids."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def zset_order(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Members as Redis orders a ZSET: by score, then by member bytes."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0].encode()))


def rate_of(spec: str) -> tuple[int, int]:
    """"limit/per_ms" -> (limit, per_ms)."""
    limit, per = spec.split("/")
    return int(limit), int(per)


def bucket_wait(spec: str, tokens: float) -> int:
    """Milliseconds until a bucket holding `tokens` holds one again (admission.lua)."""
    limit, per = rate_of(spec)
    return max(1, math.ceil((1 - tokens) * per / limit))


def valid_config_value(name: str, value: str) -> bool:
    """What ingestRequests accepts in a config entry ('' clears the override), within the
    engine's limits."""
    if value == "":
        return True
    if name == "paused":
        return value in ("0", "1")
    if name == "rate" or name.startswith("rate:"):
        parts = value.split("/")
        return value == "none" or (
            len(parts) == 2 and all(p.isdigit() for p in parts)
            and 1 <= int(parts[0]) <= limits.MAX_RATE_LIMIT
            and 1 <= int(parts[1]) <= limits.MAX_RATE_PER_MS)
    if name in ("max_parallelism", "max_per_key") or name.startswith("max_per_key:"):
        return value.isdigit() and int(value) <= limits.MAX_SETTING
    return False


def retry_delay(job: Job, seed: str) -> int:
    """The wait after the job's failed attempt (includes/finish.lua): backoff * base^(n-1) *
    jitter, capped at its max_backoff_ms; an overflow is the cap."""
    cap = min(job.max_backoff_ms, limits.MAX_RETRY_DELAY_MS)
    delay = 0.0
    if job.backoff_ms > 0:
        try:
            delay = job.backoff_ms * job.base ** (job.attempts - 1) * jitter(seed, job.id,
                                                                            job.attempts)
        except OverflowError:
            delay = math.inf
    return math.floor(min(delay, cap))


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
    max_backoff_ms: int
    name: str = "misc"
    priority: int = 0
    ckey: str = ""
    seq: int = 0
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

    @property
    def rank(self) -> float:
        """Place in the ready set: higher priority first, then enqueue order."""
        return float(-self.priority * RANK + self.seq)


@dataclass(frozen=True)
class JobSpec:
    """Options of one enqueue."""

    max_attempts: int = 1
    backoff_ms: int = 0
    base: float = 2.0
    on_complete: bool = False
    run_after_ms: int = 0  #: > 0: not due yet
    name: str = "misc"
    priority: int = 0
    ckey: str | None = None
    max_backoff_ms: int = limits.DEFAULT_MAX_BACKOFF_MS


#: Options, the engine's limits among them (a retry's wait is capped however the backoff grows).
SPECS = st.builds(JobSpec, max_attempts=st.sampled_from([3, 2, 1, 8, limits.MAX_ATTEMPTS]),
                  backoff_ms=st.sampled_from([0, 10, 250, 1000, limits.MAX_RETRY_DELAY_MS]),
                  base=st.sampled_from([1.0, 1.5, 2.0, float(limits.MAX_BACKOFF_BASE)]),
                  on_complete=st.booleans(),
                  run_after_ms=st.sampled_from([0, 0, 0, 50, 2000, limits.MAX_RUN_AFTER_MS]),
                  name=st.sampled_from([*NAMES, "mail"]),
                  priority=st.sampled_from([-2, -1, 0, 0, 1, 2, limits.MIN_PRIORITY,
                                            limits.MAX_PRIORITY]),
                  ckey=st.sampled_from([None, *CKEYS]),
                  max_backoff_ms=st.sampled_from([limits.DEFAULT_MAX_BACKOFF_MS, 0, 500,
                                                  limits.MAX_RETRY_DELAY_MS]))
#: Ways an enqueue entry is malformed: a field (None: removed) and its unusable value.
CORRUPTIONS: tuple[tuple[str, str | bytes | None], ...] = (
    ("name", None), ("name", "two words"), ("priority", "1001"), ("priority", "0.5"),
    ("base", str(limits.MAX_BACKOFF_BASE + 1)), ("max_attempts", str(limits.MAX_ATTEMPTS + 1)),
    ("max_backoff_ms", str(limits.MAX_RETRY_DELAY_MS + 1)), ("timeout_ms", "1e13"),
    ("run_at_ms", "-1"), ("run_after_ms", "nan"), ("kwargs", msgpack.packb({1: 2})),
    ("args", msgpack.packb({"a": 1})), ("enc", "pickle"))
NAME_RATE_FIELDS = st.sampled_from([f"rate:{n}" for n in NAMES])
KEY_FIELDS = st.sampled_from(["max_per_key", *(f"max_per_key:{n}" for n in NAMES)])
#: Declared settings (acquireLease writes them as defaults): as `declared_settings` makes them.
DECLARED = st.lists(st.one_of(st.tuples(NAME_RATE_FIELDS, st.sampled_from(RATES)),
                              st.tuples(st.just("rate"), st.sampled_from(POOL_RATES)),
                              st.tuples(KEY_FIELDS, st.sampled_from(["0", "1", "1", "2"]))),
                    max_size=4).map(dict)
#: Live overrides of one config entry ('' clears the override; 'none' means no limit).
CONFIG_PAIRS = st.one_of(
    st.tuples(st.just("max_parallelism"), st.sampled_from(["0", "1", "2", "3", "4", ""])),
    st.tuples(st.just("paused"), st.sampled_from(["0", "1", ""])),
    st.tuples(NAME_RATE_FIELDS, st.sampled_from([*RATES, *EXTREME_RATES, "none", ""])),
    st.tuples(st.just("rate"), st.sampled_from([*POOL_RATES, *EXTREME_RATES, "none", ""])),
    st.tuples(KEY_FIELDS, st.sampled_from(["0", "1", "1", "2", str(limits.MAX_SETTING), ""])),
)
BAD_CONFIGS: tuple[dict[str, str], ...] = (
    {"rate": "fast"}, {"max_per_key": "none"}, {"speed": "1"}, {}, {"rate:mail": "0/60000"},
    {"paused": "2"}, {"max_parallelism": "-1"}, {"rate:mail": "2/100000000000000000"},
    {"rate": f"{limits.MAX_RATE_LIMIT + 1}/60000"}, {"rate": f"1/{limits.MAX_RATE_PER_MS + 1}"},
    {"max_parallelism": str(limits.MAX_SETTING + 1)}, {"max_per_key:sync": "9" * 20},
    {"max_parallelism": "2", "rate": "1/0"})


@dataclass
class Request:
    """A pendingStart entry: enqueue, cancel or config."""

    eid: str
    op: str
    job_id: str = ""
    well_formed: bool = True
    spec: JobSpec = JobSpec()
    due: int = 0
    fields: dict[str, str] = field(default_factory=dict)  #: config fields (op excluded)


@dataclass
class Outcome:
    """A pendingCompletion entry, as a worker writes it."""

    kind: str  #: run | cb
    job_id: str
    num: int  #: attempt (run) or n (cb)
    ok: bool
    retryable: bool = True

    def fields(self) -> dict[str, str | bytes]:
        """The raw stream fields (see workpool/worker/supervisor.py)."""
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
            if not self.retryable:  # no worker can run the handler
                f["retryable"] = "0"
        return f


@dataclass
class StartPlan:
    """What the model predicts one startJobs call does."""

    maxp: int
    free: int
    promoted: int
    started: list[str] = field(default_factory=list)
    next_admission: int | None = None
    pool_dry: bool = False  #: stopped because the pool's bucket had no token
    looked: int = 0


class Admission:
    """The model of the admission structures (includes/admission.lua), on the model's clock."""

    def __init__(self, jobs: dict[str, Job]) -> None:
        self.jobs = jobs
        self.config: dict[str, str] = {}  #: live overrides ('' = explicitly no limit)
        self.defaults: dict[str, str] = {}  #: written by each fresh lease holder
        self.ready: dict[str, float] = {}
        self.keyq: dict[str, dict[str, float]] = {k: {} for k in CKEYS}
        self.nameq: dict[str, dict[str, float]] = {n: {} for n in NAMES}
        self.head: dict[str, str] = {}
        self.drain: dict[str, float] = {}  #: keys whose queue startJobs is to move on (score 0)
        self.krun: Counter[str] = Counter()
        self.throttled: dict[str, float] = {}
        self.buckets: dict[str, tuple[float, int]] = {}  #: scope -> (tokens, ts)
        self.waiting: set[str] = set()
        self.seq = 0
        self.priorities: set[int] = set()

    # -- settings --------------------------------------------------------------------------

    def setting(self, name: str) -> str | None:
        """The override, else the declared default; '' and absent both mean none."""
        value = self.config[name] if name in self.config else self.defaults.get(name)
        return value or None

    def maxp(self) -> int:
        """max_parallelism in force (0 while paused)."""
        if self.setting("paused") == "1":
            return 0
        return int(self.setting("max_parallelism") or "0")

    def key_limit(self, name: str) -> int:
        """Concurrency-key limit of jobs named `name` (0: unlimited)."""
        return int(self.setting(f"max_per_key:{name}") or self.setting("max_per_key") or "0")

    def key_at_limit(self, job: Job) -> bool:
        """The job's key already runs as many attempts as the job's name allows per key."""
        limit = self.key_limit(job.name) if job.ckey else 0
        return limit > 0 and self.krun[job.ckey] >= limit

    def configure(self, fields: dict[str, str]) -> Code:
        """An op=config entry: all fields or nothing; rate:<name> and key limits re-checked."""
        sets = {k: v for k, v in fields.items() if k != "reset"}
        if not all(valid_config_value(k, v) for k, v in sets.items()):
            return Code.REJECTED
        reset = fields.get("reset") == "1"
        if not sets and not reset:
            return Code.REJECTED
        keys_changed = reset or any(k.startswith("max_per_key") for k in sets)
        if reset:  # a dropped rate override is re-checked too
            sets = {**{k: "" for k in self.config if k.startswith("rate:")}, **sets}
            self.config.clear()
        for k, v in sets.items():
            if v == "":
                self.config.pop(k, None)
            else:
                self.config[k] = "" if v == "none" else v
            if k.startswith("rate:") and k[5:] in self.throttled:
                self.throttled[k[5:]] = 0
        if keys_changed:
            self.recheck_keys()
        return Code.CONFIGURED

    def declare(self, maxp: int, declared: dict[str, str]) -> None:
        """A fresh lease holder replaces the defaults (a raised limit takes effect at once)."""
        was, self.defaults = self.defaults, {"max_parallelism": str(maxp), **declared}
        for name in self.throttled:
            if was.get(f"rate:{name}") != self.defaults.get(f"rate:{name}"):
                self.throttled[name] = 0
        self.recheck_keys()

    def recheck_keys(self) -> None:
        """Keys with running attempts may admit more after a limit changed: startJobs looks at
        them again, a batch at a time."""
        for ckey in self.krun:
            self.drain[ckey] = 0

    # -- token buckets -----------------------------------------------------------------------

    def tokens(self, scope: str, spec: str | None, now: int) -> float:
        """Tokens in the bucket now; an absent bucket is full; no spec: no limit."""
        if spec is None:
            return math.inf
        limit, per = rate_of(spec)
        if scope not in self.buckets:
            return limit
        tokens, ts = self.buckets[scope]
        return min(limit, tokens + max(0, now - ts) * limit / per)

    def take(self, scope: str, tokens: float, now: int) -> None:
        """Every start consumes a token that exists."""
        assert tokens >= 1, (scope, tokens)
        self.buckets[scope] = (tokens - 1, now)

    # -- queues ------------------------------------------------------------------------------

    def make_ready(self, job: Job) -> None:
        """A due job joins `ready`, or its key's queue when another job stands for the key
        there or the key is at its limit."""
        if job.ckey and self.key_limit(job.name) > 0:
            head = self.head.get(job.ckey)
            if head in self.ready and job.rank < self.ready[head]:
                # a better-ranked job (a retry keeps its place) stands for the key instead
                self.keyq[job.ckey][head] = self.ready.pop(head)
                self.head[job.ckey] = job.id
                self.ready[job.id] = job.rank
                return
            if head is not None or self.key_at_limit(job):
                row = step("start", job.state, {"key_at_limit": True})
                assert (row.code, row.target) == (Code.HELD_BY_KEY, None)
                self.keyq[job.ckey][job.id] = job.rank
                return
            self.head[job.ckey] = job.id
        self.ready[job.id] = job.rank

    def advance_key(self, ckey: str) -> int:
        """The best waiting job of the key stands for it in `ready`, if the key is below its
        limit (jobs of names without a limit for keys go to `ready` and the next is tried), at
        most KEY_STEPS jobs; a key with more to move is left to startJobs. Returns the moves."""
        if ckey in self.head:
            return 0
        for moved in range(limits.KEY_STEPS):
            if not self.keyq[ckey]:
                return moved
            job_id, rank = zset_order(self.keyq[ckey])[0]
            limit = self.key_limit(self.jobs[job_id].name)
            if limit > 0 and self.krun[ckey] >= limit:
                return moved
            del self.keyq[ckey][job_id]
            self.ready[job_id] = rank
            if limit > 0:
                self.head[ckey] = job_id
                return moved + 1
        if self.keyq[ckey]:
            self.drain[ckey] = 0
        return limits.KEY_STEPS

    def key_started(self, job: Job) -> None:
        """An attempt of the job's key starts: the next job of the key may stand for it."""
        if job.ckey:
            if self.head.get(job.ckey) == job.id:
                del self.head[job.ckey]
            self.krun[job.ckey] += 1
            limit = self.key_limit(job.name)
            assert limit == 0 or self.krun[job.ckey] <= limit, (job.id, job.ckey, limit)
            self.advance_key(job.ckey)

    def key_ended(self, job: Job) -> None:
        """An attempt of the job's key ended (success, failure, lost, timeout)."""
        if job.ckey:
            self.krun[job.ckey] -= 1
            if self.krun[job.ckey] <= 0:
                del self.krun[job.ckey]
            self.advance_key(job.ckey)

    def unqueue(self, job: Job) -> None:
        """A canceled pending/retrying job leaves every queue; its key moves on."""
        self.waiting.discard(job.id)
        self.ready.pop(job.id, None)
        self.nameq[job.name].pop(job.id, None)
        if job.ckey:
            self.keyq[job.ckey].pop(job.id, None)
            if self.head.get(job.ckey) == job.id:
                del self.head[job.ckey]
            self.advance_key(job.ckey)

    def hold_by_key(self, job: Job) -> None:
        """A ready job whose key reached its limit since (a limit was lowered) waits again."""
        del self.ready[job.id]
        self.keyq[job.ckey][job.id] = job.rank
        if self.head.get(job.ckey) == job.id:
            del self.head[job.ckey]
        self.advance_key(job.ckey)

    def park(self, job: Job, spec: str, tokens: float, now: int) -> None:
        """The job's name has no token: parked until the name's next token (ZADD LT)."""
        del self.ready[job.id]
        self.nameq[job.name][job.id] = job.rank
        at = now + bucket_wait(spec, tokens)
        self.throttled[job.name] = min(at, self.throttled.get(job.name, math.inf))

    def drain_keys(self) -> int:
        """Keys left to move on go on, a batch of steps at most; returns the steps."""
        moved = 0
        while moved < BATCH and self.drain:
            ckey = zset_order(self.drain)[0][0]
            del self.drain[ckey]
            moved += max(1, self.advance_key(ckey))
        return moved

    def unpark(self, now: int, moved: int) -> int:
        """Names whose next token is due release max(1, floor(tokens)) jobs, best first, a batch
        in all (a name cut short by the batch is looked at again at once); returns `moved` plus
        the steps."""
        for name, _ in [kv for kv in zset_order(self.throttled) if kv[1] <= now][:BATCH]:
            if moved >= BATCH:
                break
            del self.throttled[name]
            spec = self.setting(f"rate:{name}")
            tokens = BATCH
            if spec is not None:
                tokens = max(1, math.floor(self.tokens(f"name:{name}", spec, now)))
            n = min(tokens, BATCH - moved)
            released = zset_order(self.nameq[name])[:n]
            for job_id, rank in released:
                del self.nameq[name][job_id]
                self.ready[job_id] = rank
            moved += max(1, len(released))
            if self.nameq[name]:
                limit, per = rate_of(spec) if spec and n >= tokens else (1, 0)
                self.throttled[name] = now + math.ceil(per / limit)
        return moved

    def plan_start(self, now: int, running: int, due: dict[str, float],
                   start_job: Callable[[Job, int], None]) -> StartPlan:
        """startJobs' admission: unpark, promote due jobs, then start the best ready jobs into
        free slots within the limits; `start_job` does the start itself."""
        moved = self.unpark(now, self.drain_keys())
        promoted = [job_id for job_id, at in zset_order(due) if at <= now][:max(0, BATCH - moved)]
        for job_id in promoted:
            del due[job_id]
            self.make_ready(self.jobs[job_id])
        maxp = self.maxp()
        plan = StartPlan(maxp, min(maxp - running, BATCH), moved + len(promoted))
        pool_rate = self.setting("rate")
        while len(plan.started) < plan.free and plan.looked < 2 * BATCH and self.ready:
            plan.looked += 1
            job = self.jobs[zset_order(self.ready)[0][0]]
            assert job.state in (PENDING, RETRYING)
            pool_tokens = self.tokens("pool", pool_rate, now)
            if pool_rate is not None and pool_tokens < 1:
                plan.next_admission = now + bucket_wait(pool_rate, pool_tokens)
                plan.pool_dry = True
                break
            name_rate = self.setting(f"rate:{job.name}")
            name_tokens = self.tokens(f"name:{job.name}", name_rate, now)
            row = step("start", job.state, {"key_at_limit": self.key_at_limit(job),
                                            "rate_exhausted": name_tokens < 1,
                                            "due_and_slot_free": True})
            if row.code == Code.HELD_BY_KEY:
                self.hold_by_key(job)
            elif row.code == Code.HELD_BY_RATE:
                assert name_rate is not None
                self.park(job, name_rate, name_tokens, now)
            else:
                assert (row.code, row.target) == (Code.STARTED, RUNNING)
                if pool_rate is not None:
                    self.take("pool", pool_tokens, now)
                if name_rate is not None:
                    self.take(f"name:{job.name}", name_tokens, now)
                del self.ready[job.id]
                self.waiting.discard(job.id)
                self.key_started(job)
                start_job(job, maxp)
                plan.started.append(job.id)
        if self.throttled:
            first = int(zset_order(self.throttled)[0][1])
            plan.next_admission = min(first, plan.next_admission or first)
        return plan

    def could_start(self, job: Job, now: int) -> bool:
        """A ready job whose name has a token and whose key is below its limit."""
        name_tokens = self.tokens(f"name:{job.name}", self.setting(f"rate:{job.name}"), now)
        return name_tokens >= 1 and not self.key_at_limit(job)


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
        self.now, self.seq, self.epoch = T0, 0, 0
        self.token = ""
        self.old_tokens: list[str] = []
        self.jobs: dict[str, Job] = {}
        self.adm = Admission(self.jobs)
        self.ghosts: set[str] = set()  #: ids used but never enqueued: no hash may exist
        self.specs: dict[str, bytes] = {}  #: each job's packed spec as first seen: never rewritten
        self.due: dict[str, float] = {}  #: pending/retrying jobs not promoted yet
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
        self.last_start: StartReply | None = None
        self.code: tuple[int, dict[str, str]] = (1, {})  #: max_parallelism, settings declared

    def teardown(self) -> None:
        self.pubsub.close()
        self.r.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, call: Call[Any]) -> Any:
        reply = run(self.r, [call])[0]
        self._sync_dispatch()
        return reply

    def _next_eid(self) -> str:
        self.seq += 1
        return f"{self.now}-{self.seq}"

    def _live_dispatch(self) -> list[Any]:
        """The dispatch entries not acknowledged (pending, or not delivered yet). The stream
        also keeps acknowledged ones until the bulk trim passes them, never one behind no
        pending entry: each must be newer than the oldest still pending."""
        real = self.r.execute_command("XRANGE", POOL.dispatch, "-", "+")
        pending = {text(cast("bytes", p["message_id"])) for p in self.r.xpending_range(
            POOL.dispatch, GROUP, "-", "+", 10_000)} if real else set()
        groups = self.r.xinfo_groups(POOL.dispatch) if real else []
        delivered = next((_stream_id(text(g["last-delivered-id"])) for g in groups), (0, 0))
        live = [(e, raw) for e, raw in real
                if text(e) in pending or _stream_id(text(e)) > delivered]
        acked = [_stream_id(text(e)) for e, _ in real if (e, _) not in live]
        oldest = min((_stream_id(e) for e in pending), default=None)
        assert not acked or (oldest is not None and min(acked) > oldest), (acked, oldest)
        return live

    def _sync_dispatch(self) -> None:
        """Match the live dispatch entries to the model's, learning ids of new ones."""
        real = self._live_dispatch()
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
        self.adm.key_ended(job)
        if row.target == RETRYING:
            self.due[job.id] = self.now + retry_delay(job, seed)
            self.adm.waiting.add(job.id)
            job.state = RETRYING
        else:
            self._finish(job, row.target)
        return row.code

    def _callback_ends(self, out: Outcome) -> Code:
        job = self.jobs.get(out.job_id)
        current = job is not None and job.cb == "pending" and job.cb_n == out.num
        row = step("deliver_ok" if out.ok else "deliver_fail", job.state if job else ABSENT,
                   {"delivery_current": current,
                    "delivery_given_up": current and not out.retryable})  # within retention
        if job is None or row.code == Code.STALE_CALLBACK:
            self.stats["stale_callbacks"] += 1
            return row.code
        self._drop(job.cb_entry)
        job.cb_entry = None
        if row.code == Code.CALLBACK_DELIVERED:
            job.cb = "delivered"
        elif row.code == Code.CALLBACK_ABANDONED:
            job.cb = "failed"
            self.stats["callbacks_abandoned"] += 1
        else:
            job.cb_n = out.num + 1
            self.cb_due[job.id] = self.now + min(60000, 1000 * 2 ** (out.num - 1))
        return row.code

    def _ingest_one(self, req: Request) -> Code:
        if req.op == "config":
            code = self.adm.configure(req.fields)
            self.stats["rejected"] += code == Code.REJECTED
            return code
        job = self.jobs.get(req.job_id)
        state = job.state if job else ABSENT
        if req.op == "cancel":
            fresh = job is not None and not job.cancel
            row = step("cancel", state, {"not_cancel_requested": fresh})
            if job is None:
                self.ghosts.add(req.job_id)
            elif row.target == CANCELED:
                self.due.pop(job.id, None)
                self.adm.unqueue(job)
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
            self.adm.seq += 1
            self.jobs[req.job_id] = Job(req.job_id, s.max_attempts, s.backoff_ms, s.base,
                                        s.on_complete, s.max_backoff_ms, s.name, s.priority,
                                        s.ckey or "", self.adm.seq)
            self.adm.priorities.add(s.priority)
            self.adm.waiting.add(req.job_id)
            if req.due <= self.now:  # due already: joins admission at once
                self.adm.make_ready(self.jobs[req.job_id])
            else:
                self.due[req.job_id] = req.due
        elif row.code == Code.DUPLICATE_ENQUEUE:
            self.stats["duplicate_enqueues"] += 1
        else:
            self.stats["rejected"] += 1
            if job is None:
                self.ghosts.add(req.job_id)
        return row.code

    def _start_job(self, job: Job, maxp: int) -> None:
        assert len(self.running) < maxp  # max_parallelism in force at this start
        job.state, job.attempts, job.maxp_at_start = RUNNING, job.attempts + 1, maxp
        job.run_entry = Entry("run", job.id, job.attempts)
        self.dispatch.append(job.run_entry)
        self.running[job.id] = self.now

    # -- actions (each asserts the script's reply equals the model's prediction) --------------

    def boot(self, max_parallelism: int, declared: dict[str, str] | None = None) -> str:
        """The first main loop takes the lease and declares its settings; w1 is alive."""
        declared = declared or {}
        lease = parse_lease(self._call(self.engine.acquire("owner-0", LEASE_TTL,
                                                           max_parallelism, declared)))
        self.epoch = 1
        self.adm.declare(max_parallelism, declared)
        assert (lease.code, lease.token) == (Code.OK, "1:owner-0")
        self.token = lease.token
        self.set_heartbeat("w1", alive=True)
        return self.token

    def enqueue_job(self, job_id: str | None, spec: JobSpec = JobSpec(), *,
                    well_formed: bool = True, corruption: int = 0) -> str:
        """Append an enqueue entry as a client does (no id: the entry id is the job id); a
        malformed one is corrupted in one of the ways of CORRUPTIONS."""
        eid = self._next_eid()
        retry = {"max_attempts": str(spec.max_attempts), "initial_backoff_ms": str(spec.backoff_ms),
                 "base": repr(spec.base), "max_backoff_ms": str(spec.max_backoff_ms)}
        options = entry_fields(
            {"context": {"n": self.seq}, "priority": spec.priority,
             "concurrency_key": spec.ckey}, name=spec.name, enc="msgpack", retry=retry,
            timeout=None, handler="record" if spec.on_complete else None)
        if job_id is not None:
            options["id"] = job_id
        fields = enqueue_fields(options, [self.seq], {}, 1 << 20)
        if spec.run_after_ms:
            fields["run_after_ms"] = str(spec.run_after_ms)
        if not well_formed:
            field, value = CORRUPTIONS[corruption % len(CORRUPTIONS)]
            if value is None:
                del fields[field]
            else:
                fields[field] = value
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

    def configure(self, fields: dict[str, str]) -> str:
        """Append a live-configuration request (as `pool.configure` does); returns its id."""
        eid = self._next_eid()
        entry: dict[Any, Any] = {"op": "config", **fields}
        self.r.xadd(POOL.pending_start, entry, id=eid)
        self.requests.append(Request(eid, "config", fields=dict(fields)))
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
        """startJobs: promote due jobs, start the best ready ones within every limit, then hand
        out due callbacks. Afterwards nothing that could start is left behind."""
        running = len(self.running)
        plan = self.adm.plan_start(self.now, running, self.due, self._start_job)
        self.stats["started"] += len(plan.started)
        for job_id, _ in [kv for kv in zset_order(self.cb_due) if kv[1] <= self.now][:BATCH]:
            del self.cb_due[job_id]
            job = self.jobs[job_id]
            if job.cb == "pending":
                job.cb_entry = Entry("cb", job_id, job.cb_n)
                self.dispatch.append(job.cb_entry)
        reply = parse_start(self._call(self.engine.start(self.token, self.now)))
        self.last_start = reply
        first_due = int(zset_order(self.due)[0][1]) if self.due else None
        first_cb = int(zset_order(self.cb_due)[0][1]) if self.cb_due else None
        assert reply == StartReply(Code.OK, len(plan.started), len(self.running), plan.maxp,
                                   first_due, first_cb, self.now, plan.next_admission,
                                   plan.promoted, len(self.requests), len(self.outcomes),
                                   len(self.adm.ready), self.adm.setting("rate") or "",
                                   plan.started)
        assert reply.running <= max(plan.maxp, running)
        if len(plan.started) < plan.free and not plan.pool_dry:  # no lost wake-up
            assert not [i for i in self.adm.ready
                        if self.adm.could_start(self.jobs[i], self.now)], self.adm.ready
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

    def change_leader(self, *, expire: bool, max_parallelism: int,
                      declared: dict[str, str] | None = None) -> str:
        """The lease expires (or its key is deleted); a new owner takes over with a new epoch
        and declares its code's settings as the pool's defaults."""
        declared = declared or {}
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
        lease = parse_lease(self._call(self.engine.acquire(owner, LEASE_TTL, max_parallelism,
                                                           declared)))
        assert (lease.code, lease.token) == (Code.OK, f"{self.epoch}:{owner}")
        self.adm.declare(max_parallelism, declared)
        self.token = lease.token
        old_owner = self.old_tokens[-1].split(":", 1)[1]
        refused = parse_lease(self._call(self.engine.acquire(old_owner, LEASE_TTL, 1,
                                                             {"rate": "1/60000"})))
        assert (refused.code, refused.token) == (Code.NOT_LEADER, "")
        return self.token

    def old_leader_call(self, token: str, script: str, seed: str = "s") -> Code:
        """A fenced-off leader's script call: NOT_LEADER, and not one key changes."""
        calls: dict[str, Call[Any]] = {
            "ingest": self.engine.ingest(token, self.now),
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

    @initialize(maxp=st.integers(1, 4), declared=DECLARED, first_rate=st.sampled_from(RATES),
                key_limit=st.sampled_from(["1", "1", "2"]), misc_per_key=st.sampled_from(["", "0"]),
                first=st.lists(st.tuples(st.one_of(st.none(), KEYS), SPECS), min_size=3,
                               max_size=8))
    def boot_pool(self, *, maxp: int, declared: dict[str, str], first_rate: str,
                  key_limit: str, misc_per_key: str,
                  first: list[tuple[str | None, JobSpec]]) -> None:
        """The first leader declares a rate limit for mail and a limit per key, maybe none for
        misc (keys then mix limited and unlimited jobs), maybe more; clients enqueue a first
        lot (with entry ids, or a few ids that collide)."""
        misc = {"max_per_key:misc": misc_per_key} if misc_per_key else {}
        self.code = (maxp, {"rate:mail": first_rate, "max_per_key": key_limit, **misc,
                            **declared})
        self.boot(*self.code)
        for key, spec in first:
            self.enqueue_job(None if key is None else "key:" + key, spec)
        self.ingest()

    @rule(how=st.sampled_from(["key", "key", "reuse", "entry-id", "entry-id", "malformed"]),
          key=KEYS, pick=PICK, specs=st.lists(SPECS, min_size=1, max_size=4))
    def client_enqueues(self, how: str, key: str, pick: int, specs: list[JobSpec]) -> None:
        """One to four enqueues (more share an id, or have entry ids, or are malformed: a
        field missing or out of the engine's limits)."""
        for spec in specs:
            job_id: str | None = "key:" + key
            if how == "reuse" and self.jobs:
                job_id = sorted(self.jobs)[pick % len(self.jobs)]
            elif how == "entry-id":
                job_id = None
            elif how == "malformed":  # may hit an existing id: validation comes first
                job_id = key
            self.enqueue_job(job_id, spec, well_formed=how != "malformed", corruption=pick)

    @rule(what=st.sampled_from(["running", "waiting", "held", "any", "unknown"]), pick=PICK)
    def client_cancels(self, what: str, pick: int) -> None:
        """Cancel a running, a pending/retrying, a held (by a key or a rate limit), any
        (finished too) or an unknown job."""
        held = [i for q in (*self.adm.keyq.values(), *self.adm.nameq.values()) for i in q]
        ids = {"running": sorted(self.running), "waiting": sorted(self.adm.waiting),
               "held": sorted(held) + sorted(self.adm.head.values()),
               "any": sorted(set(self.jobs) | {r.job_id for r in self.requests
                                               if r.op == "enqueue"})}
        choice = ids.get(what) or ids["any"]
        self.cancel_job(choice[pick % len(choice)] if choice and what != "unknown"
                        else f"ghost:{pick % 3}")

    @rule(how=st.sampled_from(["set", "set", "set", "reset", "reset+set", "bad"]),
          pairs=st.lists(CONFIG_PAIRS, min_size=1, max_size=3), bad=st.sampled_from(BAD_CONFIGS))
    def client_configures(self, how: str, pairs: list[tuple[str, str]],
                          bad: dict[str, str]) -> None:
        """Live settings: limits set, cleared ('') or lifted ('none'), all reset, or a
        malformed entry (rejected whole)."""
        fields = dict(pairs) if how != "reset" else {}
        if how.startswith("reset"):
            fields["reset"] = "1"
        self.configure(bad if how == "bad" else fields)

    @rule(how=st.sampled_from(["slow-override", "lift", "lift", "lift-in-code", "reset"]),
          pick=PICK, rate=st.sampled_from([*RATES, "none"]), key_limit=st.sampled_from(["0", "2"]))
    def operator_changes_held_limits(self, how: str, pick: int, rate: str,
                                     key_limit: str) -> None:
        """Limits change while they hold jobs: a slow rate override for a name, then a limit
        that holds jobs now is raised or lifted (live, or by a new version of the code), or
        every override is reset. Nothing held that could go may be left waiting."""
        a = self.adm
        held = sorted({*(f"rate:{n}" for n, q in a.nameq.items() if q),
                       *(f"max_per_key:{self.jobs[i].name}" for q in a.keyq.values() for i in q)})
        if how == "slow-override":
            self.configure({f"rate:{NAMES[pick % len(NAMES)]}": "1/600000"})
        elif how == "reset":
            self.configure({"reset": "1"})
        elif held:
            name = held[pick % len(held)]
            value = rate if name.startswith("rate:") else key_limit
            if how == "lift":
                self.configure({name: value})
            else:
                self.code = (self.code[0], {**self.code[1], name: value})
                if value == "none":
                    del self.code[1][name]
                self.change_leader(expire=False, max_parallelism=self.code[0],
                                   declared=self.code[1])

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

    @rule(ms=st.sampled_from([1, 10, 100, 1000, 5000, 20000, 30000, 60000]),
          tick=st.booleans(), seed=st.sampled_from(["s1", "s2"]))
    def advance_time(self, ms: int, tick: bool, seed: str) -> None:
        """The clock passed to every script moves on (backoff, run_after, callback retries,
        token buckets refilling); the leader may tick at once (as it wakes up when due)."""
        self.now += ms
        if tick:
            self.main_loop("tick", seed)

    @rule(how=st.sampled_from(["restart", "script-flush"]))
    def redis_crashes(self, how: str) -> None:
        """redis-server comes back from its AOF (DEBUG LOADAOF: flush, then reload, as after a
        restart) or loses its script cache (as after a restart or failover): every key reads
        back the same, and the next script call reloads what it needs (NOSCRIPT)."""
        before = self._durable_state()
        if how == "restart":
            self.r.execute_command("DEBUG", "LOADAOF")
        else:
            self.r.script_flush()
        assert self._durable_state() == before

    def _durable_state(self) -> dict[bytes, Any]:
        """Every key's value, read by type (a reload may re-order a set or a hash inside, so
        DUMP bytes can differ), whether it expires, and a stream's entries, groups and pending
        entries (not the consumers' last-seen times, which a reload resets)."""
        state: dict[bytes, Any] = {}
        for key in self.r.execute_command("KEYS", "*"):
            kind = cast("bytes", self.r.type(key))
            readers: dict[bytes, Callable[[bytes], Any]] = {
                b"string": self.r.get, b"hash": self.r.hgetall, b"set": self.r.smembers,
                b"list": lambda k: self.r.lrange(k, 0, -1),
                b"zset": lambda k: self.r.zrange(k, 0, -1, withscores=True)}
            read = readers.get(kind)
            if read is not None:
                state[key] = (kind, read(key), self.r.pttl(key) > 0)
                continue
            groups = [(g["name"], g["pending"], g["last-delivered-id"])
                      for g in self.r.xinfo_groups(key)]
            pending = [[(p["message_id"], p["consumer"], p["times_delivered"])
                        for p in self.r.xpending_range(key, g[0], "-", "+", 10_000)]
                       for g in groups]
            state[key] = (kind, self.r.xrange(key), groups, pending)
        return state

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

    @rule(new=st.lists(st.one_of(st.none(), SPECS), min_size=1, max_size=6),
          ms=st.sampled_from([100, 5000, 30000, 60000]),
          results=st.lists(st.sampled_from(["retryable", "ok", "ok", "fatal"]), min_size=1,
                           max_size=3),
          seed=st.sampled_from(["s1", "s2"]))
    def steady_work(self, new: list[JobSpec | None], ms: int, results: list[str],
                    seed: str) -> None:
        """Rounds of steady work: a client may enqueue a job, a live worker takes and finishes
        work, the leader ticks, time passes: held jobs are released and started over several
        periods of the limits."""
        self.set_heartbeat("w1", alive=True)
        for spec in new:
            if spec is not None:
                self.enqueue_job(None, spec)
            self.worker_works("w1", 4, True, results)
            self.main_loop("tick", seed)
            self.now += ms

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
          new_code=st.sampled_from([False, False, True]), maxp=st.integers(1, 4),
          declared=DECLARED)
    def leadership(self, *, what: str, pick: int, script: str, new_code: bool, maxp: int,
                   declared: dict[str, str]) -> None:
        """The lease moves to a new owner, running the same code or a new version declaring
        other settings; old owners and contenders are fenced off and write nothing."""
        if what in ("change", "expire"):
            if new_code:
                self.code = (maxp, declared)
            self.change_leader(expire=what == "expire", max_parallelism=self.code[0],
                               declared=self.code[1])
        elif what == "old-leader" and self.old_tokens:
            self.old_leader_call(self.old_tokens[pick % len(self.old_tokens)], script)
        else:
            refused = parse_lease(self._call(self.engine.acquire("intruder", LEASE_TTL, 3,
                                                                 declared)))
            assert refused.code == Code.NOT_LEADER
            owner = self.token.split(":", 1)[1]
            renewed = parse_lease(self._call(self.engine.acquire(owner, LEASE_TTL, 3, declared)))
            assert (renewed.code, renewed.token) == (Code.OK, self.token)  # defaults unchanged

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def job_hashes_agree(self) -> None:
        """State, outcome, attempt, cancel mark, delivery and admission fields of every job; a
        pending job is packed in `unstarted` and has no hash, any other has no packed value; a
        job's packed spec, wherever it is, is the one it was first seen with."""
        if not self.token:
            return
        ids = sorted(set(self.jobs) | self.ghosts)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.execute_command("HGETALL", POOL.job(i))
            pipe.execute_command("HGET", POOL.unstarted, i)
        replies = pipe.execute()
        names = ("state", "outcome", "attempts", "cancel", "cb", "cb_n", "name", "priority",
                 "ckey", "seq")
        for i, h, packed in zip(ids, replies[::2], replies[1::2], strict=True):
            job = self.jobs.get(i)
            assert not (h and packed), i
            assert (packed is not None) == (job is not None and job.state == PENDING), i
            spec = h.get(b"spec") if h else packed
            assert (spec is not None) == (job is not None), i
            if spec is not None:
                assert spec == self.specs.setdefault(i, spec), i
            fields = job_fields(h, packed)
            got = tuple(text(fields[n]) if n in fields else None for n in names)
            want: tuple[str | None, ...] = (None,) * 10
            if job is not None:
                want = (*HASH_OF[job.state], str(job.attempts), "1" if job.cancel else None,
                        job.cb, str(job.cb_n) if job.cb else None, job.name, str(job.priority),
                        job.ckey or None, str(job.seq))
            assert got == want, i

    @invariant()
    def metrics_agree(self) -> None:
        """The metrics hash counts every job's creation, attempts and end under its name."""
        if not self.token:
            return
        counted = ("enqueued", "started", "succeeded", "failed", "canceled")
        got: Counter[tuple[str, str]] = Counter()
        for field_name, n in self.r.hgetall(POOL.metrics).items():
            metric, _, name = text(field_name).partition("|")
            if metric in counted:
                got[metric, name] = int(n)
        want: Counter[tuple[str, str]] = Counter()
        for job in self.jobs.values():
            want["enqueued", job.name] += 1
            want["started", job.name] += job.attempts
            if job.state in TERMINAL:
                want[HASH_OF[job.state][1] or "", job.name] += 1
        assert +got == +want

    @invariant()
    def ended_index_agrees(self) -> None:
        """`ended` holds every terminal job at its end, `endedFailed` the failed ones."""
        if not self.token:
            return
        ended = {text(m) for m in cast("list[bytes]", self.r.zrange(POOL.ended, 0, -1))}
        failed = {text(m) for m in cast("list[bytes]", self.r.zrange(POOL.ended_failed, 0, -1))}
        assert ended == {i for i, job in self.jobs.items() if job.state in TERMINAL}
        assert failed == {i for i, job in self.jobs.items() if job.state == FAILED}

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
        gauges = {"held_by_rate": sum(map(len, self.adm.nameq.values())),
                  "held_by_key": sum(map(len, self.adm.keyq.values())),
                  "orphan_due_entries": 0}
        assert {g: counters.get(g, 0) for g in gauges} == gauges
        assert {text(p["message_id"]): text(p["consumer"]) for p in pel} == {
            e.eid: e.holder for e in self.dispatch if e.holder is not None}

    @invariant()
    def admission_agrees(self) -> None:
        """ready, keyq:*, nameq:*, keyHead, keyRunning, throttled, buckets, unstarted, retrying,
        settings."""
        if not self.token:
            return
        a, k = self.adm, POOL
        pipe = self.r.pipeline(transaction=False)
        for z in (k.ready, k.throttled, k.key_drain, *map(k.key_queue, CKEYS),
                  *map(k.name_queue, NAMES)):
            pipe.execute_command("ZRANGE", z, 0, -1, "WITHSCORES")
        scopes = ["pool", *(f"name:{n}" for n in NAMES)]
        for h in (k.key_heads, k.key_running, k.config, k.defaults, *map(k.bucket, scopes)):
            pipe.execute_command("HGETALL", h)
        pipe.execute_command("HKEYS", k.unstarted)
        pipe.execute_command("SMEMBERS", k.retrying)
        pipe.execute_command("SMEMBERS", k.priorities)
        pipe.execute_command("GET", k.seq)
        for pattern in ("keyq:*", "nameq:*", "bucket:*"):
            pipe.execute_command("KEYS", k.prefix + pattern)
        replies = pipe.execute()
        zsets, hashes = replies[:8], replies[8:12 + len(scopes)]
        unstarted, retrying, priorities, seq, keyqs, nameqs, bucket_keys = \
            replies[12 + len(scopes):]
        queues = [a.ready, a.throttled, a.drain, *(a.keyq[c] for c in CKEYS),
                  *(a.nameq[n] for n in NAMES)]
        for raw, scores in zip(zsets, queues, strict=True):
            assert [(text(m), s) for m, s in raw] == zset_order(scores)
        heads, krun, config, defaults, *buckets = [
            {text(f): text(v) for f, v in h.items()} for h in hashes]
        assert (heads, krun) == (a.head, {c: str(n) for c, n in a.krun.items()})
        assert (config, defaults) == (a.config, a.defaults)
        for scope, got in zip(scopes, buckets, strict=True):
            bucket = (float(got["tokens"]), int(got["ts"])) if got else None
            assert bucket == a.buckets.get(scope), scope
        for got, state in ((unstarted, PENDING), (retrying, RETRYING)):
            assert {text(m) for m in got} == {i for i in a.waiting if self.jobs[i].state == state}
        assert {int(p) for p in priorities} == a.priorities
        assert int(seq or 0) == a.seq
        assert {text(q) for q in (*keyqs, *nameqs)} == {
            *(k.key_queue(c) for c, q in a.keyq.items() if q),
            *(k.name_queue(n) for n, q in a.nameq.items() if q)}
        assert {text(b) for b in bucket_keys} == {k.bucket(s) for s in a.buckets}

    @invariant()
    def admission_is_sound(self) -> None:
        """Every waiting job is in exactly one place; no limit is exceeded; nothing held could
        go: a key's first waiting job has its key at its limit or another job standing for it,
        and every name with parked jobs is throttled until at most one token period of its
        rate in force (now, if it has none)."""
        a = self.adm
        assert a.waiting == {i for i, j in self.jobs.items() if j.state in (PENDING, RETRYING)}
        places = Counter([*self.due, *a.ready, *(i for q in a.keyq.values() for i in q),
                          *(i for q in a.nameq.values() for i in q)])
        assert places == Counter(a.waiting)
        assert +a.krun == Counter(self.jobs[i].ckey for i in self.running if self.jobs[i].ckey)
        for ckey, job_id in a.head.items():
            job = self.jobs[job_id]
            assert job.ckey == ckey
            assert job_id in a.ready or job_id in a.nameq[job.name]
        for ckey, q in a.keyq.items():
            assert all(self.jobs[i].ckey == ckey for i in q)
            if q:
                first = self.jobs[zset_order(q)[0][0]]
                assert ckey in a.head or a.key_at_limit(first) or ckey in a.drain, (ckey, first.id)
        for name, q in a.nameq.items():
            assert all(self.jobs[i].name == name for i in q)
            if q:
                spec = a.setting(f"rate:{name}")
                limit, per = rate_of(spec) if spec else (1, 0)
                assert name in a.throttled, name
                assert a.throttled[name] <= self.now + math.ceil(per / limit), name
        assert all(tokens >= 0 for tokens, _ in a.buckets.values())

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
        self.admission_agrees()
        self.admission_is_sound()
        self.one_terminal_state_and_one_delivery_record_per_job()
        return value


def test_random_interleavings_of_clients_workers_and_leaders_match_the_model(
    redis_url: str,
) -> None:
    WorkpoolModel.url = redis_url
    run_state_machine_as_test(WorkpoolModel, settings=settings(stateful_step_count=80))


def test_a_golden_interleaving_replays_with_the_codes_the_table_predicts(redis_url: str) -> None:
    WorkpoolModel.url = redis_url
    m = WorkpoolModel()
    try:
        _golden_retry_and_cancel(m)
        _golden_lost_worker_and_callbacks(m)
        _golden_live_worker_and_cancels(m)
        _golden_admission(m)
        _golden_limits_change(m)
    finally:
        m.teardown()


# The golden interleaving, in five phases: every reply is spelled out, and `ok` checks every
# invariant after each step.


def _golden_retry_and_cancel(m: WorkpoolModel) -> None:
    ok, c = m.checked, Code
    ok(m.boot(max_parallelism=1))
    ok(m.enqueue_job("key:a", JobSpec(max_attempts=2, backoff_ms=100, on_complete=True)))
    ok(m.enqueue_job("key:b", JobSpec(max_attempts=2)))
    ok(m.enqueue_job("key:a", JobSpec(max_attempts=3)))
    ok(m.enqueue_job("key:c", JobSpec(run_after_ms=2000)))
    ok(m.enqueue_job("key:d", JobSpec(on_complete=True)))
    ok(m.cancel_job("key:d"))
    ok(m.cancel_job("ghost:x"))
    assert ok(m.ingest()) == [("key:a", c.ENQUEUED), ("key:b", c.ENQUEUED),
                              ("key:a", c.DUPLICATE_ENQUEUE), ("key:c", c.ENQUEUED),
                              ("key:d", c.ENQUEUED), ("key:d", c.CANCELED),
                              ("ghost:x", c.CANCEL_NOOP)]
    assert [(e.kind, e.job, e.num) for e in ok(m.read("w1", 5))] == [("cb", "key:d", 1)]
    # a and b are due at once with one priority: the one enqueued first starts, only one fits;
    # c is not due yet
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


def _golden_admission(m: WorkpoolModel) -> None:
    """Priorities, a rate-limited name (2 per minute) parking and unparking, a serial key."""
    ok, c = m.checked, Code
    eid = ok(m.configure({"max_parallelism": "5", "rate:mail": "2/60000",
                          "max_per_key:sync": "1"}))
    assert ok(m.ingest()) == [(eid, c.CONFIGURED)]
    jobs = [("key:low", "misc", -1, None), ("key:m1", "mail", 0, None),
            ("key:m2", "mail", 0, None), ("key:m3", "mail", 0, None),
            ("key:s1", "sync", 0, "k1"), ("key:s2", "sync", 0, "k1"), ("key:hi", "misc", 2, None)]
    for job_id, name, priority, ckey in jobs:
        ok(m.enqueue_job(job_id, JobSpec(max_attempts=2, name=name, priority=priority,
                                         ckey=ckey)))
    assert ok(m.ingest()) == [(j[0], c.ENQUEUED) for j in jobs]
    # hi first, then priority 0 in enqueue order: m3 finds no token left and is parked until
    # the next one (30 s), s2 waits behind s1 on key k1; low comes last
    assert ok(m.start()) == ["key:hi", "key:m1", "key:m2", "key:s1", "key:low"]
    assert m.last_start is not None
    assert (m.last_start.promoted, m.last_start.next_admission_ms) == (0, m.now + 30_000)
    assert (list(m.adm.nameq["mail"]), list(m.adm.keyq["k1"])) == (["key:m3"], ["key:s2"])
    m.now += 29_999
    ok(m.report(Outcome("run", "key:s1", 1, ok=False, retryable=True)))
    ok(m.report(Outcome("run", "key:hi", 1, ok=True)))
    assert ok(m.apply("s")) == [("key:s1", c.RETRY_SCHEDULED), ("key:hi", c.SUCCEEDED)]
    # s1's attempt ended: s2 stood for k1, but s1's retry (due at once) keeps its place in line
    # and stands for k1 instead; m3 is not looked at before its token
    assert ok(m.start()) == ["key:s1"]
    assert list(m.adm.keyq["k1"]) == ["key:s2"]
    m.now += 1
    assert ok(m.start()) == ["key:m3"]
    assert m.last_start is not None and m.last_start.next_admission_ms is None
    ok(m.report(Outcome("run", "key:s1", 2, ok=True)))
    assert ok(m.apply("s")) == [("key:s1", c.SUCCEEDED)]
    assert ok(m.start()) == ["key:s2"]


def _golden_limits_change(m: WorkpoolModel) -> None:
    """A key shared by a limited and an unlimited name; a slower rate override; then a reset
    that lifts both limits releases every held job at once."""
    ok, c = m.checked, Code
    for job_id in ("key:m1", "key:m2", "key:low", "key:m3", "key:s2"):
        ok(m.report(Outcome("run", job_id, 1, ok=True)))
    assert ok(m.apply("s")) == [(i, c.SUCCEEDED) for i in ("key:m1", "key:m2", "key:low",
                                                            "key:m3", "key:s2")]
    eid = ok(m.configure({"max_per_key:misc": "0", "rate:mail": "1/600000"}))
    assert ok(m.ingest()) == [(eid, c.CONFIGURED)]
    jobs = [("key:x", "sync", 0, "k2"), ("key:y", "misc", 1, "k2"), ("key:m4", "mail", 0, None),
            ("key:m5", "mail", 0, None)]
    for job_id, name, priority, ckey in jobs:
        ok(m.enqueue_job(job_id, JobSpec(name=name, priority=priority, ckey=ckey)))
    assert ok(m.ingest()) == [(j[0], c.ENQUEUED) for j in jobs]
    # y (no key limit for misc) goes first and takes k2, so x (sync: 1 per key) waits again;
    # mail's bucket is empty at its new, slower rate: m4 and m5 are parked for 10 minutes
    assert ok(m.start()) == ["key:y"]
    assert m.last_start is not None and m.last_start.next_admission_ms == m.now + 600_000
    assert (list(m.adm.keyq["k2"]), sorted(m.adm.nameq["mail"])) == (["key:x"],
                                                                     ["key:m4", "key:m5"])
    eid = ok(m.configure({"reset": "1"}))  # back to the declared settings: no limits but 3
    assert ok(m.ingest()) == [(eid, c.CONFIGURED)]
    # the key with a running attempt is looked at again by the next start, the name too
    assert (m.adm.drain, list(m.adm.ready), m.adm.throttled) == ({"k2": 0}, [], {"mail": 0})
    # two free slots of 3: x and m4 in enqueue order; m5 is next in line for a free slot
    assert ok(m.start()) == ["key:x", "key:m4"]
    assert list(m.adm.ready) == ["key:m5"]
