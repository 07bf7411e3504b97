"""Child-process side of the process executor (see worker/children.py): a spawned interpreter
that imports the pool the operator named and runs its sync jobs by name, one at a time.

Only bytes cross the pipe, never pickles: each request and reply is a msgpack list of plain
values. A request is [name, args, kwargs, enc, [Running fields]]; a reply is ["ok", result] or
["err", error_type, message, retryable]. The first message a child sends says whether the pool
loaded (["ok", b""]) or not (an "err" reply, after which the child exits).
"""

from __future__ import annotations

import dataclasses
import signal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import msgpack

from workpool.core.failures import describe, error_type
from workpool.core.locate import load_config
from workpool.current import Running, enter
from workpool.errors import FINAL_ERRORS
from workpool.wire.protocol import decode_arguments, encode

if TYPE_CHECKING:
    from workpool.core.config import PoolConfig


def pack(message: list[Any]) -> bytes:
    """One request or reply as it goes over the pipe."""
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> list[Any]:
    """A request or reply read from the pipe."""
    return msgpack.unpackb(data, raw=False)  # type: ignore[no-any-return]


def request(name: str, args: bytes, kwargs: bytes, enc: str, running: Running) -> bytes:
    """The request to run job `name` on encoded arguments as `running`."""
    return pack([name, args, kwargs, enc, list(dataclasses.astuple(running))])


def main(conn: Connection, pool_spec: str) -> None:
    """Entry point of a spawned child: load the pool, report it, then serve requests until the
    parent closes its end of the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C hits the group; the parent decides
    try:
        pool = load_config(pool_spec)
    except BaseException as exc:  # an import may raise anything, SystemExit included
        conn.send_bytes(_failure(exc))
        return
    conn.send_bytes(pack(["ok", b""]))
    while True:
        try:
            conn.send_bytes(serve(pool, conn.recv_bytes()))
        except (EOFError, OSError):  # the parent closed its end, or is gone
            return


def serve(pool: PoolConfig, data: bytes) -> bytes:
    """Run one request; any exception the job raises becomes an "err" reply."""
    name, args, kwargs, enc, fields = unpack(data)
    enter(Running(*fields))
    try:
        fn = pool.registry.job(name).fn
        positional, named = decode_arguments(args, kwargs, enc)
        value = fn(*positional, **named)
        return pack(["ok", encode(value, "json" if enc == "json" else "msgpack")])
    except BaseException as exc:  # the job may raise SystemExit or KeyboardInterrupt too
        return _failure(exc)


def _failure(exc: BaseException) -> bytes:
    final = isinstance(exc, FINAL_ERRORS)  # its message says it all: no traceback
    return pack(["err", error_type(exc), describe(exc, with_traceback=not final), not final])
