"""The `workpool` command at its edges: every option is checked before anything is written (a
usage error naming it, never a traceback), what a command did is said, and what an operator
needs (waiting for a job, the embedded server) has a command."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from helpers import Pools, eventually, running_worker

from workpool import Retry, State
from workpool.cli.main import cli
from workpool.server.embedded import pid_alive
from workpool.types import Canceled

Invoke = Callable[..., Result]
pytestmark = pytest.mark.topologies  # each test on one server and on a cluster


@pytest.fixture
def run(redis_url: str) -> Invoke:
    """`workpool --redis-url <the test server> ARGS...`, in this process."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--redis-url", redis_url, *args])

    return invoke


@pytest.mark.parametrize(("args", "option"), [
    (["config", "p", "--job-max-per-key", "hold=x"], "--job-max-per-key"),
    (["config", "p", "--job-max-per-key", "hold"], "--job-max-per-key"),
    (["config", "p", "--job-rate-limit", "hold=fast"], "--job-rate-limit"),
    (["config", "p", "--rate-limit", "10 per second"], "--rate-limit"),
    (["config", "p", "--max-parallelism", "-1"], "--max-parallelism"),
    (["config", "p"], "at least one setting"),
    (["enqueue", "p", "job", "--priority", "5000"], "--priority"),
    (["enqueue", "p", "job", "--timeout", "0"], "--timeout"),
    (["enqueue", "p", "job", "--key", "k" * 600], "key"),
    (["enqueue", "p", "not a name"], "name"),
    (["worker", "rawapp"], "MODULE:POOL"),
    (["loop", "rawapp"], "MODULE:POOL"),
    (["worker", "no_such_module:pool"], "cannot import"),
    (["stats", "bad name!"], "name"),
    (["wait", "id", "--pool", "p", "--timeout", "-1"], "--timeout"),
])
def test_an_unusable_option_is_a_usage_error_naming_it_and_nothing_is_written(
        run: Invoke, redis_client: redis.Redis,
        args: list[str], option: str) -> None:
    result = run(*args)
    assert result.exit_code in (1, 2), result.output
    assert option in result.output
    assert "Traceback" not in result.output
    assert redis_client.dbsize() == 0


def test_a_redis_url_that_is_no_redis_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["--redis-url", "http://x", "stats", "p"])
    assert result.exit_code == 2
    assert "--redis-url" in result.output and "Traceback" not in result.output


def test_stats_of_a_pool_that_does_not_exist_says_so(run: Invoke) -> None:
    result = run("stats", "nosuchpool")
    assert result.exit_code == 1
    assert "no pool named 'nosuchpool'" in result.output


def test_stats_show_a_huge_rejected_entry_in_a_few_lines(
        run: Invoke, pools: Pools, redis_client: redis.Redis) -> None:
    pool = pools("huge")
    redis_client.xadd(pool.keys.pending_start, {"op": "enqueue", "args": b"x" * (1 << 20)})

    @pool.job()
    def nothing() -> None:
        return None

    with running_worker(pool):
        eventually(lambda: pool.stats().counters.get("rejected"), 15.0, "the entry set aside")
    result = run("stats", "huge")
    assert result.exit_code == 0, result.output
    assert len(result.output) < 4000
    assert "field name must be a name" in result.output
    assert re.search(r"args='x{60}'\.\.\. \(\d+ chars\)", result.output), result.output


def test_cancel_says_what_happened_to_the_job(pools: Pools) -> None:
    pool = pools("cancels", retry=Retry(max_attempts=1))
    release = threading.Event()

    @pool.job()
    def hold() -> str:
        release.wait(30)
        return "held"

    @pool.job()
    def quick() -> str:
        return "quick"

    try:
        with running_worker(pool, concurrency=2):
            running = pool.enqueue(hold)
            eventually(lambda: pool.status(running).state == State.RUNNING)
            waiting = pool.enqueue(quick, run_after=3600)
            assert pool.cancel(waiting) == Canceled.CANCELED
            assert pool.status(waiting).state == State.CANCELED
            assert pool.cancel(running) == Canceled.MARKED
            assert pool.cancel(running) == Canceled.MARKED  # a second cancel changes nothing
            done = pool.enqueue(quick)
            pool.wait(done, timeout=15)
            assert pool.cancel(done) == Canceled.FINISHED
            assert pool.cancel("no-such-job") == Canceled.UNKNOWN
            release.set()
            assert pool.wait(running, timeout=15).outcome == "succeeded"
    finally:
        release.set()
    later = pool.enqueue(quick)  # no main loop runs now: the request waits for one
    assert pool.cancel(later, wait=0.2) == Canceled.SENT


def test_configure_says_whether_a_main_loop_applied_it(pools: Pools) -> None:
    pool = pools("configures")

    @pool.job()
    def quick() -> str:
        return "quick"

    assert pool.configure(max_parallelism=3, wait=0.2) == "sent"
    with running_worker(pool):
        assert pool.configure(max_parallelism=4) == "applied"
        assert pool.stats().max_parallelism == 4


def test_the_wait_command_blocks_until_the_job_is_terminal(
        run: Invoke, pools: Pools) -> None:
    pool = pools("waits")

    @pool.job()
    def quick(x: int) -> int:
        return x * 2

    job = pool.enqueue(quick, 21)
    timed_out = run("wait", job, "--pool", "waits", "--timeout", "0.2")
    assert timed_out.exit_code == 1 and "still pending" in timed_out.output
    with running_worker(pool):
        result = run("wait", job, "--pool", "waits", "--timeout", "15", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["result"] == 42


def test_enqueue_takes_priority_concurrency_key_and_timeout(
        run: Invoke, pools: Pools, redis_client: redis.Redis) -> None:
    pool = pools("opts")
    result = run("enqueue", "opts", "job", "1", "--priority", "7", "--concurrency-key", "user:1",
                 "--timeout", "2.5", "--key", "k")
    assert result.exit_code == 0, result.output
    entries: Any = redis_client.xrange(pool.keys.pending_start)
    (fields,) = [f for _, f in entries]
    assert (fields[b"priority"], fields[b"concurrency_key"], fields[b"timeout_ms"]) == (
        b"7", b"user:1", b"2500")


def test_the_server_commands_show_and_stop_the_embedded_server(tmp_path: Path) -> None:
    env = {"WORKPOOL_DATA_DIR": str(tmp_path / "data"), "WORKPOOL_REDIS_URL": ""}
    runner = CliRunner()
    before = runner.invoke(cli, ["server", "status"], env=env)
    assert before.exit_code == 1 and "not running" in before.output
    started = runner.invoke(cli, ["server", "start"], env=env)
    assert started.exit_code == 0, started.output
    status = runner.invoke(cli, ["server", "status"], env=env)
    assert status.exit_code == 0, status.output
    for label in ("url", "pid", "binary", "version", "data"):
        assert re.search(rf"^{label}\s+\S", status.output, re.M), status.output
    pid = int(re.search(r"^pid\s+(\d+)", status.output, re.M).group(1))  # type: ignore[union-attr]
    stopped = runner.invoke(cli, ["server", "stop"], env=env)
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    eventually(lambda: not pid_alive(pid), 10.0, "the server process exits")
    after = runner.invoke(cli, ["server", "status"], env=env)
    assert after.exit_code == 1 and "not running" in after.output
