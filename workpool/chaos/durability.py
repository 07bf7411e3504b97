"""How many acknowledged enqueues a redis-server crash (SIGKILL) loses, per AOF fsync policy.

Clients enqueue one job at a time as fast as they can; at a random moment redis-server is
killed and restarted from its AOF; every acknowledged job must still be there (its
enqueue entry, found by the job id, which is the entry id). With
`appendfsync always` Redis fsyncs before it replies, so the loss must be 0; with `everysec` the
loss is bounded by about one second of writes, and this measures it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

import workpool
from workpool.server.embedded import RedisServer
from workpool.wire.keys import Keys
from workpool.wire.protocol import is_stream_id

_POOL = "durability"


@dataclass(frozen=True)
class CrashResult:
    """One crash: how many enqueues were acknowledged before it and how many it lost."""

    acked: int
    lost: int
    seconds: float


def crash_once(data_dir: Path, appendfsync: str, clients: int, rng: random.Random) -> CrashResult:
    """Enqueue from `clients` threads, SIGKILL redis-server mid-stream, restart, count losses."""
    server = RedisServer.start(data_dir, appendfsync=appendfsync)
    pool = workpool.Workpool(_POOL, redis_url=server.url)
    acked: list[list[str]] = [[] for _ in range(clients)]
    down = threading.Event()

    def enqueue(mine: list[str]) -> None:
        while not down.is_set():
            try:
                mine.append(pool.enqueue("noop"))
            except workpool.RedisUnavailable:
                return

    threads = [threading.Thread(target=enqueue, args=(a,)) for a in acked]
    began = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.5, 1.5))  # a random moment under load: the crash itself
    server.kill()
    seconds = time.monotonic() - began
    down.set()
    for t in threads:
        t.join()
    pool.close()
    server.restart()
    try:
        ids = [job for mine in acked for job in mine]
        check = redis.Redis.from_url(server.url)
        pipe = check.pipeline(transaction=False)
        keys = Keys(_POOL)
        for job in ids:  # no main loop ran: each acknowledged job is still an entry, or named
            if is_stream_id(job):
                pipe.xrange(keys.pending_start, job, job)
            else:
                pipe.sismember(keys.incoming, job)
        lost = sum(1 for present in pipe.execute() if not present)
        check.close()
    finally:
        server.stop()
    return CrashResult(len(ids), lost, seconds)


def main(policy: str, crashes: int, clients: int, seed: int, out: Path) -> int:
    """Print, per policy, acknowledged enqueues and those lost per crash; 1 if `always` lost any."""
    rng = random.Random(seed)
    policies = ["always", "everysec"] if policy == "both" else [policy]
    print(f"durability: {crashes} crashes per policy, {clients} client threads, seed {seed}, "
          f"run dir {out}")
    print(f"{'appendfsync':<12}{'crashes':>8}{'acked':>10}{'acked/s':>10}{'lost':>8}"
          f"{'lost/crash mean':>17}{'max':>6}")
    failed = False
    for name in policies:
        results = [crash_once(out / name / f"crash-{i}", name, clients, rng)
                   for i in range(crashes)]
        acked = sum(r.acked for r in results)
        lost = [r.lost for r in results]
        rate = acked / sum(r.seconds for r in results)
        print(f"{name:<12}{crashes:>8}{acked:>10}{rate:>10.0f}{sum(lost):>8}"
              f"{sum(lost) / crashes:>17.1f}{max(lost):>6}")
        failed |= name == "always" and sum(lost) > 0
    return 1 if failed else 0
