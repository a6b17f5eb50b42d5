"""How one nanoedit Engine scales: 1,000 concurrent sessions, and the memory an idle session costs.

    python benchmarks/scale.py [--sessions 1000] [--turns 3] [--latency 5] [--json FILE]

1. Concurrency: the emulator runs in its own process (`--flat --latency S`; it caches renders of
   identical requests, so it does not bottleneck) and ONE Engine (max_in_flight and
   max_connections = sessions) runs every session at once, T turns each. A perfect client
   finishes in T x S seconds (the ideal); the ratio wall / ideal should stay <= 1.15 up to
   1,000 sessions and <= 1.2 above. Peak RSS
   (`ru_maxrss`) and client CPU are reported beside it.
2. Idle sessions: in a fresh child process (so memory freed by step 1 cannot hide growth), an
   Engine on a MemoryStore creates `--idle-sessions` sessions without sending a turn; the RSS
   growth and the tracemalloc growth, divided by the count, is the memory one idle session costs
   (target <= 3 KB). The Session handles are kept alive, as an application would keep them.
3. In-flight turns: in another fresh child, an Engine on a MemoryStore starts one small turn
   (a text prompt, no history) in each of `--inflight-sessions` idle sessions against the same
   emulator, waits until the emulator holds every request, and measures again: the growth over
   the idle sessions, divided by the count, is what a small turn in flight costs, its connection
   included (target <= 30 KB). Then it lets the turns finish and checks that all committed.

Both sides need one socket per session: the soft open-files limit is raised if it is lower.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _common import (
    RssSampler,
    append_results,
    cpu_seconds,
    emulator_process,
    emulator_stats,
    fmt,
    machine_info,
    markdown_table,
    max_rss_bytes,
    process_cpu_seconds,
    raise_nofile,
    rss_bytes,
)

from engine.cli._common import event_loop_name, run_loop

TARGET_RATIO = 1.15  # up to 1,000 sessions
TARGET_RATIO_LARGE = 1.2  # above 1,000 sessions (issue 14: 2,000 sessions within 1.2x)
TARGET_IDLE_BYTES = 3 * 1000  # issue 14: an idle session <= 3 KB
TARGET_INFLIGHT_BYTES = 30 * 1000  # issue 14: a small turn in flight <= 30 KB
MODEL = "gemini-3.1-flash-image"
PROMPTS = (
    "A ceramic mug on an oak table, morning light",
    "Add a eucalyptus sprig to the left of the mug. Keep everything else.",
    "Change the light to a warm golden-hour glow.",
    "Recolour the mug to deep teal.",
)
MiB = 1024 * 1024


def _quiet_logs() -> None:
    # The library never configures structlog; unconfigured, it prints every info line.
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# --- 1. concurrent sessions -----------------------------------------------------------------------


async def concurrent(base_url: str, args: argparse.Namespace, emulator_pid: int) -> dict[str, Any]:
    """Run every session at once through one Engine; wall time against T x latency."""
    from engine._config import EngineConfig, Timeouts
    from engine.runtime import Engine
    from sessions import ImageConfig

    cap = max(args.sessions, 1)
    cfg = EngineConfig(
        provider="custom",
        base_url=base_url,
        stream=not args.no_stream,
        max_in_flight=cap,
        max_connections=cap,
        # A thousand requests queue behind one another at the emulator's accept loop; the
        # defaults (120 s to first byte) are generous already, this just states it.
        timeouts=Timeouts(first_byte=max(120.0, 4 * args.latency)),
    )
    errors: list[str] = []
    images = 0
    turn_ends: list[float] = []
    latencies: dict[int, list[float]] = {i: [] for i in range(1, args.turns + 1)}
    async with Engine(cfg) as engine:
        t_create = time.perf_counter()
        sessions = [
            await engine.create_session(
                MODEL, image_config=ImageConfig(aspect_ratio="1:1", image_size="1K")
            )
            for _ in range(args.sessions)
        ]
        create_s = time.perf_counter() - t_create
        before = await asyncio.to_thread(emulator_stats, base_url)
        gc.collect()

        async def one(s: Any) -> None:
            nonlocal images
            for i in range(args.turns):
                t = time.perf_counter()
                try:
                    turn = await s.send(PROMPTS[i % len(PROMPTS)])
                except Exception as exc:  # counted, never fatal: the run reports them
                    errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                    return
                images += len(turn.images)
                turn_ends.append(time.perf_counter())
                latencies[i + 1].append(turn_ends[-1] - t)

        with RssSampler(interval=0.05) as rss:
            cpu0 = cpu_seconds()
            emu0 = process_cpu_seconds(emulator_pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(one(s) for s in sessions))
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
            emu_cpu = process_cpu_seconds(emulator_pid) - emu0
        after = await asyncio.to_thread(emulator_stats, base_url)
    ideal = args.turns * args.latency
    req = {
        k: after["requests"].get(k, 0) - before["requests"].get(k, 0)
        for k in ("generateContent", "streamGenerateContent")
    }
    return {
        "sessions": args.sessions,
        "turns": args.turns,
        "latency_s": args.latency,
        "stream": not args.no_stream,
        "turns_ok": len(turn_ends),
        "images": images,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "requests": sum(req.values()),
        "render": after.get("render"),
        "create_sessions_s": create_s,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal if ideal else None,
        "last_turn_at_s": (max(turn_ends) - t0) if turn_ends else None,
        # Per turn index: latency p50 and max, to see which wave pays the overhead.
        "turn_latency_s": {
            str(i): {"p50": _median(v), "max": max(v) if v else None} for i, v in latencies.items()
        },
        "client_cpu_s": cpu,
        "emulator_cpu_s": emu_cpu,
        "max_rss": max_rss_bytes(),
        "rss_baseline": rss.baseline,
        "rss_peak": rss.peak,
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- 2. idle sessions (child process) -------------------------------------------------------------


async def _idle(n: int, trace: bool) -> dict[str, Any]:
    from engine._config import EngineConfig
    from engine.runtime import Engine
    from sessions import ImageConfig, MemoryStore

    # Nothing is ever sent: the base URL only has to be well formed.
    cfg = EngineConfig(provider="custom", base_url="http://127.0.0.1:9")
    async with Engine(cfg, store=MemoryStore()) as engine:
        config = ImageConfig(aspect_ratio="1:1", image_size="1K")
        # One session first, so lazily built module state is not billed to the others.
        keep = [await engine.create_session(MODEL, image_config=config)]
        gc.collect()
        rss0 = rss_bytes()
        if trace:
            tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
        for _ in range(n):
            keep.append(await engine.create_session(MODEL, image_config=config))
        gc.collect()
        traced = (tracemalloc.get_traced_memory()[0] - traced0) if trace else None
        rss = rss_bytes() - rss0
        if trace:
            tracemalloc.stop()
    return {
        "idle_sessions": n,
        "rss_delta": rss,
        "rss_per_session": rss / n,
        "traced_delta": traced,
        "traced_per_session": None if traced is None else traced / n,
        "kept_handles": len(keep),
    }


def idle_child(n: int) -> int:
    """Measure the idle-session cost in this (fresh) process; print one JSON line."""
    _quiet_logs()
    # RSS without tracemalloc (it costs memory itself), then Python allocations with it.
    plain = asyncio.run(_idle(n, trace=False))
    traced = asyncio.run(_idle(n, trace=True))
    plain["traced_delta"] = traced["traced_delta"]
    plain["traced_per_session"] = traced["traced_per_session"]
    sys.stdout.write(json.dumps(plain) + "\n")
    return 0


def _run_child(*options: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *options],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{options[0]} failed: {proc.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- 3. turns in flight (child process) -----------------------------------------------------------


async def _inflight(base_url: str, n: int, latency: float, trace: bool) -> dict[str, Any]:
    from engine._config import EngineConfig, Timeouts
    from engine.runtime import Engine
    from sessions import ImageConfig, MemoryStore

    cfg = EngineConfig(
        provider="custom",
        base_url=base_url,
        max_in_flight=n + 1,
        max_connections=n + 1,
        timeouts=Timeouts(first_byte=max(120.0, 4 * latency)),
    )
    async with Engine(cfg, store=MemoryStore()) as engine:
        config = ImageConfig(aspect_ratio="1:1", image_size="1K")
        # A whole turn first, so lazily built module state is not billed to the turns measured;
        # and the stats thread exists before the baseline.
        warm = await engine.create_session(MODEL, image_config=config)
        await warm.send(PROMPTS[0])
        before = await asyncio.to_thread(emulator_stats, base_url)
        sessions = [await engine.create_session(MODEL, image_config=config) for _ in range(n)]
        gc.collect()
        rss0 = rss_bytes()
        if trace:
            tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
        turns = [asyncio.ensure_future(s.send(PROMPTS[0])) for s in sessions]
        # Every request sent and held by the emulator (it answers after `latency` seconds).
        held = 0
        deadline = time.monotonic() + 0.8 * latency
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            held = (await asyncio.to_thread(emulator_stats, base_url))["in_flight"]
            if held >= n:
                break
        traced = (tracemalloc.get_traced_memory()[0] - traced0) if trace else None
        rss = rss_bytes() - rss0
        if trace:
            tracemalloc.stop()
        done = await asyncio.gather(*turns, return_exceptions=True)
        after = await asyncio.to_thread(emulator_stats, base_url)
    failed = [d for d in done if isinstance(d, BaseException)]
    return {
        "inflight_turns": n,
        "held_by_emulator": held,
        "rss_delta": rss,
        "rss_per_turn": rss / n,
        "traced_delta": traced,
        "traced_per_turn": None if traced is None else traced / n,
        "committed": len(done) - len(failed),
        "errors": [f"{type(e).__name__}: {str(e)[:160]}" for e in failed[:3]],
        "requests": after["requests"]["streamGenerateContent"]
        - before["requests"]["streamGenerateContent"],
    }


def inflight_child(n: int, base_url: str, latency: float) -> int:
    """Measure what small turns in flight cost in this (fresh) process; print one JSON line."""
    _quiet_logs()
    plain = run_loop(_inflight(base_url, n, latency, trace=False))
    traced = run_loop(_inflight(base_url, n, latency, trace=True))
    plain["traced_delta"] = traced["traced_delta"]
    plain["traced_per_turn"] = traced["traced_per_turn"]
    sys.stdout.write(json.dumps(plain) + "\n")
    return 0


# --- report ---------------------------------------------------------------------------------------


def build_table(
    c: dict[str, Any] | None, idle: dict[str, Any] | None, inflight: dict[str, Any] | None = None
) -> str:
    """Both measurements as one Markdown table with targets."""
    rows: list[list[str]] = []
    if c is not None:
        target = TARGET_RATIO if c["sessions"] <= 1000 else TARGET_RATIO_LARGE
        ok = c["ratio"] is not None and c["ratio"] <= target
        rows += [
            [
                f"{c['sessions']} sessions x {c['turns']} turns, latency {c['latency_s']:g} s",
                f"{c['images']}/{c['sessions'] * c['turns']} images, {c['errors']} errors, "
                f"{c['requests']} requests",
                "",
            ],
            ["wall time (s)", fmt(c["wall_s"], 2), f"ideal {c['ideal_s']:g} s"],
            [
                "wall / ideal",
                fmt(c["ratio"], 3),
                f"{'ok' if ok else 'MISSED'} (target ≤ {target})",
            ],
            *(
                [
                    f"turn {i} latency p50 / max (s)",
                    f"{fmt(v['p50'], 2)} / {fmt(v['max'], 2)}",
                    "",
                ]
                for i, v in c["turn_latency_s"].items()
            ),
            ["creating the sessions (s)", fmt(c["create_sessions_s"], 2), ""],
            ["client CPU during the turns (s)", fmt(c["client_cpu_s"], 2), ""],
            ["emulator CPU during the turns (s)", fmt(c["emulator_cpu_s"], 2), "own process"],
            ["peak RSS, ru_maxrss (MiB)", fmt(c["max_rss"] / MiB, 1), ""],
            [
                "RSS growth during the turns (MiB)",
                fmt((c["rss_peak"] - c["rss_baseline"]) / MiB, 1),
                "",
            ],
        ]
    if idle is not None:
        per = idle["rss_per_session"]
        rows += [
            [
                f"idle session, RSS ({idle['idle_sessions']:,} sessions, MemoryStore)",
                fmt(per / 1000, 2, " KB"),
                f"{'ok' if per <= TARGET_IDLE_BYTES else 'MISSED'} (target ≤ 3 KB)",
            ],
            [
                "idle session, tracemalloc",
                fmt(
                    None
                    if idle["traced_per_session"] is None
                    else idle["traced_per_session"] / 1000,
                    2,
                    " KB",
                ),
                "Python allocations only",
            ],
        ]
    if inflight is not None:
        per = inflight["rss_per_turn"]
        n = inflight["inflight_turns"]
        complete = inflight["committed"] == n and inflight["held_by_emulator"] >= n
        rows += [
            [
                f"small turn in flight, RSS ({n:,} turns held by the emulator, MemoryStore)",
                fmt(per / 1000, 2, " KB"),
                f"{'ok' if per <= TARGET_INFLIGHT_BYTES and complete else 'MISSED'} "
                f"(target ≤ 30 KB; held {inflight['held_by_emulator']:,}, "
                f"committed {inflight['committed']:,})",
            ],
            [
                "small turn in flight, tracemalloc",
                fmt(
                    None
                    if inflight["traced_per_turn"] is None
                    else inflight["traced_per_turn"] / 1000,
                    2,
                    " KB",
                ),
                "Python allocations only, its connection included",
            ],
        ]
    return markdown_table(["measure", "value", "note"], rows, right={1})


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print the table, write JSON, append to RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--latency", type=float, default=5.0, help="emulator seconds per generation")
    p.add_argument("--no-stream", action="store_true", help="plain generateContent")
    p.add_argument("--idle-sessions", type=int, default=10_000, help="0: skip")
    p.add_argument(
        "--inflight-sessions", type=int, default=2000, help="small turns held in flight; 0: skip"
    )
    p.add_argument("--skip-concurrent", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--idle-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--inflight-child", nargs=2, metavar=("N", "URL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.idle_child:
        return idle_child(args.idle_child)
    if args.inflight_child:
        return inflight_child(int(args.inflight_child[0]), args.inflight_child[1], args.latency)

    info = machine_info()
    # Each session holds one connection on the client, and the emulator one per session too; the
    # emulator inherits this limit.
    soft, hard = raise_nofile(max(args.sessions, args.inflight_sessions) + 512)
    print(f"open files limit: soft {soft}, hard {hard}", file=sys.stderr)
    idle = _run_child("--idle-child", str(args.idle_sessions)) if args.idle_sessions else None
    conc = inflight = None
    if args.inflight_sessions or not args.skip_concurrent:
        _quiet_logs()
        with emulator_process("--flat", "--latency", str(args.latency)) as (proc, url):
            print(f"emulator at {url}", file=sys.stderr)
            if args.inflight_sessions:
                inflight = _run_child(
                    "--inflight-child",
                    str(args.inflight_sessions),
                    url,
                    "--latency",
                    str(args.latency),
                )
            if not args.skip_concurrent:
                conc = run_loop(concurrent(url, args, proc.pid))
    table = build_table(conc, idle, inflight)
    sys.stdout.write(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": info, "concurrent": conc, "idle": idle, "inflight": inflight}, indent=1
            )
        )
    if not args.no_append:
        notes = [
            "one Engine (max_in_flight = max_connections = sessions), emulator in its own "
            "process with --flat and the stated latency; ideal = turns x latency",
            f"open files soft limit {soft}",
            f"client event loop: {event_loop_name()} (NANOEDIT_LOOP=asyncio for the standard one)",
        ]
        if conc and conc["error_samples"]:
            notes.append(f"errors: {conc['error_samples'][0]}")
        append_results("scale: concurrent sessions and idle-session memory", info, table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
