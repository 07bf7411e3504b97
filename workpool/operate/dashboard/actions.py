"""What the dashboard's buttons do, each through the pool's own calls (a cancel, an enqueue or
a config request the main loop applies with its Lua transitions), never by writing state:
cancel a job, cancel every job a filter shows, run a finished job again, pause and resume,
change max_parallelism and the rate limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workpool.core import validate
from workpool.errors import ConfigurationError
from workpool.operate.dashboard import reads
from workpool.operate.dashboard.html import segment

if TYPE_CHECKING:
    from workpool.client.pool import Workpool
    from workpool.wire.settings import LiveSettings

MAX_CANCELED = 10_000  #: jobs one "cancel matching" asks to cancel at most
_WAIT = 2.0  #: seconds an action waits for the main loop to apply it


def run(pool: Workpool, action: str, form: dict[str, str]) -> tuple[str, str]:
    """Do `action` with the form's fields; what it did, and the page to go back to.
    ConfigurationError (naming the field) for a value it cannot use."""
    back = f"/pool/{segment(pool.name)}"
    if action == "cancel":
        job_id = form.get("id", "")
        if not job_id:
            validate.fail("id", "a job id", job_id)
        return f"cancel {job_id}: {pool.cancel(job_id, wait=_WAIT).value}", \
            f"/job/{segment(pool.name)}/{segment(job_id)}"
    if action == "cancel-matching":
        f = reads.JobFilter(form.get("state", ""), form.get("name", ""), form.get("ckey", ""))
        if f.state not in ("pending", "running", "retrying"):
            validate.fail("state", "pending, running or retrying", f.state)
        return f"cancel sent for {pool.cancel_many(_matching(pool, f))} {f.state} jobs", back
    if action == "run-again":
        new = pool.run_again(form.get("id", ""))
        return f"run again {form.get('id')} as {new}", f"/job/{segment(pool.name)}/{segment(new)}"
    if action in ("pause", "resume"):
        return f"{action}: {pool.configure(paused=action == 'pause', wait=_WAIT)}", back
    if action == "configure":
        return f"configure: {pool.configure(wait=_WAIT, **_settings(form))}", back
    msg = f"no action {action!r}: cancel, cancel-matching, run-again, pause, resume or configure"
    raise ConfigurationError(msg)


def _matching(pool: Workpool, f: reads.JobFilter) -> list[str]:
    """The ids of the jobs the filter lists, every page (MAX_CANCELED at most), read first:
    nothing changes under the reads."""
    ids: list[str] = []
    while len(ids) < MAX_CANCELED:
        jobs, cursor = reads.list_jobs(pool, f)
        ids += [j.id for j in jobs]
        if cursor is None:
            break
        f = reads.JobFilter(f.state, f.name, f.ckey, offset=int(cursor.partition("=")[2]))
    return ids[:MAX_CANCELED]


def _settings(form: dict[str, str]) -> LiveSettings:
    """The live settings a configure form asks for (a field left empty stays as it is)."""
    settings: LiveSettings = {}
    raw = form.get("max_parallelism", "").strip()
    if raw:
        try:
            settings["max_parallelism"] = int(raw)
        except ValueError:
            validate.fail("max_parallelism", "a whole number", raw)
    rate = form.get("rate_limit", "").strip()
    if rate:
        settings["rate_limit"] = None if rate.lower() == "none" else rate
    job, job_rate = form.get("job", "").strip(), form.get("job_rate", "").strip()
    if job and job_rate:
        settings["rate_limits"] = {job: None if job_rate.lower() == "none" else job_rate}
    if not settings:
        validate.fail("the form", "a max_parallelism, a rate limit, or a job and its rate", form)
    return settings
