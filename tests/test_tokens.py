"""The token protocol of a sharded pool (grantTokens) against a model, by hypothesis: shards
ask, renew, lapse (stop asking), start and end jobs below their tokens, change leaders, and
stale leaders ask too. After every step: the reservations add up to max_parallelism at most,
none is below what its shard runs (a running job's slot is never taken back), a stale loop is
refused with nothing written, and each answer is the one the model predicts."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from workpool.core.config import PoolConfig
from workpool.mainloop.tokens import Grant
from workpool.server.connection import async_client
from workpool.server.embedded import RedisServer
from workpool.wire.calls import Engine
from workpool.wire.codes import Code
from workpool.wire.keys import Keys
from workpool.wire.protocol import text
from workpool.wire.replies import StartReply
from workpool.wire.scripts import run

SHARDS = 3
FRESH_MS = 1_000


@dataclass
class Shard:
    """What the model knows of one shard."""

    epoch: int = 1  #: its current leader's
    seen: int = 0  #: the newest epoch the coordinator has seen asking (e:<i>)
    leader_asked: bool = False  #: its current leader has a grant (it starts nothing before)
    running: int = 0
    tokens: int = 0  #: what its last ask allows it to run up to
    reserved: int = 0  #: the coordinator's a:<i>
    demand: int = 0  #: the coordinator's d:<i>
    asked_at: int | None = None  #: the coordinator's t:<i>


@dataclass
class Model:
    maxp: int
    now: int = 1_000_000
    shards: list[Shard] = field(default_factory=lambda: [Shard() for _ in range(SHARDS)])

    def expected_tokens(self, i: int, demand: int) -> int:
        """The tokens the protocol gives shard i asking with `demand` (statemachine.md)."""
        others = [s for j, s in enumerate(self.shards) if j != i]
        wanting = [s for s in others if s.asked_at is not None
                   and self.now - s.asked_at <= FRESH_MS and s.demand > 0]
        unmet = sum(max(0, s.demand - s.reserved) for s in wanting)
        available = max(0, self.maxp - sum(s.reserved for s in others))
        desired = min(demand, math.ceil(self.maxp / (1 + len(wanting)))) if unmet else demand
        return min(desired, available)


class TokenMachine(RuleBasedStateMachine):
    """Drives the real script on a real Redis (the session's) against the model."""

    client: redis.Redis

    @initialize(maxp=st.integers(0, 12))
    def setup(self, maxp: int) -> None:
        self.client.flushall()
        self.model = Model(maxp)
        self.engines = [Engine(Keys("tok", i)) for i in range(SHARDS)]

    def _ask(self, i: int, epoch: int, demand: int) -> tuple[Code, int]:
        call = self.engines[i].grant(SHARDS, epoch, running=self.model.shards[i].running,
                                     demand=demand, maxp=self.model.maxp, fresh_ms=FRESH_MS,
                                     now=self.model.now)
        reply = call.parse(run(self.client, [call])[0])
        return reply.code, reply.tokens

    @rule(i=st.integers(0, SHARDS - 1), extra=st.integers(0, 15))
    def ask(self, i: int, extra: int) -> None:
        shard = self.model.shards[i]
        demand = shard.running + extra
        expected = self.model.expected_tokens(i, demand)
        assert self._ask(i, shard.epoch, demand) == (Code.OK, expected)
        shard.tokens, shard.reserved = expected, max(shard.running, expected)
        shard.demand, shard.asked_at = demand, self.model.now
        shard.seen, shard.leader_asked = shard.epoch, True

    @rule(i=st.integers(0, SHARDS - 1))
    def a_stale_loop_asks(self, i: int) -> None:
        shard = self.model.shards[i]
        if shard.seen <= 1:
            return
        before = self.client.hgetall(Keys("tok").tokens)
        assert self._ask(i, shard.seen - 1, shard.running + 5) == (Code.NOT_LEADER, 0)
        assert self.client.hgetall(Keys("tok").tokens) == before  # nothing written

    @rule(i=st.integers(0, SHARDS - 1))
    def a_new_leader(self, i: int) -> None:
        shard = self.model.shards[i]
        shard.epoch += 1
        shard.leader_asked = False  # it asks before it starts anything (cap 0 till then)

    @rule(i=st.integers(0, SHARDS - 1), n=st.integers(1, 12))
    def start(self, i: int, n: int) -> None:
        shard = self.model.shards[i]
        fresh = shard.asked_at is not None and self.model.now - shard.asked_at <= FRESH_MS
        if shard.leader_asked and fresh:  # a lapsed grant starts nothing
            shard.running += max(0, min(n, shard.tokens - shard.running))  # below them only

    @rule(i=st.integers(0, SHARDS - 1), n=st.integers(1, 8))
    def end(self, i: int, n: int) -> None:
        shard = self.model.shards[i]
        shard.running -= min(n, shard.running)

    @rule(ms=st.sampled_from([10, 300, 1_200]))
    def time_passes(self, ms: int) -> None:
        self.model.now += ms  # a shard that stops asking lapses: its demand no longer counts

    @invariant()
    def the_coordinator_holds_what_the_model_says(self) -> None:
        if not hasattr(self, "model"):
            return
        stored = {text(k): int(v) for k, v in self.client.hgetall(Keys("tok").tokens).items()}
        reserved = [stored.get(f"a:{i}", 0) for i in range(SHARDS)]
        assert reserved == [s.reserved for s in self.model.shards]
        assert sum(reserved) <= self.model.maxp
        assert all(s.running <= s.reserved for s in self.model.shards)


def test_the_token_protocol_against_its_model(redis_url: str) -> None:
    TokenMachine.client = redis.Redis.from_url(redis_url)
    try:  # cheap steps (one script call each): many examples, long runs
        run_state_machine_as_test(TokenMachine, settings=settings(
            max_examples=500, stateful_step_count=60, deadline=None))
    finally:
        TokenMachine.client.close()


def _asker(client: redis.Redis, pool: str) -> Callable[[int, int, int, int], int]:
    """ask(shard, running, demand, now): the tokens shard `shard` of `pool` gets (limit 12)."""
    def ask(i: int, running: int, demand: int, now: int) -> int:
        call = Engine(Keys(pool, i)).grant(SHARDS, 1, running=running, demand=demand, maxp=12,
                                           fresh_ms=FRESH_MS, now=now)
        return call.parse(run(client, [call])[0]).tokens
    return ask


def test_a_busy_shard_gets_every_slot_by_its_second_ask_once_idle_ones_ask(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ask = _asker(client, "busy")
    assert [ask(i, 0, 5, 0) for i in range(SHARDS)] == [5, 5, 2]  # all busy at first
    assert ask(0, 5, 40, 300) == 4  # its fair share (it keeps its 5 running), others want
    assert [ask(i, 0, 0, 330) for i in (1, 2)] == [0, 0]  # idle now: they give theirs back
    assert ask(0, 5, 40, 600) == 12  # the next ask (one period on) takes every slot
    client.close()


def test_a_shards_grant_lapses_one_lease_ttl_after_it_was_asked(redis_url: str) -> None:
    config = PoolConfig("lapse", redis_url, shards=2, shard=1, lease_ttl=1.0)
    grant = Grant(config, Engine(config.keys))
    ready = StartReply(Code.OK, 0, 0, 6, None, None, 0, None, 0, 0, 0, 3, "", [])  # 3 ready

    def ask(by: Grant, token: str) -> bool:
        async def asked() -> bool:
            client = async_client(redis_url)
            try:
                return await by.refresh(client, token, ready, None)
            finally:
                await client.aclose()
        return asyncio.run(asked())

    assert ask(grant, "4:loop-a")
    after = time.monotonic()
    assert grant.cap(after) == 3  # what it asked for: nothing else wants slots
    assert grant.cap(after + 1.0) == 0  # a lease TTL after it asked: it starts nothing
    grant.forget()  # its loop lost the shard's lease
    assert grant.cap(after) == 0
    assert ask(grant, "4:loop-a")  # the same epoch asks again: its own
    stale = Grant(config, Engine(config.keys))
    assert not ask(stale, "3:loop-old")  # an older epoch of the shard is refused
    assert stale.cap(time.monotonic()) == 0


def _permits(client: redis.Redis, shard: int, now: int, want: int, unused: int) -> int:
    call = Engine(Keys("rate", shard)).grant(
        SHARDS, 1, running=0, demand=want, maxp=100, fresh_ms=FRESH_MS, now=now,
        rate="10/1000", want=want, unused=unused)
    return call.parse(run(client, [call])[0]).permits


def test_the_pools_rate_limit_is_one_bucket_the_shards_take_permits_from(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert _permits(client, 0, 0, 8, 0) == 8  # a full bucket of 10
    assert _permits(client, 1, 0, 8, 0) == 2  # what is left, for another shard
    assert _permits(client, 2, 0, 8, 0) == 0
    assert _permits(client, 0, 500, 8, 3) == 8  # 5 refilled in 0.5 s, and 3 it did not use
    assert _permits(client, 1, 500, 1, 0) == 0
    client.close()


@settings(max_examples=200, deadline=None)
@given(asks=st.lists(st.tuples(st.integers(0, SHARDS - 1), st.integers(0, 400),
                               st.integers(0, 12), st.booleans()), min_size=1, max_size=40))
def test_the_shards_never_start_more_than_the_rate_allows(
        redis_server: RedisServer, asks: list[tuple[int, int, int, bool]]) -> None:
    client = redis.Redis.from_url(redis_server.url)  # (its own key, emptied each example)
    client.delete(Keys("rate").tokens)
    now, held, net = 0, [0] * SHARDS, 0
    for shard, later, want, used_all in asks:
        now += later
        unused = 0 if used_all else held[shard]  # give back what it did not start
        held[shard] = _permits(client, shard, now, want, unused)
        net += held[shard] - unused
        assert net <= 10 + now * 10 // 1000  # the bucket's capacity and its refill, no more
    client.close()


def test_a_shard_above_its_fair_share_starts_nothing_and_yields_as_its_jobs_end(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ask = _asker(client, "hog")
    assert ask(0, 0, 40, 0) == 12  # alone: every slot
    assert [ask(i, 0, 8, 10) for i in (1, 2)] == [0, 0]  # all taken (12 run on shard 0)
    assert ask(0, 12, 40, 300) == 4  # others want: its fair share, so it starts no more
    assert [ask(i, 0, 8, 310) for i in (1, 2)] == [0, 0]  # its 12 still run
    assert ask(0, 3, 40, 600) == 4  # 9 ended: it keeps 4
    assert [ask(i, 0, 8, 610) for i in (1, 2)] == [4, 4]  # and the others get theirs
    client.close()
