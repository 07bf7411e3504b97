"""The knobs of a chaos run, passed from the runner to the worker processes by environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ChaosSettings:
    """What the chaos pool is configured with (shared by runner, app and checker)."""

    pool: str = "chaos"
    max_parallelism: int = 8
    ttl: float = 2.0  #: lease and heartbeat TTL (s): recovery is measured against it
    seed: int = 1
    callback_failure_rate: float = 0.15
    replicas: int = 0  #: the pool's `replicas=` (WAIT before a write counts as done)
    shards: int = 1  #: the pool's `shards=`

    @classmethod
    def from_env(cls) -> ChaosSettings:
        """Read the WORKPOOL_CHAOS_* variables (defaults where unset)."""
        env = os.environ
        return cls(
            pool=env.get("WORKPOOL_CHAOS_POOL", cls.pool),
            max_parallelism=int(env.get("WORKPOOL_CHAOS_MAXP", cls.max_parallelism)),
            ttl=float(env.get("WORKPOOL_CHAOS_TTL", cls.ttl)),
            seed=int(env.get("WORKPOOL_CHAOS_SEED", cls.seed)),
            callback_failure_rate=float(env.get("WORKPOOL_CHAOS_CB_FAIL",
                                                cls.callback_failure_rate)),
            replicas=int(env.get("WORKPOOL_CHAOS_REPLICAS", cls.replicas)),
            shards=int(env.get("WORKPOOL_CHAOS_SHARDS", cls.shards)))

    def env(self) -> dict[str, str]:
        """The variables that make `from_env` return these settings."""
        return {"WORKPOOL_CHAOS_POOL": self.pool, "WORKPOOL_CHAOS_MAXP": str(self.max_parallelism),
                "WORKPOOL_CHAOS_TTL": str(self.ttl), "WORKPOOL_CHAOS_SEED": str(self.seed),
                "WORKPOOL_CHAOS_CB_FAIL": str(self.callback_failure_rate),
                "WORKPOOL_CHAOS_REPLICAS": str(self.replicas),
                "WORKPOOL_CHAOS_SHARDS": str(self.shards)}
