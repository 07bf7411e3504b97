"""A short seeded chaos run (every fault kind at least once, jobs and workflows) and a
redis-server crash under `appendfsync always`: the checker must find no violation, and no
acknowledged enqueue lost.

The long run is `python -m workpool.chaos run --duration 600 ...` (README, "Proven under
faults"); this one keeps CI at about a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from workpool.chaos.faults import KINDS
from workpool.chaos.report import Report

SEED = 3


def chaos(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workpool.chaos", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_a_seeded_chaos_run_with_every_fault_kind_violates_no_guarantee(tmp_path: Path) -> None:
    out = chaos("run", "--seed", str(SEED), "--duration", "52", "--faults-per-kind", "1",
                "--rate", "40", "--out", str(tmp_path))
    print(out.stdout, out.stderr[-3000:])  # the table, shown when the test fails
    report = json.loads((tmp_path / "report.json").read_text())["report"]
    assert {k: report["faults"].get(k, 0) for k in KINDS} == dict.fromkeys(KINDS, 1)
    assert report["acked"] > 1000
    # every outcome happened: successes, cancels, and each planned failure
    final_by_id = json.loads((tmp_path / "final.json").read_text())["jobs"]
    final = final_by_id.values()
    assert report["outcomes"].get("succeeded", 0) > 0 and report["outcomes"].get("canceled", 0)
    failures = {f["error_type"] for f in final if f["outcome"] == "failed"}
    assert {"FlakyError", "DoomedError", "PayloadTooLarge", "Timeout"} <= failures
    assert report["entries_rejected"] > 0  # the poison entries were set aside
    # workflows ran among the jobs: steps, sleeps, events received, and some canceled
    assert report["flows"] > 50 and report["sleeps"] > 0 and report["events_received"] > 0
    assert any(f["outcome"] == "canceled" for job, f in final_by_id.items() if "wf" in job)
    violations = {k: len(report[k]) for k in Report().violations()
                  if k != "parallelism_breaches"}
    assert violations == dict.fromkeys(violations, 0)
    assert report["parallelism"]["admitted_breaches"] == 0
    assert out.returncode == 0


def test_a_redis_server_crash_under_appendfsync_always_loses_no_acknowledged_enqueue(
        tmp_path: Path) -> None:
    out = chaos("durability", "--appendfsync", "always", "--crashes", "2", "--out",
                str(tmp_path))
    print(out.stdout, out.stderr[-3000:])
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("always"))
    crashes, acked, lost = int(row[1]), int(row[2]), int(row[4])
    assert (crashes, lost) == (2, 0)
    assert acked > 100
    assert out.returncode == 0
