"""The pool the tracing tests run in real processes (`otel_app:pool`). With OTEL_APP_TRACE=1 a
process configures the OpenTelemetry SDK with its in-memory exporter; the job `dump` (in a
worker) and `produce()` (the client's side) append what their process recorded, as JSON, to a
Redis list the test reads. `produce()` enqueues and starts a workflow inside an application
span, and prints the ids."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from workpool import Retry, WorkflowContext, Workpool, current

SPANS = "otel:spans"  #: the list every process appends its finished spans to
TRACE_ENV = "OTEL_APP_TRACE"
EXPORTER = InMemorySpanExporter()  #: this process's finished spans

pool = Workpool("traced", max_parallelism=4, lease_ttl=1.0, heartbeat_ttl=2.0,
                retry=Retry(max_attempts=2, initial_backoff=0.01))


def record(span: ReadableSpan) -> dict[str, Any]:
    """What the tests compare of a span."""
    context = span.get_span_context()
    assert context is not None
    return {"name": span.name, "kind": span.kind.name, "trace": f"{context.trace_id:032x}",
            "span": f"{context.span_id:016x}",
            "parent": f"{span.parent.span_id:016x}" if span.parent else None,
            "attributes": dict(span.attributes or {}), "status": span.status.status_code.name,
            "events": [e.name for e in span.events]}


def traced() -> None:
    """Record this process's spans with the SDK's in-memory exporter."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


def dumped(url: str) -> int:
    """Append this process's finished spans (then forget them) to SPANS; how many."""
    spans: Sequence[ReadableSpan] = EXPORTER.get_finished_spans()
    if spans:
        redis.Redis.from_url(url).rpush(SPANS, *[json.dumps(record(s)) for s in spans])
    EXPORTER.clear()
    return len(spans)


@pool.job()
def ok(x: int) -> int:
    """A job whose own span must nest in its attempt's (it runs in a thread)."""
    with trace.get_tracer("otel_app").start_as_current_span("inside"):
        return x


@pool.job()
def flaky() -> str:
    """Fails its first attempt."""
    if current().attempt == 1:
        msg = "first attempt fails"
        raise ValueError(msg)
    return "second"


@pool.job()
def dump() -> int:
    """Hand this worker's spans to the test."""
    return dumped(os.environ["WORKPOOL_REDIS_URL"])


@pool.workflow()
async def flow(ctx: WorkflowContext) -> int:
    """Two steps: their attempts go on in the workflow's trace."""
    return int(await ctx.step(ok, 1)) + int(await ctx.step(ok, 2))


def produce(url: str) -> None:
    """The client's side, in its own process: print the ids of a job of each kind."""
    traced()
    pool.use_url(url)
    with trace.get_tracer("otel_app").start_as_current_span("request"):
        ids = {"ok": pool.enqueue(ok, 5), "flaky": pool.enqueue(flaky),
               "flow": pool.start_workflow(flow)}
    dumped(url)
    print(json.dumps(ids))


if os.environ.get(TRACE_ENV) == "1":  # a worker process of the tests
    traced()
