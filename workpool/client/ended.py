"""`pool.ended_jobs()`: the jobs (and workflows) that ended, newest first, read from the `ended`
index the scripts keep (statemachine.md), never by scanning the keyspace."""

from __future__ import annotations

from workpool.client.ops import Ops, Step
from workpool.core import validate
from workpool.types import JobStatus, status_from_hash
from workpool.wire.keys import Keys
from workpool.wire.protocol import job_fields, text

MAX_LISTED = 10_000  #: jobs one call returns at most
_LATEST = 2**53  #: seconds: later than any `before`


def ended_jobs(keys: Keys, *, limit: int = 50, failed: bool = False,
               before: float | None = None, since: float | None = None) -> Ops[list[JobStatus]]:
    """Up to `limit` jobs that ended (only done/failed ones with `failed`), newest first; with
    `before` (seconds since the epoch, Redis clock) only those that ended earlier, so a page's
    oldest `finished_at` asks for the next; with `since` only those that ended then or later.
    A job whose hash expired since is left out."""
    validate.integer("limit", limit, 1, MAX_LISTED)
    validate.flag("failed", failed)
    top, bottom = "+inf", "-inf"
    if before is not None:
        top = f"({int(validate.number('before', before, 0, _LATEST) * 1000)}"
    if since is not None:
        bottom = str(int(validate.number("since", since, 0, _LATEST) * 1000))
    index = keys.ended_failed if failed else keys.ended
    (ids,) = yield Step([("ZREVRANGEBYSCORE", index, top, bottom, "LIMIT", 0, limit)])
    if not ids:
        return []
    hashes = yield Step([("HGETALL", keys.job(text(i))) for i in ids])
    return [status_from_hash(text(i), job_fields(h, None))
            for i, h in zip(ids, hashes, strict=True) if h]
