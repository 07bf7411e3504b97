"""structlog set-up: key=value console lines for people, one JSON object per line for machines.

Every line carries `pool`, and `job`, `attempt` and `transition` where they apply.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]


def configure_logging(fmt: LogFormat = "console", level: str = "INFO") -> None:
    """Route structlog to stderr in the chosen format at the chosen level."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with context (pool=..., worker=...) bound to every line."""
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**bound)
    return log
