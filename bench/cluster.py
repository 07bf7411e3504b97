"""What decides a pool's ceiling past one Redis, measured on this machine.

Shards: K redis-servers (each pinned to a core where the machine allows), each holding one
pool (a shard: its own hash tag, so its own node in a cluster), each driven by its own process
that runs the main loop's three scripts alone (ingest, start, apply: the work one leader does
per job) over N pre-enqueued no-op jobs, all K at once. Reported per K: jobs/s of each shard's
main loop, the aggregate, and each shard's Redis CPU per job; the projection to one core per
shard is 1e6 / (Redis CPU us per job) per shard, stated as a projection.

Starving: a pool of 4 shards (max_parallelism 16) whose 3 shards run every slot when the 4th
gets 32 long jobs; then the 3 run dry: how long after the last of their jobs ended the 4th
runs the whole 16, against the refresh period (a third of the lease TTL).

Replicas: a master with one replica; the same main loop alone and one-at-a-time enqueues with
`replicas=0` and `replicas=1` (each write followed by WAIT on its connection).

    python bench/cluster.py [--jobs 5000] [--shards 1,2,4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis
from throughput import redis_cpu_s

from workpool import Workpool
from workpool.server.embedded import RedisServer
from workpool.server.replication import Replication
from workpool.testing.kit import running
from workpool.wire.calls import Engine
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import text
from workpool.wire.replies import parse_lease
from workpool.wire.scripts import Call, run
from workpool.wire.shards import shard_of, sharded_id
from workpool.worker.outbox import pack


def _prepare(url: str, name: str, jobs: int) -> None:
    """N no-op jobs enqueued (not yet ingested) in pool `name`."""
    pool = Workpool(name, url, max_parallelism=jobs)
    for first in range(0, jobs, 5000):
        pool.enqueue_many("noop", [()] * min(5000, jobs - first))
    pool.close()


def main_loop_alone(url: str, name: str, jobs: int, rep: Replication | None = None,
                    barrier: Any = None) -> tuple[float, float]:
    """Ingest, start and apply `jobs` jobs by direct script calls (as the leader makes them);
    (seconds those calls took, Redis CPU us per job). Faking the workers' outcomes between
    start and apply is not counted."""
    client = redis.Redis.from_url(url)
    engine = Engine(Workpool(name, url).keys)
    keys = engine.keys
    token = parse_lease(run(client, [engine.acquire(name, 600_000, jobs, {})])[0]).token
    if barrier is not None:
        barrier.wait()
    cpu, spent = redis_cpu_s(client), 0.0

    def drain(call: Any, done: Any) -> None:
        nonlocal spent
        began = time.perf_counter()
        while True:
            made: Call[Any] = call()
            if not done(made.parse(run(client, [made], rep)[0])):
                break
        spent += time.perf_counter() - began

    drain(lambda: engine.ingest(token), lambda r: r.applied)
    drain(lambda: engine.start(token), lambda r: r.started)
    reply = cast("list[Any]", client.xreadgroup(GROUP, name, {keys.dispatch: ">"}, count=jobs))
    taken: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
    for packed in pack([{"kind": "run", "id": text(f[b"id"]), "attempt": text(f[b"attempt"]),
                         "ok": "1", "result": b"\xc0"} for _, f in taken]):
        client.xadd(keys.pending_completion, {"kind": "batch", "o": packed})
    drain(lambda: engine.apply(token, "seed"), lambda r: r.applied)
    cpu_us = (redis_cpu_s(client) - cpu) * 1e6 / jobs
    client.close()
    return spent, cpu_us


def _shard(url: str, name: str, jobs: int, barrier: Any, out: Any) -> None:
    out.put(main_loop_alone(url, name, jobs, barrier=barrier))


def _pin(pid: int, core: int) -> bool:
    """Pin `pid` to `core` (taskset); False where the machine does not allow it."""
    if not shutil.which("taskset"):
        return False
    done = subprocess.run(["taskset", "-pc", str(core), str(pid)], check=False,
                          capture_output=True)
    return done.returncode == 0


def shards(k: int, jobs: int, tmp: Path) -> dict[str, Any]:
    """K shards at once: per-shard jobs/s, aggregate jobs/s, Redis CPU us per job."""
    cores = os.cpu_count() or 1
    servers = [RedisServer.start(tmp / f"k{k}-{i}", appendfsync="everysec") for i in range(k)]
    pinned = all(_pin(s.pid, i % cores) for i, s in enumerate(servers))
    for i, s in enumerate(servers):
        _prepare(s.url, f"s{i}", jobs)
    barrier, out = mp.Barrier(k), mp.Queue()  # type: ignore[var-annotated]
    procs = [mp.Process(target=_shard, args=(s.url, f"s{i}", jobs, barrier, out))
             for i, s in enumerate(servers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    for s in servers:
        s.stop()
    per_shard = [jobs / spent for spent, _ in results]
    cpu = sum(c for _, c in results) / k
    return {"k": k, "per_shard": per_shard, "aggregate": k * jobs / max(s for s, _ in results),
            "cpu_us": cpu, "projected": k * 1e6 / cpu, "pinned": pinned}


def _key_on(shard: int, shards: int) -> str:
    """A concurrency key whose jobs go to `shard`."""
    return next(k for k in (f"k{i}" for i in range(10_000))
                if shard_of(sharded_id("x", shards, k), shards) == shard)


def starving(tmp: Path, lease_ttl: float = 3.0) -> tuple[float, float]:
    """(s from the idle shards' last job's end to the busy shard running every slot, the
    refresh period)."""
    server = RedisServer.start(tmp / "starving", appendfsync="everysec")
    pool = Workpool("starve", server.url, shards=4, max_parallelism=16, lease_ttl=lease_ttl,
                    heartbeat_ttl=5.0)

    @pool.job()
    def hold(seconds: float) -> None:
        time.sleep(seconds)  # the work

    client = redis.Redis.from_url(server.url)
    busy = Keys("starve", 0)
    others = [Keys("starve", i) for i in (1, 2, 3)]
    try:
        with running(pool, concurrency=20):
            for shard in (1, 2, 3):  # the others busy first, then this one joins
                pool.enqueue_many("hold", [(1.5,)] * 8, concurrency_key=_key_on(shard, 4))
            while sum(client.zcard(k.running) for k in others) < 16:
                time.sleep(0.005)  # a sampling interval
            pool.enqueue_many("hold", [(10.0,)] * 32, concurrency_key=_key_on(0, 4))
            dry = None
            while True:
                pipe = client.pipeline(transaction=False)
                for k in [busy, *others]:
                    pipe.zcard(k.running)
                    pipe.zcard(k.ready)
                counts = pipe.execute()
                now = time.monotonic()
                if dry is None and not any(counts[2:]):
                    dry = now  # the other shards have nothing running or ready
                if dry is not None and counts[0] >= 16:
                    return now - dry, lease_ttl / 3
                time.sleep(0.005)  # a sampling interval
    finally:
        pool.close()
        client.close()
        server.stop()


def replicas(jobs: int, tmp: Path) -> list[tuple[int, float, float]]:
    """(replicas, main-loop jobs/s, enqueues/s one at a time) on a master with one replica."""
    master = RedisServer.start(tmp / "master", appendfsync="everysec")
    replica = RedisServer.start(tmp / "replica", appendfsync="everysec",
                                extra_args=("--replicaof", "127.0.0.1", str(master.port)))
    rows = []
    try:
        for n in (0, 1):
            name = f"r{n}"
            _prepare(master.url, name, jobs)
            spent, _ = main_loop_alone(master.url, name, jobs,
                                       Replication.of(n, 1.0))
            pool = Workpool(f"e{n}", master.url, replicas=n)
            began = time.perf_counter()
            for _ in range(min(jobs, 2000)):
                pool.enqueue("noop")
            enq = min(jobs, 2000) / (time.perf_counter() - began)
            pool.close()
            rows.append((n, jobs / spent, enq))
    finally:
        replica.stop()
        master.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--shards", default="1,2,4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="workpool-cluster-bench-") as d:
        tmp = Path(d)
        print(f"{os.cpu_count()} cores; {args.jobs} no-op jobs per shard, main loop alone")
        base = None
        for k in (int(x) for x in args.shards.split(",")):
            r = shards(k, args.jobs, tmp)
            base = base or r["aggregate"]
            each = ", ".join(f"{x:,.0f}" for x in r["per_shard"])
            print(f"{k} shard(s): each {each} jobs/s; aggregate {r['aggregate']:,.0f} jobs/s "
                  f"({r['aggregate'] / base:.2f}x one); Redis CPU {r['cpu_us']:.1f} us/job; "
                  f"projected with a core per shard: {r['projected']:,.0f} jobs/s "
                  f"(pinned: {r['pinned']})")
        took, period = starving(tmp)
        print(f"starving: the busy shard ran all 16 slots {took:.2f} s after the others ran "
              f"dry ({took / period:.2f} refresh periods of {period:.1f} s)")
        for n, loop, enq in replicas(args.jobs, tmp):
            print(f"replicas={n}: main loop alone {loop:,.0f} jobs/s; enqueue one at a time "
                  f"{enq:,.0f}/s")


if __name__ == "__main__":
    main()
