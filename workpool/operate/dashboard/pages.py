"""The dashboard's pages and their live parts, rendered on the server from what reads.py read:
the pools, one pool (its workers, limits and the last hour), a jobs list, a job."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import msgpack

from workpool.operate.dashboard import reads
from workpool.operate.dashboard.html import Actions, chart, e, form, link, segment, table
from workpool.wire.protocol import (
    ATTEMPT_FIELDS,
    ATTEMPT_PREFIX,
    decode_arguments,
    job_fields,
    text,
)

if TYPE_CHECKING:
    from workpool.client.pool import Workpool
    from workpool.types import JobStatus


def when(seconds: float | None) -> str:
    """A time (seconds since the epoch) as UTC `YYYY-MM-DD HH:MM:SS`."""
    if not seconds:
        return ""
    return f"<time>{datetime.fromtimestamp(seconds, timezone.utc):%Y-%m-%d %H:%M:%S}</time>"


def pools_part(pools: list[Workpool]) -> str:
    """Every pool in one table: states, running against the limit, holds, waits, leader."""
    rows = []
    for pool in pools:
        v = reads.pool_view(pool)
        s, m = v.metrics.stats, v.metrics
        limit = "?" if s.max_parallelism is None else str(s.max_parallelism)
        rows.append([
            link(f"/pool/{segment(pool.name)}", pool.name) + (" (paused)" if s.paused else ""),
            *(link("/jobs", n, pool=pool.name, state=state) for state, n in (
                ("pending", s.pending), ("running", s.running), ("retrying", s.retrying))),
            f'<span class="running">{s.running}</span> / <span class="limit">{e(limit)}</span>',
            e(f"{s.held_by_rate} rate, {s.held_by_key} key"),
            e(f"{m.oldest_pending_age:.1f} s"), e(f"{s.throughput:.2f}/s"),
            e(s.leader or "none"), e(sum(w.alive for w in v.workers)),
            chart(v.minutes, reads.SERIES)])
    return table(["pool", "pending", "running", "retrying", "running / limit", "held",
                  "oldest waiting", "ended (last min)", "leader", "workers", "last hour"],
                 rows, cls="pools")


def pool_part(pool: Workpool, csrf: Actions) -> str:
    """One pool: its numbers, the last hour, its limits (and the forms that change them), its
    workers."""
    v = reads.pool_view(pool)
    s, m = v.metrics.stats, v.metrics
    p = segment(pool.name)
    numbers = table(["", ""], [
        ["state", "PAUSED" if s.paused else "running"],
        ["pending", link("/jobs", s.pending, pool=pool.name, state="pending")],
        ["ready to start", e(s.ready)],
        ["running", f'<span id="running">{s.running}</span> of max_parallelism '
                    f'<span id="limit">{e(s.max_parallelism)}</span>'],
        ["retrying", link("/jobs", s.retrying, pool=pool.name, state="retrying")],
        ["held", e(f"{s.held_by_rate} by rate limits, {s.held_by_key} by concurrency keys")],
        ["oldest waiting", e(f"{m.oldest_pending_age:.1f} s")],
        ["workflows running", e(m.workflows_running)],
        ["leader", e(s.leader or "none")],
        ["limits", e(" ".join(f"{k}={v}" for k, v in sorted(s.settings.items())) or "none")],
    ], cls="numbers")
    workers = table(["worker", "alive", "host", "pid", "running", "concurrency", "heartbeat",
                     "idle", "held"], [
        [e(w.name), "yes" if w.alive else "no", e(w.beat.get("host", "")),
         e(w.beat.get("pid", "")), e(w.beat.get("running", "")),
         e(w.beat.get("concurrency", "")),
         e(f"{w.beat_ttl_ms / 1000:.1f} s left") if w.alive else "expired",
         e(f"{w.idle_ms / 1000:.1f} s"), e(w.pending)] for w in v.workers], cls="workers")
    actions = "".join([
        form(f"/action/{p}/resume" if s.paused else f"/action/{p}/pause", csrf,
             "resume" if s.paused else "pause"),
        form(f"/action/{p}/configure", csrf, "set limits", inputs=(
            '<label>max_parallelism <input name="max_parallelism" type="number" min="0" '
            f'value="{e(s.max_parallelism)}"></label><label>rate limit <input name="rate_limit"'
            ' placeholder="50/1s, or none"></label>')),
        form(f"/action/{p}/configure", csrf, "set the job's rate", inputs=(
            '<label>rate limit of job <input name="job" placeholder="job name"></label>'
            '<label><input name="job_rate" placeholder="5/1s, or none"></label>')),
    ])
    return (f"<h2>{e(pool.name)}</h2>{numbers}{chart(v.minutes, reads.SERIES)}"
            f"<p>{link(f'/workflows/{p}', 'workflows')}</p>"
            f'<div class="actions">{actions}</div><h3>workers</h3>{workers}')


def jobs_part(pool: Workpool, f: reads.JobFilter, csrf: Actions) -> str:
    """A page of jobs, its filters, and the link to the next page."""
    jobs, cursor = reads.list_jobs(pool, f)
    p = segment(pool.name)
    rows = [[link(f"/job/{p}/{segment(j.id)}", j.id), e(j.name), e(_state(j)),
             e(j.attempts), when(j.enqueued_at), when(j.finished_at),
             e(f"{j.error_type}: {(j.error or '').splitlines()[0] if j.error else ''}"
               if j.error_type else "")] for j in jobs]
    more = ""
    if cursor:
        key, _, value = cursor.partition("=")
        more = link("/jobs", "next page", pool=pool.name, state=f.state, name=f.name,
                    ckey=f.ckey, **{"from": _local(f.since), "to": _local(f.until)},
                    **{key: value})
    cancel = form(f"/action/{p}/cancel-matching", csrf, f"cancel every {f.state} job shown "
                  "by this filter", fields={"state": f.state, "name": f.name, "ckey": f.ckey},
                  danger=True) if f.state in ("pending", "running", "retrying") else ""
    return (table(["job", "name", "state", "attempts", "enqueued", "ended", "error"], rows,
                  cls="jobs") + f'<p class="more">{more}</p>{cancel}')


def filters(pools: list[Workpool], pool: Workpool, f: reads.JobFilter) -> str:
    """The jobs list's filter form (a GET: a filtered list is a link)."""
    names = "".join(f'<option{" selected" if p is pool else ""}>{e(p.name)}</option>'
                    for p in pools)
    states = "".join(f'<option{" selected" if s == f.state else ""}>{e(s)}</option>'
                     for s in reads.STATES)
    return (f'<form method="get" action="/jobs" class="filters"><select name="pool">{names}'
            f'</select><select name="state">{states}</select><input name="name" '
            f'placeholder="job name" value="{e(f.name)}"><input name="ckey" placeholder="'
            f'concurrency key" value="{e(f.ckey)}"><label>from <input type="datetime-local" '
            f'name="from" value="{e(_local(f.since))}"></label><label>to <input type='
            f'"datetime-local" name="to" value="{e(_local(f.until))}"></label> (UTC; ended, '
            f'or else enqueued)<button>show</button></form>'
            f'<form method="get" action="/find" class="filters"><input type="hidden" '
            f'name="pool" value="{e(pool.name)}"><input name="q" placeholder="job id or '
            f'idempotency key"><button>find</button></form>')


def job_part(pool: Workpool, job_id: str, csrf: Actions) -> str:
    """One job: its state, arguments, options, outcome and on_complete record."""
    k = pool.config.keys_for(job_id)
    raw = cast("dict[bytes, bytes]", pool.redis.hgetall(k.job(job_id)))
    h = job_fields(raw, cast("bytes | None", pool.redis.hget(k.unstarted, job_id)))
    job = pool.status(job_id)
    enc = "json" if text(h.get("enc")) == "json" else "msgpack"
    try:
        args: Any
        args, kwargs = decode_arguments(h.get("args") or b"", h.get("kwargs") or b"", enc)
    except ValueError:
        args, kwargs = "(unreadable)", {}
    options = ("max_attempts", "backoff_ms", "base", "max_backoff_ms", "timeout_ms", "priority",
               "ckey", "on_complete", "due_at", "wf", "wf_n")
    rows = [["state", e(_state(job))], ["name", e(job.name)], ["args", e(repr(args))],
            ["kwargs", e(repr(kwargs))], ["attempts", e(f"{job.attempts} of {job.max_attempts}")],
            ["enqueued", when(job.enqueued_at)], ["started", when(_ms(h.get("started_at")))],
            ["ended", when(job.finished_at)], ["result", e(repr(job.result))],
            ["error", f"<pre>{e(job.error_type)}: {e(job.error)}</pre>" if job.error else ""],
            ["on_complete", e(f"{text(h.get('on_complete'))}: {job.callback} (delivery "
                              f"{text(h.get('cb_n')) or 0})") if job.callback else "none"],
            ["handler's last error", f"<pre>{e(text(h.get('cb_error')))}</pre>"
             if h.get("cb_error") else ""],
            *([o, e(text(h.get(o)))] for o in options if text(h.get(o)))]
    p = segment(pool.name)
    if job.rerun_of:
        rows.insert(1, ["run again of", link(f"/job/{p}/{segment(job.rerun_of)}", job.rerun_of)])
    cancel = form(f"/action/{p}/run-again", csrf, "run again", fields={"id": job_id}) \
        if job.terminal else form(f"/action/{p}/cancel", csrf, "cancel", fields={"id": job_id},
                                  danger=True)
    return (f'<h2>job {e(job_id)}</h2>{table(["", ""], rows, cls="job")}{cancel}'
            f"<h3>attempts</h3>{_attempts(raw, job)}")


def _attempts(raw: dict[bytes, bytes], job: JobStatus) -> str:
    """Each attempt's record (the latest ATTEMPTS_KEPT), and the one running now."""
    records = []
    for field, value in raw.items():
        name = text(field)
        if name.startswith(ATTEMPT_PREFIX) and name[len(ATTEMPT_PREFIX):].isdigit():
            try:
                rec = dict(zip(ATTEMPT_FIELDS, msgpack.unpackb(value), strict=False))
            except (ValueError, msgpack.UnpackException):
                continue
            records.append((int(name[len(ATTEMPT_PREFIX):]), rec))
    rows = [[e(n), e(r.get("worker")), when(_ms(r.get("started_at"))),
             when(_ms(r.get("finished_at"))),
             e(f"{(int(r.get('finished_at') or 0) - int(r.get('started_at') or 0)) / 1000:.3f} s"),
             e(r.get("outcome")), f"<pre>{e(r.get('error_type'))}: {e(r.get('error'))}</pre>"
             if r.get("error_type") else ""] for n, r in sorted(records)]
    last = _ms(raw.get(b"started_at"))
    if job.state.value == "running":
        rows.append([e(job.attempts), "", when(last), "", "", "running", ""])
    elif job.terminal and job.attempts and job.attempts not in dict(records):
        ended = job.finished_at or 0.0  # the attempt that ended the job: the job's own fields
        rows.append([e(job.attempts), e(text(raw.get(b"worker"))), when(last), when(ended),
                     e(f"{ended - (last or ended):.3f} s"), e(job.outcome or job.state.value),
                     f"<pre>{e(job.error_type)}: {e(job.error)}</pre>"
                     if job.outcome == "failed" else ""])
    return table(["attempt", "worker", "started", "ended", "took", "outcome", "error"], rows,
                 cls="attempts")


def _local(seconds: float | None) -> str:
    """A time as a `datetime-local` field's value (UTC)."""
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M")


def _state(job: JobStatus) -> str:
    return f"{job.state.value}/{job.outcome}" if job.outcome else job.state.value


def _ms(raw: object) -> float | None:
    """A time in ms (bytes or a number) as seconds; None for none."""
    try:
        return int(raw or 0) / 1000 or None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None

