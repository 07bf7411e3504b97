"""Test helpers: poll a condition with a deadline, run a Worker in a thread, drive redis-cli,
make a real Redis refuse commands for a while (OOM, BUSY, READONLY)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import redis

from workpool import NonRetryableError, Retry, Workpool
from workpool.server.embedded import find_redis_server
from workpool.testing.kit import running
from workpool.wire import protocol
from workpool.wire.keys import Keys
from workpool.wire.protocol import text
from workpool.worker.supervisor import Worker

T = TypeVar("T")

_ENTRY_ID = re.compile(rb"^\d+-\d+$")


def eventually(predicate: Callable[[], T | Literal[False] | None], timeout: float = 15.0,
               what: str = "") -> T:
    """Poll `predicate` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            msg = f"still not true after {timeout} s: {what or predicate!r} (last: {value!r})"
            raise AssertionError(msg)
        time.sleep(0.01)  # poll interval, not a wait for the condition itself


def stays(predicate: Callable[[], object], seconds: float) -> bool:
    """True if `predicate()` holds at every poll for `seconds` (an absence needs a window)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.01)  # poll interval, not a wait for the condition itself
    return True


def node_of(r: Any, key: str) -> redis.Redis:
    """The client of the one server that holds `key` (a cluster's node for its slot, else `r`
    itself): where a pool's INFO, CONFIG and server-wide counts are."""
    if isinstance(r, redis.RedisCluster):
        return r.get_redis_connection(r.get_node_from_key(key))
    return cast("redis.Redis", r)


def job_fields(r: Any, keys: Keys, job_id: str) -> dict[str, bytes]:
    """The job's hash, or (never started) its packed value in `unstarted` read as one; {} if
    neither exists."""
    return protocol.job_fields(r.hgetall(keys.job(job_id)), r.hget(keys.unstarted, job_id))


def hold_job(pool: Workpool) -> tuple[threading.Event, threading.Event]:
    """Register the sync job `hold`: it sets `holding`, then blocks until `release` is set
    (30 s at most), keeping a worker slot busy. Returns (holding, release)."""
    holding, release = threading.Event(), threading.Event()

    @pool.job(name="hold")
    def hold() -> str:
        holding.set()
        release.wait(30)
        return "held"

    return holding, release


class Pools:
    """Makes pools on the test server with short lease/heartbeat TTLs; closes them afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._made: list[Workpool] = []

    def __call__(self, name: str = "t", **options: Any) -> Workpool:
        options.setdefault("lease_ttl", 1.0)
        options.setdefault("heartbeat_ttl", 2.0)
        options.setdefault("retry", Retry(max_attempts=3, initial_backoff=0.01))
        pool = Workpool(name, options.pop("redis_url", self.url), **options)
        self._made.append(pool)
        return pool

    def close(self) -> None:
        for pool in self._made:
            pool.close()


@contextmanager
def ran_some(pool: Workpool) -> Iterator[Workpool]:
    """`pool` with jobs `double` (returns 2x) and `broken` (fails, not retryable), after its
    worker ran three `double` jobs and one `broken`; the worker runs until the block ends."""
    pool.job(name="double")(lambda x: 2 * x)

    @pool.job(name="broken")
    def broken() -> None:
        msg = "the mail server said no"
        raise NonRetryableError(msg)

    with running_worker(pool):
        for job in [pool.enqueue("double", i) for i in range(3)] + [pool.enqueue("broken")]:
            pool.wait(job, timeout=30)
        yield pool


def running_worker(pool: Workpool, **options: Any) -> AbstractContextManager[Worker]:
    """Run a Worker (with its main-loop candidate, unless told otherwise) until the block ends:
    the testing kit's own (workpool.testing.running), named `test-<pool>` by default."""
    options.setdefault("worker_id", f"test-{pool.name}")
    return cast("AbstractContextManager[Worker]", running(pool, **options))  # one shard


def redis_cli_path() -> str:
    """The redis-cli next to the redis-server the tests run (else the one on PATH)."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path is None:
        msg = f"no redis-cli next to {find_redis_server()} nor on PATH"
        raise FileNotFoundError(msg)
    return on_path


def redis_cli(url: str, *args: str | bytes, stdin: bytes | None = None) -> bytes:
    """Run redis-cli against `url` (raw output); `stdin` feeds `-x` or a command script."""
    out = subprocess.run([redis_cli_path(), "-u", url, *args], input=stdin,
                         capture_output=True, check=True, timeout=30)
    if out.stdout.startswith((b"ERR", b"WRONGTYPE")) or out.stderr:
        msg = f"redis-cli {args!r} failed: {out.stdout!r} {out.stderr!r}"
        raise AssertionError(msg)
    return out.stdout


def xadd(url: str, key: str, *fields: str | bytes, last: bytes | None = None) -> str:
    """XADD one entry with redis-cli; `last` is a binary value sent through stdin (`-x`)."""
    args: tuple[str | bytes, ...] = ("XADD", key, "*", *fields)
    reply = redis_cli(url, "-x", *args, stdin=last) if last is not None else redis_cli(url, *args)
    entry_id = reply.strip()
    assert _ENTRY_ID.match(entry_id), reply
    return entry_id.decode()


TESTS_DIR = Path(__file__).resolve().parent


class CliProcs:
    """`python -m workpool ...` processes on a test server, each in its own session (so its
    children go with it) and logging to its own file; all are SIGKILLed at teardown."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs = url, logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        """Run the CLI with `args` (tests/ importable, JSON logs to `<label>.log`)."""
        path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, "WORKPOOL_REDIS_URL": self.url}
        with (self.logs / f"{label}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workpool", "--redis-url", self.url, "--log-format",
                 "json", *args], cwd=TESTS_DIR.parent, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started[label] = proc
        return proc

    def log(self, label: str) -> str:
        """Everything the process has logged so far."""
        return (self.logs / f"{label}.log").read_text(errors="replace")

    def kill(self, label: str) -> None:
        """SIGKILL one process and its children (no goodbye: leases and heartbeats expire)."""
        proc = self.started[label]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill_all(self) -> None:
        """Kill whatever still runs; print each one's last lines (shown when a test fails)."""
        for label, proc in self.started.items():
            if proc.poll() is None:
                self.kill(label)
            print(f"--- {label} (exit {proc.returncode}), last lines:")
            print("\n".join(self.log(label).splitlines()[-15:]))


def entry_ids(client: Any, stream: str) -> list[str]:
    """The ids of the entries in `stream`, oldest first."""
    return [text(e) for e, _ in client.xrange(stream) or []]


# -- a real Redis that refuses commands for a while ---------------------------------------------

SPIN = "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] " \
       "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > tonumber(ARGV[1])"


@contextmanager
def out_of_memory(r: redis.Redis) -> Iterator[None]:
    """Every write that can grow memory fails with OOM (maxmemory far below what is used)."""
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    try:
        yield
    finally:
        r.config_set("maxmemory", "0")


@contextmanager
def busy(r: redis.Redis, seconds: float = 2.5) -> Iterator[threading.Thread]:
    """A slow read-only script holds the server for `seconds`: everyone else gets BUSY until it
    ends (`lua-time-limit`, Redis 6.2's name for busy-reply-threshold, lowered to 20 ms). Yields
    the thread running it; the script must end by itself, without an error."""
    r.config_set("lua-time-limit", "20")
    script_client = redis.Redis(connection_pool=r.connection_pool.__class__(
        **r.connection_pool.connection_kwargs))  # a connection of its own, to the same server
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            script_client.eval(SPIN, 0, round(seconds * 1e6))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    runner = threading.Thread(target=spin, name="busy-script", daemon=True)
    runner.start()
    try:
        eventually(lambda: refused_with(r, "BUSY"), 5.0, "the server answers BUSY")
        yield runner
    finally:
        runner.join(seconds + 10)
        script_client.close()
    assert not runner.is_alive() and not errors, errors


@contextmanager
def read_only(r: redis.Redis) -> Iterator[None]:
    """The server follows a primary that is not there: it refuses writes (READONLY) and keeps
    its data, until it is a primary again."""
    r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        yield
    finally:
        r.execute_command("REPLICAOF", "NO", "ONE")


def refused_with(r: redis.Redis, code: str) -> bool:
    """True if a write now fails with the server's error `code` (BUSY, OOM, READONLY, ...)."""
    try:
        r.set("probe", "1")
    except redis.ResponseError as exc:
        return str(exc).startswith(code) or code.lower() in type(exc).__name__.lower()
    return False


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
