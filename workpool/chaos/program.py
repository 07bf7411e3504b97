"""A chaos workflow's program: a list of operations the client draws and the workflow `flow`
runs (flows.py), each one or more journal entries: `["step", kind, args]`,
`["par", [[kind, args], ...]]`, `["sleep", seconds]`, `["wait", timeout]` (for the event
EVENT) and `["child", program]`. The checker numbers the entries as the engine does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

EVENT = "go"  #: the event a workflow's waits wait for


def entries(program: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """Each journal entry the program asks for, numbered as the engine numbers them (from 1,
    in call order): `(n, ["step", kind, args])`, `(n, ["sleep", s])`, `(n, ["wait", t])` or
    `(n, ["child", program])` (a parallel group is its steps, in order)."""
    n = 0
    for op in program:
        for one in ([["step", k, a] for k, a in op[1]] if op[0] == "par" else [op]):
            n += 1
            yield n, one


def step_value(outcome: str, value: Any, error_type: str | None) -> Any:
    """What the program keeps of a step or child: its result, or how it ended."""
    return value if outcome == "succeeded" else f"{outcome} {error_type or ''}"
