"""Resolving the pool an operator names on the command line (`module:attribute`)."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from workpool.errors import ConfigurationError

if TYPE_CHECKING:
    from workpool.client.pool import Workpool


def load_pool(spec: str) -> Workpool:
    """Import `module:attribute` (the current directory is importable) and return the pool."""
    from workpool.client.pool import Workpool  # noqa: PLC0415 - keeps this module light for children

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        msg = f"expected MODULE:POOL (e.g. myapp.tasks:pool), got {spec!r}"
        raise ConfigurationError(msg)
    if "" not in sys.path:
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    pool = getattr(module, attr, None)
    if not isinstance(pool, Workpool):
        msg = f"{spec!r} is not a workpool.Workpool (found {type(pool).__name__})"
        raise ConfigurationError(msg)
    return pool
