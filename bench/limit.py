"""How far workpool is from the physical limit: the same machine's Redis ceiling, and the Redis
commands workpool spends per job.

Ceiling, on a private redis-server: round trips per second for one client (INCR, one at a
time over a raw socket), commands per second for 50 clients (redis-benchmark when it is on
PATH, else 50 raw-socket clients on asyncio) and with pipelining (batches of 100 INCRs over
one raw socket). Cost: N no-op jobs end to end (enqueue_many, 2 worker processes, the same
pool as bench/throughput.py), with INFO commandstats read before and after. Then the main loop
alone, script by script: N jobs ingested, started and their outcomes applied by direct calls
(as the loop makes them), each script's Redis time per job split into the commands it runs
(counted by Redis inside the script too) and the Lua around them.

    python bench/limit.py [--jobs 20000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis
from throughput import redis_cpu_s

from workpool import Workpool
from workpool.server.embedded import RedisServer
from workpool.wire.calls import Engine
from workpool.wire.keys import GROUP
from workpool.wire.protocol import text
from workpool.wire.replies import parse_lease
from workpool.wire.scripts import Call, run
from workpool.worker.outbox import pack

BENCH = Path(__file__).resolve().parent
INCR = b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n"


def _read_replies(sock: socket.socket, count: int) -> None:
    """Read `count` integer replies (':<n>\\r\\n') from the socket."""
    seen, buf = 0, b""
    while seen < count:
        buf += sock.recv(1 << 16)
        seen += buf.count(b"\r\n")
        buf = buf[buf.rfind(b"\r\n") + 2:]


def one_client(port: int, seconds: float) -> float:
    """Round trips per second: one INCR, wait for its reply, again."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, end = 0, time.perf_counter() + seconds
        began = time.perf_counter()
        while time.perf_counter() < end:
            for _ in range(100):
                sock.sendall(INCR)
                _read_replies(sock, 1)
            n += 100
        return n / (time.perf_counter() - began)


def pipelined(port: int, seconds: float, depth: int = 100) -> float:
    """Commands per second with `depth` INCRs in flight per write (one connection)."""
    batch = INCR * depth
    with socket.create_connection(("127.0.0.1", port)) as sock:
        n, end = 0, time.perf_counter() + seconds
        began = time.perf_counter()
        while time.perf_counter() < end:
            sock.sendall(batch)
            _read_replies(sock, depth)
            n += depth
        return n / (time.perf_counter() - began)


async def _many_clients(port: int, clients: int, seconds: float) -> float:
    end = time.perf_counter() + seconds
    counts = [0] * clients

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            writer.write(INCR)
            await reader.readline()
            counts[i] += 1
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return sum(counts) / (time.perf_counter() - began)


def many_clients(port: int, clients: int, seconds: float) -> tuple[float, str]:
    """Commands per second from `clients` connections each one command at a time."""
    tool = shutil.which("redis-benchmark")
    if tool:
        out = subprocess.run([tool, "-p", str(port), "-c", str(clients), "-n", "200000", "-q",
                              "-t", "incr"], capture_output=True, text=True, check=True)
        rate = float(out.stdout.split("requests per second")[0].split()[-1].replace(",", ""))
        return rate, "redis-benchmark"
    return asyncio.run(_many_clients(port, clients, seconds)), "asyncio raw sockets"


def per_job_cost(url: str, jobs: int) -> tuple[dict[str, float], float]:
    """Run `jobs` no-op jobs end to end: Redis commands per job, by command, and the Redis
    server's CPU time per job in microseconds (a figure the machine's noise barely moves)."""
    client = redis.Redis.from_url(url)
    before, cpu_before = client.info("commandstats"), redis_cpu_s(client)
    subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--jobs", str(jobs),
                    "--redis-url", url, "--quiet"], check=True)
    after, cpu_us = client.info("commandstats"), (redis_cpu_s(client) - cpu_before) * 1e6 / jobs
    client.close()
    cost = {}
    for name, stats in after.items():
        calls = stats["calls"] - before.get(name, {}).get("calls", 0)
        if calls and name not in ("cmdstat_info", "cmdstat_config", "cmdstat_ping"):
            cost[name.removeprefix("cmdstat_")] = calls / jobs
    return cost, cpu_us


def _usec(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["usec"])
            for k, v in client.info("commandstats").items()}


def per_script_cost(url: str, jobs: int) -> list[tuple[str, float, dict[str, float]]]:
    """The main loop's three scripts run alone over `jobs` no-op jobs: per script, its
    EVALSHA time per job (us) and the time per job of each command it ran."""
    client = redis.Redis.from_url(url)
    client.flushall()
    pool = Workpool("limit", url, max_parallelism=jobs)
    pool.job(name="noop")(lambda: None)
    engine = Engine(pool.keys, pool.config.engine_settings())
    token = parse_lease(run(client, [engine.acquire("limit", 600_000, jobs, {})])[0]).token
    for first in range(0, jobs, 5000):
        pool.enqueue_many("noop", [()] * min(5000, jobs - first))

    def alone(call: Callable[[], Call[Any]],
              done: Callable[[Any], int]) -> tuple[float, dict[str, float]]:
        before = _usec(client)
        while True:
            made = call()
            if not done(made.parse(run(client, [made])[0])):
                break
        spent = {k: (v - before.get(k, 0)) / jobs for k, v in _usec(client).items()
                 if v > before.get(k, 0) and k not in ("info", "script")}
        return spent.pop("evalsha", 0.0), spent

    costs = [("ingestRequests", *alone(lambda: engine.ingest(token),
                                       lambda r: r.applied))]
    costs.append(("startJobs", *alone(lambda: engine.start(token), lambda r: r.started)))
    reply = cast("list[Any]", client.xreadgroup(GROUP, "limit", {pool.keys.dispatch: ">"},
                                                 count=jobs))
    taken: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
    for packed in pack([{"kind": "run", "id": text(f[b"id"]), "attempt": text(f[b"attempt"]),
                         "ok": "1", "result": b"\xc0"} for _, f in taken]):
        client.xadd(pool.keys.pending_completion, {"kind": "batch", "o": packed})
    costs.append(("applyOutcomes", *alone(lambda: engine.apply(token, "seed"),
                                          lambda r: r.applied)))
    pool.close()
    client.close()
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=2.0)
    o = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(
            Path(tmp) / "redis", extra_args=["--appendonly", "no"]) as server:
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]
        single = one_client(server.port, o.seconds)
        many, how = many_clients(server.port, 50, o.seconds)
        piped = pipelined(server.port, o.seconds)
        cost, cpu_us = per_job_cost(server.url, o.jobs)
        scripts = per_script_cost(server.url, o.jobs)
    print(f"limit: redis {version} (no persistence), python {platform.python_version()}, "
          f"{os.cpu_count()} cpus {platform.machine()}, {o.seconds} s per ceiling figure")
    print(f"redis ceiling: one client {single:,.0f} round trips/s; 50 clients {many:,.0f} "
          f"commands/s ({how}); pipelined x100 {piped:,.0f} commands/s")
    total = sum(cost.values())
    print(f"workpool per job ({o.jobs} no-op jobs, 2 workers): {total:.2f} Redis commands "
          f"-> at most {piped / total:,.0f} jobs/s if Redis did nothing else; Redis CPU "
          f"{cpu_us:.1f} us per job (-> at most {1e6 / cpu_us:,.0f} jobs/s on one core)")
    for name, calls in sorted(cost.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<14}{calls:8.3f} per job")
    total_us = sum(us for _, us, _ in scripts)
    print(f"main loop alone ({o.jobs} jobs, direct script calls): {total_us:.1f} us of Redis "
          f"time per job -> at most {1e6 / total_us:,.0f} jobs/s of ingest+start+apply on one "
          "Redis core")
    for name, us, commands in scripts:
        inner = sum(commands.values())
        top = ", ".join(f"{k} {v:.2f}" for k, v in
                        sorted(commands.items(), key=lambda kv: -kv[1])[:6])
        print(f"  {name:<15}{us:6.1f} us/job = commands {inner:5.1f} ({top}) + Lua "
              f"{us - inner:5.1f}")


if __name__ == "__main__":
    main()
