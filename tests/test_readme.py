"""Every snippet of the README runs: Python blocks as written, shell blocks command by command.

Blocks are tagged `python`, `sh` or `text` (synopses and grammars, not programs). In `sh` blocks,
`pip install ...` steps are what set up this very environment and `python -m pytest` is this
very run, so both are skipped; `nanoedit` commands other than `bench` run for real; the
benchmark scripts and `nanoedit bench` take minutes, so for those the command line is checked
with `--help` (they run in benchmarks/, not in tests).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```([^\n]*)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
KEY_VARS = ("NANOEDIT_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "WISDOM_GATE_KEY")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in KEY_VARS and not k.startswith("NANOEDIT")
    }
    env["NANOEDIT_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_every_block_says_what_it_is() -> None:
    """Each fenced block is python, sh or text: nothing is left untried by accident."""
    assert BLOCKS
    assert {tag for tag, _ in BLOCKS} <= {"python", "sh", "text"}


def _is_setup(command: str) -> bool:
    # `pip install ...` built this environment and `python -m pytest` is this very run.
    argv = shlex.split(command)
    return argv[:2] == ["pip", "install"] or argv[1:3] == ["-m", "pytest"]


PYTHON = [code for tag, code in BLOCKS if tag == "python"]
COMMANDS = [
    part.strip()
    for tag, code in BLOCKS
    if tag == "sh"
    for line in code.splitlines()
    if line.strip() and not line.lstrip().startswith("#")
    for part in line.split("#", 1)[0].split("&&")
    if part.strip() and not _is_setup(part)
]


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i + 1}" for i in range(len(PYTHON))])
def test_python_snippet_runs(code: str, tmp_path: Path) -> None:
    """The block runs as pasted, offline, and prints no log noise."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "[info" not in done.stdout + done.stderr and "[debug" not in done.stdout + done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_shell_snippet_runs(command: str, tmp_path: Path) -> None:
    """The command runs (or, for the long benchmarks, its command line parses)."""
    argv = shlex.split(command)
    if argv[0] == "python" and argv[1].startswith("benchmarks/"):
        argv = [sys.executable, str(ROOT / argv[1]), "--help"]
    elif argv[0] == "nanoedit":
        argv = [sys.executable, "-m", "engine", *argv[1:]]
        if argv[3] == "bench":
            argv.append("--help")
    done = subprocess.run(
        argv,
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
