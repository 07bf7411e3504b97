"""One chaos run: start redis-server and the workers, drive the workload while injecting the
faults on a seeded schedule, quiesce, read every job's final state and check the history."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from workpool.chaos import flowrules
from workpool.chaos.checker import FinalJob, check
from workpool.chaos.cluster import Cluster
from workpool.chaos.faults import KINDS, Faults
from workpool.chaos.history import Recorder, load
from workpool.chaos.report import Report
from workpool.chaos.settings import ChaosSettings
from workpool.chaos.workload import Workload
from workpool.client.pool import Workpool
from workpool.wire.counters import Counter
from workpool.wire.protocol import decode, job_fields, text

_CHUNK = 1000


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run (with the seed, enough to replay it)."""

    seed: int = 1
    duration: float = 60.0
    workers: int = 3
    concurrency: int = 8
    rate: float = 60.0  #: client operations per second
    faults_per_kind: int = 2
    kinds: tuple[str, ...] = KINDS
    appendfsync: str = "always"
    ttl: float = 2.0
    max_parallelism: int = 8
    quiesce_timeout: float = 60.0  #: give up after this long without progress
    topology: str = "single"  #: single, cluster or sentinel
    replicas: int = 0  #: the pool's replicas= (WAIT)
    shards: int = 1  #: the pool's shards=


def run(config: RunConfig, run_dir: Path) -> Report:
    """Run the whole experiment in `run_dir`; returns the checker's report."""
    settings = ChaosSettings(max_parallelism=config.max_parallelism, ttl=config.ttl,
                             seed=config.seed, replicas=config.replicas, shards=config.shards)
    rng = random.Random(config.seed)
    rec = Recorder(run_dir / "history", "runner")
    cluster = Cluster(run_dir, settings, workers=config.workers,
                      concurrency=config.concurrency, appendfsync=config.appendfsync,
                      topology=config.topology)
    try:
        cluster.start_workers()
        _await_leader(cluster)
        pool = _client_pool(cluster, settings)
        workload = Workload(pool, rec, random.Random(rng.random()), config.rate)
        stop = threading.Event()
        client = threading.Thread(target=workload.run, args=(stop,), name="chaos-client")
        client.start()
        _inject(config, Faults(cluster, rec, random.Random(rng.random()), workload), rec)
        stop.set()
        client.join()
        cluster.wake_all()
        cluster.start_workers()
        rec.record("quiesce")
        history = load(run_dir / "history")
        job_ids = {e["job"] for e in history if e["e"] in ("invoke_enqueue", "invoke_workflow")}
        _quiesce(cluster, job_ids, config.quiesce_timeout)
        rec.record("stop_workers")
        cluster.stop_workers()
        poisoned = {i for e in history if e["e"] == "fault" for i in e.get("ids") or ()}
        flows = flowrules.read(history)  # and every step and child their programs name:
        named = set(flows) | set(flowrules.steps(flows))
        final = _final_states(cluster, job_ids | poisoned | named)  # a poison id finds none
        stale = rejected = 0
        for keys in cluster.shard_keys:
            counts = cluster.admin.hmget(keys.stats, [Counter.STALE_COMPLETIONS, Counter.REJECTED])
            stale, rejected = stale + int(counts[0] or 0), rejected + int(counts[1] or 0)
    finally:
        cluster.close()
        rec.close()
    (run_dir / "final.json").write_text(json.dumps(
        {"config": asdict(config), "stale_rejected": stale, "entries_rejected": rejected,
         "jobs": {job: asdict(f) for job, f in final.items()}}, default=str))
    return recheck(run_dir)


def recheck(run_dir: Path) -> Report:
    """Check a finished run again from its directory (history and saved final states)."""
    saved = json.loads((run_dir / "final.json").read_text())
    final = {job: FinalJob(**f) for job, f in saved["jobs"].items()}
    report = check(load(run_dir / "history"), final, saved["config"]["max_parallelism"],
                   saved["stale_rejected"], saved.get("entries_rejected", 0))
    (run_dir / "report.json").write_text(json.dumps(
        {"config": saved["config"], "report": asdict(report)}, indent=1, default=str))
    return report


def _client_pool(cluster: Cluster, settings: ChaosSettings) -> Workpool:
    import os  # noqa: PLC0415 - the app reads its settings at import time

    os.environ.update(cluster.env())
    from workpool.chaos import app  # noqa: PLC0415

    app.pool.use_url(cluster.url)
    assert app.settings == settings, "the chaos app was imported with other settings"
    return app.pool


def _await_leader(cluster: Cluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while cluster.leader_pid() is None:
        if time.monotonic() > deadline:
            msg = "no worker took the main-loop lease"
            raise RuntimeError(msg)
        time.sleep(0.05)


def _inject(config: RunConfig, faults: Faults, rec: Recorder) -> None:
    """Every kind `faults_per_kind` times, shuffled, spread evenly over the duration."""
    schedule = [k for k in config.kinds for _ in range(config.faults_per_kind)]
    faults.rng.shuffle(schedule)
    began = time.monotonic()
    gap = config.duration / max(1, len(schedule))
    for i, kind in enumerate(schedule):
        time.sleep(max(0.0, began + (i + 0.5) * gap - time.monotonic()))  # the schedule's pace
        try:
            faults.inject(kind)
        except (redis.RedisError, OSError) as exc:
            rec.record("fault_error", kind=kind, error=str(exc)[:300])
    time.sleep(max(0.0, began + config.duration - time.monotonic()))


def _quiesce(cluster: Cluster, job_ids: set[str], timeout: float) -> None:
    """Wait until every job that exists is terminal with its on_complete delivered, or until
    `timeout` seconds pass without progress (a stuck job is then lost). The pool's own
    queues are watched until they drain (cheap), then each job is checked."""
    deadline = time.monotonic() + timeout
    left, backlog, moved = sorted(job_ids), -1, time.monotonic()
    while left and time.monotonic() < deadline:
        now_backlog = _backlog(cluster)
        if now_backlog and time.monotonic() - moved < 5:
            if backlog < 0 or now_backlog < backlog:
                deadline = time.monotonic() + timeout  # progress: the backlog is draining
                moved = time.monotonic()
            backlog = now_backlog
            time.sleep(0.5)  # polling the pool's queue sizes, with the deadline above
            continue
        moved = time.monotonic()  # drained (or stuck for 5 s): look at each job
        still = [j for j, h in zip(left, _fields(cluster, left), strict=True)
                 if h and (h["state"] not in (b"done", b"canceled") or h.get("cb") == b"pending")]
        if len(still) < len(left):
            deadline = time.monotonic() + timeout
        left = still
        if left:
            time.sleep(0.25)  # polling Redis for the condition, with the deadline above


def _backlog(cluster: Cluster) -> int:
    """Jobs waiting or running, entries not yet applied, deliveries outstanding, workflows
    running."""
    pipe = cluster.admin.pipeline(transaction=False)
    for k in cluster.shard_keys:
        pipe.hlen(k.unstarted)
        pipe.scard(k.retrying)
        pipe.zcard(k.running)
        pipe.zcard(k.callbacks_due)
        pipe.xlen(k.pending_start)
        pipe.xlen(k.pending_completion)
        pipe.xlen(k.dispatch)
        pipe.scard(k.workflows)
    return sum(int(n) for n in pipe.execute())


def _fields(cluster: Cluster, job_ids: list[str]) -> list[dict[str, bytes]]:
    """Each job's fields (its hash, or its packed value while unstarted; {} if neither)."""
    out: list[dict[str, bytes]] = []
    for i in range(0, len(job_ids), _CHUNK):
        pipe = cluster.admin.pipeline(transaction=False)
        for job in job_ids[i:i + _CHUNK]:
            keys = cluster.keys_for(job)
            pipe.hgetall(keys.job(job))
            pipe.hget(keys.unstarted, job)
        replies = pipe.execute()
        out += [job_fields(h, packed) for h, packed in zip(replies[::2], replies[1::2],
                                                           strict=True)]
    return out


def _final_states(cluster: Cluster, job_ids: set[str]) -> dict[str, FinalJob]:
    ids = sorted(job_ids)
    final: dict[str, FinalJob] = {}
    for job, h in zip(ids, _fields(cluster, ids), strict=True):
        if h:
            cancel_attempt = text(h.get("cancel_attempt"))
            final[job] = FinalJob(
                state=text(h.get("state")), outcome=text(h.get("outcome")),
                attempts=int(h.get("attempts") or 0),
                value=decode(h.get("result") or b"", text(h.get("enc")) or "msgpack"),
                error=text(h.get("error")), error_type=text(h.get("error_type")),
                cancel_attempt=int(cancel_attempt) if cancel_attempt else None,
                cb=text(h.get("cb")))
    return final
