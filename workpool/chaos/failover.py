"""The faults of a replicated topology: the master holding the pool SIGKILLed (a replica is
promoted, then the old one is started again and rejoins as its replica), or SIGSTOPped past
the failover and resumed (a stale master back, demoted). Each ends once the old master is an
in-sync replica again: one replica per master survives one failure at a time."""

from __future__ import annotations

import os
import signal
import time

from workpool.chaos.cluster import Cluster
from workpool.chaos.history import Recorder
from workpool.server.embedded import RedisServer

MASTER_KINDS = ("kill_master", "partition_master")
_DEADLINE = 60.0  #: s a failover or a resync may take before the fault gives up waiting


def kill_master(cluster: Cluster, rec: Recorder, prefix: str) -> None:
    """SIGKILL the master holding the keys of `prefix` (a shard of the pool); once a replica
    is promoted, start it again."""
    old = cluster.master_for(prefix)
    began = rec.record("fault", kind="kill_master", target=old.port, keys=prefix)
    old.kill()
    _promoted(cluster, rec, old, prefix, began)
    old.restart()
    _resynced(cluster, rec, old, "kill_master")


def partition_master(cluster: Cluster, rec: Recorder, prefix: str) -> None:
    """SIGSTOP the master holding the keys of `prefix` past the failover, then SIGCONT it."""
    old = cluster.master_for(prefix)
    began = rec.record("fault", kind="partition_master", target=old.port, keys=prefix)
    os.kill(old.pid, signal.SIGSTOP)
    try:
        _promoted(cluster, rec, old, prefix, began)
    finally:
        os.kill(old.pid, signal.SIGCONT)
    _resynced(cluster, rec, old, "partition_master")


def _promoted(cluster: Cluster, rec: Recorder, old: RedisServer, prefix: str,
              began: float) -> None:
    deadline = time.monotonic() + _DEADLINE
    while time.monotonic() < deadline and not cluster.promoted(old, prefix):
        time.sleep(0.05)  # poll interval
    rec.record("fault_note", kind="failover", note="promoted" if cluster.promoted(old, prefix)
               else "none promoted", after=time.time() - began)


def _resynced(cluster: Cluster, rec: Recorder, old: RedisServer, kind: str) -> None:
    deadline = time.monotonic() + _DEADLINE
    while time.monotonic() < deadline and not cluster.in_sync(old):
        time.sleep(0.05)  # poll interval
    rec.record("fault_end", kind=kind, in_sync=cluster.in_sync(old))
