"""The faults a chaos run injects, each one recorded with its time in the run's history.

Kinds: SIGKILL of a worker, SIGKILL of the main-loop holder, SIGSTOP of a worker past its lease
then SIGCONT, SIGKILL of redis-server and restart from its AOF, SCRIPT FLUSH, CLIENT KILL, and
redis-server paused (SIGSTOP) for a while: unreachable but not gone.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import redis

from workpool.chaos.cluster import Cluster
from workpool.chaos.history import Recorder

KINDS = ("kill_worker", "kill_leader", "pause_worker", "kill_redis", "script_flush",
         "client_kill", "redis_unreachable")
_HANDOVER_DEADLINE = 60.0


class Faults:
    """Injects one fault of a kind at a time, recording what it did."""

    def __init__(self, cluster: Cluster, recorder: Recorder, rng: random.Random) -> None:
        self.cluster, self.rec, self.rng = cluster, recorder, rng
        self._by_kind: dict[str, Callable[[], None]] = {
            "kill_worker": self.kill_worker, "kill_leader": self.kill_leader,
            "pause_worker": self.pause_worker, "kill_redis": self.kill_redis,
            "script_flush": self.script_flush, "client_kill": self.client_kill,
            "redis_unreachable": self.redis_unreachable}

    def inject(self, kind: str) -> None:
        self._by_kind[kind]()

    def _admin(self, *command: str) -> object:
        """An admin command, retried while redis-server is restarting."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.cluster.admin.execute_command(*command)
            except (redis.ConnectionError, redis.TimeoutError):
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
        self.rec.record("fault", kind="pause_worker", target=pid, seconds=pause)
        self.cluster.signal_worker(pid, signal.SIGSTOP)
        time.sleep(pause)  # the fault is the pause itself
        self.rec.record("resume", target=pid)
        self.cluster.signal_worker(pid, signal.SIGCONT)

    def kill_redis(self) -> None:
        self.rec.record("fault", kind="kill_redis", target=self.cluster.redis.pid)
        self.cluster.kill_redis()
        self.rec.record("redis_up")

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
        self.rec.record("redis_up")
