"""Tests that need a service (PostgreSQL, Redis, chromium) skip in one line where it is missing,
and fail instead under NANOEDIT_TEST_REQUIRE_SERVICES=1 (as CI runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "postgresql://postgres@127.0.0.1:1/postgres"  # port 1: nothing listens there


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NANOEDIT_TEST_")}
    environ.update(env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            *args,
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_postgres_skips_with_one_line() -> None:
    """PostgreSQL tests against a server that is not there: skipped, the reason named."""
    done = _pytest("tests/cli/test_cli_postgres.py", "-rs", NANOEDIT_TEST_PG=NOWHERE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" in done.stdout and "failed" not in done.stdout
    assert "PostgreSQL not reachable at postgres@127.0.0.1:1" in done.stdout
    assert "NANOEDIT_TEST_PG" in done.stdout
    assert "Traceback" not in done.stdout and "ConnectionRefusedError" not in done.stdout


def test_required_services_turn_a_skip_into_a_failure() -> None:
    """Under NANOEDIT_TEST_REQUIRE_SERVICES=1 the same run fails, saying what is required."""
    done = _pytest(
        "tests/cli/test_cli_postgres.py",
        NANOEDIT_TEST_PG=NOWHERE,
        NANOEDIT_TEST_REQUIRE_SERVICES="1",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NANOEDIT_TEST_REQUIRE_SERVICES=1 requires it" in done.stdout
    assert "skipped" not in done.stdout


def test_missing_chromium_skips_the_browser_tests() -> None:
    """Without chromium the studio's browser tests skip, saying how to install it."""
    done = _pytest(
        "tests/serve/test_studio_browser.py", "-rs", NANOEDIT_TEST_CHROMIUM="/nonexistent/chromium"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chromium not found at /nonexistent/chromium (apt-get install -y chromium" in done.stdout
    assert "Traceback" not in done.stdout


def test_redis_tests_never_default_to_db_0() -> None:
    """Without NANOEDIT_TEST_REDIS, the cluster tests use a Redis db other than 0."""
    from tests.conftest import REDIS_URL

    if "NANOEDIT_TEST_REDIS" not in os.environ:
        assert not REDIS_URL.endswith("/0")
        assert REDIS_URL.rsplit("/", 1)[1].isdigit()
