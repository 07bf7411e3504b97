"""The client side of a chaos run: a seeded mix of enqueues (fast, slow, blocking, flaky,
timing-out, delayed, doomed and over-sized jobs) and cancels at a steady rate, each recorded
with invoke and ack (a cancel with what it answered).

Every enqueue carries an idempotency key, so the job id is known before the call and a failed
call (Redis unreachable or refusing) can be retried safely; one that never succeeds is
recorded as indeterminate. The fault injector enqueues its own jobs (hung code, crashing
children) through `enqueue` too, under keys of its own.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque

import workpool
from workpool.chaos.history import Recorder

_TRIES = 4
_KINDS = (("fast", 42), ("slow", 13), ("blocking", 10), ("flaky", 14), ("hang", 3),
          ("delayed", 8), ("doomed", 2), ("bulky", 2), ("cancel", 6))
_CANCEL_WAIT = 1.0  #: s a cancel waits for the main loop to say what it did


class Workload:
    """Drives the pool as a client would, until told to stop."""

    def __init__(self, pool: workpool.Workpool, recorder: Recorder, rng: random.Random,
                 rate: float) -> None:
        self.pool, self.rec, self.rng, self.rate = pool, recorder, rng, rate
        self.acked = 0
        self._recent: deque[str] = deque(maxlen=400)
        self._n = 0
        self._lock = threading.Lock()  # the fault thread enqueues too

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
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "cancel":
                self._cancel()
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
        job_id = f"key:{key}"
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

    def _cancel(self) -> None:
        with self._lock:
            if not self._recent:
                return
            job_id = self.rng.choice(self._recent)
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
