"""What a user installs: the wheel and the sdist carry every file of the package (the Lua
includes once went missing from the wheel), and an installation that cannot load its scripts
says so and exits non-zero, its worker and its demo alike, instead of idling for ever."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "workpool"


def package_files() -> set[str]:
    """Every file of the source package, as the wheel names it (no bytecode)."""
    return {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it (as `python -m build` does)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return out


def test_the_wheel_carries_every_file_of_the_package(dist: Path) -> None:
    (wheel,) = dist.glob("workpool-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("workpool/")}
    assert package_files() - shipped == set()
    assert "workpool/lua/includes/common.lua" in shipped


def test_the_sdist_carries_every_file_of_the_package_and_the_tests(dist: Path) -> None:
    (sdist,) = dist.glob("workpool-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert package_files() - names == set()
    assert {"README.md", "statemachine.md", "pyproject.toml", "docs/protocol.md",
            "tests/conftest.py"} <= names


@pytest.fixture
def broken_install(tmp_path: Path) -> Path:
    """A copy of the package without its Lua includes, and an app using it."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "workpool", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(site / "workpool" / "lua" / "includes")
    (site / "brokenapp.py").write_text(
        "from workpool import Workpool\n"
        "pool = Workpool('broken')\n\n\n"
        "@pool.job()\ndef job() -> None:\n    return None\n")
    return site


def _run(site: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "WORKPOOL_REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "workpool", "--redis-url", redis_url, *args],
                          cwd=site, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_a_worker_that_cannot_load_its_scripts_says_why_and_exits_non_zero(
        broken_install: Path, redis_url: str) -> None:
    done = _run(broken_install, redis_url, "worker", "brokenapp:pool")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot load the Lua scripts of workpool" in done.stderr
    assert "reinstall" in done.stderr


def test_the_demo_stops_with_an_error_when_its_workers_die(
        broken_install: Path, redis_url: str) -> None:
    done = _run(broken_install, redis_url, "demo", "--jobs", "20", "--timeout", "50")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "a worker exited early" in done.stdout
    assert "enqueued 20 jobs" in done.stdout
