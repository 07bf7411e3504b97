"""The run's history: every process appends JSON lines (one `os.write` each, so a SIGKILL never
leaves half a line) to its own file in the run directory; the checker reads them all back."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class Recorder:
    """Appends events to `<dir>/<name>.jsonl`; times are wall-clock seconds (one host)."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, event: str, **fields: Any) -> float:
        """Append one event stamped now; returns the stamp."""
        t = time.time()
        line = json.dumps({"e": event, "t": t, "pid": os.getpid(), **fields}) + "\n"
        os.write(self._fd, line.encode())
        return t

    def close(self) -> None:
        os.close(self._fd)


_own: Recorder | None = None


def own() -> Recorder:
    """This process's history file in the run's directory (`$WORKPOOL_CHAOS_DIR`), opened on
    first use (so after a fork)."""
    global _own  # noqa: PLW0603 - one file per process
    if _own is None:
        _own = Recorder(Path(os.environ["WORKPOOL_CHAOS_DIR"]) / "history",
                        f"worker-{os.getpid()}")
    return _own


def load(directory: Path) -> list[Event]:
    """Every event of every process, in time order (a torn last line is skipped)."""
    events: list[Event] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    events.sort(key=lambda e: e["t"])
    return events
