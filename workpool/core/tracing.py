"""OpenTelemetry traces, when the application has it installed (`pip install 'workpool[otel]'`)
and configured: an enqueue (or a workflow's start) is a PRODUCER span whose context travels in
the entry's `traceparent`/`tracestate` fields, and each attempt runs in a CONSUMER span, the
producer's child, named and tagged by the messaging conventions. Without OpenTelemetry nothing
here imports it, and no entry changes; with it but no SDK configured, its spans record nothing
and no context is sent either."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any

from workpool.wire.protocol import TRACE_FIELDS, Fields

INSTALLED = find_spec("opentelemetry") is not None  #: the API is importable (nothing imported)
SYSTEM = "workpool"  #: messaging.system
_TRACER = "workpool"


def _api() -> tuple[Any, Any]:
    """The OpenTelemetry API modules (trace, propagate), imported on first use."""
    import opentelemetry.propagate  # noqa: PLC0415 - only when installed
    import opentelemetry.trace  # noqa: PLC0415

    return opentelemetry.trace, opentelemetry.propagate


@contextmanager
def producing(pool: str, entries: Sequence[Fields],
              operation: str = "send") -> Iterator[Callable[[Sequence[str]], None]]:
    """A PRODUCER span around sending `entries` to pool `pool` (their trace fields set to its
    context); yields a function that records the ids the send returned. A no-op without
    OpenTelemetry, or when its span is not recording."""
    if not INSTALLED:
        yield _ignore
        return
    trace, propagate = _api()
    tracer = trace.get_tracer(_TRACER)
    attributes: dict[str, Any] = {"messaging.system": SYSTEM,
                                  "messaging.destination.name": pool,
                                  "messaging.operation.type": operation,
                                  "messaging.operation.name": operation}
    if len(entries) > 1:
        attributes["messaging.batch.message_count"] = len(entries)
    with tracer.start_as_current_span(f"{operation} {pool}", kind=trace.SpanKind.PRODUCER,
                                      attributes=attributes) as span:
        if span.is_recording():
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            for entry in entries:
                entry.update({k: carrier[k] for k in TRACE_FIELDS if carrier.get(k)})

        def sent(ids: Sequence[str]) -> None:
            if len(ids) == 1:
                span.set_attribute("messaging.message.id", ids[0])

        yield sent


def _ignore(ids: Sequence[str]) -> None:
    """What `producing` yields without OpenTelemetry."""


@contextmanager
def consuming(pool: str, job_id: str, attempt: int, name: str,
              f: Mapping[str, bytes]) -> Iterator[Callable[[str | None, str | None], None]]:
    """A CONSUMER span around one attempt of job `job_id`, the child of the context its entry
    `f` carries (none: a new trace), current while the attempt runs (its threads included);
    yields a function that records a failure (error type, message). A no-op without
    OpenTelemetry."""
    if not INSTALLED:
        yield _no_failure
        return
    trace, propagate = _api()
    carrier = {k: f[k].decode("ascii", "replace") for k in TRACE_FIELDS if f.get(k)}
    parent = propagate.extract(carrier) if carrier else None
    tracer = trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(
            f"process {pool}", context=parent, kind=trace.SpanKind.CONSUMER,
            record_exception=False, set_status_on_exception=False, attributes={
                "messaging.system": SYSTEM, "messaging.destination.name": pool,
                "messaging.message.id": job_id, "messaging.operation.type": "process",
                "messaging.operation.name": "process", "workpool.attempt": attempt,
                "workpool.job.name": name}) as span:

        def failed(error_type: str | None, error: str | None) -> None:
            message, _, frames = (error or "").partition("\n")  # the message, then frames
            span.set_status(trace.Status(trace.StatusCode.ERROR, error_type or "Error"))
            span.set_attribute("error.type", error_type or "Error")
            span.add_event("exception", {"exception.type": error_type or "Error",
                                         "exception.message": message,
                                         "exception.stacktrace": frames})

        yield failed


def _no_failure(error_type: str | None, error: str | None) -> None:
    """What `consuming` yields without OpenTelemetry."""
