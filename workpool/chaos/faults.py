"""The faults a chaos run injects, each recorded in the run's history when it begins
(`fault`) and, if it lasts, when it is over (`fault_end`).

Processes: SIGKILL of a worker or of the main-loop holder, SIGSTOP of a worker past its lease
then SIGCONT. The server: SIGKILL of redis-server and restart from its AOF, redis-server frozen
(SIGSTOP), out of memory (`maxmemory` below its use), busy in a foreign script past the busy
threshold, read-only (made a replica of nothing), `SCRIPT FLUSH`, `CLIENT KILL`. Input: poison
entries appended to both streams by a foreign client. Code: hung jobs (sync code that never
returns, async code that ignores its timeout or blocks the event loop) and jobs whose child
process dies (`os._exit`) in the process executor.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
from collections.abc import Callable

import msgpack
import redis

from workpool.chaos import failover
from workpool.chaos.cluster import Cluster
from workpool.chaos.failover import MASTER_KINDS
from workpool.chaos.history import Recorder
from workpool.chaos.workload import Workload

KINDS = ("kill_worker", "kill_leader", "pause_worker", "kill_redis", "script_flush",
         "client_kill", "redis_unreachable", "redis_oom", "redis_busy", "redis_readonly",
         "poison", "hung_code", "child_crash")
#: the faults of a replicated topology (a cluster's or a Sentinel's): its masters' (failover.py)
#: with the process, input and code faults; the one-server faults are for one server
TOPOLOGY_KINDS = ("kill_worker", "kill_leader", "pause_worker", *MASTER_KINDS, "poison",
                  "hung_code", "child_crash")
_HANDOVER_DEADLINE = 60.0
_BUSY_THRESHOLD_MS = 100  #: lua-time-limit while a foreign script hogs the server
_BUSY_LOOP = """
local function now() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local t0 = now()
while now() - t0 < tonumber(ARGV[1]) do end
return 1
"""


class Faults:
    """Injects one fault of a kind at a time, recording what it did."""

    def __init__(self, cluster: Cluster, recorder: Recorder, rng: random.Random,
                 workload: Workload) -> None:
        self.cluster, self.rec, self.rng, self.workload = cluster, recorder, rng, workload
        self._poisoned = 0
        self._by_kind: dict[str, Callable[[], None]] = {
            "kill_worker": self.kill_worker, "kill_leader": self.kill_leader,
            "pause_worker": self.pause_worker, "kill_redis": self.kill_redis,
            "script_flush": self.script_flush, "client_kill": self.client_kill,
            "redis_unreachable": self.redis_unreachable, "redis_oom": self.redis_oom,
            "redis_busy": self.redis_busy, "redis_readonly": self.redis_readonly,
            "poison": self.poison, "hung_code": self.hung_code,
            "child_crash": self.child_crash,
            "kill_master": lambda: failover.kill_master(cluster, recorder, self._shard()),
            "partition_master": lambda: failover.partition_master(cluster, recorder,
                                                                  self._shard())}

    def _shard(self) -> str:
        """The key prefix of one of the pool's shards, drawn (the pool's own when unsharded)."""
        return self.rng.choice(self.cluster.shard_keys).prefix

    def inject(self, kind: str) -> None:
        self._by_kind[kind]()

    def _admin(self, *command: str) -> object:
        """An admin command, retried while redis-server is restarting."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.cluster.admin.execute_command(*command)
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _leader(self) -> int | None:
        deadline = time.monotonic() + _HANDOVER_DEADLINE
        while time.monotonic() < deadline:
            pid = self.cluster.leader_pid()
            if pid is not None and pid not in self.cluster.stopped:
                return pid
            time.sleep(0.02)
        return None

    def kill_worker(self) -> None:
        leader = self.cluster.leader_pid()
        pids = [p for p in self.cluster.live_workers() if p != leader]
        if not pids:
            return
        pid = self.rng.choice(pids)
        self.rec.record("fault", kind="kill_worker", target=pid)
        self.cluster.kill_worker(pid)

    def kill_leader(self) -> None:
        pid = self._leader()
        if pid is None:
            self.rec.record("fault_skipped", kind="kill_leader", why="no leader")
            return
        t = self.rec.record("fault", kind="kill_leader", target=pid)
        self.cluster.kill_worker(pid)
        deadline = time.monotonic() + _HANDOVER_DEADLINE
        while time.monotonic() < deadline:  # how long until another process holds the lease
            new = self.cluster.leader_pid()
            if new is not None and new != pid:
                self.rec.record("lease_handover", killed=pid, leader=new, after=time.time() - t)
                return
            time.sleep(0.005)
        self.rec.record("lease_handover", killed=pid, leader=None, after=None)

    def pause_worker(self) -> None:
        pids = self.cluster.live_workers()
        if not pids:
            return
        pid = self.rng.choice(pids)
        pause = self.cluster.settings.ttl + self.rng.uniform(0.3, 1.5)  # past its heartbeat
        leader = None  # (the checker: a pause of the lease holder stalls every recovery)
        with contextlib.suppress(redis.RedisError):
            leader = self.cluster.leader_pid()
        self.rec.record("fault", kind="pause_worker", target=pid, seconds=pause, leader=leader)
        self.cluster.signal_worker(pid, signal.SIGSTOP)
        time.sleep(pause)  # the fault is the pause itself
        self.rec.record("fault_end", kind="pause_worker", target=pid)
        self.cluster.signal_worker(pid, signal.SIGCONT)

    def kill_redis(self) -> None:
        self.rec.record("fault", kind="kill_redis")
        self.cluster.kill_redis()
        self.rec.record("fault_end", kind="kill_redis")

    def script_flush(self) -> None:
        self.rec.record("fault", kind="script_flush")
        self._admin("SCRIPT", "FLUSH")

    def client_kill(self) -> None:
        ids = [c["id"] for c in self.cluster.admin.client_list(_type="normal")]
        if self.rng.random() < 0.5 and ids:
            victim = str(self.rng.choice(ids))
            self.rec.record("fault", kind="client_kill", target=victim)
            self._admin("CLIENT", "KILL", "ID", victim)
        else:
            self.rec.record("fault", kind="client_kill", target="all")
            self._admin("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    def redis_unreachable(self) -> None:
        pause = self.rng.uniform(0.2, 2.5)
        self.rec.record("fault", kind="redis_unreachable", seconds=pause)
        self.cluster.pause_redis(signal.SIGSTOP)
        time.sleep(pause)  # the fault is the outage itself
        self.cluster.pause_redis(signal.SIGCONT)
        self.rec.record("fault_end", kind="redis_unreachable")

    def redis_oom(self) -> None:
        """`maxmemory` below what Redis uses for 1-5 s: every write that may grow memory
        (scripts included, before their first write) is refused with OOM."""
        used = int(self.cluster.admin.info("memory")["used_memory"])
        seconds = self.rng.uniform(1.0, 5.0)
        self.rec.record("fault", kind="redis_oom", seconds=seconds, used=used)
        self._admin("CONFIG", "SET", "maxmemory", str(max(1, used // 2)))
        try:
            time.sleep(seconds)  # the fault is the refusal itself
        finally:
            self._admin("CONFIG", "SET", "maxmemory", "0")
            self.rec.record("fault_end", kind="redis_oom")

    def redis_busy(self) -> None:
        """A foreign script runs past the busy threshold for 0.5-3 s: every other client gets
        BUSY meanwhile. Half of them end on their own, half by SCRIPT KILL."""
        seconds = self.rng.uniform(0.5, 3.0)
        killed = self.rng.random() < 0.5
        self._admin("CONFIG", "SET", "lua-time-limit", str(_BUSY_THRESHOLD_MS))
        hog = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=60)
        self.rec.record("fault", kind="redis_busy", seconds=seconds, killed=killed)
        runs = threading.Thread(target=self._busy, args=(hog, 60_000 if killed else seconds *
                                                         1000))
        runs.start()
        try:
            if killed:
                time.sleep(seconds)  # the fault is the busy server itself
            while killed and runs.is_alive():  # until it is gone (NOTBUSY: not running yet)
                with contextlib.suppress(redis.ResponseError):
                    self._admin("SCRIPT", "KILL")
                runs.join(0.05)
            runs.join()
        finally:
            hog.close()
            self.rec.record("fault_end", kind="redis_busy")
            self._admin("CONFIG", "SET", "lua-time-limit", "5000")

    def _busy(self, hog: redis.Redis, ms: float) -> None:
        try:
            hog.eval(_BUSY_LOOP, 0, str(ms))
        except redis.RedisError as exc:  # killed (by us), or the server went away
            self.rec.record("fault_note", kind="redis_busy", note=str(exc)[:200])

    def redis_readonly(self) -> None:
        """The server made a replica of a master that is not there for 0.5-3 s: every write
        is refused with READONLY (its data stays: no sync ever happens)."""
        with socket.socket() as probe:  # a closed port: the "master" refuses connections
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        seconds = self.rng.uniform(0.5, 3.0)
        self.rec.record("fault", kind="redis_readonly", seconds=seconds)
        self._admin("REPLICAOF", "127.0.0.1", str(port))
        try:
            time.sleep(seconds)  # the fault is the refusal itself
        finally:
            self._admin("REPLICAOF", "NO", "ONE")
            self.rec.record("fault_end", kind="redis_readonly")

    def poison(self) -> None:
        """A foreign client appends malformed, oversized and many-field entries to both
        streams; those naming a job name a poison id or a real job, never validly."""
        real = self.workload.recent(3, self.rng) or ["key:none"]
        ids = [f"poison:{self._poisoned + i}" for i in range(6)]
        self._poisoned += len(ids)
        k = self.rng.choice(self.cluster.shard_keys)
        junk = bytes(self.rng.randrange(256) for _ in range(64))
        starts: list[dict[bytes | str, bytes | str]] = [
            {"id": ids[0], "name": "fast", "args": junk},
            {"id": ids[1], "name": "not a name!"},
            {"id": ids[2], "name": "fast", "enc": "xml"},
            {"id": ids[3], "name": "fast", "args": msgpack.packb(["x" * (2 << 20)])},
            {"id": ids[4], **{f"x{i}": str(i) for i in range(2000)}},
            {"id": ids[5], "name": "fast", "max_attempts": "many", "priority": "1.5"},
            {"op": "bogus", "id": real[0]}, {"op": "cancel"},
            {"op": "config", "max_parallelism": "-5"}, {junk[:16]: junk}]
        outcomes: list[dict[bytes | str, bytes | str]] = [
            {"kind": "batch", "o": junk}, {"kind": "batch", "o": msgpack.packb(
                [["kind", "run", "id", real[0], "attempt", "1", "ok", "1"]] * 100)},
            {"kind": "batch", "o": msgpack.packb([["kind", "run", "id", real[-1], "attempt",
                                                   "x", "ok", "1"], 7, "nonsense"])},
            {"kind": "run", "id": real[0], "attempt": "1", "ok": "maybe"},
            {"kind": "run", "id": real[-1], "attempt": "abc", "ok": "1",
             "result": "y" * (2 << 20)},
            {"kind": "bogus", "id": real[0]}, {f"f{i}": str(i) for i in range(2000)},
            {"kind": "cb", "id": real[0], "ok": "1"}]
        self.rec.record("fault", kind="poison", ids=ids, real=real)
        pipe = self.cluster.admin.pipeline(transaction=False)
        for fields in starts:
            pipe.xadd(k.pending_start, fields)  # type: ignore[arg-type]
        for fields in outcomes:
            pipe.xadd(k.pending_completion, fields)  # type: ignore[arg-type]
        pipe.execute()

    def hung_code(self) -> None:
        """Jobs whose code hangs: sync that never returns, async that ignores its timeout,
        async that blocks the worker's event loop."""
        self.rec.record("fault", kind="hung_code")
        self.workload.enqueue("stuck", prefix="hung")
        self.workload.enqueue("stubborn", (self.rng.randint(800, 2500),), prefix="hung")
        self.workload.enqueue("hog", (self.rng.randint(400, 1500),), prefix="hung")

    def child_crash(self) -> None:
        """Jobs whose child process dies (os._exit) in their first attempts (a fail_until of
        5: in every attempt) when the process executor runs them."""
        self.rec.record("fault", kind="child_crash")
        for _ in range(3):
            self.workload.enqueue("crash", (self.rng.randint(2, 5),), prefix="crash")
