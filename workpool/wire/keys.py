"""Every Redis key of a pool, in one place.

All keys of pool `P` start with the hash tag `{wp:P}:` so they live in one Redis Cluster slot
(scripts build per-job keys from that prefix, which is safe only because of the tag).
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"  #: consumer group of the dispatch stream; one consumer per worker process


#: The suffix of every key of a pool after its prefix, by Keys attribute, written once: the
#: scripts get it as `K` (lua_prelude) and build the per-job and derived keys from it.
KEY = {
    "pending_start": "pendingStart",
    "incoming": "incoming",
    "pending_completion": "pendingCompletion",
    "dispatch": "dispatch",
    "due": "due",
    "running": "running",
    "deadlines": "deadlines",
    "callbacks_due": "callbacksDue",
    "replays_due": "replaysDue",
    "wf_timers": "wfTimers",
    "workflows": "workflows",
    "wf_new": "wfNew:",
    "lease": "lease",
    "epoch": "epoch",
    "config": "config",
    "defaults": "defaults",
    "ready": "ready",
    "unstarted": "unstarted",
    "retrying": "retrying",
    "suspects": "suspects",
    "reaped_at": "reapedAt",
    "seq": "seq",
    "priorities": "priorities",
    "key_heads": "keyHead",
    "key_running": "keyRunning",
    "key_drain": "keyDrain",
    "key_queue": "keyq:",
    "name_queue": "nameq:",
    "throttled": "throttled",
    "bucket": "bucket:",
    "cron": "cron",
    "stats": "stats",
    "metrics": "metrics",
    "ended": "ended",
    "ended_failed": "endedFailed",
    "metric_names": "metricNames",
    "rejected": "rejected",
    "job": "job:",
    "heartbeat": "hb:",
    "inbox": "inbox:",
    "done_channel": "done:",
    "wf_channel": "wfc:",
    "throughput": "tpm:",
    "tokens": "tokens",
}


@dataclass(frozen=True)
class Keys:
    """Key names of one pool, or of shard `shard` of a sharded pool (its own hash tag)."""

    pool: str
    shard: int | None = None

    @property
    def prefix(self) -> str:
        """`{wp:<pool>}:`, a shard's `{wp:<pool>/<shard>}:`: every key's hash-tagged prefix."""
        return f"{{wp:{self.pool}}}:" if self.shard is None else \
            f"{{wp:{self.pool}/{self.shard}}}:"

    @property
    def tokens(self) -> str:
        """HASH, in the pool's own slot: each shard's grant of its slots (grantTokens)."""
        return f"{{wp:{self.pool}}}:" + KEY["tokens"]

    def _k(self, name: str) -> str:
        return self.prefix + name

    @property
    def pending_start(self) -> str:
        """STREAM: enqueue, cancel and config requests: the only thing clients write."""
        return self._k(KEY["pending_start"])

    @property
    def incoming(self) -> str:
        """SET: ids appended to pendingStart and not ingested yet, so status() answers at once."""
        return self._k(KEY["incoming"])

    @property
    def pending_completion(self) -> str:
        """STREAM: attempt and callback outcomes from workers (the only thing workers write)."""
        return self._k(KEY["pending_completion"])

    @property
    def dispatch(self) -> str:
        """STREAM + group `workers`: attempts and callback deliveries for workers to take."""
        return self._k(KEY["dispatch"])

    @property
    def due(self) -> str:
        """ZSET id -> due time (ms): pending and retrying jobs."""
        return self._k(KEY["due"])

    @property
    def running(self) -> str:
        """ZSET id -> start time (ms): the running set, owned by the main loop."""
        return self._k(KEY["running"])

    @property
    def deadlines(self) -> str:
        """ZSET id -> earliest time (ms) its per-job timeout could have passed."""
        return self._k(KEY["deadlines"])

    @property
    def callbacks_due(self) -> str:
        """ZSET id -> time (ms) a failed on_complete delivery is tried again."""
        return self._k(KEY["callbacks_due"])

    @property
    def replays_due(self) -> str:
        """ZSET workflow id -> time (ms) a replay that could not decide is tried again."""
        return self._k(KEY["replays_due"])

    @property
    def workflows(self) -> str:
        """SET: the ids of the workflows running now (workflow list)."""
        return self._k(KEY["workflows"])

    def wf_new(self, workflow_id: str) -> str:
        """SET of a running workflow: its journal entries that ended and are not delivered to
        its code yet (one SADD each, however many run in parallel)."""
        return self._k(KEY["wf_new"] + workflow_id)

    @property
    def wf_timers(self) -> str:
        """ZSET `<workflow id>:<n>` -> time (ms) workflow wait n ends (a sleep, an event's
        timeout)."""
        return self._k(KEY["wf_timers"])

    @property
    def lease(self) -> str:
        """STRING `<epoch>:<owner>` with a TTL: the main-loop lease (fencing token)."""
        return self._k(KEY["lease"])

    @property
    def epoch(self) -> str:
        """STRING counter: the last fencing epoch handed out."""
        return self._k(KEY["epoch"])

    @property
    def config(self) -> str:
        """HASH: live overrides (max_parallelism, paused, rate, rate:<name>, max_per_key...)."""
        return self._k(KEY["config"])

    @property
    def defaults(self) -> str:
        """HASH: the settings the main loop holder's code declares; `config` overrides them."""
        return self._k(KEY["defaults"])

    @property
    def ready(self) -> str:
        """ZSET id -> rank (-priority * 1e12 + seq): due jobs free to start, best first."""
        return self._k(KEY["ready"])

    @property
    def unstarted(self) -> str:
        """HASH id -> packed spec (SPEC_FIELDS): every pending job; none has a hash yet."""
        return self._k(KEY["unstarted"])

    @property
    def retrying(self) -> str:
        """SET: every retrying job, wherever it waits (due, ready or held)."""
        return self._k(KEY["retrying"])

    @property
    def suspects(self) -> str:
        """HASH worker -> ms first seen silent: lost once silent for the grace (reapLost)."""
        return self._k(KEY["suspects"])

    @property
    def reaped_at(self) -> str:
        """STRING: ms of the previous reap; a longer gap than the grace suspects afresh."""
        return self._k(KEY["reaped_at"])

    @property
    def seq(self) -> str:
        """STRING counter: FIFO order within a priority."""
        return self._k(KEY["seq"])

    @property
    def priorities(self) -> str:
        """SET: priorities ever enqueued (for per-priority counts in stats)."""
        return self._k(KEY["priorities"])

    @property
    def key_heads(self) -> str:
        """HASH concurrency key -> the one job standing for it in `ready`."""
        return self._k(KEY["key_heads"])

    @property
    def key_running(self) -> str:
        """HASH concurrency key -> attempts of that key running now."""
        return self._k(KEY["key_running"])

    @property
    def key_drain(self) -> str:
        """ZSET concurrency key -> 0: keys whose queue is still to be moved on (startJobs)."""
        return self._k(KEY["key_drain"])

    def key_queue(self, concurrency_key: str) -> str:
        """ZSET id -> rank: due jobs of the key waiting for its limit."""
        return self._k(KEY["key_queue"] + concurrency_key)

    def name_queue(self, name: str) -> str:
        """ZSET id -> rank: due jobs of a job name held by its rate limit."""
        return self._k(KEY["name_queue"] + name)

    @property
    def throttled(self) -> str:
        """ZSET job name -> time (ms) its next rate-limit token is expected."""
        return self._k(KEY["throttled"])

    def bucket(self, scope: str) -> str:
        """HASH tokens, ts: the token bucket of `pool` or `name:<job name>`."""
        return self._k(KEY["bucket"] + scope)

    @property
    def cron(self) -> str:
        """HASH cron name -> last tick (ms) enqueued."""
        return self._k(KEY["cron"])

    @property
    def stats(self) -> str:
        """HASH: counters of transitions and anomalies."""
        return self._k(KEY["stats"])

    @property
    def rejected(self) -> str:
        """STREAM (capped): malformed entries set aside, with their raw fields and the reason."""
        return self._k(KEY["rejected"])

    def job(self, job_id: str) -> str:
        """HASH: one job from its first start (or cancel): its packed spec (`spec`), state, attempt
        and outcome (expires after retention)."""
        return self._k(KEY["job"] + job_id)

    def heartbeat(self, worker_id: str) -> str:
        """STRING with a TTL: a worker process is alive while this exists."""
        return self._k(KEY["heartbeat"] + worker_id)

    def inbox(self, worker_id: str) -> str:
        """STREAM + group `workers`: a worker's own entries, the replays of the workflows it
        keeps live (it creates it; the reaper takes back what it leaves and drops it with it)."""
        return self._k(KEY["inbox"] + worker_id)

    def done_channel(self, job_id: str) -> str:
        """PUB/SUB channel: published once when the job reaches its terminal state."""
        return self._k(KEY["done_channel"] + job_id)

    def wf_channel(self, workflow_id: str) -> str:
        """PUB/SUB channel: published when a workflow's journal or state changes (watch)."""
        return self._k(KEY["wf_channel"] + workflow_id)

    @property
    def metrics(self) -> str:
        """HASH `<metric>|<job name>` -> count: counters and histogram buckets by job name
        (workpool/wire/metrics.py), bumped by the scripts that make the transitions."""
        return self._k(KEY["metrics"])

    @property
    def ended(self) -> str:
        """ZSET id -> finished_at (ms): every job and workflow that became terminal, kept for
        the retention (lists by time read it, never the keyspace)."""
        return self._k(KEY["ended"])

    @property
    def ended_failed(self) -> str:
        """ZSET id -> finished_at (ms): the `ended` ones that are done/failed."""
        return self._k(KEY["ended_failed"])

    @property
    def metric_names(self) -> str:
        """SET: the job names `metrics` counts apart (at most metrics.MAX_NAMES)."""
        return self._k(KEY["metric_names"])

    def throughput(self, minute: int) -> str:
        """HASH (expires after 2 h): `started`, `succeeded`, `failed`, `canceled` and
        `retried` counted in that epoch minute."""
        return self._k(KEY["throughput"] + str(minute))


def lua_prelude() -> str:
    """Render the key suffixes as a Lua `local K = {...}` line for the script loader."""
    return "local K = {" + ", ".join(f"{name}='{suffix}'" for name, suffix in KEY.items()) + "}\n"
