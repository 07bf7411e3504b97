"""Child-process side of the process executor: it imports the pool the operator named on the
command line and runs registered jobs by name. Only bytes and names cross the process boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workpool.current import Running, enter
from workpool.protocol import decode, encode

if TYPE_CHECKING:
    from workpool.pool import Workpool

_pool: Workpool | None = None


def init(pool_spec: str) -> None:
    """Initializer: import `module:attribute` once per child process."""
    global _pool  # noqa: PLW0603 - one pool per child process, set once
    from workpool.cli_support import load_pool  # noqa: PLC0415 - child-only import

    _pool = load_pool(pool_spec)


def run(name: str, args: bytes, kwargs: bytes, enc: str, running: Running) -> bytes:
    """Run the registered sync job `name` on msgpack/JSON-encoded arguments; return its result."""
    if _pool is None:
        msg = "child process was not initialised with a pool"
        raise RuntimeError(msg)
    enter(running)
    spec = _pool.registry.job(name)
    value = spec.fn(*(decode(args, enc) or []), **(decode(kwargs, enc) or {}))
    return encode(value, "json" if enc == "json" else "msgpack")
