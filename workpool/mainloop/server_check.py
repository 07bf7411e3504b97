"""The Redis settings workpool depends on, checked by each new main-loop leader: what is unsafe
is logged as a warning naming the fix (README, "Redis settings")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import redis.asyncio
from redis.exceptions import ResponseError

from workpool.server.replication import on_node
from workpool.wire.protocol import text

_SETTINGS = ("maxmemory-policy", "appendonly", "appendfsync")


@dataclass(frozen=True)
class Finding:
    """One setting's verdict."""

    level: Literal["error", "warning", "info"]
    message: str


def assess(config: Mapping[str, str], replication: Mapping[str, str],
           version: str = "", replicas: int = 0) -> list[Finding]:
    """Judge CONFIG values, INFO replication fields and the server version (missing ones are
    not judged) against the pool's `replicas=`."""
    found: list[Finding] = []
    if version and tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (6, 2):
        found.append(Finding("error", f"redis {version} is too old: workpool needs 6.2 or "
                             "later (XTRIM MINID); every transition script will fail"))
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        found.append(Finding("warning", f"unsafe redis setting maxmemory-policy={policy}: an "
                             "evicted job is a lost job; set maxmemory-policy noeviction"))
    if config.get("appendonly", "yes") != "yes":
        found.append(Finding("warning", "redis runs without AOF (appendonly no): a redis "
                             "restart loses every job; set appendonly yes"))
    elif config.get("appendfsync") == "no":
        found.append(Finding("warning", "appendfsync no: a machine crash can lose about 30 s "
                             "of acknowledged jobs and transitions; use everysec or always"))
    elif config.get("appendfsync") == "everysec":
        found.append(Finding("info", "appendfsync everysec: a machine crash (not a redis "
                             "crash) can lose up to about 1 s of acknowledged writes; "
                             "appendfsync always closes that window"))
    connected = int(replication.get("connected_slaves", "0"))
    if replication.get("role") == "master" and connected < replicas:
        found.append(Finding("warning", f"replicas={replicas} but redis has {connected} "
                             "connected: every write waits for them and fails NotReplicated "
                             "until they are back; add replicas or lower replicas="))
    elif replication.get("role") == "master" and connected and not replicas:
        found.append(Finding("info", "redis has replicas: replication is asynchronous, so a "
                             "failover can lose acknowledged writes unless the pool has "
                             "replicas=1 or more (README, 'Scaling out')"))
    return found


async def check_server(client: redis.asyncio.Redis, key: str = "",
                       replicas: int = 0) -> list[Finding]:
    """Read the settings of the server holding `key` (a cluster's node for its slot; CONFIG
    may be renamed or disabled: then only INFO is judged)."""
    config: dict[str, str] = {}
    for name in _SETTINGS:
        try:
            got = await on_node(client, key, "CONFIG GET", name)
            config.update({text(k): text(v) for k, v in got.items()})
        except ResponseError:
            break
    try:
        info = await on_node(client, key, "INFO")  # default sections: server, replication
    except ResponseError:
        info = {}
    return assess(config, {str(k): str(v) for k, v in info.items()},
                  str(info.get("redis_version", "")), replicas)
