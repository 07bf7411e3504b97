"""The client side of a chaos run: a seeded mix of enqueues (fast, slow, blocking, flaky,
timing-out, delayed, doomed and over-sized jobs), workflows (a drawn program: see flows.py)
with the events they wait for, and cancels (of jobs and workflows) at a steady rate, each
recorded with invoke and ack (a cancel with what it answered).

Every enqueue carries an idempotency key, so the job id is known before the call and a failed
call (Redis unreachable or refusing) can be retried safely; one that never succeeds is
recorded as indeterminate. An event carries its payload as its key, so a failed send is
retried the same way (the workflow takes it once). The fault injector enqueues its own jobs
(hung code, crashing children) through `enqueue` too, under keys of its own.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import deque
from typing import Any

import workpool
from workpool.chaos.history import Recorder
from workpool.chaos.program import EVENT
from workpool.wire.shards import sharded_id

_TRIES = 4
_KINDS = (("fast", 42), ("slow", 13), ("blocking", 10), ("flaky", 14), ("hang", 3),
          ("delayed", 8), ("doomed", 2), ("bulky", 2), ("flow", 6), ("cancel", 7))
#: the jobs a workflow's steps run, and how often
_STEPS = (("fast", 40), ("slow", 20), ("blocking", 8), ("flaky", 20), ("doomed", 5),
          ("bulky", 3), ("hang", 2))
WAIT_TIMEOUT = 20.0  #: s a workflow waits for each event (they are sent within 3 s)
_CANCEL_WAIT = 1.0  #: s a cancel waits for the main loop to say what it did


class Workload:
    """Drives the pool as a client would, until told to stop."""

    def __init__(self, pool: workpool.Workpool, recorder: Recorder, rng: random.Random,
                 rate: float) -> None:
        self.pool, self.rec, self.rng, self.rate = pool, recorder, rng, rate
        self.acked = 0
        self._recent: deque[str] = deque(maxlen=400)
        self._flows: deque[str] = deque(maxlen=100)  # half the cancels go to a workflow
        self._n = 0
        self._lock = threading.Lock()  # the fault thread enqueues too
        self._sends: list[tuple[float, str, str]] = []  # (when, workflow, payload), a heap

    def run(self, stop: threading.Event) -> None:
        """Issue operations at `rate` per second until `stop` is set."""
        kinds = [k for k, _ in _KINDS]
        weights = [w for _, w in _KINDS]
        began = time.monotonic()
        ops = 0
        while not stop.is_set():
            ahead = began + ops / self.rate - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)  # pacing, not waiting for a condition
                continue
            ops += 1
            self._send_due()
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "cancel":
                self._cancel()
            elif kind == "flow":
                self._start_flow()
            else:
                self._enqueue(kind)

    def _enqueue(self, kind: str) -> None:
        args: tuple[int, ...] = ()
        run_after = None
        if kind == "slow":
            args = (self.rng.randint(50, 800),)
        elif kind == "blocking":
            args = (self.rng.randint(10, 200),)
        elif kind == "flaky":
            args = (self.rng.randint(1, 5),)  # 5 = every attempt fails (max_attempts is 4)
        elif kind == "hang":
            args = (2000,)
        elif kind == "delayed":
            run_after = self.rng.uniform(0.2, 3.0)
        self.enqueue(kind, args, run_after=run_after)

    def enqueue(self, kind: str, args: tuple[int, ...] = (), *, prefix: str = "j",
                run_after: float | None = None) -> None:
        """Enqueue one job of `kind` (retrying while Redis is away), recording invoke and ack."""
        with self._lock:
            self._n += 1
            key = f"{prefix}{self._n}"
        job_id = self._id(key)
        job = "fast" if kind == "delayed" else kind
        self.rec.record("invoke_enqueue", job=job_id, kind=kind, args=list(args))
        for attempt in range(_TRIES):
            try:
                self.pool.enqueue(job, *args, key=key, on_complete="record", run_after=run_after)
            except workpool.RedisUnavailable as exc:  # unreachable, or refusing (RedisRefused)
                self.rec.record("enqueue_error", job=job_id, error=str(exc)[:200], try_=attempt)
                time.sleep(0.1 * 2**attempt)  # back off before the (idempotent) retry
                continue
            self.rec.record("ack_enqueue", job=job_id)
            with self._lock:
                self.acked += 1
                self._recent.append(job_id)
            return
        self.rec.record("indeterminate_enqueue", job=job_id)

    def _start_flow(self) -> None:
        """Start a workflow of a drawn program (retrying while Redis is away: the key makes it
        idempotent); plan one event for each of its waits, 0-3 s on."""
        with self._lock:
            self._n += 1
            key = f"wf{self._n}"
        wf_id, program = self._id(key), self._program(nested=True)
        self.rec.record("invoke_workflow", job=wf_id, program=program)
        for attempt in range(_TRIES):
            try:
                self.pool.start_workflow("flow", program, key=key, on_complete="record")
            except workpool.RedisUnavailable as exc:
                self.rec.record("enqueue_error", job=wf_id, error=str(exc)[:200], try_=attempt)
                time.sleep(0.1 * 2**attempt)
                continue
            self.rec.record("ack_enqueue", job=wf_id)
            with self._lock:
                self.acked += 1
                self._recent.append(wf_id)
                self._flows.append(wf_id)
            for i, op in enumerate(program):
                if op[0] == "wait":
                    heapq.heappush(self._sends, (time.monotonic() + self.rng.uniform(0, 3),
                                                 wf_id, f"{wf_id}#{i}"))
            return
        self.rec.record("indeterminate_enqueue", job=wf_id)

    def _id(self, key: str) -> str:
        """The id the pool gives the job of idempotency key `key` (a sharded pool's names its
        shard), known before it is sent, for the history."""
        shards = self.pool.config.shards
        return f"key:{key}" if shards == 1 else sharded_id(f"key:{key}", shards)

    def _program(self, *, nested: bool) -> list[Any]:
        """1-4 operations; waits and children only at the top (a child gets no events)."""
        ops: list[Any] = []
        for _ in range(self.rng.randint(1, 4)):
            r = self.rng.random()
            if r < 0.4:
                ops.append(["step", *self._step()])
            elif r < 0.6:
                ops.append(["par", [self._step() for _ in range(self.rng.randint(2, 4))]])
            elif r < 0.75:
                ops.append(["sleep", round(self.rng.uniform(0.1, 2.0), 3)])
            elif nested and r < 0.9:
                ops.append(["wait", WAIT_TIMEOUT])
            elif nested:
                ops.append(["child", self._program(nested=False)])
        return ops or [["step", "fast", []]]

    def _step(self) -> list[Any]:
        kind = self.rng.choices([k for k, _ in _STEPS], [w for _, w in _STEPS])[0]
        args = {"slow": lambda: [self.rng.randint(20, 300)],
                "blocking": lambda: [self.rng.randint(10, 100)],
                "flaky": lambda: [self.rng.randint(1, 5)],
                "hang": lambda: [2000]}.get(kind, list)()
        return [kind, args]

    def _send_due(self) -> None:
        """Send the events whose time has come, keyed by their payload (retried while Redis
        is away: the workflow takes each once)."""
        while self._sends and self._sends[0][0] <= time.monotonic():
            _, wf_id, payload = heapq.heappop(self._sends)
            self.rec.record("invoke_event", job=wf_id, p=payload)
            for attempt in range(_TRIES):
                try:
                    self.pool.send_event(wf_id, EVENT, payload, key=payload)
                except workpool.RedisUnavailable as exc:
                    self.rec.record("event_error", job=wf_id, p=payload, error=str(exc)[:200])
                    time.sleep(0.1 * 2**attempt)  # back off before the (keyed) retry
                    continue
                self.rec.record("ack_event", job=wf_id, p=payload)
                break

    def _cancel(self) -> None:
        with self._lock:
            among = self._flows if self._flows and self.rng.random() < 0.5 else self._recent
            if not among:
                return
            job_id = self.rng.choice(among)
        self.rec.record("invoke_cancel", job=job_id)
        try:
            result = self.pool.cancel(job_id, wait=_CANCEL_WAIT)
        except workpool.RedisUnavailable as exc:
            self.rec.record("cancel_error", job=job_id, error=str(exc)[:200])
            return
        self.rec.record("ack_cancel", job=job_id, result=result.value)

    def recent(self, n: int, rng: random.Random) -> list[str]:
        """Up to `n` of the jobs acknowledged lately, drawn by `rng` (for faults that name real
        jobs: the caller's generator, so the workload's own sequence stays seeded)."""
        with self._lock:
            recent = list(self._recent)
        return rng.sample(recent, min(n, len(recent)))
