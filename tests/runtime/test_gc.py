"""engine.tuned_gc: the collector's thresholds for many turns at once, and only inside."""

from __future__ import annotations

import gc

import pytest

from engine import tuned_gc
from engine.cli._common import run_loop


def test_thresholds_are_set_inside_and_restored_after_even_on_error() -> None:
    """Thresholds are set inside and restored after even on error."""
    before = gc.get_threshold()
    with tuned_gc(12_345):
        assert gc.get_threshold() == (12_345, 20, 10)
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), tuned_gc():
        assert gc.get_threshold()[0] == 50_000
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    with pytest.raises(ValueError), tuned_gc(0):
        pass


def test_the_command_line_loop_runs_tuned() -> None:
    """Every `nanoedit` command runs its loop through run_loop, so it runs with the tuning."""
    before = gc.get_threshold()

    async def inside() -> tuple[int, int, int]:
        return gc.get_threshold()

    assert run_loop(inside()) == (50_000, 20, 10)
    assert gc.get_threshold() == before
