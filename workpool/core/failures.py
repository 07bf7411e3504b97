"""What a failed attempt reports: the error's type and text, made safely from any exception
(one whose `__str__` or `__repr__` raises included), cut to the size the engine keeps."""

from __future__ import annotations

import asyncio
import concurrent.futures
import traceback
from pathlib import Path

from workpool.wire.limits import MAX_ERROR_BYTES

_TRACEBACK_FRAMES = 5  #: innermost frames kept with the message
#: Frames of the machinery that runs a job, left out of its traceback: the job's own matter.
_MACHINERY = (str(Path(__file__).resolve().parent.parent),  # the workpool package
              *(str(Path(m.__file__).parent) for m in (asyncio, concurrent.futures) if m.__file__))


def _safe(render: object) -> str:
    try:
        return str(render() if callable(render) else render)
    except Exception as exc:  # a broken exception must still be described
        return f"<unprintable: {type(exc).__name__}>"


def cut(text: str, limit: int = MAX_ERROR_BYTES) -> str:
    """`text` within `limit` UTF-8 bytes (the tail is dropped, never a character split)."""
    data = text.encode(errors="replace")
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


def error_type(exc: BaseException) -> str:
    """The exception's class name, as reported in `error_type`."""
    return type(exc).__name__


def message(exc: BaseException) -> str:
    """The exception's text: str(exc), else repr(exc), else a placeholder; never raises."""
    text = _safe(lambda: str(exc))
    if text.startswith("<unprintable"):
        text = _safe(lambda: repr(exc))
    return text


def _frames(exc: BaseException) -> str:
    """The innermost frames of the job's own code in the traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_MACHINERY)]
    return "".join(traceback.format_list(frames[-_TRACEBACK_FRAMES:]))


def describe(exc: BaseException, *, with_traceback: bool = True) -> str:
    """The message, then the innermost frames of the job's own code (workpool's, asyncio's and
    the executor's left out), within MAX_ERROR_BYTES."""
    text = message(exc)
    frames = _safe(lambda: _frames(exc)) if with_traceback else ""
    return cut(f"{text}\n{frames}" if frames else text)
