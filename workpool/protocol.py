"""The wire format: stream entry fields and value encodings (see docs/protocol.md).

Values (args, kwargs, context, results) are msgpack by default, or JSON for clients that prefer
it; an entry's `enc` field says which. Nothing is ever pickled, and a job is looked up by its
registered name only.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgpack

from workpool.errors import ConfigurationError, PayloadTooLarge, SerializationError

Encoding = Literal["msgpack", "json"]
Fields = dict[str, str | bytes]

_STREAM_ID = re.compile(r"^\d+-\d+$")


def encode(value: Any, enc: Encoding = "msgpack") -> bytes:
    """Encode one value; SerializationError says which type could not be encoded."""
    try:
        if enc == "json":
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        msg = f"cannot encode {type(value).__name__} as {enc}: {exc}. Pass plain data " \
              "(str, int, float, bool, None, bytes, lists, dicts with str keys)."
        raise SerializationError(msg) from exc


def decode(data: bytes, enc: str) -> Any:
    """Decode one value written by `encode` (or by any client following the protocol)."""
    if not data:
        return None
    if enc == "json":
        return json.loads(data)
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def new_job_id() -> str:
    """A random job id, for an enqueue that must know its id before Redis replies."""
    return uuid.uuid4().hex


def key_job_id(key: str | None) -> str | None:
    """The job id an enqueue names itself: `key:<key>` for an idempotency key; None leaves the
    id to Redis (the entry's own id, unique in the stream and known from XADD's reply)."""
    return None if key is None else "key:" + key


def is_stream_id(job_id: str) -> bool:
    """True for ids of the `<ms>-<seq>` form: an entry without `id` uses its entry id."""
    return bool(_STREAM_ID.match(job_id))


def _ms(seconds: float, name: str) -> int:
    if not math.isfinite(seconds) or seconds < 0:
        msg = f"{name} must be a finite number of seconds >= 0, got {seconds!r}"
        raise ConfigurationError(msg)
    return round(seconds * 1000)


def enqueue_fields(
    *,
    job_id: str | None,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    enc: Encoding,
    max_payload: int,
    max_attempts: int,
    initial_backoff: float,
    base: float,
    timeout: float | None,
    run_at: float | None,
    run_after: float | None,
    on_complete: str | None,
    context: Any,
    priority: int = 0,
    concurrency_key: str | None = None,
) -> Fields:
    """Fields of one enqueue entry; raises before anything is written if they are unusable."""
    fields: Fields = {"op": "enqueue", "name": name, "enc": enc}
    if job_id is not None:  # none: the entry's id is the job's
        fields["id"] = job_id
    payload = 0
    fields["args"] = encode(list(args), enc)
    payload += len(fields["args"])
    if kwargs:
        fields["kwargs"] = encode(dict(kwargs), enc)
        payload += len(fields["kwargs"])
    if on_complete is not None:
        fields["on_complete"] = on_complete
        fields["context"] = encode(context, enc)
        payload += len(fields["context"])
    if payload > max_payload:
        msg = f"job {name!r}: {payload} bytes of arguments and context exceed the pool's " \
              f"max_payload_bytes={max_payload}; store large data elsewhere and pass a reference."
        raise PayloadTooLarge(msg)
    fields["max_attempts"] = str(max_attempts)
    fields["initial_backoff_ms"] = str(_ms(initial_backoff, "initial_backoff"))
    fields["base"] = repr(float(base))
    if timeout is not None:
        fields["timeout_ms"] = str(_ms(timeout, "timeout"))
    if run_at is not None:
        fields["run_at_ms"] = str(_ms(run_at, "run_at"))
    if run_after is not None:
        fields["run_after_ms"] = str(_ms(run_after, "run_after"))
    if priority:
        if not isinstance(priority, int) or not -1000 <= priority <= 1000:
            msg = f"priority must be an integer in [-1000, 1000], got {priority!r}"
            raise ConfigurationError(msg)
        fields["priority"] = str(priority)
    if concurrency_key is not None:
        if not concurrency_key or len(concurrency_key.encode()) > 512:
            msg = f"concurrency_key must be a non-empty string of at most 512 bytes, " \
                  f"got {concurrency_key!r}"
            raise ConfigurationError(msg)
        fields["concurrency_key"] = concurrency_key
    return fields


def text(value: bytes | str | None) -> str:
    """Redis replies are bytes (decode_responses=False keeps payloads binary); fields are UTF-8.

    A foreign client may write invalid UTF-8: it is shown with replacement characters rather than
    crashing whoever reads it.
    """
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def as_text_map(flat: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """A Redis hash or stream entry with text field names and raw byte values."""
    return {text(k): v for k, v in flat.items()}


#: Field order of a pending job's packed value in the `unstarted` hash (lua/includes/unstarted.lua).
UNSTARTED_FIELDS = ("name", "enc", "max_attempts", "backoff_ms", "base", "timeout_ms",
                    "enqueued_at", "due_at", "priority", "seq", "args", "kwargs", "context",
                    "on_complete", "ckey")


def _as_bytes(value: Any) -> bytes:
    """A packed value as Redis would store it in a hash field (numbers as their text)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).encode()


def unstarted_hash(packed: bytes) -> dict[str, bytes]:
    """A pending job's packed value as the hash its first start will write (empty fields left
    out), so it reads like any other job hash."""
    values = msgpack.unpackb(packed, raw=True)
    h = {"state": b"pending", "attempts": b"0"}
    h.update((name, _as_bytes(v)) for name, v in zip(UNSTARTED_FIELDS, values, strict=True)
             if v != b"")
    return h


def job_fields(hash_reply: Mapping[bytes, bytes], packed: bytes | None) -> dict[str, bytes]:
    """A job's fields from the replies of HGETALL job:<id> and HGET unstarted <id>: its hash,
    else (never started) its packed value read as one; {} when neither exists."""
    return as_text_map(hash_reply) or (unstarted_hash(packed) if packed else {})
