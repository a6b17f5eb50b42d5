"""`--store postgresql://...` and NANOEDIT_STORE on the command line (edit, sessions, bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.conftest import ENV_VARS, EmulatorThread

pytestmark = pytest.mark.postgres


def test_edit_then_sessions_on_postgres(
    home: Path,
    tmp_path: Path,
    pg_dsn: str,
    emulator_thread: EmulatorThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`edit` then `sessions ls/show/check` against a PostgreSQL store."""
    capsys.readouterr()
    out = str(tmp_path / "out")
    argv = ["edit", "a mug", "add a sprig", "--base-url", emulator_thread.base_url]
    assert main([*argv, "--out", out, "--store", pg_dsn, "--json"]) == 0
    sid = json.loads(capsys.readouterr().out)["session_id"]
    # Another command, the store from the environment this time.
    monkeypatch.setenv("NANOEDIT_STORE", pg_dsn)
    assert main(["sessions", "ls", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(s["id"], s["turns"]) for s in listing] == [(sid, 2)]
    assert main(["sessions", "undo", sid[:8]]) == 0
    assert main(["sessions", "check"]) == 0
    capsys.readouterr()
    # Continue it: the head moved back, so the new turn is a sibling of turn 2.
    out2 = str(tmp_path / "out2")
    base = ["--base-url", emulator_thread.base_url, "--json"]
    assert main(["edit", "make it warm", "--session", sid, "--out", out2, *base]) == 0
    assert [t["index"] for t in json.loads(capsys.readouterr().out)["turns"]] == [2]


def test_bench_on_postgres(home: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`bench` runs its sessions against a PostgreSQL store."""
    argv = ["bench", "--sessions", "4", "--turns", "2", "--concurrency", "4", "--flat"]
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    done = subprocess.run(
        [sys.executable, "-m", "engine", *argv, "--store", pg_dsn, "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "8 ok of 8" in done.stdout
    assert main(["sessions", "ls", "--json", "--store", pg_dsn]) == 0
    sessions = json.loads(capsys.readouterr().out)
    assert len(sessions) == 4 and all(s["turns"] == 2 for s in sessions)


def _serve_once(*options: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--flat", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_to_start_on_a_store_it_cannot_use() -> None:
    """A PostgreSQL database that does not exist: one error line, exit 1, never "listening"."""
    from tests.conftest import PG_ADMIN

    missing = PG_ADMIN.rsplit("/", 1)[0] + "/nanoedit_no_such_database_here"
    done = _serve_once("--store", missing)
    assert done.returncode == 1
    assert "listening" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: StoreError: --store "), done.stderr
    assert "nanoedit_no_such_database_here" in lines[0]


def test_serve_refuses_redis_with_a_memory_store() -> None:
    """--redis with --store memory cannot make a cluster: refused at once."""
    done = _serve_once("--store", "memory", "--redis", "redis://127.0.0.1:6379/15")
    assert done.returncode == 1 and "--redis with --store memory" in done.stderr
