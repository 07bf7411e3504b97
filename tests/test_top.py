"""`workpool top`: one pool's live view, checked against a pool whose real worker ran known jobs
(the frame rendered as text, as a terminal shows it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from helpers import Pools, ran_some
from rich.console import Console

from workpool import Workpool
from workpool.cli import demo
from workpool.cli.main import cli
from workpool.operate.top import read, render

WIDE = {"COLUMNS": "200", "LINES": "60"}


@pytest.fixture
def ran(pools: Pools) -> Iterator[Workpool]:
    """Pool `seen` after its worker ran three `double` jobs and one `broken` job."""
    with ran_some(pools("seen", max_parallelism=7)) as pool:
        yield pool


def test_top_once_shows_the_pool_its_job_names_and_its_latest_failure(
        ran: Workpool, redis_url: str) -> None:
    result = CliRunner(env=WIDE).invoke(cli, ["--redis-url", redis_url, "top", "seen",
                                              "--once"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "pool seen" in lines[0] and "workers 1" in lines[0]
    assert any(line.split()[:3] == ["running", "0", "of"] and "7" in line for line in lines)
    double = next(line for line in lines if "double" in line).split("│")
    assert [c.strip() for c in double[2:7]] == ["3", "3", "3", "0", "0"]
    failure = next(line for line in lines if "broken" in line and "Error" in line)
    assert "NonRetryableError: the mail server said no" in failure


def test_top_shows_rates_over_the_interval(ran: Workpool) -> None:
    before = read(ran)
    for job in [ran.enqueue("double", i) for i in range(5)]:
        ran.wait(job, timeout=30)
    now = read(ran)
    console = Console(record=True, width=200)
    console.print(render(now, before))
    text = console.export_text()
    span = now.at - before.at
    assert f"succeeded {5 / span:.1f}/s" in text


def test_top_of_a_pool_that_is_not_there_says_so(redis_url: str) -> None:
    result = CliRunner().invoke(cli, ["--redis-url", redis_url, "top", "nothing", "--once"])
    assert result.exit_code == 1
    assert "no pool named 'nothing'" in result.output


def test_top_refuses_a_bad_interval() -> None:
    result = CliRunner().invoke(cli, ["top", "x", "--interval", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--interval'" in result.output


def test_the_demo_shows_a_bar_of_the_jobs_ended_in_a_terminal() -> None:
    console = Console(record=True, force_terminal=True, width=200)
    counts = {"pending": 3, "running": 2, "retrying": 0, "succeeded": 4, "failed": 1,
              "canceled": 1, "retries": 2, "handlers_run": 1}
    with demo.progress_bar(10, console=console) as report:
        report(1.5, counts)
    text = console.export_text()
    assert "6/10" in text
    assert "succeeded 4  failed 1" in text
