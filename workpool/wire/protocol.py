"""The wire format: stream entry fields and value encodings (see docs/protocol.md).

Values (args, kwargs, context, results) are msgpack by default, or JSON for clients that prefer
it; an entry's `enc` field says which. Nothing is ever pickled, and a job is looked up by its
registered name only.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgpack

from workpool.core import validate
from workpool.errors import PayloadTooLarge, SerializationError
from workpool.wire import limits

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


def decode_arguments(args: bytes, kwargs: bytes, enc: str) -> tuple[list[Any], dict[str, Any]]:
    """A job's positional and keyword arguments as a worker calls it. SerializationError (the
    job cannot run, however often it is tried) when they do not decode to a list and a map with
    str keys: msgpack nested deeper than the decoder goes, say, which the engine's check lets
    through."""
    try:
        positional, named = decode(args, enc), decode(kwargs, enc)
    except Exception as exc:  # any decoder failure makes the payload unusable
        msg = f"the job's args or kwargs cannot be decoded as {enc} ({type(exc).__name__}: " \
              f"{exc}); the job is ended as unusable"
        raise SerializationError(msg) from exc
    positional = [] if positional is None else positional
    named = {} if named is None else named
    if not isinstance(positional, list) or not isinstance(named, dict) or \
            not all(isinstance(k, str) for k in named):
        msg = "the job's args must decode to an array and its kwargs to a map with string " \
              "keys; the job is ended as unusable"
        raise SerializationError(msg)
    return positional, named


def new_job_id() -> str:
    """A random job id, for an enqueue that must know its id before Redis replies."""
    return uuid.uuid4().hex


def key_job_id(key: Any, most: int = limits.MAX_KEY_BYTES) -> str | None:
    """The job id an enqueue names itself: `key:<key>` for an idempotency key of at most
    `most` bytes; None leaves the id to Redis (the entry's own id, unique in the stream and
    known from XADD's reply)."""
    if key is None:
        return None
    return limits.KEY_PREFIX + validate.string("key", key, most)


def check_job_id(job_id: Any) -> str:
    """A job id a caller names (status, cancel, wait): one that could exist."""
    return validate.string("job_id", job_id, limits.MAX_ID_BYTES)


def is_stream_id(job_id: str) -> bool:
    """True for ids of the `<ms>-<seq>` form: an entry without `id` uses its entry id."""
    return bool(_STREAM_ID.match(job_id))


def check_kwargs(kwargs: Any) -> dict[str, Any]:
    """Keyword arguments: a mapping with str keys (a worker calls fn(**kwargs))."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        validate.fail("kwargs", "a mapping with str keys", kwargs)
    return dict(kwargs)


def enqueue_fields(options: Fields, args: Sequence[Any], kwargs: Mapping[str, Any],
                   max_payload: int) -> Fields:
    """One enqueue entry: `options` (options.entry_fields) with these arguments encoded;
    PayloadTooLarge before anything is written if they are too large."""
    enc: Encoding = "json" if options["enc"] == "json" else "msgpack"
    fields = dict(options)
    fields["args"] = encode(list(args), enc)
    payload = len(fields["args"]) + len(options.get("context", b""))
    if kwargs:
        fields["kwargs"] = encode(dict(kwargs), enc)
        payload += len(fields["kwargs"])
    if payload > max_payload:
        msg = f"job {options['name']!r}: {payload} bytes of arguments and context exceed the " \
              f"pool's max_payload_bytes={max_payload}; store large data elsewhere and pass a " \
              "reference."
        raise PayloadTooLarge(msg)
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


#: Every field an enqueue entry may carry (docs/protocol.md's enqueue table lists exactly these,
#: and an enqueue with every option set writes exactly these: tests/test_written_once.py).
ENQUEUE_FIELDS = ("op", "id", "name", "enc", "args", "kwargs", "on_complete", "context",
                  "max_attempts", "initial_backoff_ms", "base", "max_backoff_ms", "timeout_ms",
                  "run_at_ms", "run_after_ms", "priority", "concurrency_key")

#: The trace context an enqueue or workflow start entry may carry besides (W3C Trace Context:
#: docs/protocol.md); the job's spec keeps it, so its attempts continue that trace.
TRACE_FIELDS = ("traceparent", "tracestate")

#: The field an enqueue made by `run_again` carries besides: the id of the finished job it runs
#: again (kept in the new job's spec; the old job stays as it ended).
RERUN_FIELD = "rerun_of"

#: Every field a workflow start entry (`op=workflow`) may carry.
WORKFLOW_FIELDS = ("op", "id", "name", "enc", "args", "kwargs", "on_complete", "context",
                   "max_steps", "timeout_ms")

#: Field order of a job's spec: what was asked for at enqueue, packed once as one msgpack array
#: and never rewritten (the `unstarted` hash holds it while the job is pending, its hash's
#: `spec` field after). The scripts get it as `SPEC` (lua_prelude); lua/includes/spec.lua packs
#: by it.
SPEC_FIELDS = ("name", "enc", "max_attempts", "backoff_ms", "base", "timeout_ms",
               "enqueued_at", "due_at", "priority", "seq", "args", "kwargs", "context",
               "on_complete", "ckey", "max_backoff_ms", "wf", "wf_n", "traceparent",
               "tracestate", "rerun_of")

#: Field order of a workflow's journal entry (hash field `j:<n>` of the workflow's hash), one
#: msgpack array: what step n is, how it ended, and when. Scripts get it as `JOURNAL` and `J`.
JOURNAL_FIELDS = ("kind", "name", "state", "outcome", "result", "error", "error_type",
                  "attempts", "scheduled_at", "finished_at")

#: Field order of an attempt's record (hash field `t:<n>` of a job's hash, one msgpack array,
#: the last L.ATTEMPTS_KEPT attempts kept): when it started and ended, the worker that ran it,
#: how it ended, and its error. Scripts get it as `ATTEMPT` and `AT`.
ATTEMPT_FIELDS = ("started_at", "finished_at", "worker", "outcome", "error_type", "error")
ATTEMPT_PREFIX = "t:"  #: an attempt's record is the job hash's field `t:<attempt>`


def lua_prelude() -> str:
    """Render the spec's and the journal entry's field orders for the loader: `SPEC` and
    `JOURNAL` (the names in order), `S` and `J` (each name's position, so a script reads an
    unpacked spec as `spec[S.name]`)."""
    return "".join(
        f"local {names} = {{" + ", ".join(f"'{name}'" for name in table) + "}\n"
        + f"local {at} = {{" + ", ".join(f"{name} = {i}" for i, name in enumerate(table, 1))
        + "}\n" for names, at, table in (("SPEC", "S", SPEC_FIELDS),
                                          ("JOURNAL", "J", JOURNAL_FIELDS),
                                          ("ATTEMPT", "AT", ATTEMPT_FIELDS)))


def _as_bytes(value: Any) -> bytes:
    """A packed value as Redis would store it in a hash field (numbers as their text)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).encode()


def spec_fields(packed: bytes) -> dict[str, bytes]:
    """A job's packed spec as hash fields (empty ones left out), so a job reads as one hash."""
    values = msgpack.unpackb(packed, raw=True)
    return {name: _as_bytes(v) for name, v in zip(SPEC_FIELDS, values, strict=False)
            if v != b""}  # a value packed by an older version has fewer fields


def with_spec(flat: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """A job hash or dispatch entry by text field names, a packed `spec` among them read as
    fields beneath their own (one written before specs were packed holds them flat)."""
    h = as_text_map(flat)
    spec = h.pop("spec", None)
    return {**spec_fields(spec), **h} if spec else h


def job_fields(hash_reply: Mapping[bytes, bytes], packed: bytes | None) -> dict[str, bytes]:
    """A job's fields from the replies of HGETALL job:<id> and HGET unstarted <id>: its hash
    (with_spec), or, never started, its packed spec as a pending job; {} when neither exists."""
    if hash_reply:
        return with_spec(hash_reply)
    return {"state": b"pending", "attempts": b"0", **spec_fields(packed)} if packed else {}
