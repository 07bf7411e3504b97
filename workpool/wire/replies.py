"""The replies of the transition scripts, each a dataclass whose fields, in order, are the
reply's layout, written once: the scripts get the layouts as `R` (lua_prelude) and build each
reply by name with `reply(R.<kind>, {...})`; Python reads it back by name (`parse`). A field
marked `tail` takes the rest of the reply (ids, or id/code pairs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from workpool.wire.codes import Code
from workpool.wire.protocol import text

R = TypeVar("R")
_TAIL = {"tail": True}


def _optional_ms(value: Any) -> int | None:
    return None if int(value) < 0 else int(value)


def _pairs(rest: Sequence[Any]) -> list[tuple[str, Code]]:
    return [(text(rest[i]), Code(rest[i + 1])) for i in range(0, len(rest), 2)]


#: how a reply value of each declared type is read
_READ: dict[str, Callable[[Any], Any]] = {
    "Code": lambda v: Code(int(v)), "int": int, "str": text, "int | None": _optional_ms,
}
_READ_TAIL: dict[str, Callable[[Sequence[Any]], Any]] = {
    "list[str]": lambda rest: [text(i) for i in rest], "list[tuple[str, Code]]": _pairs,
}


@dataclass(frozen=True)
class LeaseReply:
    """acquireLease: the live token when the caller holds the lease."""

    code: Code
    token: str
    ttl_ms: int


@dataclass(frozen=True)
class CodeReply:
    """releaseLease: OK, or NOT_LEADER."""

    code: Code


@dataclass(frozen=True)
class BatchReply:
    """ingestRequests / applyOutcomes: (job id, code) per entry applied."""

    code: Code
    applied: int
    last_entry_id: str
    outcomes: list[tuple[str, Code]] = field(metadata=_TAIL)

    @property
    def codes(self) -> list[Code]:
        """Just the codes, in entry order."""
        return [c for _, c in self.outcomes]


@dataclass(frozen=True)
class StartReply:
    """startJobs; -1 on the wire (None here) means nothing scheduled."""

    code: Code
    started: int
    running: int
    max_parallelism: int
    next_due_ms: int | None
    next_callback_ms: int | None
    now_ms: int
    next_admission_ms: int | None  #: when a rate limit lets a held job go
    promoted: int  #: due jobs moved towards the ready set by this call
    requests_waiting: int  #: entries in pendingStart not applied yet, as the call ends
    outcomes_waiting: int  #: entries in pendingCompletion not applied yet, as the call ends
    ready: int  #: jobs in the ready set, free to start but for a slot, as the call ends
    rate: str  #: the pool's rate limit setting ("limit/per_ms"), "" for none
    ids: list[str] = field(metadata=_TAIL)


@dataclass(frozen=True)
class ReapReply:
    """reapLost."""

    code: Code
    timed_out: int
    lost: int
    redelivered: int
    #: when the first worker suspected now is lost if it stays silent (Redis ms; -1: none)
    next_lost_ms: int


@dataclass(frozen=True)
class TickReply:
    """enqueueCronTick: whether a job was enqueued for the tick."""

    code: Code
    enqueued: int


@dataclass(frozen=True)
class GrantReply:
    """grantTokens: the shard's slots of a sharded pool's max_parallelism."""

    code: Code
    tokens: int
    permits: int  #: starts allowed by the pool's rate limit until the next ask (-1: no limit)


#: each layout's name in the scripts (`R.<name>`)
LAYOUTS: dict[str, type[Any]] = {"lease": LeaseReply, "code": CodeReply, "batch": BatchReply,
                                  "start": StartReply, "reap": ReapReply, "tick": TickReply,
                                  "grant": GrantReply}


def _head(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("tail")]


def parse(cls: type[R], reply: Sequence[Any]) -> R:
    """Read a script's reply into its dataclass, field by field by name."""
    head = _head(cls)
    values = {f.name: _READ[str(f.type)](v) for f, v in zip(head, reply, strict=False)}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("tail"):
            values[f.name] = _READ_TAIL[str(f.type)](reply[len(head):])
    return cls(**values)


def lua_prelude() -> str:
    """Render the layouts as a Lua `local R = {...}` line for the script loader."""
    body = ", ".join(f"{name}={{" + ", ".join(f"'{f.name}'" for f in _head(cls)) + "}"
                     for name, cls in LAYOUTS.items())
    return f"local R = {{{body}}}\n"


def parse_lease(reply: Sequence[Any]) -> LeaseReply:
    """An acquireLease reply."""
    return parse(LeaseReply, reply)


def parse_grant(reply: Sequence[Any]) -> GrantReply:
    """A grantTokens reply."""
    return parse(GrantReply, reply)


def parse_code(reply: Sequence[Any]) -> CodeReply:
    """A releaseLease reply."""
    return parse(CodeReply, reply)


def parse_batch(reply: Sequence[Any]) -> BatchReply:
    """An ingestRequests or applyOutcomes reply."""
    return parse(BatchReply, reply)


def parse_start(reply: Sequence[Any]) -> StartReply:
    """A startJobs reply."""
    return parse(StartReply, reply)


def parse_reap(reply: Sequence[Any]) -> ReapReply:
    """A reapLost reply."""
    return parse(ReapReply, reply)


def parse_tick(reply: Sequence[Any]) -> TickReply:
    """An enqueueCronTick reply."""
    return parse(TickReply, reply)
