"""The command line's contract: one error line, clean stdout, output directories never mixed,
the history written whatever happens, flags as documented."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

from engine.cli import build_parser, main
from engine.events import decode_event
from sessions import SqliteStore
from tests.conftest import ENV_VARS


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No key in the environment, NANOEDIT_HOME in tmp; structlog's config restored after."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NANOEDIT_HOME", str(tmp_path / "home"))
    saved = structlog.get_config()
    yield tmp_path / "home"
    structlog.configure(**saved)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m engine ARGV` in a child process without key variables."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run(
        [sys.executable, "-m", "engine", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _session_count(db: Path) -> int:
    async with SqliteStore(db) as store:
        return len(await store.list())


def test_an_error_is_exactly_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A turn refused by its budget (--json: nothing else on stderr): exactly one line, no log
    lines before it."""
    out = tmp_path / "out"
    rc = main(
        [
            *("edit", "a mug", "add a sprig", "--json", "--flat", "--out", str(out)),
            *("--max-context-tokens", "10", "--store", "memory"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: BudgetExceeded: ")


def test_retries_are_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A retried turn prints one retry line, not a log line as well."""
    out = tmp_path / "out"
    rc = main(
        [
            *("edit", "a mug", "--flat", "--out", str(out), "--store", "memory"),
            *("--faults", "fail_first=1:503:retry=0"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert err.count("retrying") == 1
    assert "[warning" not in err and "[info" not in err


def test_events_to_stdout_are_only_json_lines(tmp_path: Path) -> None:
    """--events -: every stdout line is an event; the session id is not mixed in."""
    done = run("demo", "--flat", "--out", str(tmp_path / "d"), "--events", "-")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(decode_event(line) for line in lines)


def test_out_dir_is_never_mixed(tmp_path: Path) -> None:
    """A non-empty --out is refused without --force (nothing written); with it, it is used."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused = run("demo", "--flat", "--out", str(out))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    forced = run("demo", "--flat", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "turn-03.png").exists() and (out / "keep.txt").exists()


def test_history_holds_the_committed_turns_when_a_later_turn_fails(tmp_path: Path) -> None:
    """Turn 2 fails: session.json still holds turn 1, and the session stays stored."""
    out, db = tmp_path / "out", tmp_path / "s.db"
    done = run(
        *("edit", "a mug", "add a sprig", "--flat", "--out", str(out), "--store", str(db)),
        *("--max-context-tokens", "10"),
    )
    assert done.returncode == 1
    contents = json.loads((out / "session.json").read_text())["contents"]
    assert [c["role"] for c in contents] == ["user", "model"]
    assert anyio.run(_session_count, db) == 1


def test_a_failed_first_turn_leaves_no_empty_session(tmp_path: Path) -> None:
    """A new session whose first turn fails is removed: `sessions ls` shows nothing."""
    out, db = tmp_path / "out", tmp_path / "s.db"
    done = run(
        *("edit", "a mug", "--flat", "--out", str(out), "--store", str(db)),
        *("--faults", "400"),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: InvalidRequest")
    assert anyio.run(_session_count, db) == 0


def test_demo_prints_no_session_id(tmp_path: Path) -> None:
    """The demo's session lives in memory: no id that could not be continued is printed."""
    done = run("demo", "--flat", "--out", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_title_is_stored_and_listed(tmp_path: Path) -> None:
    """edit --title sets the title that `sessions ls` shows; --session takes a prefix."""
    db = tmp_path / "s.db"
    first = run(
        *("edit", "a mug", "--flat", "--out", str(tmp_path / "a"), "--store", str(db)),
        *("--title", "Mug study"),
    )
    assert first.returncode == 0, first.stderr
    sid = first.stdout.strip()
    listed = run("sessions", "--store", str(db), "ls")
    assert "Mug study" in listed.stdout
    again = run(
        *("edit", "add a sprig", "--flat", "--out", str(tmp_path / "b"), "--store", str(db)),
        *("--session", sid[:6]),
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == sid


def test_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`nanoedit ... | head -0`: no traceback, no BrokenPipeError message."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    cmd = f"{sys.executable} -m engine demo --flat --out {tmp_path / 'd'} --events - | head -c 0"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_version() -> None:
    """--version prints the installed version."""
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("nanoedit ")


def test_abbreviated_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--api-key` is not silently taken as --api-key-env."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["edit", "a mug", "--api-key", "X"])
    assert info.value.code == 2
    assert "unrecognized arguments: --api-key" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "edit", "emulator", "bench", "sessions"])
def test_every_command_has_a_description_and_an_example(command: str) -> None:
    """Each command's --help has a description and an example."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command_parser = sub.choices[command]
    assert "example:" in command_parser.format_help()
    assert command_parser.description


def test_api_key_env_naming_an_unset_variable_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--api-key-env NAME with NAME unset: one line saying so, nothing silently local."""
    rc = main(["edit", "a mug", "--out", str(tmp_path / "o"), "--api-key-env", "NO_SUCH_KEY_VAR"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip() == (
        "error: ConfigError: --api-key-env NO_SUCH_KEY_VAR: the variable NO_SUCH_KEY_VAR is not set"
    )


def test_a_session_continues_in_the_directory_it_was_started_in(tmp_path: Path) -> None:
    """`edit --session ID` with the --out of that session's first edit continues there: turn
    numbering goes on, session.json is rewritten, the progress line counts the session's turns."""
    db, out = tmp_path / "s.db", tmp_path / "out"
    first = run("edit", "a mug", "--flat", "--out", str(out), "--store", str(db))
    assert first.returncode == 0, first.stderr
    sid = first.stdout.strip()
    again = run(
        *("edit", "add a sprig", "make it warmer", "--flat", "--out", str(out)),
        *("--store", str(db), "--session", sid),
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == sid
    assert {p.name for p in out.iterdir() if p.name.startswith("turn-")} == {
        "turn-01.png",
        "turn-02.png",
        "turn-03.png",
    }
    assert "turn 2/3: add a sprig" in again.stderr and "turn 3/3: make it warmer" in again.stderr
    history = json.loads((out / "session.json").read_text())
    assert len(history["contents"]) == 6


def test_a_directory_holding_anything_else_is_refused(tmp_path: Path) -> None:
    """Another session's output, or any other file, in --out is refused before a turn runs."""
    db = tmp_path / "s.db"
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("edit", "a mug", "--flat", "--out", str(one), "--store", str(db)).returncode == 0
    other = run("edit", "a cat", "--flat", "--out", str(two), "--store", str(db))
    sid = other.stdout.strip()
    refused = run("edit", "more", "--flat", "--out", str(one), "--store", str(db), "--session", sid)
    assert refused.returncode == 1 and "is not empty" in refused.stderr
    (two / "notes.txt").write_text("mine")
    refused = run("edit", "more", "--flat", "--out", str(two), "--store", str(db), "--session", sid)
    assert refused.returncode == 1 and "is not empty" in refused.stderr
    assert not (two / "turn-02.png").exists()


def test_a_shut_down_model_is_said_once_on_stderr(tmp_path: Path) -> None:
    """`--model nano-banana` (shut down) on the emulator runs, and says so in one stderr line."""
    done = run("edit", "a mug", "--flat", "--model", "nano-banana", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "was shut down" in line]
    assert len(notices) == 1 and notices[0].startswith("warning: gemini-2.5-flash-image")


def test_a_base_url_that_is_not_http_is_refused_at_once(tmp_path: Path) -> None:
    """`--base-url ftp://x` is a one-line ConfigError before anything is tried (no retries)."""
    done = run("edit", "a mug", "--base-url", "ftp://x", "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: ConfigError: base_url must be an http:// or https:// URL, not 'ftp://x'"
    ]
