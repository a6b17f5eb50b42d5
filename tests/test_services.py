"""Tests that need a service (PostgreSQL, Redis, chromium) skip in one line where it is missing,
and fail instead under NANOEDIT_TEST_REQUIRE_SERVICES=1 (as CI runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISSING = {
    "NANOEDIT_TEST_PG": "postgresql://postgres@127.0.0.1:1/postgres",  # port 1: nothing there
    "NANOEDIT_TEST_REDIS": "redis://127.0.0.1:1/15",
    "NANOEDIT_TEST_CHROMIUM": "/nonexistent/chromium",
}
MARKED = '''
import pytest


@pytest.mark.postgres
def test_needs_postgres() -> None:
    """Needs PostgreSQL."""


@pytest.mark.redis
def test_needs_redis() -> None:
    """Needs Redis."""


@pytest.mark.browser
def test_needs_chromium() -> None:
    """Needs chromium."""
'''


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run three marked tests with this suite's settings and service checks."""
    (tmp_path / "test_marked.py").write_text(MARKED)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NANOEDIT_TEST_")}
    environ.update(MISSING, **env)
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
            "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "tests.conftest",
            str(tmp_path / "test_marked.py"),
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_missing_services_skip_with_one_line_each(tmp_path: Path) -> None:
    """PostgreSQL, Redis and chromium missing: three skips, each naming what is missing and
    how to provide it; no traceback."""
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 skipped" in done.stdout and "failed" not in done.stdout
    assert (
        "PostgreSQL not reachable at postgres@127.0.0.1:1 (start it, or set NANOEDIT_TEST_PG)"
        in (done.stdout)
    )
    assert (
        "Redis not reachable at 127.0.0.1:1 (start it, or set NANOEDIT_TEST_REDIS)" in done.stdout
    )
    assert "chromium not found at /nonexistent/chromium (apt-get install -y chromium" in done.stdout
    assert "Traceback" not in done.stdout and "ConnectionRefusedError" not in done.stdout


def test_required_services_turn_a_skip_into_a_failure(tmp_path: Path) -> None:
    """Under NANOEDIT_TEST_REQUIRE_SERVICES=1 the same run fails, saying what is required."""
    done = _pytest(tmp_path, NANOEDIT_TEST_REQUIRE_SERVICES="1")
    assert done.returncode == 1, done.stdout + done.stderr
    # Failed in their setup: pytest counts them as errors, and the run fails.
    assert "3 errors" in done.stdout and "skipped" not in done.stdout
    assert done.stdout.count("NANOEDIT_TEST_REQUIRE_SERVICES=1 requires it") >= 3


def test_redis_tests_never_default_to_db_0() -> None:
    """Without NANOEDIT_TEST_REDIS, the cluster tests use a Redis db other than 0."""
    from tests.conftest import REDIS_URL

    if "NANOEDIT_TEST_REDIS" not in os.environ:
        assert not REDIS_URL.endswith("/0")
        assert REDIS_URL.rsplit("/", 1)[1].isdigit()
