"""Which shard of a sharded pool holds a job, from its id alone, so any caller (a client, the
CLI, the dashboard) finds it without asking: an id a sharded pool's client names ends with
`@<shard>`; any other id (a foreign client's) is placed by a hash of it. A job with a
concurrency key goes to that key's shard (its per-key limit and order stay in one shard),
one without by its id."""

from __future__ import annotations

import re
import zlib
from typing import Any

from workpool.core import validate
from workpool.wire import limits
from workpool.wire.protocol import Fields, new_job_id

#: `@<shard>` at the end, or before a workflow step's `:<n>` (nested children: `:<n>:<m>`)
_SUFFIX = re.compile(r"@(\d{1,3})(?::\d+)*$")


def _hash(text: str, shards: int) -> int:
    return zlib.crc32(text.encode()) % shards


def shard_of(job_id: str, shards: int) -> int:
    """The shard of `job_id` (0 for a pool of one shard)."""
    if shards == 1:
        return 0
    named = _SUFFIX.search(job_id)
    if named and int(named.group(1)) < shards:
        return int(named.group(1))
    return _hash(job_id, shards)


def sharded_id(base: str, shards: int, concurrency_key: Any = None) -> str:
    """The id a sharded pool's client gives a job whose id would be `base` (`key:<key>` for
    an idempotency key): its concurrency key's shard, else its own, named at its end."""
    shard = _hash(str(concurrency_key if concurrency_key is not None else base), shards)
    job_id = f"{base}@{shard}"
    if len(job_id.encode()) > limits.MAX_ID_BYTES:
        validate.fail("key", f"at most {limits.MAX_ID_BYTES - 8} bytes on a sharded pool (its "
                      "job ids name their shard)", base)
    return job_id


def place(entries: list[Fields], shards: int) -> dict[int, list[Fields]]:
    """Give each entry its shard (named in its id, made here when it has none), grouped by
    shard in order; raises before anything is written when an id cannot take the suffix."""
    placed: dict[int, list[Fields]] = {}
    for entry in entries:
        job_id = sharded_id(str(entry.get("id") or new_job_id()), shards,
                            entry.get("concurrency_key"))
        entry["id"] = job_id
        placed.setdefault(shard_of(job_id, shards), []).append(entry)
    return placed
