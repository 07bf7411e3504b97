"""The Redis URLs beyond one server, parsed: `redis+cluster://[user:pass@]host:port[,...]`
(a Redis Cluster, any reachable node enough to find the rest) and
`redis+sentinel://[user:pass@]host:port[,...]/MASTERNAME` (the master Sentinels name now);
`rediss+` for TLS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

CLUSTER, SENTINEL = "redis+cluster://", "redis+sentinel://"
TLS_CLUSTER, TLS_SENTINEL = "rediss+cluster://", "rediss+sentinel://"
#: every scheme a pool's URL may have
SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER, SENTINEL, TLS_CLUSTER, TLS_SENTINEL)


@dataclass(frozen=True)
class Topology:
    """What a cluster or Sentinel URL names; `problem` says what is wrong with it, if any."""

    scheme: str
    hosts: list[tuple[str, int]] = field(default_factory=list)
    master: str = ""
    credentials: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


def is_topology(url: str) -> bool:
    """A cluster or Sentinel URL (not one server's)."""
    return url.startswith((CLUSTER, SENTINEL, TLS_CLUSTER, TLS_SENTINEL))


def parse(url: str) -> Topology:
    """Split a cluster or Sentinel URL into its parts (never raises: see `problem`)."""
    tls = url.startswith("rediss+")
    scheme = CLUSTER if url.startswith((CLUSTER, TLS_CLUSTER)) else SENTINEL
    rest = url.split("://", 1)[1]
    credentials: dict[str, Any] = {"ssl": True} if tls else {}
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        name, _, password = user.partition(":")
        credentials.update({"username": unquote(name) or None, "password": unquote(password)})
    where, _, master = rest.partition("/")
    if scheme == CLUSTER and master not in ("", "0"):
        return Topology(scheme, problem="a cluster URL has no database or path (cluster "
                                        "mode has database 0 only)")
    if scheme == SENTINEL and not master:
        return Topology(scheme, problem="a Sentinel URL ending in /MASTERNAME")
    hosts: list[tuple[str, int]] = []
    for item in where.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return Topology(scheme, problem="host:port pairs separated by commas")
        hosts.append((host.strip("[]"), int(port)))
    return Topology(scheme, hosts, unquote(master), credentials)
