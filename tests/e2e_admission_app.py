"""Pools the admission end-to-end tests run in real worker processes (`e2e_admission_app:*`).

One pool per scenario, so a cron job never shows up in the rate-limit test. Jobs record their
own start (and end) on Redis's clock (`TIME`, microseconds) under `adm:*` keys, so the tests
judge admission from what the jobs saw.
"""

from __future__ import annotations

import json
import os
import time

import redis

from workpool import RateLimit, Retry, Workpool

RATE = RateLimit(10, per=1.0)
MAX_PARALLELISM = 16


def _fast(name: str) -> Workpool:
    """A pool with short TTLs, so a killed process is noticed within about a second."""
    return Workpool(name, max_parallelism=MAX_PARALLELISM, lease_ttl=1.0, heartbeat_ttl=1.0,
                    retry=Retry(max_attempts=3, initial_backoff=0.05))


rate_pool = _fast("adm-rate")
key_pool = _fast("adm-key")
# The default 5 s lease: a leader's SIGKILL leaves about five one-second ticks to the next one.
cron_pool = Workpool("adm-cron", max_parallelism=MAX_PARALLELISM, heartbeat_ttl=1.0)
# Long lease and heartbeat: the loop's only short timer is the 1 s reap, so jobs that start well
# within it after `config --resume` prove the config entry itself woke the loop.
config_pool = Workpool("adm-config", max_parallelism=MAX_PARALLELISM, lease_ttl=30.0,
                       heartbeat_ttl=30.0)

STARTS = "adm:starts"  #: `limited` runs: "<us>:<pid>:<i>" each
SPANS = "adm:spans"  #: `serial` runs: JSON {key, i, start, end, pid} (microseconds)
TICKS = "adm:ticks"  #: `tick` runs: "<us>:<pid>" each
QUICK = "adm:quick"  #: `quick` runs: "<us>:<i>" each


def now_us(r: redis.Redis) -> int:
    """Redis's clock in microseconds (the same clock the scripts use)."""
    seconds, micros = r.time()
    return int(seconds) * 1_000_000 + int(micros)


@rate_pool.job(rate_limit=RATE)
def limited(i: int) -> None:
    """Record its start; admission is what is under test."""
    r = rate_pool.redis
    r.rpush(STARTS, f"{now_us(r)}:{os.getpid()}:{i}")


@key_pool.job(max_per_key=1)
def serial(key: str | None, i: int, sleep_ms: int) -> None:
    """Record [start, end] around a sleep, so overlaps within a key would show."""
    r = key_pool.redis
    start = now_us(r)
    time.sleep(sleep_ms / 1000)
    end = now_us(r)
    r.rpush(SPANS, json.dumps({"key": key, "i": i, "start": start, "end": end,
                               "pid": os.getpid()}))


@cron_pool.cron(1.0)
def tick() -> None:
    """Runs once per second-tick; records its own start and process."""
    r = cron_pool.redis
    r.rpush(TICKS, f"{now_us(r)}:{os.getpid()}")


@config_pool.job()
def quick(i: int) -> None:
    """Record its start."""
    r = config_pool.redis
    r.rpush(QUICK, f"{now_us(r)}:{i}")
