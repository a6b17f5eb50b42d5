"""engine.cli._bench: percentiles, the summary, and small runs against the embedded emulator."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from engine import ConfigError
from engine.cli import _load
from engine.cli import bench as _bench
from engine.cli._bench import (
    TurnSample,
    add_arguments,
    arrival_offsets,
    describe,
    estimate_cost,
    format_table,
    load_prompts,
    percentile,
    summarize,
)
from sessions import resolve_model


def parse(*argv: str) -> argparse.Namespace:
    """Parse `nanoedit bench` options as the CLI would."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def sample(session: int, turn: int, **kw: Any) -> TurnSample:
    """A successful turn record with sensible defaults."""
    kw.setdefault("latency_s", 1.0)
    kw.setdefault("ok", True)
    kw.setdefault("attempts", 1)
    kw.setdefault("images", 1)
    return TurnSample(
        session=session,
        session_id=f"s{session}",
        turn=turn,
        warmup=kw.pop("warmup", False),
        started_s=kw.pop("started_s", float(turn)),
        ended_s=kw.pop("ended_s", float(turn) + 1),
        **kw,
    )


def run_bench(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    """Run `nanoedit bench ARGV --json FILE` and return the exit code and the JSON document.

    The emulator runs inline unless ARGV says otherwise: starting a process per test would cost
    the suite a second each; the process mode has tests of its own."""
    out = tmp_path / "bench.json"
    where = () if "--emulator" in argv else ("--emulator", "inline")
    code = _bench.run(parse(*argv, *where, "--json", str(out), "--no-progress"))
    doc = json.loads(out.read_text()) if out.exists() else {}
    return code, doc


# --- statistics ---------------------------------------------------------------------------------


def test_percentile_interpolates_linearly() -> None:
    """Percentiles of 1..10 interpolate between closest ranks (numpy's default)."""
    data = [float(x) for x in range(10, 0, -1)]  # unsorted on purpose
    assert percentile(data, 0) == 1.0
    assert percentile(data, 50) == pytest.approx(5.5)
    assert percentile(data, 90) == pytest.approx(9.1)
    assert percentile(data, 99) == pytest.approx(9.91)
    assert percentile(data, 100) == 10.0


def test_percentile_of_nothing_is_none() -> None:
    """An empty sample has no percentile: None, never NaN."""
    assert percentile([], 50) is None


def test_percentile_of_one_value_is_that_value() -> None:
    """One sample is every percentile of itself."""
    assert [percentile([3.5], q) for q in (0, 50, 99, 100)] == [3.5] * 4


def test_percentile_rejects_out_of_range() -> None:
    """q outside 0..100 is a programming error."""
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_describe_empty_gives_none_everywhere() -> None:
    """describe([]) has count 0 and None for every statistic."""
    d = describe([])
    assert d["count"] == 0
    assert all(v is None for k, v in d.items() if k != "count")


# --- summary ------------------------------------------------------------------------------------


def test_summary_has_documented_keys_and_is_json() -> None:
    """The summary carries every documented key and encodes as strict JSON (no NaN)."""
    samples = [sample(0, 1, request_bytes=100), sample(0, 2, request_bytes=200)]
    s = summarize(samples, wall_s=3.0, sessions_started=1)
    assert {"wall_s", "window_s", "sessions", "turns", "images", "throughput", "errors"} <= set(s)
    assert {"retries", "cost_usd", "metrics", "by_turn"} <= set(s)
    assert set(s["metrics"]) == set(_load.METRICS)
    assert set(s["metrics"]["latency_s"]) == {
        "count",
        "mean",
        "min",
        "p50",
        "p90",
        "p95",
        "p99",
        "max",
    }
    # Metrics nobody measured (no tokens given) are null, and the whole thing is valid JSON.
    assert s["metrics"]["first_image_s"]["p50"] is None
    json.dumps(s, allow_nan=False)


def test_summary_splits_by_turn_index() -> None:
    """Figures are also reported per turn index, e.g. later turns with bigger requests."""
    samples = [
        sample(i, t, latency_s=float(t), request_bytes=1000 * t)
        for i, t in itertools.product(range(3), (1, 2, 3))
    ]
    s = summarize(samples, wall_s=5.0, sessions_started=3)
    assert list(s["by_turn"]) == ["1", "2", "3"]
    assert [g["turns"] for g in s["by_turn"].values()] == [3, 3, 3]
    assert s["by_turn"]["3"]["metrics"]["latency_s"]["p50"] == 3.0
    assert s["by_turn"]["2"]["metrics"]["request_bytes"]["max"] == 2000


def test_summary_counts_errors_retries_and_throughput() -> None:
    """Failed and retried turns give rates; throughput counts successful turns over the window."""
    samples = [
        sample(0, 1, attempts=2, started_s=0.0, ended_s=1.0),
        sample(0, 2, started_s=1.0, ended_s=2.0),
        sample(1, 1, started_s=0.0, ended_s=1.0),
        sample(1, 2, ok=False, images=0, attempts=3, error_type="ServerError", status=500,
               started_s=1.0, ended_s=4.0),
    ]  # fmt: skip
    s = summarize(samples, wall_s=4.0, sessions_started=2)
    assert s["turns"] == {"total": 4, "warmup": 0, "measured": 4, "ok": 3, "failed": 1}
    assert s["errors"]["rate"] == 0.25
    assert s["errors"]["by_type"] == {"ServerError": 1}
    assert s["errors"]["by_status"] == {"500": 1}
    assert s["retries"]["retried_turns"] == 2
    assert s["retries"]["extra_attempts"] == 3
    assert s["throughput"]["turns_per_s"] == pytest.approx(3 / 4.0)
    assert s["throughput"]["images_per_s"] == pytest.approx(3 / 4.0)
    # Latency covers successful turns only; attempts covers every turn.
    assert s["metrics"]["latency_s"]["count"] == 3
    assert s["metrics"]["attempts"]["count"] == 4


def test_summary_leaves_out_warmup_sessions() -> None:
    """Turns of warm-up sessions are excluded from every statistic."""
    samples = [sample(0, 1, warmup=True, latency_s=100.0), sample(1, 1, latency_s=1.0)]
    s = summarize(samples, wall_s=2.0, sessions_started=2)
    assert s["turns"]["measured"] == 1 and s["turns"]["warmup"] == 1
    assert s["sessions"]["warmup"] == 1
    assert s["metrics"]["latency_s"]["max"] == 1.0


def test_empty_summary_prints_dashes_not_nan() -> None:
    """A run without any measured turn prints en dashes, never 'nan'."""
    s = summarize([], wall_s=0.0, sessions_started=0)
    assert s["throughput"]["turns_per_s"] is None
    text = format_table(s)
    assert "nan" not in text.lower()
    assert _load.NO_DATA in text


# --- workload inputs ----------------------------------------------------------------------------


def test_arrival_process_is_seeded_poisson() -> None:
    """Same seed, same schedule; the mean gap is about 1/rate."""
    a = list(itertools.islice(arrival_offsets(10.0, seed=7), 2000))
    b = list(itertools.islice(arrival_offsets(10.0, seed=7), 2000))
    c = list(itertools.islice(arrival_offsets(10.0, seed=8), 2000))
    assert a == b
    assert a != c
    assert all(y > x for x, y in itertools.pairwise(a))
    assert a[-1] / len(a) == pytest.approx(0.1, rel=0.1)


def test_load_prompts_accepts_lists_and_turn_objects(tmp_path: Path) -> None:
    """--prompts reads one session per line, as a list or {"turns": [...]}; blank lines skipped."""
    f = tmp_path / "p.jsonl"
    f.write_text('["a", "b"]\n\n{"turns": ["c"]}\n')
    assert load_prompts(f) == [["a", "b"], ["c"]]


def test_load_prompts_rejects_bad_lines(tmp_path: Path) -> None:
    """A line that is not a list of prompts is a ConfigError naming the line."""
    f = tmp_path / "p.jsonl"
    f.write_text('["a"]\n{"prompts": ["b"]}\n')
    with pytest.raises(ConfigError, match=":2:"):
        load_prompts(f)


def test_turns_option_cycles_the_script() -> None:
    """An explicit --turns repeats a shorter script and cuts a longer one."""
    assert _load._script_for([["a", "b"]], 0, 3) == ["a", "b", "a (pass 2)"]
    assert _load._script_for([["a", "b"], ["c"]], 1, 1) == ["c"]
    assert _load._script_for([["a", "b"]], 5, None) == ["a", "b"]


def test_cost_estimate_uses_gateway_flat_price() -> None:
    """Wisdom Gate is priced per request; Google per image by size."""
    spec = resolve_model("nano-banana-2")
    assert estimate_cost(spec, "wisdom-gate", "4K", 10) == pytest.approx(0.58)
    assert estimate_cost(spec, "google", "2K", 10) == pytest.approx(1.01)
    assert estimate_cost(spec, "custom", None, 10) == pytest.approx(0.67)


# --- runs ---------------------------------------------------------------------------------------


def test_cost_gate_refuses_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-local run estimated above --max-spend exits 2 without --yes, before any request."""

    async def no_run(*args: Any) -> Any:
        raise AssertionError("the benchmark must not start")

    monkeypatch.setattr(_bench, "_bench", no_run)
    code, doc = run_bench(tmp_path, "--base-url", "http://127.0.0.1:1", "--sessions", "20")
    err = capsys.readouterr().err
    assert code == 2
    assert doc == {}
    assert "estimated cost $4.02" in err
    assert "--yes" in err


def test_cost_gate_lets_cheap_runs_through(tmp_path: Path) -> None:
    """Below --max-spend no --yes is needed; a refused connection is a recorded failed turn."""
    code, doc = run_bench(
        tmp_path, "--base-url", "http://127.0.0.1:1", "--sessions", "1", "--turns", "1",
        "--max-attempts", "1",
    )  # fmt: skip
    assert code == 0
    [record] = doc["records"]
    assert record["ok"] is False
    assert record["error_type"] == "ConnectError"
    assert doc["summary"]["errors"]["rate"] == 1.0


def test_closed_loop_run_against_embedded_emulator(tmp_path: Path) -> None:
    """4 sessions x 2 turns at concurrency 2: 8 successful records, images/s > 0, bytes seen."""
    code, doc = run_bench(
        tmp_path, "--sessions", "4", "--turns", "2", "--concurrency", "2", "--flat"
    )
    assert code == 0
    records, summary = doc["records"], doc["summary"]
    assert len(records) == 8
    assert all(r["ok"] and r["images"] == 1 for r in records)
    assert sorted((r["session"], r["turn"]) for r in records) == [
        (s, t) for s in range(4) for t in (1, 2)
    ]
    assert summary["throughput"]["images_per_s"] > 0
    assert summary["config"]["concurrency"] == 2
    # The second turn carries the first turn's image: its request is bigger.
    by_turn = summary["by_turn"]
    assert (
        by_turn["2"]["metrics"]["request_bytes"]["min"]
        > by_turn["1"]["metrics"]["request_bytes"]["max"]
    )
    assert summary["metrics"]["first_image_s"]["count"] == 8
    assert summary["cost_usd"] > 0


def test_no_stream_run_uses_plain_calls(tmp_path: Path) -> None:
    """--no-stream uses plain calls; every turn still succeeds."""
    code, doc = run_bench(tmp_path, "--sessions", "2", "--turns", "1", "--flat", "--no-stream")
    assert code == 0
    assert doc["summary"]["config"]["stream"] is False
    assert doc["summary"]["turns"]["ok"] == 2


def distinct_prompts(tmp_path: Path, sessions: int) -> Path:
    """A prompts file whose sessions all differ (fail_first faults key on the request body)."""
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps([f"scene {i}", f"edit {i}"]) + "\n" for i in range(sessions)))
    return f


def test_injected_faults_are_retried_and_counted(tmp_path: Path) -> None:
    """Every first arrival answered 500: each turn succeeds on its second attempt."""
    prompts = distinct_prompts(tmp_path, 3)
    code, doc = run_bench(
        tmp_path, "--sessions", "3", "--prompts", str(prompts), "--flat",
        "--faults", "fail_first=1:500", "--retry-delay", "0",
    )  # fmt: skip
    assert code == 0
    summary = doc["summary"]
    assert summary["turns"]["ok"] == 6
    assert all(r["attempts"] == 2 for r in doc["records"])
    assert summary["retries"]["rate"] == 1.0
    assert summary["retries"]["extra_attempts"] == 6
    assert summary["errors"]["rate"] == 0.0


def test_failed_turn_ends_its_session_not_the_run(tmp_path: Path) -> None:
    """Without retries a 500 fails the turn: each session stops there, the run goes on."""
    prompts = distinct_prompts(tmp_path, 3)
    code, doc = run_bench(
        tmp_path, "--sessions", "3", "--prompts", str(prompts), "--flat",
        "--faults", "fail_first=1:500", "--max-attempts", "1",
    )  # fmt: skip
    assert code == 0
    records = doc["records"]
    assert len(records) == 3  # one failed first turn per session, no second turns
    assert all(not r["ok"] and r["turn"] == 1 for r in records)
    assert {(r["error_type"], r["status"]) for r in records} == {("ServerError", 500)}
    assert doc["summary"]["errors"]["by_status"] == {"500": 3}
    assert doc["summary"]["sessions"]["failed"] == 3


def test_open_loop_follows_seeded_arrivals(tmp_path: Path) -> None:
    """--rate starts sessions no earlier than the seeded Poisson schedule says."""
    code, doc = run_bench(
        tmp_path, "--rate", "40", "--sessions", "5", "--turns", "1", "--seed", "3", "--flat"
    )
    assert code == 0
    schedule = list(itertools.islice(arrival_offsets(40.0, seed=3), 5))
    starts = {r["session"]: r["started_s"] for r in doc["records"]}
    assert sorted(starts) == [0, 1, 2, 3, 4]
    assert all(starts[i] >= schedule[i] for i in range(5))
    assert doc["summary"]["config"]["rate"] == 40.0
    assert doc["summary"]["config"]["concurrency"] is None


def test_warmup_sessions_are_excluded(tmp_path: Path) -> None:
    """--warmup-sessions 2 keeps the first two sessions out of the statistics."""
    code, doc = run_bench(
        tmp_path, "--sessions", "4", "--turns", "1", "--concurrency", "1", "--flat",
        "--warmup-sessions", "2",
    )  # fmt: skip
    assert code == 0
    warm = sorted(r["session"] for r in doc["records"] if r["warmup"])
    assert warm == [0, 1]
    assert doc["summary"]["turns"]["measured"] == 2


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """--plot draws the three charts into a PNG file."""
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    code, _ = run_bench(tmp_path, "--sessions", "2", "--turns", "2", "--flat", "--plot", str(png))
    assert code == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_bad_options_exit_2(tmp_path: Path) -> None:
    """Unknown image sizes and unbounded runs are refused before anything starts."""
    assert run_bench(tmp_path, "--image-size", "1k")[0] == 2
    assert run_bench(tmp_path, "--sessions", "0")[0] == 2


def test_plot_without_matplotlib_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plot without matplotlib is a clear error and exit 2, before the run."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "matplotlib" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    code, doc = run_bench(tmp_path, "--flat", "--plot", str(tmp_path / "x.png"))
    assert code == 2
    assert doc == {}
    assert "matplotlib" in capsys.readouterr().err


def test_duration_bounds_an_uncapped_run(tmp_path: Path) -> None:
    """--sessions 0 --duration S keeps starting sessions until S seconds, then stops."""
    code, doc = run_bench(
        tmp_path, "--sessions", "0", "--duration", "0.3", "--turns", "1", "--concurrency", "2",
        "--flat",
    )  # fmt: skip
    assert code == 0
    summary = doc["summary"]
    assert summary["sessions"]["started"] >= 1
    assert summary["turns"]["total"] == summary["sessions"]["started"]
    assert summary["config"]["duration"] == 0.3
    assert summary["config"]["sessions"] == 0


def test_cli_exposes_bench() -> None:
    """`nanoedit bench` is wired into the command line with this module's options."""
    from engine.cli import build_parser

    args = build_parser().parse_args(["bench", "--sessions", "3", "--rate", "2"])
    assert args.sessions == 3
    assert args.rate == 2.0


# --- the emulator's own process, several client processes -----------------------------------------


def test_split_plan_shares_the_load_among_workers() -> None:
    """Sessions, concurrency and warm-up sessions are divided as whole numbers; the rate
    evenly; every worker gets its own seed; workers with no sessions are left out."""
    base = _load._Plan(
        sessions=10, turns=2, scripts=[["a"]], concurrency=5, rate=3.0, duration=0.0,
        warmup_s=0.0, warmup_sessions=3, seed=7, model="m", image_config=None, stream=True,
        progress=True,
    )  # fmt: skip
    plans = _load.split_plan(base, 4)
    assert [p.sessions for p in plans] == [3, 3, 2, 2]
    assert [p.concurrency for p in plans] == [2, 1, 1, 1]
    assert [p.warmup_sessions for p in plans] == [1, 1, 1, 0]
    assert [p.seed for p in plans] == [7, 8, 9, 10]
    assert all(p.rate == 0.75 and not p.progress for p in plans)
    few = _load.split_plan(dataclasses.replace(base, sessions=2), 4)
    assert [p.sessions for p in few] == [1, 1]


def test_the_emulator_runs_in_its_own_process_by_default(tmp_path: Path) -> None:
    """By default the bench talks to an emulator process and reports its CPU apart from the
    client's; the table says both."""
    code, doc = run_bench(
        tmp_path, "--emulator", "process", "--sessions", "3", "--turns", "2", "--flat"
    )
    assert code == 0
    summary = doc["summary"]
    assert summary["turns"]["ok"] == 6
    assert summary["config"]["emulator"] == "process"
    assert summary["emulator_cpu_s"] > 0
    assert summary["process_cpu_s"] > 0
    line = format_table(summary)
    assert "emulator" in line and "its own process" in line


def test_workers_split_the_sessions_and_merge_their_samples(tmp_path: Path) -> None:
    """--workers 2: two client processes run 5 sessions x 2 turns between them against one
    emulator process; every session appears once, on one clock, with both workers' CPU."""
    code, doc = run_bench(
        tmp_path, "--emulator", "process", "--workers", "2", "--sessions", "5", "--turns", "2",
        "--concurrency", "4", "--flat",
    )  # fmt: skip
    assert code == 0
    records, summary = doc["records"], doc["summary"]
    assert summary["workers"] == 2 and len(summary["worker_cpu_s"]) == 2
    assert summary["process_cpu_s"] == pytest.approx(sum(summary["worker_cpu_s"]))
    assert len({r["session"] for r in records}) == 5
    assert len({r["session_id"] for r in records}) == 5
    assert all(r["ok"] for r in records) and len(records) == 10
    assert summary["sessions"]["started"] == 5
    assert 0 < summary["window_s"] <= summary["wall_s"]
    assert "2 worker processes" in format_table(summary)


def test_workers_need_the_emulator_process(tmp_path: Path) -> None:
    """Several workers cannot share an emulator that lives inside one of them."""
    assert run_bench(tmp_path, "--workers", "2", "--emulator", "inline")[0] == 2
    assert run_bench(tmp_path, "--workers", "0")[0] == 2
