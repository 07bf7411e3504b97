"""A workflow's journal as stored: entry n is the hash field `j:<n>` of the workflow's hash, one
msgpack array in protocol.JOURNAL_FIELDS order (the scripts write it; see lua/includes/
workflow.lua)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgpack

from workpool.wire.protocol import JOURNAL_FIELDS

PREFIX = "j:"  #: a journal entry's hash field: j:<n>
ACTIVATION = "a:"  #: activation k's hash field: a:<k>, the entries it delivered (msgpack array)


@dataclass(frozen=True)
class Entry:
    """What step n of a workflow is and, once it ended, how (result or error still encoded)."""

    kind: str
    name: str
    state: str  #: pending, done or canceled
    outcome: str = ""  #: succeeded, failed or canceled once it ended
    result: bytes = b""
    error: str = ""
    error_type: str = ""
    attempts: int = 0
    scheduled_at: int = 0  #: ms since the epoch (Redis clock)
    finished_at: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Entry:
        """An entry as a script packed it."""
        values = dict(zip(JOURNAL_FIELDS, msgpack.unpackb(raw, raw=True), strict=False))

        def txt(name: str) -> str:
            v = values.get(name, b"")
            return v.decode(errors="replace") if isinstance(v, bytes) else str(v)

        def num(name: str) -> int:
            v = values.get(name, 0)
            return int(v) if isinstance(v, int | float) or (isinstance(v, bytes) and v) else 0

        result = values.get("result", b"")
        return cls(kind=txt("kind"), name=txt("name"), state=txt("state"), outcome=txt("outcome"),
                   result=result if isinstance(result, bytes) else b"", error=txt("error"),
                   error_type=txt("error_type"), attempts=num("attempts"),
                   scheduled_at=num("scheduled_at"), finished_at=num("finished_at"))


def entries(h: Mapping[str, bytes]) -> dict[int, Entry]:
    """Every journal entry of a workflow hash (text field names), by step number."""
    return {int(k[len(PREFIX):]): Entry.unpack(v) for k, v in h.items()
            if k.startswith(PREFIX) and k[len(PREFIX):].isdigit()}


def activations(h: Mapping[str, bytes]) -> list[list[int]]:
    """The workflow's activations in order: the journal entries each one delivered."""
    count = int(h.get("wf_acts") or 0)
    return [[int(n) for n in msgpack.unpackb(h[f"{ACTIVATION}{k}"])] if f"{ACTIVATION}{k}" in h
            else [] for k in range(1, count + 1)]
