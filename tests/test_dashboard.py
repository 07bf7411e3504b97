"""The web dashboard in a real browser (headless Chromium driven by Playwright) against a real
pool with a real worker: the pages render and show what `stats` says, a cancel from the page
cancels the job, read-only mode hides and refuses actions, a wrong token is refused, a form
without its CSRF token is refused. Without Chromium these skip, saying why; CI installs it and
sets WORKPOOL_REQUIRE_BROWSER=1, which makes that skip a failure."""

from __future__ import annotations

import html
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from helpers import eventually, free_port, ran_some, running_worker

from workpool import ConfigurationError, State, WorkflowContext, Workpool
from workpool.cli.main import cli
from workpool.operate.dashboard.server import Dashboard, check_bind, serve
from workpool.wire.shards import shard_of

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    return os.environ.get("WORKPOOL_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's), or a skip that says why (a failure in CI)."""
    binary = _chromium()
    why = None
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        why = "the playwright package is not installed (pip install -e '.[dev]')"
    if binary is None:
        why = "no Chromium on this machine (apt-get install chromium; .ci/run does)"
    if why is not None:
        if os.environ.get("WORKPOOL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests must run here: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=binary, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def served(pools: list[Workpool], **options: Any) -> Iterator[str]:
    """A dashboard of `pools` on a free loopback port; its URL."""
    server = serve(Dashboard(pools, **options), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def board(redis_url: str) -> Iterator[Workpool]:
    """Pool `board` after its worker ran three jobs and one that failed; one job waits an
    hour."""
    with ran_some(Workpool("board", redis_url, max_parallelism=6)) as pool:
        yield pool
    pool.close()


def test_the_pages_render_and_show_what_stats_says(board: Workpool, browser: Any) -> None:
    later = board.enqueue("double", 9, run_after=3600)
    eventually(lambda: board.status(later).state == State.PENDING and board.stats().pending)
    stats = board.stats()
    with served([board]) as url:
        page = browser.new_page()
        page.goto(url + "/")
        row = page.locator("table.pools tbody tr").first
        assert row.locator("td").nth(0).inner_text().strip() == "board"
        assert row.locator("td").nth(1).inner_text().strip() == str(stats.pending)
        assert row.locator(".limit").inner_text() == "6"
        page.goto(url + "/pool/board")
        assert page.locator("#limit").inner_text() == str(stats.max_parallelism)
        assert page.locator("table.workers tbody tr").count() == stats.workers
        page.goto(url + "/jobs?pool=board&state=failed")
        page.locator("table.jobs a").first.click()
        assert "the mail server said no" in page.locator("table.job").inner_text()
        (attempt,) = page.locator("table.attempts tbody tr").all()
        cells = [c.inner_text().strip() for c in attempt.locator("td").all()]
        assert (cells[0], cells[1], cells[5]) == ("1", "test-board", "failed")
        assert cells[6].startswith("NonRetryableError: the mail server said no")
        page.goto(url + "/metrics")
        assert 'workpool_jobs_succeeded_total{name="double",pool="board"} 3.0' in \
            page.content()
        page.close()


def test_a_cancel_from_the_page_cancels_the_job(board: Workpool, browser: Any) -> None:
    later = board.enqueue("double", 9, run_after=3600)
    eventually(lambda: board.status(later).state == State.PENDING)
    with served([board]) as url:
        page = browser.new_page()
        page.goto(f"{url}/job/board/{later}")
        page.get_by_role("button", name="cancel").click()
        eventually(lambda: board.status(later).state == State.CANCELED, what="canceled")
        page.wait_for_url(f"{url}/job/board/{later}")
        assert "canceled" in page.locator("table.job").inner_text()
        page.close()


def test_read_only_hides_and_refuses_every_action(board: Workpool, browser: Any) -> None:
    later = board.enqueue("double", 9, run_after=3600)
    with served([board], read_only=True) as url:
        page = browser.new_page()
        page.goto(f"{url}/job/board/{later}")
        assert "read-only" in page.locator("header").inner_text()
        assert page.get_by_role("button", name="cancel").count() == 0
        page.goto(f"{url}/pool/board")
        assert page.locator("form.action").count() == 0
        csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "wp_csrf")
        reply = page.request.post(f"{url}/action/board/cancel", form={"csrf": csrf, "id": later})
        assert reply.status == 403
        page.close()
    assert board.status(later).state == State.PENDING


def test_a_wrong_token_is_refused_and_the_right_one_lets_in(board: Workpool,
                                                           browser: Any) -> None:
    with served([board], token="s3cret") as url:
        page = browser.new_page()
        assert page.goto(url + "/").status == 401
        page.fill("input[name=token]", "wrong")
        page.get_by_role("button", name="sign in").click()
        assert "wrong token" in page.content()
        assert page.goto(url + "/pool/board").status == 401
        page.fill("input[name=token]", "s3cret")
        page.get_by_role("button", name="sign in").click()
        page.wait_for_url(url + "/")
        assert page.locator("table.pools").count() == 1
        page.close()


def test_an_action_without_its_csrf_token_is_refused(board: Workpool) -> None:
    later = board.enqueue("double", 9, run_after=3600)
    with served([board]) as url:
        status = _post(f"{url}/action/board/cancel", f"id={later}",
                       cookie="wp_csrf=abc")  # a form from elsewhere: no csrf field
        assert status == 403
        status = _post(f"{url}/action/board/cancel", f"id={later}&csrf=abc",
                       cookie="wp_csrf=abc", origin="http://evil.example")
        assert status == 403
    assert board.status(later).state == State.PENDING


def _post(url: str, body: str, *, cookie: str, origin: str | None = None) -> int:
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded",
        **({"Origin": origin} if origin else {})})
    opener: Callable[..., Any] = urllib.request.urlopen
    try:
        with opener(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_dashboard_answers_beyond_this_machine_only_with_a_token() -> None:
    with pytest.raises(ConfigurationError, match="--token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)


def test_pause_resume_and_limits_from_the_pool_page(board: Workpool, browser: Any) -> None:
    with served([board]) as url:
        page = browser.new_page()
        page.goto(url + "/pool/board")
        page.get_by_role("button", name="pause").click()
        eventually(lambda: board.stats().paused, what="paused")
        page.fill("input[name=max_parallelism]", "3")
        page.get_by_role("button", name="set limits").click()
        eventually(lambda: board.stats().max_parallelism == 3, what="the new limit")
        page.goto(url + "/pool/board")
        assert page.locator("#limit").inner_text() == "3"
        page.get_by_role("button", name="resume").click()
        eventually(lambda: not board.stats().paused, what="resumed")
        page.fill("input[name=job]", "double")
        page.fill("input[name=job_rate]", "5/1s")
        page.get_by_role("button", name="set the job's rate").click()
        eventually(lambda: board.stats().settings.get("rate:double") == "5/1000",
                   what="the job's rate limit")
        csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "wp_csrf")
        reply = page.request.post(f"{url}/action/board/configure",
                                  form={"csrf": csrf, "max_parallelism": "many"})
        assert reply.status == 400
        assert "max_parallelism must be" in reply.text()
        page.close()
    assert board.stats().max_parallelism == 3


def test_cancel_every_job_a_filter_shows(board: Workpool, browser: Any) -> None:
    waiting = [board.enqueue("double", i, run_after=3600) for i in range(3)]
    other = board.enqueue("broken", run_after=3600)
    eventually(lambda: all(board.status(j).state == State.PENDING for j in [*waiting, other]))
    with served([board]) as url:
        page = browser.new_page()
        page.goto(url + "/jobs?pool=board&state=pending&name=double")
        assert page.locator("table.jobs tbody tr").count() == 3
        page.get_by_role("button", name="cancel every pending job shown by this filter").click()
        eventually(lambda: all(board.status(j).state == State.CANCELED for j in waiting),
                   what="the three canceled")
        page.close()
    assert board.status(other).state == State.PENDING


def test_a_workflow_page_shows_its_steps_on_a_timeline(redis_url: str, browser: Any) -> None:
    pool = Workpool("flows", redis_url)
    pool.job(name="double")(lambda x: 2 * x)

    @pool.workflow(name="twice")
    async def twice(ctx: WorkflowContext, x: int) -> int:
        return int(await ctx.step("double", int(await ctx.step("double", x))))

    try:
        with running_worker(pool):
            flow = pool.start_workflow("twice", 3)
            assert pool.wait(flow, timeout=30).result == 12
            with served([pool]) as url:
                page = browser.new_page()
                page.goto(url + "/workflows/flows")
                page.locator("table.ended a", has_text=flow).click()
                steps = page.locator("table.steps tbody tr")
                assert steps.count() == 2
                assert [steps.nth(i).locator("td").nth(3).inner_text() for i in range(2)] == \
                    [f"{flow}:1", f"{flow}:2"]
                assert page.locator("table.steps rect.succeeded").count() == 2
                assert "done/succeeded" in page.locator("table.job").inner_text()
                page.close()
    finally:
        pool.close()


def test_a_finished_job_runs_again_from_its_page(board: Workpool, browser: Any) -> None:
    (failed,) = board.ended_jobs(failed=True)
    with served([board]) as url:
        page = browser.new_page()
        page.goto(f"{url}/job/board/{failed.id}")
        page.get_by_role("button", name="run again").click()
        page.wait_for_url(lambda u: failed.id not in u)
        new = page.url.rsplit("/", 1)[1]
        assert page.locator("table.job a", has_text=failed.id).count() == 1  # run again of
        page.close()
    assert board.wait(new, timeout=30).error_type == "NonRetryableError"
    assert board.status(new).rerun_of == failed.id


@pytest.mark.parametrize(("args", "error"), [
    (["dashboard", "a", "--host", "0.0.0.0"], "--token (or $WORKPOOL_DASHBOARD_TOKEN) is req"),
    (["dashboard", "a", "--port", "-1"], "Invalid value for '--port'"),
    (["dashboard", "a", "a"], "a pool is named twice"),
])
def test_the_dashboard_command_refuses_bad_options(args: list[str], error: str) -> None:
    result = CliRunner(env={"WORKPOOL_DASHBOARD_TOKEN": ""}).invoke(cli, args)
    assert result.exit_code == 2
    assert error in result.output


def test_the_jobs_list_filters_by_time(board: Workpool, browser: Any) -> None:
    ended = board.ended_jobs()
    first = min(j.finished_at or 0 for j in ended)
    with served([board]) as url:
        page = browser.new_page()
        page.goto(url + "/jobs?pool=board&state=done")
        assert page.locator("table.jobs tbody tr").count() == len(ended)
        page.fill("input[name=from]", _minute(first + 120))  # after every job ended
        page.get_by_role("button", name="show").click()
        assert page.locator("table.jobs tbody tr").count() == 0
        page.fill("input[name=from]", _minute(first - 60))
        page.get_by_role("button", name="show").click()
        assert page.locator("table.jobs tbody tr").count() == len(ended)
        page.close()


def _minute(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M")


def test_a_pool_whose_redis_is_down_gets_a_page_saying_so() -> None:
    """Regression: a page reading Redis directly (the jobs list) let the connection error
    escape its handler, and the browser got a dropped connection instead of a page."""
    down = Workpool("down", f"redis://127.0.0.1:{free_port()}/0")
    try:
        with served([down]) as url:
            for path in ("/", "/jobs?pool=down&state=running", "/pool/down"):
                try:
                    urllib.request.urlopen(url + path, timeout=10)
                except urllib.error.HTTPError as exc:
                    assert (exc.code, "unavailable" in exc.read().decode()) == (503, True), path
                else:
                    pytest.fail(f"{path} answered although Redis is down")
    finally:
        down.close()


@pytest.mark.parametrize("length", ["-1", "abc", "99999999"])
def test_a_post_with_a_bad_length_is_refused_not_read(board: Workpool, length: str) -> None:
    """Regression: a negative Content-Length read the body until the client closed (a
    thread held), a non-number ended the handler with no reply."""
    with served([board]) as url:
        host, port = urlsplit(url).netloc.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("POST", "/action/board/pause")
        conn.putheader("Content-Length", length)
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 400
        conn.close()
    assert not board.stats().paused


def test_a_sharded_pool_reads_as_one_pool_and_finds_each_job_by_id(redis_url: str) -> None:
    with ran_some(Workpool("sboard", redis_url, shards=3)) as pool:
        keyed = pool.enqueue("double", 21, key="order-5")
        assert pool.wait(keyed, timeout=30).result == 42
        done = [s.id for s in pool.ended_jobs(limit=10)]
        assert len({shard_of(i, 3) for i in done}) > 1  # they ended in more than one shard
        with served([pool]) as url:
            listed = urllib.request.urlopen(url + "/jobs?pool=sboard&state=done").read().decode()
            assert all(html.escape(job_id) in listed for job_id in done)
            page = urllib.request.urlopen(f"{url}/job/sboard/{urllib.parse.quote(keyed)}")
            assert "42" in page.read().decode()
            found = urllib.request.urlopen(url + "/find?pool=sboard&q=order-5").read().decode()
            assert html.escape(keyed) in found
    pool.close()
