"""Smoke runs of every benchmark at a tiny size: the code runs and prints its table.

Timings never decide anything here; the figures are in README (Performance) and come from the
full-size runs of the same commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(script: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_the_throughput_benchmark_measures_enqueue_end_to_end_and_the_main_loop() -> None:
    out = bench("throughput.py", "--jobs", "300", "--single", "50", "--workers", "1",
                "--chunk", "100")
    for line in ("enqueue one call each", "enqueue_many x100", "end to end, 1 worker",
                 "main loop alone: ingest"):
        assert line in out, out


def test_the_latency_benchmark_measures_idle_and_loaded_latency() -> None:
    out = bench("latency.py", "--single", "20", "--seconds", "1", "--capacity-jobs", "300")
    assert "one at a time, idle" in out and "steady load" in out, out


def test_the_scale_benchmark_grows_the_backlog_and_reads_the_slowlog() -> None:
    out = bench("scale.py", "--backlogs", "100,300", "--batch", "200", "--delayed", "100",
                "--finished", "100")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("100", "300"))]
    assert [row[0] for row in rows] == ["100", "300"], out
    assert "slowest script call" in out


def test_the_admission_benchmark_times_each_script_as_the_backlog_grows() -> None:
    out = bench("admission.py", "--jobs", "2000", "--keys", "100", "--rounds", "2")
    assert "startJobs" in out, out


def test_the_limit_benchmark_measures_the_redis_ceiling_and_commands_per_job() -> None:
    out = bench("limit.py", "--jobs", "200", "--seconds", "0.2")
    assert "redis ceiling: one client" in out and "Redis commands" in out, out
    assert all(f"  {script} " in out for script in ("ingestRequests", "startJobs",
                                                    "applyOutcomes")), out


def test_the_workflows_benchmark_runs_a_long_workflow_and_many_short_ones() -> None:
    out = bench("workflows.py", "--steps", "20", "--workflows", "30", "--fan", "40",
                "--workers", "1", "--rounds", "2")
    for line in ("jobs chained by wait()", "one workflow", "90 jobs", "30 3-step workflows",
                 "one workflow of 40", "median"):
        assert line in out, out
    assert out.count("30 3-step workflows") == 2, out  # one line a round


@pytest.mark.parametrize("queues", ["workpool,workpool-sync,huey"])
def test_the_peers_benchmark_runs_workpool_and_a_peer_side_by_side(queues: str,
                                                                   tmp_path: Path) -> None:
    # 2,000 jobs: the CPU window (10% to 90% of them) must span many of the kernel's 10 ms CPU
    # ticks, or a fast queue's workers read 0 us/job (200 ran in some 25 ms)
    out = bench("peers.py", "--peers", queues, "--n", "2000", "--rounds", "1", "--latency-n",
                "10", "--venv", str(tmp_path / "venv"), timeout=600)
    rows = [line.split() for line in out.splitlines()[2:5]]
    assert [row[0] for row in rows] == queues.split(","), out
    assert "workers us/job all us/job" in out.splitlines()[1], out
    assert all(0 < float(row[4]) < float(row[5]) for row in rows), out  # Redis adds to workers
    assert "workpool-sync against the fastest peer (huey)" in out, out
