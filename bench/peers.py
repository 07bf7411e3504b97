"""workpool against its peers: the identical workload on each, in one invocation, same Redis.

Each queue gets the same N no-op jobs that record their completion with one pipelined round
trip (bench/peers/_common.py), bulk-enqueued first, then run by the same number of worker
processes; the rate is N over the span from the first job's start to the last one's (so
process start-up is not counted), with the Redis CPU it took per job (INFO cpu around the run:
the engine's work plus the job's own 3-command record), and the CPU per job of every process
(Redis and the worker processes with their children) while the middle 80% of the jobs ran: on
a machine whose cores are all busy, that total is what sets the rate. Then, with the workers
idle, jobs one
at a time for the enqueue-to-start latency. `workpool-sync` is workpool with a plain (thread)
job, as most Python job code is; `--quick` runs workpool (async and sync) and the three fastest
peers once each, a check for every change that takes a few minutes. Peers are installed into
their own virtualenv (never into workpool's dependencies), pinned below; the order of queues
changes every round, so the machine's noise spreads over all of them, and the median of the
rounds is reported.

    python bench/peers.py [--n 20000] [--workers 2] [--rounds 3] [--peers workpool,huey,...]
    python bench/peers.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

import redis

from workpool.server.embedded import RedisServer

BENCH = Path(__file__).resolve().parent
ADAPTERS = BENCH / "peers"
PINNED = {  # the peers' packages, in their own virtualenv: name -> pip requirement
    "rq": "rq==3.0.0", "arq": "arq==0.28.0", "celery": "celery[redis]==5.6.3",
    "dramatiq": "dramatiq[redis]==2.2.1", "saq": "saq==0.26.4",
    "taskiq": "taskiq==0.12.6 taskiq-redis==1.0.9", "huey": "huey==3.5.4",  # 0.13 breaks 1.0.9
    "bullmq": "bullmq==2.15.0",
}
#: variants of an adapter: queue -> (adapter, environment it runs with)
VARIANTS = {"workpool-sync": ("workpool", {"BENCH_JOB_KIND": "sync"})}
QUEUES = ("workpool", *VARIANTS, *PINNED)
QUICK = ("workpool", "workpool-sync", "huey", "taskiq", "dramatiq")  #: the fastest peers
DEFAULT_VENV = Path(tempfile.gettempdir()) / "workpool-bench-peers"


@dataclass
class Figures:
    """One queue's results over the rounds."""

    enqueue: list[float] = field(default_factory=list)  #: bulk enqueue, jobs/s
    run: list[float] = field(default_factory=list)  #: end-to-end, jobs/s
    cpu_us: list[float] = field(default_factory=list)  #: Redis CPU per job during the run, us
    worker_us: list[float] = field(default_factory=list)  #: workers' CPU per job, middle 80%
    all_us: list[float] = field(default_factory=list)  #: workers' and Redis CPU, middle 80%
    start_p50: list[float] = field(default_factory=list)  #: idle enqueue-to-start, ms
    start_p99: list[float] = field(default_factory=list)
    api: str = ""


def make_venv(path: Path, queues: list[str]) -> Path:
    """The peers' virtualenv (made once, reused): pinned peers + this checkout of workpool."""
    python = path / "bin" / "python"
    marker = path / "peers.json"
    have = set(json.loads(marker.read_text())) if marker.exists() else set()
    wanted = {PINNED[q] for q in queues if q in PINNED}
    if wanted <= have and python.exists():
        return python
    if not python.exists():
        venv.create(path, with_pip=True)
    reqs = [r for req in sorted(wanted - have) for r in req.split()]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *reqs, "-e", str(BENCH.parent)],
                   check=True, capture_output=True)
    marker.write_text(json.dumps(sorted(have | wanted)))
    return python


def adapter(python: Path, queue: str, *args: str, url: str) -> list[str]:
    name = VARIANTS[queue][0] if queue in VARIANTS else queue
    return [str(python), str(ADAPTERS / f"{name}_peer.py"), *args, "--url", url]


def redis_cpu(client: redis.Redis) -> float:
    """Seconds of CPU the server has used (user + system)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_json(cmd: list[str], env: dict[str, str], timeout: float = 900) -> dict[str, object]:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                         check=False)
    if out.returncode != 0:
        msg = f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}"
        raise RuntimeError(msg)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def wait_for(client: redis.Redis, n: int, deadline: float) -> int:
    """Polls the completion counter until n jobs ran (by time.monotonic() `deadline`); how many."""
    while (done := int(client.get("bench:done") or 0)) < n:
        if time.monotonic() > deadline:
            msg = f"only {done} of {n} jobs ran in time"
            raise TimeoutError(msg)
        time.sleep(0.01)  # polling the completion counter
    return done


def group_cpu(pgids: set[int]) -> float:
    """Seconds of CPU used so far by every live process in these process groups (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) in pgids:  # pgrp; utime and stime follow at 11 and 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def starts(client: redis.Redis) -> list[tuple[float, float]]:
    """(sent_ms, start_ms) of every job recorded so far."""
    return [tuple(map(float, raw.split(b":"))) for raw in client.lrange("bench:lat", 0, -1)]  # type: ignore[misc]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Workers:
    """W worker processes of one queue, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, cmd: list[str], env: dict[str, str], count: int, logs: Path) -> None:
        self.procs = []
        for i in range(count):
            with (logs / f"worker-{i}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def one_round(queue: str, python: Path, server: RedisServer, o: argparse.Namespace, *,
              figures: Figures, logs: Path) -> None:
    """Bulk enqueue, run with W workers, then idle latency; adds to `figures`."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    env = {**os.environ, "BENCH_URL": server.url, "PYTHONPATH": str(ADAPTERS),
           **(VARIANTS[queue][1] if queue in VARIANTS else {})}
    enq = run_json(adapter(python, queue, "enqueue", "--n", str(o.n), url=server.url), env)
    figures.enqueue.append(o.n / float(enq["seconds"]))  # type: ignore[arg-type]
    figures.api = str(enq["api"])
    qlogs = logs / queue
    qlogs.mkdir(parents=True, exist_ok=True)
    cpu = redis_cpu(client)
    workers = Workers(adapter(python, queue, "worker", "--concurrency", str(o.concurrency),
                             url=server.url), env, o.workers, qlogs)
    pgids = {p.pid for p in workers.procs}  # each worker leads a session of its own
    try:
        deadline = time.monotonic() + o.timeout
        window = []  # (jobs done, workers' CPU, Redis CPU) at 10% and 90% of the jobs
        for share in (0.1, 0.9):
            done = wait_for(client, max(1, int(o.n * share)), deadline)
            window.append((done, group_cpu(pgids), redis_cpu(client)))
        wait_for(client, o.n, deadline)
        figures.cpu_us.append((redis_cpu(client) - cpu) / o.n * 1e6)
        (d0, w0, r0), (d1, w1, r1) = window
        jobs = max(1, d1 - d0)
        figures.worker_us.append((w1 - w0) / jobs * 1e6)
        figures.all_us.append((w1 - w0 + r1 - r0) / jobs * 1e6)
        first = min(s for _, s in starts(client))
        last = max(s for _, s in starts(client))
        figures.run.append(o.n / max(1e-3, (last - first) / 1000))
        client.delete("bench:lat")
        run_json(adapter(python, queue, "paced", "--n", str(o.latency_n), "--rate", "0",
                         url=server.url), env)
        lat = [s - sent for sent, s in starts(client)]
        figures.start_p50.append(pct(lat, 0.5))
        figures.start_p99.append(pct(lat, 0.99))
    finally:
        workers.stop()
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32, help="per worker (where it applies)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--peers", default=",".join(QUEUES))
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--quick", action="store_true",
                   help=f"{','.join(QUICK)}, one round, 50 latency samples")
    o = p.parse_args()
    if o.quick:
        o.peers, o.rounds, o.latency_n = ",".join(QUICK), 1, 50
    queues = [q for q in o.peers.split(",") if q]
    unknown = set(queues) - set(QUEUES)
    if unknown:
        print(f"unknown queues {sorted(unknown)}; known: {', '.join(QUEUES)}")
        return 2
    python = make_venv(o.venv, queues)
    results = {q: Figures() for q in queues}
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(
            Path(tmp) / "redis", extra_args=["--appendonly", "no"]) as server:
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]
        for _ in range(o.rounds):
            order = list(queues)
            rng.shuffle(order)
            for q in order:
                one_round(q, python, server, o, figures=results[q], logs=Path(tmp) / "logs")
    print(f"peers: n={o.n} no-op jobs (one pipelined INCR+RPUSH each), {o.workers} worker "
          f"processes, concurrency {o.concurrency}, median of {o.rounds} rounds, redis "
          f"{version} (no persistence), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus")
    print(f"{'queue':<14}{'bulk enqueue/s':>15}{'run jobs/s':>12}{'redis us/job':>13}"
          f"{'workers us/job':>15}{'all us/job':>11}{'start p50 ms':>14}{'p99 ms':>9}"
          f"  {'workpool x':>11}  enqueue api")
    med = {q: {k: statistics.median(getattr(f, k)) for k in
               ("enqueue", "run", "cpu_us", "worker_us", "all_us", "start_p50", "start_p99")}
           for q, f in results.items()}
    base = med.get("workpool")
    for q in queues:
        m = med[q]
        ratio = f"{base['run'] / m['run']:.2f}" if base else "-"
        print(f"{q:<14}{m['enqueue']:>15,.0f}{m['run']:>12,.0f}{m['cpu_us']:>13.1f}"
              f"{m['worker_us']:>15.1f}{m['all_us']:>11.1f}"
              f"{m['start_p50']:>14.2f}{m['start_p99']:>9.2f}  {ratio:>11}  {results[q].api}")
    peers = [q for q in queues if not q.startswith("workpool")]
    if peers:
        fastest = max(peers, key=lambda q: med[q]["run"])
        for q in (q for q in queues if q.startswith("workpool")):
            print(f"{q} against the fastest peer ({fastest}): run "
                  f"{med[q]['run'] / med[fastest]['run']:.2f}x, Redis CPU per job "
                  f"{med[q]['cpu_us'] / med[fastest]['cpu_us']:.2f}x, CPU per job of all "
                  f"processes {med[q]['all_us'] / med[fastest]['all_us']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
