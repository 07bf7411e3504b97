"""Resolving the pool an operator names on the command line (`module:attribute`): the CLI
takes the object found there, the process executor's children take its configuration."""

from __future__ import annotations

import importlib
import sys

from workpool.core.config import PoolConfig
from workpool.errors import ConfigurationError


def load_object(spec: str) -> object:
    """Import `module:attribute` (the current directory is importable) and return it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        msg = f"expected MODULE:POOL (e.g. myapp.tasks:pool), got {spec!r}"
        raise ConfigurationError(msg)
    if "" not in sys.path:
        sys.path.insert(0, "")
    return getattr(importlib.import_module(module_name), attr, None)


def load_config(spec: str) -> PoolConfig:
    """The configuration of the pool `module:attribute` names (a workpool.Workpool)."""
    found = load_object(spec)
    config = getattr(found, "config", None)
    if not isinstance(config, PoolConfig):
        msg = f"{spec!r} is not a workpool.Workpool (found {type(found).__name__})"
        raise ConfigurationError(msg)
    return config
