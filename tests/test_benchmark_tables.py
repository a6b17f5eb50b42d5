"""benchmarks/compare_clients.py's verdicts: each target judged only where it applies."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(name="compare_clients")
def compare_clients_fixture(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("compare_clients")
    yield module
    for name in ("compare_clients", "_common", "_peers"):
        sys.modules.pop(name, None)


def _result(client: str, cpu_s: float, by_turn: list[float]) -> dict[str, Any]:
    return {
        "client": client,
        "mode": "stream",
        "expected": 40,
        "images": 40,
        "requests": 40,
        "errors": 0,
        "cpu_s": cpu_s,
        "wall_s": 1.0,
        "max_rss": 100 << 20,
        "rss_delta": 50 << 20,
        "cpu_ms_by_turn": by_turn,
    }


def test_the_simd_floor_target_is_judged_on_long_sessions_only(compare_clients: Any) -> None:
    """The <= 1.3x SIMD-floor target is the 10-turn lockstep one: a flat or short run prints
    the ratio without a verdict; a lockstep run judges it."""
    short = [_result("nanoedit", 2.0, []), _result("floor-simd", 1.0, [])]
    table, ratios = compare_clients.build_tables(short)
    assert ratios["stream"]["cpu_per_turn_vs_simd_floor"] == 2.0
    assert "2.000" in table and "MISSED ≤ 1.3" not in table
    long = [_result("nanoedit", 2.0, [50.0] * 10), _result("floor-simd", 1.0, [25.0] * 10)]
    table, _ = compare_clients.build_tables(long)
    assert "2.000 (MISSED ≤ 1.3)" in table
