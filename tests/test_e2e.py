"""End to end: real `workpool` processes (started as an operator would, from the CLI) against
the session's redis-server, running the jobs of `e2e_app`, which record what they saw.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from e2e_app import (
    CALLBACKS,
    MAX_PARALLELISM,
    PEAK,
    PIDS,
    add,
    cancelled_key,
    crash_once,
    ended_key,
    gate_key,
    gated,
    gated_async,
    hang_sync,
    record,
    started_key,
    work,
)
from e2e_app import pool as e2e_pool
from helpers import CliProcs, eventually, node_of

from workpool import Retry, State, Workpool
from workpool.cli.main import cli
from workpool.server.embedded import pid_alive
from workpool.wire.protocol import text

pytestmark = pytest.mark.topologies  # each test on one server and on a cluster

APP = "e2e_app:pool"
FINISH_TIMEOUT = 30.0


class Procs(CliProcs):
    """CLI processes of the e2e app."""

    def worker(self, worker_id: str, *options: str) -> subprocess.Popen[bytes]:
        """A worker process named `worker_id` (its consumer name and heartbeat key)."""
        return self.spawn(worker_id, "worker", APP, "--worker-id", worker_id,
                          "--concurrency", str(MAX_PARALLELISM), *options)

    def label_of(self, pid: int) -> str:
        return next(label for label, proc in self.started.items() if proc.pid == pid)


@pytest.fixture
def procs(redis_url: str, tmp_path: Path) -> Iterator[Procs]:
    started = Procs(redis_url, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture
def app(redis_url: str) -> Iterator[Workpool]:
    """The e2e pool, pointed at the clean test server."""
    e2e_pool.use_url(redis_url)
    try:
        yield e2e_pool
    finally:
        e2e_pool.close()


def _live(r: redis.Redis, pool: Workpool, *worker_ids: str) -> None:
    """Wait until every named worker beats its heartbeat, so each is reading from the pool."""
    eventually(lambda: all(r.exists(pool.keys.heartbeat(w)) for w in worker_ids), 20.0,
               f"heartbeats of {worker_ids}")


def _all_finished(pool: Workpool, jobs: int, callbacks: int) -> None:
    """Wait until `jobs` jobs are terminal and `callbacks` on_complete deliveries closed."""
    def finished() -> bool:
        c = pool.stats().counters
        return (c.get("succeeded", 0) + c.get("failed", 0) + c.get("canceled", 0) >= jobs
                and c.get("callbacks_delivered", 0) >= callbacks)

    eventually(finished, FINISH_TIMEOUT, f"{jobs} jobs terminal, {callbacks} callbacks closed")


def _callback_runs(r: redis.Redis) -> Counter[str]:
    return Counter(text(x) for x in r.lrange(CALLBACKS, 0, -1))


def _pids(r: redis.Redis, key: str) -> list[int]:
    """The pids a job recorded in the list `key`, in order."""
    return [int(p) for p in r.lrange(key, 0, -1)]


def test_two_hundred_jobs_on_two_worker_processes_all_succeed_within_max_parallelism(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    workers = [procs.worker("w-a"), procs.worker("w-b")]
    _live(redis_client, app, "w-a", "w-b")
    fail_times = [2 if i % 25 == 0 else 1 if i % 10 == 0 else 0 for i in range(200)]
    ids = app.enqueue_many(work, [(i, n) for i, n in enumerate(fail_times)], on_complete=record)

    _all_finished(app, len(ids), len(ids))

    for i, job_id in enumerate(ids):
        st = app.status(job_id)
        assert (st.state, st.outcome, st.result) == (State.DONE, "succeeded", 2 * i)
        assert st.attempts == fail_times[i] + 1
    assert _callback_runs(redis_client) == Counter(ids)  # each handler ran exactly once
    peak = int(redis_client.get(PEAK) or 0)
    assert 1 < peak <= MAX_PARALLELISM  # measured by the jobs themselves
    assert {int(p) for p in redis_client.smembers(PIDS)} == {w.pid for w in workers}
    counters = app.stats().counters
    assert (counters["succeeded"], counters["retried"]) == (200, sum(fail_times))
    assert counters.get("stale_completions", 0) == 0


def test_a_job_whose_worker_is_killed_mid_attempt_is_retried_by_another_worker_and_finishes(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    procs.worker("w-a")
    procs.worker("w-b")
    _live(redis_client, app, "w-a", "w-b")
    job_id = app.enqueue(gated, "b")
    first = eventually(lambda: _pids(redis_client, started_key("b")), what="1st start")[0]
    victim = procs.started[procs.label_of(first)]
    victim.kill()  # SIGKILL: no outcome, no goodbye; its heartbeat expires
    victim.wait()

    second = eventually(lambda: _pids(redis_client, started_key("b"))[1:], FINISH_TIMEOUT,
                        "a second attempt")[0]
    assert second != first
    st = app.status(job_id)
    assert (st.state, st.attempts, st.error_type) == (State.RUNNING, 2, "WorkerLost")
    redis_client.set(gate_key("b"), 1)
    st = app.wait(job_id, timeout=FINISH_TIMEOUT)

    assert (st.state, st.outcome, st.result) == (State.DONE, "succeeded", "released")
    assert (st.attempts, st.error_type) == (2, "WorkerLost")
    assert _pids(redis_client, ended_key("b")) == [second]


def test_a_worker_paused_past_its_heartbeat_cancels_the_attempt_it_lost_when_it_wakes_up(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    procs.worker("w-a")
    procs.worker("w-b")
    _live(redis_client, app, "w-a", "w-b")
    job_id = app.enqueue(gated_async, "p")
    first = eventually(lambda: _pids(redis_client, started_key("p")), what="1st start")[0]
    os.kill(first, signal.SIGSTOP)  # frozen: its heartbeat expires, its attempt is given away
    try:
        second = eventually(lambda: _pids(redis_client, started_key("p"))[1:], FINISH_TIMEOUT,
                            "a second attempt")[0]
    finally:
        os.kill(first, signal.SIGCONT)
    assert eventually(lambda: _pids(redis_client, cancelled_key("p")), FINISH_TIMEOUT,
                      "the woken worker cancels its stale attempt") == [first]
    redis_client.set(gate_key("p"), 1)
    st = app.wait(job_id, timeout=FINISH_TIMEOUT)
    assert (st.outcome, st.attempts, st.error_type) == ("succeeded", 2, "WorkerLost")
    assert _pids(redis_client, ended_key("p")) == [second]


def test_a_worker_paused_while_an_entry_reached_it_does_not_begin_the_attempt_it_lost(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    procs.spawn("loop", "loop", APP)
    paused = procs.worker("w-a", "--no-loop")
    _live(redis_client, app, "w-a")

    def stopped_in_its_read() -> bool:  # so the entry is delivered to it while it is stopped
        os.kill(paused.pid, signal.SIGSTOP)
        if any(c["cmd"] == "xreadgroup" and "b" in c["flags"]
               for c in node_of(redis_client, app.keys.prefix).client_list()):
            return True
        os.kill(paused.pid, signal.SIGCONT)
        return False

    eventually(stopped_in_its_read, FINISH_TIMEOUT, "w-a stopped while blocked in XREADGROUP")
    try:
        job_id = app.enqueue(gated_async, "z")
        eventually(lambda: app.status(job_id).error_type == "WorkerLost", FINISH_TIMEOUT,
                   "the paused worker's attempt given away")
        procs.worker("w-b", "--no-loop")
        redis_client.set(gate_key("z"), 1)
        st = app.wait(job_id, timeout=FINISH_TIMEOUT)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    assert eventually(lambda: "skipping an attempt given away" in procs.log("w-a"),
                      FINISH_TIMEOUT, "the woken worker skips the entry it read")
    assert (st.outcome, st.attempts) == ("succeeded", 2)
    assert _pids(redis_client, started_key("z")) == [procs.started["w-b"].pid]


def test_killing_the_main_loop_holder_hands_the_lease_over_and_no_job_is_lost_or_doubled(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    procs.worker("w-a")
    procs.worker("w-b")
    _live(redis_client, app, "w-a", "w-b")
    ids = app.enqueue_many(work, [(i, 0, 20) for i in range(150)], on_complete=record)
    eventually(lambda: app.stats().counters.get("succeeded", 0) >= 30, FINISH_TIMEOUT,
               "some jobs done")
    epoch, holder = text(redis_client.get(app.keys.lease)).split(":", 1)
    survivor = "w-b" if holder == "w-a" else "w-a"
    procs.started[holder].kill()
    procs.started[holder].wait()

    def lease_of_survivor() -> str:
        lease = text(redis_client.get(app.keys.lease))
        return lease if lease.endswith(":" + survivor) else ""

    new_epoch = lease_of_survivor() or eventually(lease_of_survivor, 5 * app.config.lease_ttl,
                                                  f"{survivor} takes the lease")
    assert int(new_epoch.split(":")[0]) > int(epoch)
    _all_finished(app, len(ids), len(ids))

    for i, job_id in enumerate(ids):
        st = app.status(job_id)
        assert (st.state, st.outcome, st.result) == (State.DONE, "succeeded", 2 * i)
        assert st.attempts == 1 or st.error_type == "WorkerLost"
    counters = app.stats().counters
    assert counters["succeeded"] == len(ids)  # one terminal transition per job
    assert counters["callbacks_delivered"] == len(ids)  # one delivery closed per job
    runs = _callback_runs(redis_client)
    assert set(runs) == set(ids)
    # A handler runs again only when the killed worker held its delivery (at least once).
    assert sum(runs.values()) - len(ids) <= counters.get("callbacks_redelivered", 0)
    assert redis_client.zcard(app.keys.running) == redis_client.zcard(app.keys.due) == 0


def test_sigterm_lets_the_running_job_finish_before_the_worker_exits_with_status_0(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    procs.spawn("loop", "loop", APP)  # a standalone main loop applies the worker's outcome
    worker = procs.worker("w-term", "--no-loop", "--grace", "30")
    job_id = app.enqueue(gated, "d")
    eventually(lambda: _pids(redis_client, started_key("d")), FINISH_TIMEOUT, "job started")

    worker.send_signal(signal.SIGTERM)
    eventually(lambda: "waiting for running attempts" in procs.log("w-term"), 10.0,
               "the worker to begin its graceful stop")
    assert worker.poll() is None
    redis_client.set(gate_key("d"), 1)
    assert worker.wait(timeout=FINISH_TIMEOUT) == 0

    assert _pids(redis_client, ended_key("d")) == [worker.pid]
    st = app.wait(job_id, timeout=FINISH_TIMEOUT)
    assert (st.state, st.outcome, st.attempts, st.error) == (State.DONE, "succeeded", 1, None)
    assert not redis_client.exists(app.keys.heartbeat("w-term"))


def test_a_job_still_running_after_the_grace_period_is_left_to_the_reaper_and_the_worker_exits(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    procs.spawn("loop", "loop", APP)
    worker = procs.worker("w-grace", "--no-loop", "--grace", "0.2")
    job_id = app.enqueue(gated, "g")  # its gate is never opened
    eventually(lambda: _pids(redis_client, started_key("g")), FINISH_TIMEOUT, "job started")

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=FINISH_TIMEOUT) == 0
    assert "exiting without the attempts still running" in procs.log("w-grace")
    st = eventually(lambda: (s := app.status(job_id)).attempts == 2 and s, FINISH_TIMEOUT,
                    "the abandoned attempt reaped and the job started again")
    assert (st.state, st.error_type) == (State.RUNNING, "WorkerLost")


def test_the_cli_enqueues_reports_status_cancels_and_shows_stats(
    procs: Procs, app: Workpool, redis_client: redis.Redis, redis_url: str,
) -> None:
    procs.worker("w-cli", "--executor", "process", "--concurrency", "2")
    runner = CliRunner()

    def cli_ok(*args: str, env: dict[str, str] | None = None) -> str:
        result = runner.invoke(cli, ["--redis-url", redis_url, *args], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    def status_of(job_id: str) -> dict[str, object]:
        st: dict[str, object] = json.loads(cli_ok("status", job_id, "--pool", "e2e", "--json"))
        return st

    def terminal(job_id: str) -> dict[str, object]:
        return eventually(lambda: (st := status_of(job_id))["state"] != "pending"
                          and st["state"] != "running" and st, FINISH_TIMEOUT, job_id)

    add_id = cli_ok("enqueue", APP, "add", "2", "3").strip()
    st = terminal(add_id)
    assert (st["state"], st["outcome"], st["result"], st["attempts"]) == ("done", "succeeded", 5, 1)
    text = cli_ok("status", add_id, env={"WORKPOOL_POOL": "e2e"})
    assert re.search(r"^state\s+done$", text, re.M) and re.search(r"^result\s+5$", text, re.M)

    echo_id = cli_ok("enqueue", "e2e", "echo", "hello", '{"a": [1, 2]}', "3", "--key", "k1")
    assert echo_id.strip() == "key:k1"
    assert terminal("key:k1")["result"] == ["hello", {"a": [1, 2]}, 3]

    later = cli_ok("enqueue", "e2e", "add", "1", "2", "--run-after", "3600").strip()
    assert status_of(later)["state"] == "pending"
    canceled = cli_ok("cancel", later, "--pool", "e2e")
    assert f"{later}: canceled: it had not started" in canceled
    assert terminal(later)["state"] == "canceled"

    bad_json = runner.invoke(cli, ["--redis-url", redis_url, "enqueue", "e2e", "echo", "x y",
                                   "--json-args"])
    assert bad_json.exit_code == 2 and "is not JSON" in bad_json.output
    unknown = runner.invoke(cli, ["--redis-url", redis_url, "enqueue", APP, "nosuch"])
    assert unknown.exit_code == 1 and "no job named 'nosuch'" in unknown.output
    missing = runner.invoke(cli, ["--redis-url", redis_url, "status", "nope", "--pool", "e2e"])
    assert missing.exit_code == 1 and "no job 'nope'" in missing.output

    redis_client.xadd(app.keys.pending_start, {"op": "enqueue", "id": "nameless",
                                               "args": b"\x92\x01\xc4\x01\xff"})
    eventually(lambda: app.stats().counters.get("rejected"), FINISH_TIMEOUT, "entry rejected")
    stats = json.loads(cli_ok("stats", "e2e", "--json"))
    assert {k: stats["counters"].get(k) for k in ("succeeded", "canceled", "rejected")} == {
        "succeeded": 2, "canceled": 1, "rejected": 1}
    assert (stats["max_parallelism"], stats["workers"], stats["running"]) == (MAX_PARALLELISM, 1, 0)
    assert stats["leader"].endswith(":w-cli")
    text = cli_ok("stats", "e2e")
    assert re.search(rf"^running\s+0 of max_parallelism {MAX_PARALLELISM}$", text, re.M)
    assert re.search(r"^workers\s+1 live$", text, re.M)
    assert "field name must be a name" in text


def test_a_child_process_that_dies_or_hangs_fails_only_its_own_attempt(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    """Process executor: a job calling os._exit fails that attempt alone (ChildProcessLost,
    retried per its policy), a job past its timeout has its child killed, and the worker goes on
    at full capacity; a child's death is no signal to the worker (it does not stop)."""
    worker = procs.worker("w-proc", "--executor", "process", "--concurrency", "2")
    _live(redis_client, app, "w-proc")
    crashing = app.enqueue_many(crash_once, [(i,) for i in range(3)])
    hung = app.enqueue(hang_sync, "e2e:hung", retry=Retry(max_attempts=1))
    for i, job_id in enumerate(crashing):
        st = app.wait(job_id, timeout=FINISH_TIMEOUT)
        assert (st.outcome, st.result, st.attempts, st.error_type) == (
            "succeeded", i, 2, "ChildProcessLost")
    st = app.wait(hung, timeout=FINISH_TIMEOUT)
    assert (st.outcome, st.error_type) == ("failed", "Timeout")
    (hung_pid,) = _pids(redis_client, "e2e:hung")
    eventually(lambda: not pid_alive(hung_pid), FINISH_TIMEOUT, "the hung job's child is killed")
    after = app.enqueue_many(add, [(i, i) for i in range(10)])
    assert [app.wait(j, timeout=FINISH_TIMEOUT).result for j in after] == [2 * i
                                                                          for i in range(10)]
    assert app.stats().threads_stuck == 0
    assert worker.poll() is None
    assert "stopping gracefully" not in procs.log("w-proc")


def test_a_worker_whose_threads_are_all_stuck_restarts_its_own_process(
    procs: Procs, app: Workpool, redis_client: redis.Redis,
) -> None:
    """Both threads of a concurrency-2 worker stuck in sync jobs past their timeout: it writes
    their Timeout outcomes, then replaces its own process (same pid, same arguments), whose
    fresh threads run the next job."""
    worker = procs.worker("w-stuck", "--concurrency", "2")
    _live(redis_client, app, "w-stuck")
    hung = [app.enqueue(hang_sync, f"e2e:stuck:{i}", retry=Retry(max_attempts=1))
            for i in range(2)]
    assert [app.wait(j, timeout=FINISH_TIMEOUT).error_type for j in hung] == ["Timeout"] * 2
    eventually(lambda: procs.log("w-stuck").count("worker started") == 2, FINISH_TIMEOUT,
               "the worker started again")
    assert "restarting the worker process" in procs.log("w-stuck")
    job = app.enqueue(add, 1, 2)
    assert app.wait(job, timeout=FINISH_TIMEOUT).result == 3
    assert worker.poll() is None  # the same process, replaced in place


def test_the_demo_runs_its_jobs_on_worker_processes_and_prints_the_final_counts(
    procs: Procs, redis_client: redis.Redis,
) -> None:
    demo = procs.spawn("demo", "demo", "--jobs", "60", "--workers", "2")
    assert demo.wait(timeout=90) == 0, procs.log("demo")
    out = procs.log("demo")
    assert re.search(r"^final: done 59 \(succeeded 59, failed 0\)  canceled 1  pending 0", out,
                     re.M), out
    assert "workers stopped, exit status 0, 0" in out
    assert redis_client.keys("{wp:demo-*") == []  # the run's pool leaves nothing behind
