"""The processes of a chaos run: one redis-server (AOF on, our own port and data dir), or a
Redis Cluster (3 masters, a replica each) or a master with a replica behind a Sentinel, and N
worker processes (each also a main-loop candidate; every other one runs sync jobs in the
process executor's children, the others in threads), with the signals the faults send them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from workpool.chaos.settings import ChaosSettings
from workpool.server.connection import sync_client
from workpool.server.embedded import RedisServer
from workpool.server.topology import LocalCluster, LocalSentinel
from workpool.wire.keys import Keys
from workpool.wire.protocol import text
from workpool.wire.shards import shard_of


class Cluster:
    """Starts, signals, replaces and stops the run's redis-server and workers."""

    def __init__(self, run_dir: Path, settings: ChaosSettings, *, workers: int, concurrency: int,
                 appendfsync: str, topology: str = "single") -> None:
        self.run_dir, self.settings = run_dir, settings
        self.size, self.concurrency = workers, concurrency
        self.keys = Keys(settings.pool, 0 if settings.shards > 1 else None)  # (shard 0's)
        self.shard_keys = [Keys(settings.pool, i) for i in range(settings.shards)] \
            if settings.shards > 1 else [self.keys]
        self.topology: LocalCluster | LocalSentinel | None = None
        if topology == "cluster":
            self.topology = LocalCluster.start(run_dir / "redis")
        elif topology == "sentinel":
            self.topology = LocalSentinel.start(run_dir / "redis")
        self._single = None if self.topology else RedisServer.start(run_dir / "redis",
                                                                      appendfsync=appendfsync)
        self.url = self.topology.url if self.topology else self.redis.url
        self.admin = sync_client(self.url, socket_timeout=10)
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.stopped: set[int] = set()  # pids under SIGSTOP
        self.redis_stopped = False
        self._spawned = 0

    @property
    def redis(self) -> RedisServer:
        """The server holding the pool (its first shard) now."""
        return self.master_for(self.keys.prefix)

    def master_for(self, prefix: str) -> RedisServer:
        """The server holding the keys of `prefix` now (a topology's master for them)."""
        if isinstance(self.topology, LocalCluster):
            return self.topology.master_of(prefix)
        if isinstance(self.topology, LocalSentinel):
            return self.topology.master()
        assert self._single is not None
        return self._single

    def promoted(self, old: RedisServer, prefix: str) -> bool:
        """A replica now holds the keys of `prefix` instead of `old` (a failover is over)."""
        if isinstance(self.topology, LocalCluster):
            return self.topology.promoted(prefix, old)
        return isinstance(self.topology, LocalSentinel) and self.topology.promoted(old)

    def keys_for(self, job_id: str) -> Keys:
        """The keys of the shard holding `job_id`."""
        return self.shard_keys[shard_of(job_id, len(self.shard_keys))]

    def in_sync(self, server: RedisServer) -> bool:
        """`server` is a replica whose link to its master is up (its full sync done)."""
        with contextlib.suppress(redis.RedisError, OSError), \
                redis.Redis(port=server.port, socket_timeout=2) as admin:
            info = admin.info("replication")
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")
        return False

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.env(), "WORKPOOL_REDIS_URL": self.url,
                "WORKPOOL_CHAOS_DIR": str(self.run_dir)}

    def spawn_worker(self) -> int:
        """Start one worker process (thread and process executors in turn); returns its pid."""
        self._spawned += 1
        executor = "process" if self._spawned % 2 == 0 else "thread"
        log = (self.run_dir / "logs" / f"worker-{self._spawned}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workpool", "--log-format", "json", "--log-level",
                 "WARNING", "worker", "workpool.chaos.app:pool", "--concurrency",
                 str(self.concurrency), "--grace", "10", "--executor", executor],
                env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.workers[proc.pid] = proc
        return proc.pid

    def start_workers(self) -> None:
        while len(self.workers) < self.size:
            self.spawn_worker()

    def live_workers(self) -> list[int]:
        """Workers running and not stopped."""
        return [pid for pid, p in self.workers.items()
                if p.poll() is None and pid not in self.stopped]

    def leader_pid(self) -> int | None:
        """The pid of the main-loop lease holder (a worker's id is host-pid-random)."""
        raw = self.admin.get(self.keys.lease)
        if not raw:
            return None
        owner = text(raw).split(":", 1)[1]
        with contextlib.suppress(ValueError, IndexError):
            pid = int(owner.rsplit("-", 2)[1])
            return pid if pid in self.workers else None
        return None

    def kill_worker(self, pid: int) -> None:
        """SIGKILL a worker and start a replacement."""
        proc = self.workers.pop(pid)
        proc.kill()
        proc.wait()
        self.stopped.discard(pid)
        self.spawn_worker()

    def signal_worker(self, pid: int, sig: signal.Signals) -> None:
        os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped.add(pid)
        elif sig == signal.SIGCONT:
            self.stopped.discard(pid)

    def kill_redis(self) -> None:
        """SIGKILL redis-server (only what its AOF fsynced survives) and start it again."""
        self.redis.kill()
        self.redis.restart()

    def pause_redis(self, sig: signal.Signals) -> None:
        os.kill(self.redis.pid, sig)
        self.redis_stopped = sig == signal.SIGSTOP

    def wake_all(self) -> None:
        """Resume everything paused (the end of the fault phase)."""
        if self.redis_stopped:
            self.pause_redis(signal.SIGCONT)
        for pid in list(self.stopped):
            self.signal_worker(pid, signal.SIGCONT)

    def stop_workers(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker and wait for it (SIGKILL past the timeout)."""
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.wake_all()
        self.stop_workers()
        self.admin.close()
        if self.topology is not None:
            for server in self.topology.servers():
                with contextlib.suppress(OSError):
                    os.kill(server.pid, signal.SIGCONT)
            self.topology.stop()
        else:
            self.redis.stop()
