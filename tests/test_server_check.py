"""The Redis settings a new main-loop leader checks, and what it says about each."""

from __future__ import annotations

import asyncio

import redis

from workpool.mainloop.server_check import assess, check_server

SAFE = {"maxmemory-policy": "noeviction", "appendonly": "yes", "appendfsync": "always"}


def messages(config: dict[str, str], replication: dict[str, str] | None = None) -> list[str]:
    return [f"{f.level}: {f.message}" for f in assess(config, replication or {"role": "master"})]


def test_noeviction_with_aof_fsynced_always_and_no_replica_raises_nothing() -> None:
    assert messages(SAFE) == []


def test_an_evicting_memory_policy_is_a_warning_that_names_the_fix() -> None:
    (found,) = messages({**SAFE, "maxmemory-policy": "allkeys-lru"})
    assert found.startswith("warning:") and "maxmemory-policy noeviction" in found


def test_no_aof_is_a_warning_and_everysec_is_the_loss_window_stated() -> None:
    assert "appendonly yes" in messages({**SAFE, "appendonly": "no"})[0]
    assert messages({**SAFE, "appendfsync": "no"})[0].startswith("warning: appendfsync no")
    (everysec,) = messages({**SAFE, "appendfsync": "everysec"})
    assert everysec.startswith("info:") and "1 s" in everysec


def test_a_redis_older_than_6_2_is_an_error_that_names_the_minimum() -> None:
    (finding,) = assess(SAFE, {}, "6.0.16")
    assert finding.level == "error" and "6.2 or later" in finding.message
    assert assess(SAFE, {}, "6.2.14") == assess(SAFE, {}, "7.0.15") == []


def test_replicas_bring_the_failover_caveat() -> None:
    (found,) = messages(SAFE, {"role": "master", "connected_slaves": "1"})
    assert "failover can lose acknowledged writes" in found and "replicas=1" in found


def test_fewer_replicas_than_the_pool_waits_for_is_a_warning_and_enough_is_silent() -> None:
    (found,) = assess(SAFE, {"role": "master", "connected_slaves": "1"}, replicas=2)
    assert found.level == "warning" and "NotReplicated" in found.message
    assert assess(SAFE, {"role": "master", "connected_slaves": "1"}, replicas=1) == []


def test_the_leader_reads_the_settings_of_the_real_server(redis_url: str,
                                                          redis_client: redis.Redis) -> None:
    async def findings() -> list[str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return [f.message for f in await check_server(client)]
        finally:
            await client.aclose()

    assert [m.split(":")[0] for m in asyncio.run(findings())] == ["appendfsync everysec"]
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert any("maxmemory-policy=allkeys-lru" in m for m in asyncio.run(findings()))
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
