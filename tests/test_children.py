"""workpool.worker.children: sync jobs in spawned child processes that can be killed one by one.

Real processes run the jobs of tests/children_app.py; no Redis is involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from workpool.current import Running
from workpool.errors import ConfigurationError
from workpool.wire.protocol import decode, encode
from workpool.worker.children import ChildFailed, ChildLost, Children
from workpool.worker.threads import Stalled

TESTS_DIR = Path(__file__).resolve().parent
RUNNING = Running("job-1", "a-job", 3, 0, "worker-1")
DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned children find children_app on PYTHONPATH, as a worker's children find the app."""
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one test scenario on a fresh event loop."""
    asyncio.run(main())


@asynccontextmanager
async def started(size: int = 1) -> AsyncIterator[Children]:
    """Children of children_app:pool, closed (and reaped) afterwards."""
    children = Children(size, "children_app:pool")
    await children.start()
    try:
        yield children
    finally:
        await children.close()


async def call(children: Children, name: str, *args: Any, enc: str = "msgpack",
               timeout: float | None = None) -> Any:
    """Run job `name` on `args` and decode its result."""
    packed = encode(list(args), "json" if enc == "json" else "msgpack")
    return decode(await children.run(name, packed, b"", enc, RUNNING, timeout), enc)


async def eventually(predicate: Callable[[], object], what: str) -> None:
    """Poll `predicate` until it is true, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"still not true after {DEADLINE} s: {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.01)  # poll interval


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie still does: it must have been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def gated_pid(pid_path: Path) -> int:
    """The pid a `gate` job wrote once it started."""
    await eventually(lambda: pid_path.exists() and pid_path.read_text(), "the gate job started")
    return int(pid_path.read_text())


def test_result_comes_back() -> None:
    async def main() -> None:
        async with started() as children:
            assert await call(children, "add", 2, 3) == 5
            assert await call(children, "add", 4, 5, enc="json") == 9
            assert children.busy == 0

    run_async(main)


def test_raising_job_fails_retryably_with_traceback() -> None:
    async def main() -> None:
        async with started() as children:
            with pytest.raises(ChildFailed) as failed:
                await call(children, "fail", "boom")
            assert (failed.value.error_type, failed.value.retryable) == ("ValueError", True)
            assert failed.value.message.startswith("boom\n")
            assert "in fail" in failed.value.message  # the job's own frame
            assert await call(children, "add", 1, 1) == 2

    run_async(main)


@pytest.mark.parametrize(("name", "args", "error_type"), [
    ("final", b"", "NonRetryableError"),
    ("no_such_job", b"", "UnknownJobName"),
    ("unencodable", b"", "SerializationError"),
    ("add", encode({"a": 1}), "SerializationError"),  # args must be a list
    ("add", b"\xc1", "SerializationError"),  # not msgpack at all
])
def test_final_errors_are_not_retryable(name: str, args: bytes, error_type: str) -> None:
    async def main() -> None:
        async with started() as children:
            with pytest.raises(ChildFailed) as failed:
                await children.run(name, args, b"", "msgpack", RUNNING, None)
            assert (failed.value.error_type, failed.value.retryable) == (error_type, False)

    run_async(main)


def test_base_exceptions_and_unprintable_ones_are_reported() -> None:
    async def main() -> None:
        async with started() as children:
            first = await call(children, "pid")
            for name, args, error_type in [("raise_base", ["exit"], "SystemExit"),
                                           ("raise_base", ["interrupt"], "KeyboardInterrupt"),
                                           ("unprintable", [], "Unprintable")]:
                with pytest.raises(ChildFailed) as failed:
                    await call(children, name, *args)
                assert (failed.value.error_type, failed.value.retryable) == (error_type, True)
            assert failed.value.message.startswith("<unprintable")
            assert await call(children, "pid") == first  # the same child served on

    run_async(main)


def test_child_death_is_lost_and_its_slot_rebuilt() -> None:
    async def main() -> None:
        async with started() as children:
            first = await call(children, "pid")
            with pytest.raises(ChildLost) as lost:
                await call(children, "die", 3)
            assert lost.value.exitcode == 3
            assert not alive(first)  # reaped, not a zombie
            assert await call(children, "add", 2, 2) == 4
            assert children.busy == 0

    run_async(main)


def test_timeout_kills_the_child_and_the_next_job_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with started() as children:
            with pytest.raises(asyncio.TimeoutError):
                await call(children, "gate", str(tmp_path / "pid"), str(tmp_path / "go"),
                           timeout=0.5)
            pid = await gated_pid(tmp_path / "pid")
            await eventually(lambda: not alive(pid), f"child {pid} killed and reaped")
            assert await call(children, "add", 3, 3) == 6

    run_async(main)


def test_cancelling_a_run_kills_its_child(tmp_path: Path) -> None:
    async def main() -> None:
        async with started() as children:
            task = asyncio.create_task(
                call(children, "gate", str(tmp_path / "pid"), str(tmp_path / "go")))
            pid = await gated_pid(tmp_path / "pid")
            assert children.busy == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually(lambda: not alive(pid), f"child {pid} killed and reaped")
            assert children.busy == 0
            assert await call(children, "add", 1, 2) == 3

    run_async(main)


def test_children_ignore_sigint(tmp_path: Path) -> None:
    async def main() -> None:
        async with started() as children:
            task = asyncio.create_task(
                call(children, "gate", str(tmp_path / "pid"), str(tmp_path / "go")))
            os.kill(await gated_pid(tmp_path / "pid"), signal.SIGINT)  # as Ctrl-C would
            (tmp_path / "go").touch()
            assert await task == "released"

    run_async(main)


def test_current_inside_the_child_is_the_running_passed() -> None:
    async def main() -> None:
        async with started() as children:
            assert await call(children, "whoami") == dataclasses.asdict(RUNNING)

    run_async(main)


def test_a_run_waits_for_an_idle_child(tmp_path: Path) -> None:
    async def main() -> None:
        async with started(size=1) as children:
            gated = asyncio.create_task(
                call(children, "gate", str(tmp_path / "pid"), str(tmp_path / "go")))
            await gated_pid(tmp_path / "pid")
            waiting = asyncio.create_task(call(children, "add", 5, 5))
            await asyncio.sleep(0)
            assert (children.busy, waiting.done()) == (1, False)
            (tmp_path / "go").touch()
            assert (await gated, await waiting) == ("released", 10)

    run_async(main)


def test_a_pool_that_cannot_be_imported_fails_start() -> None:
    async def main() -> None:
        children = Children(2, "no_such_module:pool")
        with pytest.raises(ConfigurationError, match="ModuleNotFoundError"):
            await children.start()
        assert not multiprocessing.active_children()  # the started ones were stopped, reaped

    run_async(main)


def test_child_exits_send_no_signal_to_the_parent(tmp_path: Path) -> None:
    async def main() -> None:
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            loop.add_signal_handler(sig, seen.append, sig.name)
        try:
            async with started() as children:
                with pytest.raises(ChildLost):
                    await call(children, "die", 3)
                with pytest.raises(asyncio.TimeoutError):
                    await call(children, "gate", str(tmp_path / "pid"), str(tmp_path / "go"),
                               timeout=0.3)
            # close() sent SIGTERM to the children. The loop handles signals in the order they
            # came, so once it has seen this SIGUSR1 it has seen any stray SIGTERM before it.
            os.kill(os.getpid(), signal.SIGUSR1)
            await eventually(lambda: seen, "the parent's own SIGUSR1 seen")
            assert seen == ["SIGUSR1"]
        finally:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                loop.remove_signal_handler(sig)

    run_async(main)


def test_a_tripped_guard_sends_nothing_and_keeps_the_child() -> None:
    # the worker's last chance to notice a stall between its check and the job's first
    # instruction: nothing reaches the child, which stays loaded for the next run
    async def main() -> None:
        async with started() as children:
            before = await call(children, "pid")
            packed = encode([2, 3], "msgpack")
            with pytest.raises(Stalled):
                await children.run("add", packed, b"", "msgpack", RUNNING, None, lambda: True)
            assert children.busy == 0
            assert await call(children, "pid") == before  # the same child, not replaced
            assert decode(await children.run("add", packed, b"", "msgpack", RUNNING, None,
                                             lambda: False), "msgpack") == 5

    run_async(main)
