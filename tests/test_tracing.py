"""OpenTelemetry traces across real processes: a client process's enqueue is a PRODUCER span,
its context travels in the entry, and a worker process runs each attempt in a CONSUMER span,
its child (workflow steps in the workflow's trace); both processes record with the SDK's
in-memory exporter and hand their spans to the test through Redis (tests/otel_app.py).
Without OpenTelemetry nothing is imported and no entry changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from helpers import CliProcs
from otel_app import SPANS, TRACE_ENV
from otel_app import pool as otel_pool

from workpool import Workpool
from workpool.wire.protocol import ENQUEUE_FIELDS, TRACE_FIELDS

Span = dict[str, Any]
TESTS = Path(__file__).resolve().parent


def _spans(r: redis.Redis) -> list[Span]:
    return [json.loads(s) for s in r.lrange(SPANS, 0, -1)]


def test_an_attempt_runs_in_a_consumer_span_child_of_its_enqueue(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    procs = CliProcs(redis_url, tmp_path)
    monkeypatch.setenv(TRACE_ENV, "1")
    try:
        procs.spawn("worker", "worker", "otel_app:pool", "--concurrency", "4")
        env = {k: v for k, v in os.environ.items() if k != TRACE_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
        made = subprocess.run(
            [sys.executable, "-c", f"import otel_app; otel_app.produce({redis_url!r})"],
            cwd=TESTS, env=env, check=True, capture_output=True, text=True, timeout=60)
        ids = json.loads(made.stdout.splitlines()[-1])
        otel_pool.use_url(redis_url)
        for job in ids.values():
            otel_pool.wait(job, timeout=30)
        assert otel_pool.wait(otel_pool.enqueue("dump"), timeout=30).result >= 5
        spans = _spans(redis_client)
    finally:
        procs.kill_all()
        otel_pool.close()
    (request,) = [s for s in spans if s["name"] == "request"]
    sent = {s["attributes"]["messaging.message.id"]: s for s in spans if s["kind"] == "PRODUCER"}
    assert set(sent) == set(ids.values())
    for s in sent.values():
        assert (s["name"], s["trace"], s["parent"]) == ("send traced", request["trace"],
                                                        request["span"])
        assert {k: s["attributes"][k] for k in ("messaging.system", "messaging.destination.name",
                                                "messaging.operation.type")} == {
            "messaging.system": "workpool", "messaging.destination.name": "traced",
            "messaging.operation.type": "send"}
    runs = [s for s in spans if s["kind"] == "CONSUMER"]

    def attempts(job: str) -> list[Span]:
        return sorted((s for s in runs if s["attributes"]["messaging.message.id"] == job),
                      key=lambda s: s["attributes"]["workpool.attempt"])

    (ok,) = attempts(ids["ok"])
    assert (ok["name"], ok["trace"], ok["parent"]) == ("process traced", request["trace"],
                                                       sent[ids["ok"]]["span"])
    assert {k: ok["attributes"][k] for k in ("messaging.system", "messaging.operation.type",
                                             "workpool.attempt", "workpool.job.name")} == {
        "messaging.system": "workpool", "messaging.operation.type": "process",
        "workpool.attempt": 1, "workpool.job.name": "ok"}
    inside = [s for s in spans if s["name"] == "inside" and s["parent"] == ok["span"]]
    assert len(inside) == 1  # the job's own span nests in its attempt's, in its thread
    first, second = attempts(ids["flaky"])
    assert {first["parent"], second["parent"]} == {sent[ids["flaky"]]["span"]}
    assert (first["status"], first["events"], first["attributes"]["error.type"]) == \
        ("ERROR", ["exception"], "ValueError")
    assert (second["status"], second["events"]) == ("UNSET", [])
    steps = [s for s in runs if s["attributes"]["messaging.message.id"].startswith(
        f"{ids['flow']}:")]
    assert len(steps) == 2
    assert {(s["trace"], s["parent"]) for s in steps} == {(request["trace"],
                                                            sent[ids["flow"]]["span"])}


def test_without_a_configured_sdk_no_entry_carries_a_trace_context(
        redis_url: str, redis_client: redis.Redis) -> None:
    pool = Workpool("plain", redis_url)
    try:
        pool.enqueue("work", 1, on_complete="h", context=1, run_after=1.0, run_at=2.0,
                     key="k", timeout=3.0, priority=4, concurrency_key="c", kwargs={"a": 1})
    finally:
        pool.close()
    ((_, entry),) = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                         redis_client.xrange(pool.keys.pending_start))
    assert {k.decode() for k in entry} == set(ENQUEUE_FIELDS)  # every option: no trace field


def test_without_opentelemetry_installed_nothing_of_it_is_imported(redis_url: str) -> None:
    script = f"""
import json, sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
import workpool, redis
from workpool.core import tracing
pool = workpool.Workpool("bare", {redis_url!r})
job = pool.enqueue("work", 1)
entry = redis.Redis.from_url({redis_url!r}).xrange(pool.keys.pending_start)[0][1]
print(json.dumps([tracing.INSTALLED, sorted(m for m in sys.modules
                                             if m.startswith("opentelemetry.")),
                  sorted(k.decode() for k in entry)]))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True, timeout=60)
    installed, imported, fields = json.loads(out.stdout)
    assert (installed, imported) == (False, [])
    assert not set(TRACE_FIELDS) & set(fields)


@pytest.mark.parametrize(("given", "kept"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
    ("not a trace context", False), ("00-" + "a" * 600 + "-00f067aa0ba902b7-01", False)])
def test_a_foreign_clients_trace_context_reaches_the_attempt_or_is_dropped_not_the_job(
        redis_url: str, redis_client: redis.Redis, given: str, kept: bool) -> None:
    from helpers.scripts import leased  # noqa: PLC0415

    with leased(Workpool("foreign", redis_url), redis_client) as p:
        redis_client.xadd(p.keys.pending_start, {"op": "enqueue", "name": "work",
                                                  "traceparent": given, "tracestate": "k=v"})
        p.ingest(p.clock())
        (job,) = p.start(p.clock()).ids
        ((_, run),) = p.dispatched("run")
    assert (run.get("traceparent", b""), run.get("tracestate", b"")) == \
        ((given.encode(), b"k=v") if kept else (b"", b""))  # what the worker reads
    assert job
