"""The main loop applies requests and outcomes only while their stream holds entries: an idle
call of ingestRequests or applyOutcomes costs Redis as much as ~40 jobs' work, every tick."""

from __future__ import annotations

import redis
from helpers import Pools, eventually
from helpers.loop import main_loop

from workpool import State
from workpool.server.embedded import RedisServer


def _calls(r: redis.Redis, command: str) -> int:
    stats = r.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_an_idle_main_loop_reads_neither_stream_yet_applies_a_new_entry_at_once(
        pools: Pools, own_server: RedisServer) -> None:
    # a server of its own: the commands counted are this loop's alone
    pool = pools("idle-loop", redis_url=own_server.url)
    pool.job(name="work")(lambda: None)
    redis_client = pool.redis
    with main_loop(pool, reap_interval=0.1):  # a tick every 0.1 s at least: the reaper's
        eventually(lambda: _calls(redis_client, "xrange") >= 2,
                   what="the first tick, which reads both streams (nothing is known yet)")
        reads, ticks = _calls(redis_client, "xrange"), _calls(redis_client, "evalsha")
        eventually(lambda: _calls(redis_client, "evalsha") >= ticks + 10, what="more ticks")
        assert _calls(redis_client, "xrange") == reads  # no script read either stream
        job_id = pool.enqueue("work")
        eventually(lambda: pool.status(job_id).state is State.RUNNING, timeout=5.0,
                   what="the entry applied and the job started (no worker takes it)")
        redis_client.xadd(pool.keys.pending_completion,  # as a worker would: None succeeded
                          {"kind": "run", "id": job_id, "attempt": 1, "ok": 1, "result": b"\xc0"})
        eventually(lambda: pool.status(job_id).state is State.DONE, timeout=5.0,
                   what="the outcome applied")
