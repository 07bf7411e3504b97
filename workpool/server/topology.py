"""Local Redis topologies of real redis-server processes for tests, chaos and benches: a
Redis Cluster (masters with replicas) and a Sentinel-managed master with replicas, each on
free loopback ports, formed with plain commands (no redis-cli needed)."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from workpool.server.embedded import RedisServer, RedisServerStartError

SLOTS = 16384
FORM_TIMEOUT = 30.0  #: s a topology may take to agree on its shape
#: ms a node may be silent before the others fail it over (short: tests and chaos wait on it)
NODE_TIMEOUT_MS = 2000


def _until(what: str, ok: Callable[[], bool], timeout: float = FORM_TIMEOUT) -> None:
    """Poll `ok` until it holds (a Redis error counts as not yet), else raise naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if ok():
                return
        time.sleep(0.05)  # poll interval
    raise RedisServerStartError(f"the local topology did not {what} within {timeout:.0f} s")


def _bus_port_pair() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too (a cluster node's
    port must be at most 55535, below the kernel's usual ephemeral range)."""
    for _ in range(100):
        port = random.randrange(20000, 45000)
        with contextlib.ExitStack() as held:
            try:
                for p in (port, port + 10000):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port
    raise RedisServerStartError("no free pair of ports for a cluster node")


def _node(data_dir: Path, args: Sequence[str]) -> RedisServer:
    """A cluster node on a fresh port pair (another pair if one was taken meanwhile)."""
    for attempt in range(5):
        try:
            return RedisServer.start(data_dir, port=_bus_port_pair(), extra_args=args)
        except RedisServerStartError:
            if attempt == 4:
                raise
    raise AssertionError  # unreachable


def _replicate(replica: redis.Redis, master_id: str) -> None:
    """Make `replica` follow `master_id`, once it has heard of that node."""
    _until("know its master", lambda: bool(replica.execute_command("CLUSTER REPLICATE",
                                                                   master_id)))


def _admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2,
                       decode_responses=True, retry=Retry(NoBackoff(), 0))  # a frozen one: 2 s


class LocalCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, slots spread
    evenly; `url` is its `redis+cluster://` URL."""

    def __init__(self, nodes: list[RedisServer], masters: int) -> None:
        self.nodes, self.masters = nodes, masters

    @classmethod
    def start(cls, data_dir: Path, masters: int = 3, replicas: int = 1,
              node_timeout_ms: int = NODE_TIMEOUT_MS) -> LocalCluster:
        """Start the nodes, assign slots, join them and attach the replicas; return once every
        node says the cluster is ok and every replica is in sync."""
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), "--appendfsync", "always")
        nodes: list[RedisServer] = []
        try:
            for i in range(masters * (1 + replicas)):
                nodes.append(_node(Path(data_dir) / f"node{i}", args))
            made = cls(nodes, masters)
            made._form(replicas)
        except BaseException:
            for node in nodes:
                node.kill()
            raise
        return made

    def _form(self, replicas: int) -> None:
        admins = [_admin(node) for node in self.nodes]
        for i, admin in enumerate(admins[: self.masters]):
            first, last = SLOTS * i // self.masters, SLOTS * (i + 1) // self.masters
            admin.execute_command("CLUSTER ADDSLOTS", *range(first, last))
        for admin in admins[1:]:
            admin.execute_command("CLUSTER MEET", "127.0.0.1", self.nodes[0].port)
        _until("meet", lambda: all(
            len(a.execute_command("CLUSTER NODES")) == len(admins) for a in admins))
        ids = [a.execute_command("CLUSTER MYID") for a in admins[: self.masters]]
        for r in range(replicas):
            for i, master_id in enumerate(ids):
                _replicate(admins[self.masters * (1 + r) + i], master_id)
        _until("agree", lambda: all(
            _state(a) == "ok" for a in admins))
        _until("sync", lambda: all(
            a.info("replication").get("master_link_status") == "up"
            for a in admins[self.masters:]))
        for admin in admins:
            admin.close()

    @property
    def url(self) -> str:
        """`redis+cluster://` naming every node (any answering one is enough to start)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def master_of(self, key: str) -> RedisServer:
        """The node that holds `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(redis.RedisError, OSError), _admin(node) as admin:
                for first, last, master, *_ in admin.execute_command("CLUSTER SLOTS"):
                    if first <= slot <= last:
                        return self._by_port(int(master[1]))
        raise RedisServerStartError(f"no node of the cluster holds {key!r}'s slot")

    def _by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def wait_ok(self, timeout: float = FORM_TIMEOUT) -> None:
        """Return once every running node says the cluster is ok (after a failover)."""
        live = [n for n in self.nodes if n.running]
        _until("recover", lambda: all(
            _state(_admin(n)) == "ok" for n in live), timeout)

    def promoted(self, key: str, old: RedisServer) -> bool:
        """Whether a node other than `old` now holds `key`'s slot and the cluster is ok."""
        with contextlib.suppress(RedisServerStartError, redis.RedisError, OSError):
            now = self.master_of(key)
            return now is not old and _state(_admin(now)) == "ok"
        return False

    def flush(self) -> None:
        """Empty every master (a test's clean start)."""
        for node in self.nodes:
            with contextlib.suppress(redis.ReadOnlyError), _admin(node) as admin:
                if admin.info("replication")["role"] == "master":
                    admin.flushall()

    def servers(self) -> list[RedisServer]:
        """Every process of the topology that runs."""
        return [n for n in self.nodes if n.running]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _state(admin: redis.Redis) -> str:
    with admin:
        return str(admin.execute_command("CLUSTER INFO")["cluster_state"])


class LocalSentinel:
    """A master with `replicas` replicas, watched by `sentinels` Sentinels (quorum: a
    majority); `url` is its `redis+sentinel://` URL."""

    def __init__(self, data: list[RedisServer], sentinels: list[RedisServer], name: str) -> None:
        self.data, self.sentinels, self.name = data, sentinels, name

    @classmethod
    def start(cls, data_dir: Path, replicas: int = 1, sentinels: int = 1,
              name: str = "wpmaster", down_after_ms: int = NODE_TIMEOUT_MS) -> LocalSentinel:
        """Start the master, its replicas (in sync) and the Sentinels (each knowing all)."""
        data_dir = Path(data_dir)
        started: list[RedisServer] = []
        try:
            master = RedisServer.start(data_dir / "master", appendfsync="always")
            started.append(master)
            for i in range(replicas):
                started.append(RedisServer.start(
                    data_dir / f"replica{i}", appendfsync="always",
                    extra_args=("--replicaof", "127.0.0.1", str(master.port))))
            watchers: list[RedisServer] = []
            for i in range(sentinels):
                conf = data_dir / f"sentinel{i}" / "sentinel.conf"
                conf.parent.mkdir(parents=True, exist_ok=True)
                conf.write_text(_sentinel_conf(name, master.port, sentinels // 2 + 1,
                                               down_after_ms))
                watchers.append(RedisServer.start(conf.parent, config=conf,
                                                  extra_args=("--sentinel",)))
                started.append(watchers[-1])
            made = cls(started[: 1 + replicas], watchers, name)
            _until("sync", lambda: all(
                _admin(r).info("replication").get("master_link_status") == "up"
                for r in made.data[1:]))
            _until("see the replicas", lambda: all(
                len(_admin(s).execute_command("SENTINEL REPLICAS", name)) == replicas
                for s in watchers))
        except BaseException:
            for server in started:
                server.kill()
            raise
        return made

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}"

    def master(self) -> RedisServer:
        """The data node the Sentinels name as master now."""
        with _admin(self.sentinels[0]) as admin:
            _, port = admin.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.name)
        return next(n for n in self.data if n.port == int(port))

    def promoted(self, old: RedisServer) -> bool:
        """Whether the Sentinels name a master other than `old`, and it says it is one."""
        with contextlib.suppress(redis.RedisError, OSError, StopIteration):
            now = self.master()
            return now is not old and _admin(now).info("replication")["role"] == "master"
        return False

    def flush(self) -> None:
        with _admin(self.master()) as admin:
            admin.flushall()

    def servers(self) -> list[RedisServer]:
        """Every process of the topology that runs."""
        return [s for s in [*self.sentinels, *self.data] if s.running]

    def stop(self) -> None:
        for server in [*self.sentinels, *self.data]:
            server.stop()


def _sentinel_conf(name: str, port: int, quorum: int, down_after_ms: int) -> str:
    lines: Sequence[str] = (
        f"sentinel monitor {name} 127.0.0.1 {port} {quorum}",
        f"sentinel down-after-milliseconds {name} {down_after_ms}",
        f"sentinel failover-timeout {name} {down_after_ms * 5}",
        f"sentinel parallel-syncs {name} 1",
    )
    return "\n".join(lines) + "\n"
