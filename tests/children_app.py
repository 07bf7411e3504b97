"""The pool whose sync jobs tests/test_children.py runs in child processes (`children_app:pool`).

Jobs that must be watched from outside write their pid to a file the test names, then wait for
another file (the test's "go"), so the test decides when they may finish.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, NoReturn

from workpool import NonRetryableError, Workpool, current

pool = Workpool("children")
GATE_TIMEOUT = 30.0  #: a gated job gives up after this long, should the test never open it


class Unprintable(Exception):
    """An exception whose text cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no text")

    __repr__ = __str__


@pool.job()
def add(a: int, b: int) -> int:
    """The sum, to show a result comes back."""
    return a + b


@pool.job()
def pid() -> int:
    """The child's pid, to tell children apart."""
    return os.getpid()


@pool.job()
def fail(text: str) -> NoReturn:
    """An ordinary failure."""
    raise ValueError(text)


@pool.job()
def final() -> NoReturn:
    """A failure that must not be retried."""
    raise NonRetryableError("give up")


@pool.job()
def raise_base(kind: str) -> NoReturn:
    """SystemExit or KeyboardInterrupt raised by the job itself."""
    raise SystemExit(2) if kind == "exit" else KeyboardInterrupt


@pool.job()
def unprintable() -> NoReturn:
    """An exception whose __str__ and __repr__ raise."""
    raise Unprintable


@pool.job()
def unencodable() -> object:
    """A result msgpack cannot encode."""
    return object()


@pool.job()
def die(code: int) -> NoReturn:
    """Leave the child process at once, as a crashing extension would."""
    os._exit(code)


@pool.job()
def whoami() -> dict[str, Any]:
    """What workpool.current() says inside the child."""
    return dataclasses.asdict(current())


@pool.job()
def gate(pid_path: str, go_path: str) -> str:
    """Write the child's pid to `pid_path`, then wait until `go_path` exists."""
    Path(pid_path).write_text(str(os.getpid()))
    deadline = time.monotonic() + GATE_TIMEOUT
    while not Path(go_path).exists():
        if time.monotonic() > deadline:
            msg = f"{go_path} did not appear within {GATE_TIMEOUT} s"
            raise TimeoutError(msg)
        time.sleep(0.01)  # poll interval for the test's go file
    return "released"
