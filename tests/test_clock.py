"""The engine never reads the wall clock, so a worker (or main loop) whose clock jumps behaves
the same: leases, heartbeats, deadlines and timeouts run on Redis's clock (TIME in the scripts,
key TTLs, stream entry ids) and, in-process, on the monotonic clock, which never jumps (a
paused process is the chaos runner's `pause_worker`). This test is what keeps it so: a wall
clock read anywhere in the package but the chaos harness (whose history is stamped with it
on purpose) fails it, naming the place."""

from __future__ import annotations

import ast
from pathlib import Path

import workpool

PACKAGE = Path(workpool.__file__).parent
#: calls that read the wall clock (module or class attribute, then the function)
WALL_CLOCK = {("time", "time"), ("time", "time_ns"), ("time", "localtime"),
              ("time", "gmtime"), ("time", "ctime"), ("datetime", "now"),
              ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}


def wall_clock_reads(source: str) -> list[int]:
    """Line numbers of wall-clock reads in `source` (`time.time()`, `datetime.now()`, ...,
    also through `from time import time`)."""
    tree = ast.parse(source)
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime")
                for alias in node.names if (node.module, alias.name) in WALL_CLOCK}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name | ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else f.value.attr
            if (owner, f.attr) in WALL_CLOCK:
                lines.append(node.lineno)
        elif isinstance(f, ast.Name) and f.id in imported:
            lines.append(node.lineno)
    return lines


def test_the_scanner_finds_every_way_of_reading_the_wall_clock() -> None:
    source = ("import time, datetime as dt\nfrom time import time_ns as ns\n"
              "a = time.time()\nb = dt.datetime.now()\nc = ns()\nd = time.monotonic()\n")
    assert wall_clock_reads(source) == [3, 4, 5]


def test_no_part_of_the_engine_reads_the_wall_clock() -> None:
    found = {f"{path.relative_to(PACKAGE)}:{line}"
             for path in PACKAGE.rglob("*.py") if "chaos" not in path.parts
             for line in wall_clock_reads(path.read_text())}
    assert not found, f"wall clock read at {sorted(found)}: use Redis's clock or monotonic"
