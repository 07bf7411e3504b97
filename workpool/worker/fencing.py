"""A worker's own fencing. A worker that stalled (a paused process, a Redis outage) may have
been declared lost meanwhile and its attempts given to others: before it starts an attempt it
has held for long, and after its heartbeat lapsed, it asks Redis which of its attempts are
still current and lets go of the rest. Redis's own fencing (attempt numbers) makes their
outcomes stale anyway; this stops the work itself, so a zombie does not keep calling out."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio

from workpool.wire.keys import Keys


async def still_current(client: redis.asyncio.Redis, keys: Keys,
                        attempts: Sequence[tuple[str, int]]) -> list[bool]:
    """For each (job id, attempt): is the job running that very attempt? One round trip."""
    if not attempts:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id, _ in attempts:
        pipe.hmget(keys.job(job_id), ["state", "attempts"])
    replies = await pipe.execute()
    return [state == b"running" and number == str(attempt).encode()
            for (_, attempt), (state, number) in zip(attempts, replies, strict=True)]
