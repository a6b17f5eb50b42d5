"""The command line's event loop: uvloop when installed (the `uvloop` extra), the standard loop
with NANOEDIT_LOOP=asyncio; and what an engine does before its first turn."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from engine.cli._common import event_loop_name, run_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_command_line_runs_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop is a dev dependency (Linux), so here the CLI's loop is uvloop's."""
    monkeypatch.delenv("NANOEDIT_LOOP", raising=False)
    assert event_loop_name() == "uvloop"
    assert run_loop(_loop_module()).startswith("uvloop")


def test_nanoedit_loop_asyncio_keeps_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nanoedit loop asyncio keeps the standard loop."""
    monkeypatch.setenv("NANOEDIT_LOOP", "asyncio")
    assert event_loop_name() == "asyncio"
    assert run_loop(_loop_module()).startswith("asyncio")


def test_without_uvloop_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without the extra: the import fails, the standard loop runs."""
    monkeypatch.delenv("NANOEDIT_LOOP", raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    assert event_loop_name() == "asyncio"
    assert run_loop(_loop_module()).startswith("asyncio")


def test_engine_start_imports_anyio_backend_before_the_first_turn() -> None:
    """anyio's backend (imported on first use) is loaded by Engine.start, not by a turn."""
    code = """
import asyncio, sys
from engine import Engine, EngineConfig
async def main():
    engine = Engine(EngineConfig(provider="custom", base_url="http://127.0.0.1:9"))
    before = "anyio._backends._asyncio" in sys.modules
    await engine.start()
    after = "anyio._backends._asyncio" in sys.modules
    await engine.aclose()
    print(before, after)
asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split()[-2:] == ["False", "True"]
