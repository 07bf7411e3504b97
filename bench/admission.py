"""Cost of the main-loop scripts (ingestRequests, startJobs, applyOutcomes) per call as the
backlog of waiting jobs grows (10^4, 10^5, 10^6), on a private redis-server.

The backlog: many concurrency keys (max_per_key=1), one hot key holding a large share of the
jobs, and a rate-limited job name whose jobs get parked. The scripts run directly through
`Engine` under a lease held by this process; a fake worker takes started attempts from the
dispatch stream and appends their outcomes. Each call is timed on the wall (one round trip) and
on Redis's own clock (the EVALSHA `usec` delta in INFO commandstats around it).

    python bench/admission.py [--jobs 1000000] [--keys 100000] [--rounds 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, cast

import redis

from workpool import RateLimit, Workpool
from workpool.client.ops import enqueue_commands
from workpool.server.embedded import RedisServer
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import GROUP
from workpool.wire.protocol import Fields, text
from workpool.wire.replies import parse_batch, parse_lease, parse_start
from workpool.wire.scripts import Call, run

BATCH = 256  # the main loop's default batch
MAX_PARALLELISM = 256  # one full batch of starts per call in the steady rounds
RATE = RateLimit(100, per=1.0)
HOT_SHARE, LIMITED_SHARE = 3, 1  # tenths of the jobs: hot key 30 %, rate-limited name 10 %
CHUNK = 10_000
WORKER = "bench-worker"
StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None

pool = Workpool("bench-adm", max_parallelism=MAX_PARALLELISM, max_per_key=1, retention=3600.0)


@pool.job()
def work(i: int) -> None:
    """Never runs: the fake worker reports outcomes without running anything."""


@pool.job(rate_limit=RATE)
def limited(i: int) -> None:
    """Never runs either; its name's rate limit parks most of its jobs."""


@dataclass
class Calls:
    """Per-call wall and server times (us) of one script in one phase."""

    wall: list[float] = field(default_factory=list)
    server: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)  #: entries/jobs the call handled

    def line(self, label: str, skip: int = 0) -> str:
        wall, server, items = self.wall[skip:], self.server[skip:], self.items[skip:]
        if not wall:
            return f"  {label:<34} (no calls)"
        per_item = sum(server) / max(1, sum(items))
        p99 = sorted(server)[min(len(server) - 1, len(server) * 99 // 100)]
        return (f"  {label:<34} {len(wall):5d} calls  wall {statistics.median(wall):6.0f} us "
                f"median  server {statistics.mean(server):6.0f} us mean, {p99:6d} p99, "
                f"{max(server):6d} max  {statistics.mean(items):4.0f} items/call = "
                f"{per_item:4.1f} us/item")


class Bench:
    """The lease holder: runs the scripts, feeds the backlog, plays the worker."""

    def __init__(self, client: redis.Redis, keys_count: int) -> None:
        self.r, self.keys_count = client, keys_count
        self.engine = Engine(pool.keys, pool.config.engine_settings(BATCH))
        self.token = ""
        self.enqueued = 0
        self.max_server = (0, "")

    def lease(self) -> None:
        (reply,) = run(self.r, [self.engine.acquire("bench", 3_600_000, MAX_PARALLELISM,
                                                    pool.config.declared_settings())])
        lease = parse_lease(reply)
        assert lease.code == Code.OK, lease
        self.token = lease.token

    def _usec(self) -> int:
        return int(self.r.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))

    def timed(self, call: Call[Any], calls: Calls) -> Any:
        """Run one script call; record its wall and server time."""
        before = self._usec()
        t0 = time.perf_counter()
        (reply,) = run(self.r, [call])
        wall = (time.perf_counter() - t0) * 1e6
        server = self._usec() - before
        calls.wall.append(wall)
        calls.server.append(server)
        if server > self.max_server[0]:
            self.max_server = (server, call.script.name)
        return reply

    # -- the backlog ----------------------------------------------------------------------

    def _entries(self, n: int) -> Iterator[Fields]:
        """Jobs in enqueue order: every 10th rate-limited, 3 in 10 on the hot key, the rest
        spread round-robin over the other keys."""
        for j in range(self.enqueued, self.enqueued + n):
            slot = j % 10
            if slot < LIMITED_SHARE:
                yield pool.build_entries(limited, [(j,)])[0]
            elif slot < LIMITED_SHARE + HOT_SHARE:
                yield pool.build_entries(work, [(j,)], concurrency_key="hot")[0]
            else:
                spread = j // 10 * (10 - LIMITED_SHARE - HOT_SHARE) + slot - 4
                key = f"k{spread % (self.keys_count - 1)}"
                yield pool.build_entries(work, [(j,)], concurrency_key=key)[0]
        self.enqueued += n

    def enqueue(self, n: int, progress: bool = False) -> float:
        """Append `n` enqueue entries in MULTI chunks of CHUNK (as enqueue_many sends them)."""
        t0 = time.perf_counter()
        entries = self._entries(n)
        done = 0
        while chunk := list(islice(entries, CHUNK)):
            pipe = self.r.pipeline(transaction=True)
            for command in enqueue_commands(pool.keys, chunk):
                pipe.execute_command(*command)
            pipe.execute()
            done += len(chunk)
            if progress and (done % 100_000 == 0 or done == n):
                print(f"    enqueued {done:,} of {n:,} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
        return time.perf_counter() - t0

    def configure(self, paused: bool) -> None:
        pool.configure(paused=paused)

    def load(self, ingest: Calls, promote: Calls) -> None:
        """Ingest every pending entry and promote every due job (the pool is paused)."""
        k = pool.keys
        while self.r.xlen(k.pending_start) or self.r.zcard(k.due):
            if self.r.xlen(k.pending_start):
                reply = parse_batch(self.timed(self.engine.ingest(self.token), ingest))
                ingest.items.append(reply.applied)
            start = parse_start(self.timed(self.engine.start(self.token), promote))
            assert start.code == Code.OK and start.started == 0, start
            promote.items.append(start.promoted)

    # -- steady state ---------------------------------------------------------------------

    def complete_started(self) -> int:
        """The fake worker: take dispatched attempts, report each as succeeded."""
        k = pool.keys
        reply = cast("StreamReply", self.r.xreadgroup(GROUP, WORKER, {k.dispatch: ">"},
                                                      count=4 * BATCH))
        pipe = self.r.pipeline(transaction=False)
        n = 0
        for _, entries in reply or []:
            for _, f in entries:
                pipe.xadd(k.pending_completion, {"kind": "run", "id": f[b"id"],
                                                 "attempt": f[b"attempt"], "ok": "1",
                                                 "result": b""})
                n += 1
        pipe.execute()
        return n

    def rounds(self, count: int, ingest: Calls, apply_: Calls, start: Calls) -> None:
        """Main-loop ticks on a constant backlog: each finished job is replaced by a new one."""
        done = 0
        for _ in range(count):
            if done:
                self.enqueue(done)
            reply = parse_batch(self.timed(self.engine.ingest(self.token), ingest))
            ingest.items.append(reply.applied)
            reply = parse_batch(self.timed(self.engine.apply(self.token, "bench"), apply_))
            apply_.items.append(reply.applied)
            started = parse_start(self.timed(self.engine.start(self.token), start))
            assert started.code == Code.OK, started
            start.items.append(started.started + started.promoted)
            done = self.complete_started()

    def shape(self) -> str:
        k, r = pool.keys, self.r
        return (f"waiting {_waiting(r):,}  ready {r.zcard(k.ready):,}  key heads "
                f"{r.hlen(k.key_heads):,}  hot key queue {r.zcard(k.key_queue('hot')):,}  "
                f"parked by rate {r.zcard(k.name_queue('limited')):,}  running "
                f"{r.zcard(k.running):,}")

    def consistency(self) -> str:
        """Counters against structures: every waiting job sits in exactly one queue."""
        k, r = pool.keys, self.r
        keyq = sum(int(r.zcard(q)) for q in r.scan_iter(match=_escaped(k.key_queue("*")),
                                                          count=10_000))
        nameq = int(r.zcard(k.name_queue("limited")))
        queued = int(r.zcard(k.ready)) + keyq + nameq + int(r.zcard(k.due))
        stats = {text(f): int(v) for f, v in r.hgetall(k.stats).items()}
        checks = {"waiting = ready+keyq+nameq+due": (_waiting(r), queued),
                  "held_by_key = keyq": (stats.get("held_by_key", 0), keyq),
                  "held_by_rate = nameq": (stats.get("held_by_rate", 0), nameq)}
        bad = {name: pair for name, pair in checks.items() if pair[0] != pair[1]}
        return f"MISMATCH {bad}" if bad else f"ok ({', '.join(checks)})"

    def memory(self) -> str:
        info = self.r.info("memory")
        return f"{info['used_memory'] / 2**20:,.0f} MiB (peak {info['used_memory_peak_human']})"


def _waiting(r: redis.Redis) -> int:
    """Jobs waiting to start: pending (never started) and retrying."""
    return int(r.hlen(pool.keys.unstarted)) + int(r.scard(pool.keys.retrying))


def _escaped(pattern: str) -> str:
    """A key with a hash tag as a SCAN pattern (braces are literal, `*` stays a wildcard)."""
    return pattern.replace("{", "\\{").replace("}", "\\}")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="largest backlog")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct concurrency keys")
    parser.add_argument("--rounds", type=int, default=50, help="steady ticks per backlog size")
    return parser.parse_args()


def main() -> None:
    """Grow the backlog level by level; measure loading and steady ticks at each."""
    o = _options()
    levels = sorted({n for n in (10_000, 100_000, 1_000_000) if n < o.jobs} | {o.jobs})
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(
            Path(tmp), extra_args=["--appendonly", "no"]) as server:
        client = redis.Redis.from_url(server.url)
        pool.use_url(server.url)
        version = client.info("server")["redis_version"]
        print(f"settings: levels={levels} keys={o.keys:,} (max_per_key=1) hot key share "
              f"{HOT_SHARE * 10}% rate-limited name share {LIMITED_SHARE * 10}% "
              f"(rate {RATE.limit}/{RATE.per:g}s) batch={BATCH} max_parallelism="
              f"{MAX_PARALLELISM} rounds={o.rounds} enqueue chunk={CHUNK} redis={version} "
              f"appendonly=no (speed; the product runs with AOF) python="
              f"{platform.python_version()} cpus={os.cpu_count()}", flush=True)
        bench = Bench(client, o.keys)
        bench.lease()
        started = time.perf_counter()
        for level in levels:
            bench.configure(paused=True)
            waiting = _waiting(client)
            print(f"\nbacklog {level:,}: enqueue {level - waiting:,} jobs", flush=True)
            enqueue_s = bench.enqueue(level - waiting, progress=True)
            ingest, promote = Calls(), Calls()
            t0 = time.perf_counter()
            bench.load(ingest, promote)
            load_s = time.perf_counter() - t0
            bench.configure(paused=False)
            s_ingest, s_apply, s_start = Calls(), Calls(), Calls()
            bench.rounds(o.rounds, s_ingest, s_apply, s_start)
            print(f"  enqueue {(level - waiting) / enqueue_s:,.0f} jobs/s; load (paused: ingest "
                  f"+ promote) {load_s:.1f} s")
            print(f"  shape after the steady ticks: {bench.shape()}")
            print(f"  redis used_memory {bench.memory()}")
            print(f"  consistency: {bench.consistency()}")
            print(ingest.line("load: ingestRequests (enqueues)"))
            print(promote.line("load: startJobs (promotes)"))
            print(s_ingest.line("steady: ingestRequests", skip=2))
            print(s_apply.line("steady: applyOutcomes", skip=2))
            print(s_start.line("steady: startJobs (starts+promotes)", skip=2), flush=True)
        total = time.perf_counter() - started
        print(f"\nlongest script call: {bench.max_server[0]} us ({bench.max_server[1]}); "
              f"total {total:.0f} s; stats: "
              f"{ {text(k): int(v) for k, v in client.hgetall(pool.keys.stats).items()} }")
        client.close()
        pool.close()


if __name__ == "__main__":
    main()
