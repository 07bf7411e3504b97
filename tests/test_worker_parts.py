"""The worker's parts, each on its own against a real Redis: the reader (entries from the
dispatch stream into free slots, and the ones delivered to it but never seen), the liveness
(heartbeat, stall checks, self-fencing) and the executor (one attempt or delivery in, one typed
Outcome out). Redis state a part reads (the consumer group, a job's hash) is set up by hand."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import redis
import redis.asyncio
from helpers import Pools, free_port
from structlog.testing import capture_logs

from workpool import Result, Workpool, current
from workpool.core.config import PoolConfig
from workpool.core.logs import logger
from workpool.errors import NonRetryableError
from workpool.server import connection
from workpool.wire.keys import GROUP, Keys
from workpool.wire.protocol import Encoding, encode
from workpool.worker import reader as reader_module
from workpool.worker.executor import Executor
from workpool.worker.liveness import Liveness, still_current
from workpool.worker.outbox import Outbox
from workpool.worker.outcome import Outcome
from workpool.worker.reader import Reader
from workpool.worker.threads import THREAD_PREFIX, AttemptTimedOut, JobThreads

pytestmark = pytest.mark.topologies  # each test on one server and on a cluster

LOG = logger(test="worker-parts")
Entry = dict[str, bytes]


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll `predicate` on the event loop until it holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            msg = f"still not true after {timeout} s: {what or predicate!r}"
            raise AssertionError(msg)
        await asyncio.sleep(0.01)  # poll interval, not a wait for the condition itself


async def holds(predicate: Callable[[], object], seconds: float) -> bool:
    """True if `predicate()` holds at every poll for `seconds` (an absence needs a window)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        await asyncio.sleep(0.01)  # poll interval
    return True


@asynccontextmanager
async def async_client(url: str) -> Any:
    """An asyncio client on `url`, closed afterwards."""
    client = connection.async_client(url)
    try:
        yield client
    finally:
        await client.aclose()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a test's coroutine on a fresh event loop; a hang fails it instead of the session."""
    asyncio.run(asyncio.wait_for(main, 20.0))


def unreachable_url() -> str:
    """A Redis URL nothing listens on: any command sent there fails."""
    return f"redis://127.0.0.1:{free_port()}/0"


# -- the reader ------------------------------------------------------------------------------


@pytest.fixture
def dispatch(redis_client: redis.Redis) -> Iterator[Keys]:
    """The keys of a pool whose dispatch stream and consumer group exist (empty)."""
    keys = Keys("parts")
    redis_client.xgroup_create(keys.dispatch, GROUP, id="0", mkstream=True)
    yield keys


def add_entries(r: redis.Redis, keys: Keys, n: int, first: int = 0) -> list[bytes]:
    """XADD `n` attempt entries to the dispatch stream; their ids, oldest first."""
    return [cast("bytes", r.xadd(keys.dispatch, {"kind": "run", "id": f"j{i}", "attempt": "1"}))
            for i in range(first, first + n)]


def delivered_to(r: redis.Redis, keys: Keys, consumer: str) -> list[bytes]:
    """The ids in `consumer`'s pending list (delivered to it, not acknowledged)."""
    return [cast("bytes", p["message_id"]) for p in
            r.xpending_range(keys.dispatch, GROUP, "-", "+", 100, consumer)]


class Runs:
    """A reader's `run`: records each call; each run blocks until `gate` lets it end."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Entry, float, float]] = []
        self.gate = asyncio.Semaphore(0)
        self.cancelled: list[bytes] = []

    async def __call__(self, entry_id: bytes, f: Entry, read_at: float,
                       received: float) -> None:
        self.calls.append((entry_id, f, read_at, received))
        try:
            await self.gate.acquire()
        except asyncio.CancelledError:
            self.cancelled.append(entry_id)
            raise

    @property
    def ids(self) -> list[bytes]:
        return [c[0] for c in self.calls]


def reader_for(dispatch: Keys, slots: int, *, stuck: Callable[[], int] = lambda: 0,
               check_every: float = 60.0) -> tuple[Runs, asyncio.Event, Reader]:
    """A reader of consumer w1 with `slots` slots, what it runs, and its halt event."""
    runs, halt = Runs(), asyncio.Event()
    return runs, halt, Reader(dispatch, "w1", slots, halt, LOG, stuck=stuck, run=runs,
                              check_every=check_every)


async def stop_reader(reader: Reader, task: asyncio.Task[None], halt: asyncio.Event) -> None:
    """Halt the reader, wait for read_forever to return, cancel what still runs."""
    halt.set()
    reader.freed()
    await asyncio.wait_for(task, 5.0)
    await asyncio.wait_for(reader.drain(0.05), 5.0)


def test_the_reader_takes_no_more_entries_than_it_has_free_slots(
        redis_url: str, redis_client: redis.Redis, dispatch: Keys) -> None:
    ids = add_entries(redis_client, dispatch, 5)

    async def main() -> None:
        runs, halt, reader = reader_for(dispatch, 2)
        async with async_client(redis_url) as client:
            task = asyncio.create_task(reader.read_forever(client))
            await until(lambda: len(runs.calls) == 2, what="two entries taken")
            assert await holds(lambda: len(runs.calls) == 2, 0.7)  # over a blocking read
            assert runs.ids == ids[:2]
            assert len(reader.inflight) == 2
            assert delivered_to(redis_client, dispatch, "w1") == ids[:2]  # rest undelivered
            for _, _, read_at, received in runs.calls:
                assert read_at <= received <= time.monotonic()
            runs.gate.release()  # one entry ends: one slot, one more entry
            await until(lambda: len(runs.calls) == 3, what="a third entry taken")
            assert await holds(lambda: len(runs.calls) == 3, 0.6)
            assert runs.ids == ids[:3]
            assert delivered_to(redis_client, dispatch, "w1") == ids[:3]
            await stop_reader(reader, task, halt)
        assert not reader.inflight
        assert sorted(runs.cancelled) == sorted(ids[1:3])  # drain cancelled the two running

    run(main())


def test_a_reader_whose_slots_are_all_stuck_reads_nothing_until_one_comes_back(
        redis_url: str, redis_client: redis.Redis, dispatch: Keys) -> None:
    ids = add_entries(redis_client, dispatch, 3)
    stuck = [2]

    async def main() -> None:
        runs, halt, reader = reader_for(dispatch, 2, stuck=lambda: stuck[0])
        async with async_client(redis_url) as client:
            task = asyncio.create_task(reader.read_forever(client))
            assert await holds(lambda: not runs.calls, 0.6)
            assert redis_client.xpending(dispatch.dispatch, GROUP)["pending"] == 0
            stuck[0] = 1  # a stuck thread came back
            reader.freed()
            await until(lambda: len(runs.calls) == 1, what="one entry taken")
            assert await holds(lambda: len(runs.calls) == 1, 0.6)
            assert delivered_to(redis_client, dispatch, "w1") == ids[:1]
            await stop_reader(reader, task, halt)

    run(main())


def test_an_entry_delivered_but_never_seen_is_run_once_by_take_unseen(
        redis_url: str, redis_client: redis.Redis, dispatch: Keys) -> None:
    ids = add_entries(redis_client, dispatch, 4)
    # a read by our consumer whose reply was lost: two entries delivered to w1, never seen
    redis_client.xreadgroup(GROUP, "w1", {dispatch.dispatch: ">"}, count=2)
    redis_client.xreadgroup(GROUP, "w2", {dispatch.dispatch: ">"}, count=1)  # someone else's
    # ids[3] is still undelivered: not ours to run

    async def main() -> None:
        runs, _, reader = reader_for(dispatch, 4)
        async with async_client(redis_url) as client:
            await reader.take_unseen(client)
            await until(lambda: len(runs.calls) == 2, what="the unseen entries run")
            assert runs.ids == ids[:2]
            assert [c[2] for c in runs.calls] == [-math.inf, -math.inf]  # read time unknown
            assert runs.calls[0][1] == {"kind": b"run", "id": b"j0", "attempt": b"1"}
            await reader.take_unseen(client)  # still pending, and running: not run again
            assert await holds(lambda: len(runs.calls) == 2, 0.2)
            runs.gate.release()
            runs.gate.release()
            await until(lambda: not reader.inflight, what="both runs ended")
            await reader.take_unseen(client)  # ended but not acknowledged: still not again
            assert await holds(lambda: len(runs.calls) == 2, 0.2)
        pending = redis_client.xpending_range(dispatch.dispatch, GROUP, "-", "+", 10, "w1")
        assert [p["times_delivered"] for p in pending] == [1, 1]  # the checks read only

    run(main())


def test_a_reader_makes_its_inbox_and_runs_an_unseen_entry_there_whatever_its_id(
        redis_url: str, redis_client: redis.Redis, dispatch: Keys) -> None:
    """The inbox (the replays of the workflows a worker keeps) is read with the dispatch
    stream; an entry of either is told apart by its stream too, as ids repeat across streams
    (keyed by id alone, an unseen inbox entry whose id a dispatch entry had was never run)."""
    inbox = dispatch.inbox("w1")

    async def main() -> None:
        runs, halt, reader = reader_for(dispatch, 1)
        async with async_client(redis_url) as client:
            task = asyncio.create_task(reader.read_forever(client))
            await until(lambda: bool(redis_client.exists(inbox)), what="its inbox made")
            redis_client.xadd(dispatch.dispatch, {"kind": "run", "id": "j0", "attempt": "1"},
                              id="5-1")
            await until(lambda: len(runs.calls) == 1, what="the dispatch entry run")
            # its one slot busy, it reads no more: an inbox entry with the same id, delivered
            # to it by a read whose reply was lost
            redis_client.xadd(inbox, {"kind": "wf", "id": "f", "gen": "2"}, id="5-1")
            redis_client.xreadgroup(GROUP, "w1", {inbox: ">"})
            await reader.take_unseen(client)
            await until(lambda: len(runs.calls) == 2, what="the unseen inbox entry run")
            assert runs.calls[1][1]["kind"] == b"wf"
            await reader.take_unseen(client)  # both known now: neither runs again
            assert await holds(lambda: len(runs.calls) == 2, 0.2)
            runs.gate.release()
            runs.gate.release()
            await stop_reader(reader, task, halt)

    run(main())


def test_a_reader_that_starts_before_any_main_loop_waits_quietly_for_the_group(
        redis_url: str, redis_client: redis.Redis) -> None:
    """Regression: joining the group before it existed raised "requires the key to exist",
    not NOGROUP, and every worker started before its main loop logged an error."""
    keys = Keys("early")

    async def main() -> None:
        runs, halt, reader = reader_for(keys, 1)
        async with async_client(redis_url) as client:
            with capture_logs() as logs:
                task = asyncio.create_task(reader.read_forever(client))
                assert await holds(lambda: not runs.calls, 0.5)
                redis_client.xgroup_create(keys.dispatch, GROUP, id="0", mkstream=True)
                await until(lambda: bool(redis_client.exists(keys.inbox("w1"))),
                            what="its inbox made once the group is there")
                redis_client.xadd(keys.dispatch, {"kind": "run", "id": "j0", "attempt": "1"})
                await until(lambda: len(runs.calls) == 1, what="the entry run")
            assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
            runs.gate.release()
            await stop_reader(reader, task, halt)

    run(main())


def test_an_unseen_entry_behind_a_full_page_of_running_ones_still_runs(
        redis_url: str, redis_client: redis.Redis, dispatch: Keys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """take_unseen once read only the first page of our pending list: entries still running
    filled it, and an entry never seen behind them waited for them (forever, for jobs with no
    timeout). The page is lowered to 2 here, as if 256 long attempts were running."""
    monkeypatch.setattr(reader_module, "PENDING_PAGE", 2)
    add_entries(redis_client, dispatch, 6)

    async def main() -> None:
        runs, halt, reader = reader_for(dispatch, 6)
        async with async_client(redis_url) as client:
            task = asyncio.create_task(reader.read_forever(client))
            await until(lambda: len(runs.calls) == 6, what="every slot runs a long attempt")
            more = add_entries(redis_client, dispatch, 4, first=6)
            # four more delivered to w1 by a read whose reply was lost
            redis_client.xreadgroup(GROUP, "w1", {dispatch.dispatch: ">"}, count=4)
            await reader.take_unseen(client)
            await until(lambda: len(runs.calls) == 10, what="the unseen entries run")
            assert runs.ids[6:] == more
            await reader.take_unseen(client)  # every entry now known: none runs twice
            assert await holds(lambda: len(runs.calls) == 10, 0.2)
            await stop_reader(reader, task, halt)

    run(main())


def test_the_readers_periodic_check_runs_an_unseen_entry_and_never_reruns_its_own(
        redis_url: str, redis_client: redis.Redis, dispatch: Keys) -> None:
    unseen = add_entries(redis_client, dispatch, 1)
    redis_client.xreadgroup(GROUP, "w1", {dispatch.dispatch: ">"}, count=1)  # reply lost
    read = add_entries(redis_client, dispatch, 2, first=1)

    async def main() -> None:
        runs, halt, reader = reader_for(dispatch, 4, check_every=0.05)
        async with async_client(redis_url) as client:
            task = asyncio.create_task(reader.read_forever(client))
            await until(lambda: len(runs.calls) == 3, what="all three entries run")
            assert await holds(lambda: len(runs.calls) == 3, 0.8)  # many checks meanwhile
            assert runs.ids == unseen + read
            assert runs.calls[0][2] == -math.inf
            assert all(math.isfinite(c[2]) for c in runs.calls[1:])
            await stop_reader(reader, task, halt)

    run(main())


def test_a_reader_waits_for_the_consumer_group_and_drain_lets_quick_entries_finish(
        redis_url: str, redis_client: redis.Redis) -> None:
    keys = Keys("nogroup")
    finished: list[bytes] = []

    async def quick(entry_id: bytes, f: Entry, read_at: float, received: float) -> None:
        await asyncio.sleep(0.05)
        finished.append(entry_id)

    async def main() -> None:
        halt = asyncio.Event()
        reader = Reader(keys, "w1", 3, halt, LOG, stuck=lambda: 0, run=quick,
                        check_every=60.0)
        async with async_client(redis_url) as client:
            task = asyncio.create_task(reader.read_forever(client))
            assert await holds(lambda: not task.done(), 0.3)  # NOGROUP: waits, never ends
            redis_client.xgroup_create(keys.dispatch, GROUP, id="0", mkstream=True)
            ids = add_entries(redis_client, keys, 2)
            await until(lambda: len(reader.inflight) + len(finished) == 2, what="taken")
            halt.set()
            reader.freed()
            await asyncio.wait_for(task, 5.0)
            await reader.drain(5.0)  # within the grace: they end by themselves
        assert sorted(finished) == sorted(ids)
        assert not reader.inflight

    run(main())


# -- the liveness ----------------------------------------------------------------------------


def set_job(r: redis.Redis, keys: Keys, job_id: str, state: str, attempts: int) -> None:
    r.hset(keys.job(job_id), mapping={"state": state, "attempts": str(attempts)})


def test_beat_once_writes_the_heartbeat_with_its_ttl_and_stop_deletes_it(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("beat", heartbeat_ttl=2.0)
    key = pool.keys.heartbeat("w1")

    async def main() -> None:
        async with async_client(redis_url) as client:
            liveness = Liveness(pool.config, "w1", client, asyncio.Event(), LOG)
            assert liveness.key == key
            await liveness.beat_once("first")
            assert redis_client.get(key) == b"first"
            assert 1500 < redis_client.pttl(key) <= 2000
            await liveness.stop()
            assert not redis_client.exists(key)

    run(main())


def test_the_heartbeat_thread_keeps_the_key_and_stop_ends_it_and_deletes_the_key(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("beats", heartbeat_ttl=0.6)
    key = pool.keys.heartbeat("w1")

    async def main() -> None:
        ended = asyncio.Event()
        async with async_client(redis_url) as client:
            liveness = Liveness(pool.config, "w1", client, asyncio.Event(), LOG)
            liveness.start(lambda: "alive", ended.set)
            await until(lambda: redis_client.get(key) == b"alive", what="first beat")
            # beats every ttl/3: the key outlives its own 0.6 s TTL
            assert await holds(lambda: redis_client.exists(key), 1.0)
            assert not liveness.stalled(time.monotonic(), time.monotonic())
            await liveness.stop()
            assert not redis_client.exists(key)
            await asyncio.wait_for(ended.wait(), 2.0)  # the thread said it stopped
            assert await holds(lambda: not redis_client.exists(key), 0.4)  # no beat after

    run(main())


def test_an_attempt_is_mine_only_while_its_job_runs_that_very_attempt(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("mine")
    keys = pool.keys
    set_job(redis_client, keys, "a", "running", 2)
    set_job(redis_client, keys, "b", "done", 1)

    async def main() -> None:
        async with async_client(redis_url) as client:
            assert await still_current(client, keys, []) == []
            asked = [("a", 2), ("a", 1), ("a", 3), ("b", 1), ("missing", 1)]
            assert await still_current(client, keys, asked) == [True, False, False, False,
                                                                False]
            liveness = Liveness(pool.config, "w1", client, asyncio.Event(), LOG)
            assert await liveness.mine("a", 2)
            assert not await liveness.mine("a", 1)
            assert not await liveness.mine("missing", 1)
            set_job(redis_client, keys, "a", "retrying", 2)  # its attempt 2 ended
            assert not await liveness.mine("a", 2)

    run(main())


def test_confirmed_asks_redis_only_after_a_possible_stall(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("confirm", heartbeat_ttl=2.0)
    set_job(redis_client, pool.keys, "ours", "running", 1)

    async def main() -> None:
        now = time.monotonic()
        # no stall since the read: confirmed at once, Redis never asked (it is not even there)
        async with async_client(unreachable_url()) as nowhere:
            alone = Liveness(pool.config, "w1", nowhere, asyncio.Event(), LOG)
            assert not alone.stalled(now, now)
            assert alone.stalled(-math.inf, now)  # a read of unknown time
            assert alone.stalled(now - 1.5, now - 1.5)  # over half a TTL since it came
            at = await asyncio.wait_for(alone.confirmed("given-away", 1, now, now), 1.0)
            assert at is not None
            assert now <= at <= time.monotonic()
        async with async_client(redis_url) as client:
            halt = asyncio.Event()
            liveness = Liveness(pool.config, "w1", client, halt, LOG)
            assert await liveness.confirmed("given-away", 1, -math.inf, now) is None
            assert await liveness.confirmed("ours", 2, now - 1.5, now - 1.5) is None
            before = time.monotonic()
            at = await liveness.confirmed("ours", 1, -math.inf, now)
            assert at is not None
            assert before <= at <= time.monotonic()
            halt.set()  # a stopping worker begins nothing it would have to check
            assert await liveness.confirmed("ours", 1, -math.inf, now) is None
            assert await liveness.confirmed("ours", 1, now, now) is not None  # no stall

    run(main())


def test_fence_cancels_a_held_attempt_given_away_and_leaves_the_current_one(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("fence")
    set_job(redis_client, pool.keys, "kept", "running", 1)
    set_job(redis_client, pool.keys, "lost", "running", 2)  # its attempt 1 went elsewhere

    async def main() -> None:
        async with async_client(redis_url) as client:
            liveness = Liveness(pool.config, "w1", client, asyncio.Event(), LOG)
            forever = asyncio.Event()

            async def attempt(job_id: str, number: int) -> None:
                task = cast("asyncio.Task[Any]", asyncio.current_task())
                liveness.hold(task, job_id, number)
                try:
                    await forever.wait()
                finally:
                    liveness.release(task)

            kept = asyncio.create_task(attempt("kept", 1))
            lost = asyncio.create_task(attempt("lost", 1))
            await until(lambda: liveness.running == 2, what="both attempts held")
            await liveness.fence()
            await until(lost.done, what="the attempt given away ends")
            assert lost.cancelled()
            assert await holds(lambda: not kept.done(), 0.2)
            assert liveness.running == 1
            await liveness.fence()  # asked again: the current one is still left alone
            assert await holds(lambda: not kept.done(), 0.2)
            forever.set()
            await kept
            assert liveness.running == 0

    run(main())


def test_fence_cancels_nothing_when_redis_cannot_answer(pools: Pools) -> None:
    pool = pools("fenceless")

    async def main() -> None:
        async with async_client(unreachable_url()) as nowhere:
            liveness = Liveness(pool.config, "w1", nowhere, asyncio.Event(), LOG)
            await liveness.beat_once("ignored")  # an outage is not an error here
            forever = asyncio.Event()

            async def attempt() -> None:
                task = cast("asyncio.Task[Any]", asyncio.current_task())
                liveness.hold(task, "j", 1)
                try:
                    await forever.wait()
                finally:
                    liveness.release(task)

            task = asyncio.create_task(attempt())
            await until(lambda: liveness.running == 1)
            await asyncio.wait_for(liveness.fence(), 5.0)
            assert await holds(lambda: not task.done(), 0.2)
            forever.set()
            await task

    run(main())


# -- the executor ----------------------------------------------------------------------------


def entry(job_id: str, name: str, *args: Any, attempt: int = 1, enc: str = "msgpack",
          timeout_ms: int | None = None) -> Entry:
    """The fields of an attempt entry as the main loop dispatches it."""
    kind: Encoding = "json" if enc == "json" else "msgpack"
    f = {"kind": b"run", "id": job_id.encode(), "name": name.encode(),
         "attempt": str(attempt).encode(), "args": encode(list(args), kind),
         "kwargs": encode({}, kind), "enc": enc.encode()}
    if timeout_ms is not None:
        f["timeout_ms"] = str(timeout_ms).encode()
    return f


class Parts:
    """An Executor over a real Liveness, for one test's event loop."""

    def __init__(self, config: PoolConfig, client: redis.asyncio.Redis) -> None:
        self.changes = 0
        self.threads = JobThreads(2, self._changed)
        self.liveness = Liveness(config, "w1", client, asyncio.Event(), LOG)
        self.outbox = Outbox(config.keys.pending_completion, LOG)
        self.executor = Executor(config, "w1", self.liveness, threads=self.threads,
                                 children=None, outbox=self.outbox, log=LOG)

    def _changed(self) -> None:
        self.changes += 1

    async def attempt(self, f: Entry, read_at: float | None = None) -> Outcome | None:
        now = time.monotonic()
        return await self.executor.attempt(f, now if read_at is None else read_at, now,
                                           time.time())


@asynccontextmanager
async def parts(pool: Workpool, url: str) -> Any:
    async with async_client(url) as client:
        made = Parts(pool.config, client)
        try:
            yield made
        finally:
            made.threads.shutdown()


def test_sync_and_async_jobs_succeed_with_their_encoded_results(
        pools: Pools, redis_url: str) -> None:
    pool = pools("exec-ok")
    seen: list[tuple[str, int, str, str]] = []

    @pool.job()
    def add(a: int, b: int) -> int:
        run = current()
        seen.append((run.job_id, run.attempt, run.worker_id, threading.current_thread().name))
        return a + b

    @pool.job()
    async def mul(a: int, b: int) -> dict[str, int]:
        return {"product": a * b, "attempt": current().attempt}

    async def main() -> None:
        async with parts(pool, redis_url) as p:
            out = await p.attempt(entry("j1", "add", 1, 2, attempt=3))
            assert out == Outcome("run", "j1", "3", ok=True, result=encode(3), worker="w1")
            assert out.fields() == {"kind": "run", "id": "j1", "attempt": "3", "ok": "1",
                                    "result": encode(3), "worker": "w1"}
            assert seen[0][:3] == ("j1", 3, "w1")
            assert seen[0][3].startswith(THREAD_PREFIX)  # a sync job runs on a job thread
            out = await p.attempt(entry("j2", "mul", 6, 7, attempt=2, enc="json"))
            assert out == Outcome("run", "j2", "2", ok=True,
                                  result=b'{"product":42,"attempt":2}', worker="w1")

    run(main())


def test_a_jobs_error_gives_a_failed_outcome_retryable_unless_final(
        pools: Pools, redis_url: str) -> None:
    pool = pools("exec-err")

    @pool.job()
    def boom() -> None:
        raise ValueError("it went boom")

    @pool.job()
    async def refuse() -> None:
        raise NonRetryableError("never again")

    async def main() -> None:
        async with parts(pool, redis_url) as p:
            out = await p.attempt(entry("j1", "boom"))
            assert out is not None
            assert (out.ok, out.retryable, out.error_type) == (False, True, "ValueError")
            assert "it went boom" in (out.error or "")
            assert out.fields()["ok"] == "0"
            assert out.fields()["retryable"] == "1"
            out = await p.attempt(entry("j2", "refuse"))
            assert out is not None
            assert (out.ok, out.retryable, out.error_type) == \
                (False, False, "NonRetryableError")
            assert "never again" in (out.error or "")
            out = await p.attempt(entry("j3", "unregistered"))
            assert out is not None
            assert (out.ok, out.retryable, out.error_type) == (False, False, "UnknownJobName")

    run(main())


def test_a_result_over_max_result_bytes_is_payload_too_large_and_not_retried(
        pools: Pools, redis_url: str) -> None:
    pool = pools("exec-big", max_result_bytes=100)

    @pool.job()
    def sized(n: int) -> bytes:
        return b"x" * n

    async def main() -> None:
        async with parts(pool, redis_url) as p:
            out = await p.attempt(entry("big", "sized", 500))
            assert out is not None
            assert (out.ok, out.retryable, out.error_type, out.result) == \
                (False, False, "PayloadTooLarge", None)
            assert "max_result_bytes" in (out.error or "")
            small = await p.attempt(entry("small", "sized", 10))
            assert small is not None
            assert (small.ok, small.result) == (True, encode(b"x" * 10))

    run(main())


def test_a_job_past_its_timeout_ends_as_timeout_and_a_stuck_thread_is_counted(
        pools: Pools, redis_url: str) -> None:
    pool = pools("exec-timeout")
    release = threading.Event()

    @pool.job()
    async def waits() -> None:
        await asyncio.Event().wait()

    @pool.job()
    def blocks() -> None:
        release.wait(10)

    async def main() -> None:
        async with parts(pool, redis_url) as p:
            started = time.monotonic()
            out = await p.attempt(entry("a", "waits", timeout_ms=100))
            assert out is not None
            assert (out.ok, out.retryable, out.error_type) == (False, True, "Timeout")
            assert time.monotonic() - started < 2.0
            try:
                out = await p.attempt(entry("s", "blocks", timeout_ms=100))
                assert out is not None
                assert (out.ok, out.error_type) == (False, "Timeout")
                assert (p.threads.stuck, p.changes) == (1, 1)  # its thread goes on
            finally:
                release.set()
            await until(lambda: p.threads.stuck == 0, what="the thread came back")
            assert p.changes == 2

    run(main())


def test_a_sync_call_raising_stop_iteration_ends_with_an_error_instead_of_hanging() -> None:
    def exhausted() -> int:
        return next(iter([]))  # raises StopIteration, which no asyncio future can carry

    async def main() -> None:
        threads = JobThreads(1, lambda: None)
        try:
            with pytest.raises(RuntimeError, match="StopIteration") as raised:
                await asyncio.wait_for(threads.run(exhausted, (), {}, None), 5.0)
            assert isinstance(raised.value.__cause__, StopIteration)
            assert await threads.run(int, ("7",), {}, None) == 7  # and the next call comes back
        finally:
            threads.shutdown()

    run(main())


def test_sync_calls_ending_together_each_get_their_own_result_or_error() -> None:
    """Calls that end while the loop is busy come back in one wake-up: each still gets its own
    result or exception, and a call given up on before its thread took it never runs."""
    ran: list[int] = []
    gate = threading.Barrier(8)

    def work(i: int) -> int:
        gate.wait(5)  # eight end at once: their returns pile up for one drain
        ran.append(i)
        if i % 3 == 0:
            raise ValueError(i)
        return i * 10

    async def one(threads: JobThreads, i: int) -> object:
        try:
            return await threads.run(work, (i,), {}, None)
        except ValueError as exc:
            return exc.args

    async def main() -> None:
        threads = JobThreads(8, lambda: None)
        try:
            got = await asyncio.gather(*(one(threads, i) for i in range(64)))
            assert got == [(i,) if i % 3 == 0 else i * 10 for i in range(64)]
            release, holding = threading.Event(), []

            def hold() -> bool:
                holding.append(1)
                return release.wait(10)

            held = [asyncio.ensure_future(threads.run(hold, (), {}, None)) for _ in range(8)]
            await until(lambda: len(holding) == 8, what="every thread held")
            with pytest.raises(AttemptTimedOut):  # every thread is busy: it never starts
                await threads.run(ran.append, (-1,), {}, 0.05)
            release.set()
            assert await asyncio.gather(*held) == [True] * 8
            # Eight more meet at the barrier, so each thread has finished whatever it took
            # before them, the call given up on included, had it been run.
            more = range(100, 108)
            assert await asyncio.gather(*(one(threads, i) for i in more)) == \
                [(i,) if i % 3 == 0 else i * 10 for i in more]
            assert -1 not in ran
        finally:
            threads.shutdown()

    run(main())


def test_an_attempt_no_longer_ours_after_a_stall_is_not_run(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("exec-stall")
    ran: list[str] = []

    @pool.job()
    def work() -> str:
        ran.append(current().job_id)
        return "worked"

    set_job(redis_client, pool.keys, "newer", "running", 2)  # attempt 1 was given away
    set_job(redis_client, pool.keys, "ours", "running", 1)

    async def main() -> None:
        async with parts(pool, redis_url) as p:
            assert await p.attempt(entry("gone", "work"), read_at=-math.inf) is None
            assert await p.attempt(entry("newer", "work"), read_at=-math.inf) is None
            assert ran == []
            assert p.liveness.running == 0
            out = await p.attempt(entry("ours", "work"), read_at=-math.inf)
            assert out == Outcome("run", "ours", "1", ok=True, result=encode("worked"),
                                  worker="w1")
            assert ran == ["ours"]

    run(main())


def test_a_delivery_runs_its_handler_once_and_a_superseded_one_not_at_all(
        pools: Pools, redis_url: str, redis_client: redis.Redis) -> None:
    pool = pools("exec-cb")
    calls: list[tuple[str, Result, Any, int]] = []

    @pool.on_complete()
    def notify(job_id: str, result: Result, context: Any) -> None:
        calls.append((job_id, result, context, current().delivery))

    redis_client.hset(pool.keys.job("j"), mapping={
        "state": "done", "name": "add", "attempts": "1", "max_attempts": "3",
        "outcome": "succeeded", "result": encode(3), "enc": "msgpack", "cb": "pending",
        "cb_n": "2", "on_complete": "notify", "context": encode({"k": "v"})})
    cb: Entry = {"kind": b"cb", "id": b"j", "n": b"2"}

    async def main() -> None:
        async with parts(pool, redis_url) as p:
            now = time.monotonic()
            out = await p.executor.deliver(cb, now, now, time.time())
            assert out == Outcome("cb", "j", "2", ok=True)
            assert out.fields() == {"kind": "cb", "id": "j", "n": "2", "ok": "1"}
            assert calls == [("j", Result("succeeded", value=3), {"k": "v"}, 2)]
            old = {**cb, "n": b"1"}  # re-issued since as delivery 2
            assert await p.executor.deliver(old, now, now, time.time()) is None
            redis_client.hset(pool.keys.job("j"), "cb", "done")  # closed by the main loop
            assert await p.executor.deliver(cb, now, now, time.time()) is None
            assert len(calls) == 1

    run(main())
