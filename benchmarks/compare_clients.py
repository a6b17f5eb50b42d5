"""nanoedit versus its peers, side by side on the same emulator, in one run.

    python benchmarks/compare_clients.py [--sessions 20] [--turns 3] [--json FILE]

Starts the emulator in its own process (`python -m engine emulator --port 0`: realistic grain
1K PNGs, no added latency) and runs the same workload, S sessions x T turns all at once
(`asyncio.gather`), streaming and plain, through three clients (see `_peers.py`): nanoedit, the
official google-genai async chat, and a hand-written aiohttp + msgspec floor. Each client runs in
its own process (this script with `--child CLIENT --mode stream|plain`); the same sessions also
go over OpenAI-compatible chat completions, through nanoedit's openai-chat provider and the
official `openai` SDK (`nanoedit-chat`, `openai-sdk`). Each child reports one JSON
line on stdout:

- CPU seconds (`getrusage(RUSAGE_SELF)` user + sys) around the workload only: after the imports
  and a warm-up session of T turns;
- wall time of the workload;
- peak RSS (`ru_maxrss`: includes the imports) and the RSS delta (the peak sampled from
  /proc/self/statm every 10 ms during the workload, minus the RSS just before it);
- images received, requests the emulator counted (its /emulator/stats before and after), errors.

Every child runs with the collector tuned the way the `nanoedit` command runs
(`engine.tuned_gc`, a process setting any client can use); `--default-gc` keeps CPython's
thresholds in all of them.

Every client must produce S x T images with S x T requests; the emulator verifies thought
signatures, so a client that drops or mangles them gets 400s, which are counted. The table goes
to stdout and is appended to benchmarks/RESULTS.md with the machine and the exact command.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
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
)
from _peers import CLIENTS, MAX_REQUEST_BYTES, Outcome, PeerClient

PROMPTS = (
    "A ceramic mug on an oak table, morning light, photographed from the side",
    "Add a eucalyptus sprig to the left of the mug. Keep everything else.",
    "Change the light to a warm golden-hour glow from the right.",
    "Recolour the mug to deep teal; keep its glaze and reflections.",
    "Add a folded linen napkin under the mug.",
)
# Targets from the design: nanoedit's CPU per turn and peak RSS against its peers.
TARGET_CPU_VS_GENAI = 0.5
TARGET_CPU_VS_FLOOR = 1.5
TARGET_RSS_VS_GENAI = 0.5
TARGET_CPU_VS_SIMD_FLOOR = 1.3
MiB = 1024 * 1024


def _prompts(turns: int, session: int) -> list[str]:
    # Every session gets its own scene, so every image differs: identical sessions would let
    # nanoedit's content-addressed blob store keep one copy of each image for all of them,
    # which a real model never allows. The emulator caches renders, so after the first
    # client every run is served from its cache.
    first = f"{PROMPTS[0]}, variation {session}"
    return [first, *(PROMPTS[i % len(PROMPTS)] for i in range(1, turns))]


def _requests(stats: dict[str, Any]) -> int:
    counts = stats.get("requests", {})
    endpoints = ("generateContent", "streamGenerateContent", "chat.completions")
    return sum(int(counts.get(endpoint, 0)) for endpoint in endpoints)


# --- child: one client, one mode ------------------------------------------------------------------


def _quiet_logs() -> None:
    # What an application embedding nanoedit does: the library never configures structlog, and
    # its unconfigured default prints every info line to stdout (our result channel).
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    client: PeerClient = CLIENTS[args.child](
        args.base_url,
        model=args.model,
        image_size=args.image_size,
        aspect_ratio=args.aspect_ratio,
        stream=args.mode == "stream",
        sessions=args.sessions,
    )
    await client.start()
    try:
        warm = Outcome()
        await client.run_session(_prompts(args.turns, -1), warm)
        if warm.errors:
            raise SystemExit(f"{args.child}: warm-up session failed: {warm.errors[0]}")
        # Stats are read in a thread: the event loop stays free and nothing here is measured.
        before = await asyncio.to_thread(emulator_stats, args.base_url)
        gc.collect()
        out = Outcome()
        profiler: Any = None
        if args.profile_out:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
        by_turn: list[float] = []
        with RssSampler() as rss:
            cpu0 = cpu_seconds()
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.start()
            if args.lockstep:
                by_turn = await _lockstep(client, args, out)
            else:
                await asyncio.gather(
                    *(
                        client.run_session(_prompts(args.turns, i), out)
                        for i in range(args.sessions)
                    )
                )
            if profiler is not None:
                profiler.stop()
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
        after = await asyncio.to_thread(emulator_stats, args.base_url)
    finally:
        await client.aclose()
    return {
        "profiler": profiler,
        "client": args.child,
        "mode": args.mode,
        "sessions": args.sessions,
        "turns": args.turns,
        "expected": args.sessions * args.turns,
        "turns_ok": out.turns_ok,
        "images": out.images,
        "image_bytes": out.image_bytes,
        "errors": len(out.errors),
        "error_samples": sorted(set(out.errors))[:3],
        "requests": _requests(after) - _requests(before),
        "cpu_s": cpu,
        "wall_s": wall,
        "max_rss": max_rss_bytes(),
        "rss_baseline": rss.baseline,
        "rss_peak": rss.peak,
        "rss_delta": rss.delta,
        "rss_samples": rss.samples,
        "cpu_ms_by_turn": by_turn,
    }


async def _lockstep(client: PeerClient, args: argparse.Namespace, out: Outcome) -> list[float]:
    """Every session's turn 1 at once, then every turn 2, ...: CPU ms per turn at each index."""
    scripts = [_prompts(args.turns, i) for i in range(args.sessions)]
    handles = await asyncio.gather(*(client.open() for _ in scripts))
    alive = [True] * len(handles)
    by_turn = []

    async def one(i: int, t: int) -> None:
        try:
            await client.turn(handles[i], scripts[i][t], out)
        except Exception as exc:  # counted like run_session does; the session stops
            alive[i] = False
            out.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    for t in range(args.turns):
        gc.collect()
        cpu0 = cpu_seconds()
        await asyncio.gather(*(one(i, t) for i in range(len(handles)) if alive[i]))
        by_turn.append(1000 * (cpu_seconds() - cpu0) / len(handles))
    return by_turn


def _tuned_gc() -> Any:
    """`engine.tuned_gc`, loaded from its file: importing the `engine` package would load the
    whole engine (6.5 MiB, and structlog) into every peer's process and its peak RSS."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_nanoedit_gc", Path(__file__).resolve().parents[1] / "engine" / "_gc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tuned_gc()


def child_main(args: argparse.Namespace) -> int:
    """Run one client's workload and print its JSON line.

    A child imports only what its client needs (the nanoedit clients the engine, the peers
    their SDK or aiohttp), so each peak RSS is that client's own.
    """
    if args.child.startswith("nanoedit"):
        _quiet_logs()
    if args.default_gc:
        result = asyncio.run(_child(args))
    else:
        # Every client gets the same process setting, the one the nanoedit command uses.
        with _tuned_gc():
            result = asyncio.run(_child(args))
    profiler = result.pop("profiler")
    if profiler is not None:
        Path(args.profile_out).write_text(profiler.output_text(unicode=True, color=False))
        Path(args.profile_out).with_suffix(".html").write_text(profiler.output_html())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# --- parent ---------------------------------------------------------------------------------------


def _run_child(args: argparse.Namespace, client: str, mode: str, base_url: str, **kw: str) -> Any:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        client,
        "--mode",
        mode,
        "--base-url",
        base_url,
        "--sessions",
        str(args.sessions),
        "--turns",
        str(args.turns),
        "--model",
        args.model,
        "--image-size",
        args.image_size,
        "--aspect-ratio",
        args.aspect_ratio,
    ]
    for key, value in kw.items():
        cmd += [f"--{key}", value]
    if args.lockstep:
        cmd.append("--lockstep")
    if args.default_gc:
        cmd.append("--default-gc")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{client}/{mode} child failed ({proc.returncode}): {' | '.join(tail)}")
    return json.loads(lines[-1])


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    # The run with the median CPU time stands for the client; the spread is reported beside it.
    ordered = sorted(runs, key=lambda r: r["cpu_s"])
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["cpu_s_all"] = [r["cpu_s"] for r in runs]
    best["wall_s_all"] = [r["wall_s"] for r in runs]
    return best


def _per_turn_ms(r: dict[str, Any]) -> float | None:
    # CPU per turn the client was asked to run: failing early must not look cheap per success.
    return 1000 * r["cpu_s"] / r["expected"] if r["expected"] else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return fmt(None)
    return f"{value:.3f} ({'ok' if value <= target else 'MISSED'} ≤ {target:g})"


def _by_turn_table(results: list[dict[str, Any]], ratios: dict[str, Any]) -> str:
    """With --lockstep: CPU ms per turn at each turn index, and nanoedit over the SIMD floor."""
    stepped = [r for r in results if r.get("cpu_ms_by_turn")]
    if not stepped:
        return ""
    turns = max(len(r["cpu_ms_by_turn"]) for r in stepped)
    rows = []
    for r in stepped:
        rows.append([r["mode"], r["client"], *(fmt(v, 1) for v in r["cpu_ms_by_turn"])])
    for mode in sorted({r["mode"] for r in stepped}, reverse=True):
        by = {r["client"]: r["cpu_ms_by_turn"] for r in stepped if r["mode"] == mode}
        ne, fl = by.get("nanoedit"), by.get("floor-simd")
        if ne and fl and len(ne) == len(fl):
            per = [_ratio(a, b) for a, b in zip(ne, fl, strict=True)]
            rows.append([mode, "nanoedit / floor-simd", *(fmt(v, 2) for v in per)])
            ratios.setdefault(mode, {})["last_turn_vs_simd_floor"] = per[-1]
            ratios[mode]["last_turn_cpu_ms"] = ne[-1]
    head = ["mode", "client (CPU ms per turn, by turn index)"]
    head += [str(i) for i in range(1, turns + 1)]
    return "\n" + markdown_table(head, rows, right=2)


def build_tables(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The per-client table, the ratio table, and the ratios as data."""
    headers = [
        "mode",
        "client",
        "images",
        "requests",
        "errors",
        "CPU s",
        "CPU s, all runs",
        "CPU ms/turn",
        "wall s",
        "peak RSS MiB",
        "RSS Δ MiB",
    ]
    rows = []
    for r in results:
        images_ok = r["images"] == r["expected"] and r["errors"] == 0
        # Each turn is exactly one request unless the client retried or sent extra calls.
        requests_ok = r["requests"] == r["expected"]
        rows.append(
            [
                r["mode"],
                r["client"],
                f"{r['images']}/{r['expected']}" + ("" if images_ok else " ✗"),
                str(r["requests"]) + ("" if requests_ok else " ✗"),
                str(r["errors"]),
                fmt(r["cpu_s"], 3),
                " / ".join(f"{c:.3f}" for c in r.get("cpu_s_all", [r["cpu_s"]])),
                fmt(_per_turn_ms(r), 1),
                fmt(r["wall_s"], 2),
                fmt(r["max_rss"] / MiB, 1),
                fmt(r["rss_delta"] / MiB, 1),
            ]
        )
    table = markdown_table(headers, rows, right=2)
    ratios: dict[str, Any] = {}
    ratio_rows = []
    for mode in sorted({r["mode"] for r in results}, reverse=True):
        by = {r["client"]: r for r in results if r["mode"] == mode}
        ne, ga, fl = by.get("nanoedit"), by.get("google-genai"), by.get("floor")
        fs = by.get("floor-simd")
        nc, oa = by.get("nanoedit-chat"), by.get("openai-sdk")
        if nc is not None and oa is not None:
            ratios[f"{mode}-chat"] = {
                "cpu_per_turn_vs_openai": _ratio(_per_turn_ms(nc), _per_turn_ms(oa)),
                "peak_rss_vs_openai": _ratio(nc["max_rss"], oa["max_rss"]),
            }
        if ne is None:
            continue
        cpu_ga = _ratio(_per_turn_ms(ne), _per_turn_ms(ga)) if ga else None
        cpu_fl = _ratio(_per_turn_ms(ne), _per_turn_ms(fl)) if fl else None
        rss_ga = _ratio(ne["max_rss"], ga["max_rss"]) if ga else None
        dlt_ga = _ratio(ne["rss_delta"], ga["rss_delta"]) if ga else None
        cpu_fs = _ratio(_per_turn_ms(ne), _per_turn_ms(fs)) if fs else None
        ratios[mode] = {
            **ratios.get(mode, {}),
            "cpu_per_turn_vs_simd_floor": cpu_fs,
            "cpu_per_turn_vs_genai": cpu_ga,
            "cpu_per_turn_vs_floor": cpu_fl,
            "peak_rss_vs_genai": rss_ga,
            "rss_delta_vs_genai": dlt_ga,
        }
        ratio_rows.append(
            [
                mode,
                _verdict(cpu_ga, TARGET_CPU_VS_GENAI),
                _verdict(cpu_fl, TARGET_CPU_VS_FLOOR),
                # The SIMD floor's target is the long sessions' one (--lockstep, 10 turns).
                _verdict(cpu_fs, TARGET_CPU_VS_SIMD_FLOOR)
                if ne.get("cpu_ms_by_turn")
                else fmt(cpu_fs, 3),
                _verdict(rss_ga, TARGET_RSS_VS_GENAI),
                fmt(dlt_ga, 2),
            ]
        )
    chat_rows = [
        [
            mode.removesuffix("-chat"),
            fmt(r["cpu_per_turn_vs_openai"], 3),
            fmt(r["peak_rss_vs_openai"], 3),
        ]
        for mode, r in ratios.items()
        if mode.endswith("-chat")
    ]
    if chat_rows:
        table += "\n" + markdown_table(
            ["mode", "nanoedit-chat/openai-sdk CPU per turn", "nanoedit-chat/openai-sdk peak RSS"],
            chat_rows,
        )
    table += _by_turn_table(results, ratios)
    if not ratio_rows:
        return table, ratios
    table += "\n" + markdown_table(
        [
            "mode",
            "nanoedit/genai CPU per turn",
            "nanoedit/floor CPU per turn",
            "nanoedit/floor-simd CPU per turn",
            "nanoedit/genai peak RSS",
            "nanoedit/genai RSS Δ",
        ],
        ratio_rows,
    )
    return table, ratios


def parent_main(args: argparse.Namespace) -> int:
    """Start the emulator, run every client in every mode, report."""
    info = machine_info()
    clients = [c for c in args.clients.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [c for c in clients if c not in CLIENTS] + [
        m for m in modes if m not in ("stream", "plain")
    ]
    if unknown:
        print(f"unknown client or mode: {', '.join(unknown)}", file=sys.stderr)
        return 2
    emulator_args = ["--max-request-bytes", str(MAX_REQUEST_BYTES)]
    emulator_args += ["--flat"] if args.flat else []
    results: list[dict[str, Any]] = []
    with emulator_process(*emulator_args) as (_proc, base_url):
        print(f"emulator at {base_url}", file=sys.stderr)
        for mode in modes:
            for client in clients:
                runs = []
                # Run 0 is not reported: it fills the emulator's render cache for this client's
                # requests, so no measured run competes with image rendering for the CPUs.
                for i in range(args.repeat + 1):
                    extra: dict[str, str] = {}
                    if args.profile_dir and client in args.profile.split(","):
                        out = Path(args.profile_dir) / f"{client}-{mode}-{i}.txt"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        extra["profile-out"] = str(out)
                    r = _run_child(args, client, mode, base_url, **extra)
                    label = f"run {i}" if i else "warm-up"
                    print(
                        f"  {mode:6} {client:12} {label}: cpu {r['cpu_s']:.3f} s, "
                        f"wall {r['wall_s']:.2f} s, images {r['images']}/{r['expected']}, "
                        f"errors {r['errors']}",
                        file=sys.stderr,
                    )
                    if i:
                        runs.append(r)
                results.append(_median_run(runs))
    table, ratios = build_tables(results)
    sys.stdout.write(table)
    notes = [
        f"workload: {args.sessions} sessions x {args.turns} turns, all concurrent, "
        f"{args.model} {args.image_size} {args.aspect_ratio}, emulator "
        f"{'flat' if args.flat else 'grain'} images, no added latency; each client in its own "
        f"process, the run with the median CPU of {args.repeat} after one unreported run "
        "that fills the emulator's render cache; "
        + (
            "CPython's default collector thresholds"
            if args.default_gc
            else "every client with the collector tuned as the nanoedit command runs it "
            "(engine.tuned_gc: thresholds 50,000/20/10)"
        ),
        "CPU: getrusage user+sys around the workload (after imports and one warm-up session); "
        "CPU ms/turn divides by the S x T turns asked for; peak RSS: ru_maxrss (imports "
        "included); RSS Δ: peak sampled every 10 ms during the workload minus the RSS before it",
    ]
    for r in results:
        if r["error_samples"]:
            notes.append(f"{r['client']}/{r['mode']} errors: {r['error_samples'][0]}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "results": results, "ratios": ratios}, indent=1)
        )
    if not args.no_append:
        append_results("compare_clients: nanoedit vs google-genai vs floor", info, table, notes)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the parent or one child."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--model", default="gemini-3.1-flash-image")
    p.add_argument("--image-size", default="1K")
    p.add_argument("--aspect-ratio", default="1:1")
    p.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset")
    p.add_argument("--modes", default="stream,plain", help="stream, plain or both")
    p.add_argument("--repeat", type=int, default=3, help="runs per client and mode (median)")
    p.add_argument("--flat", action="store_true", help="flat emulator images (default: grain)")
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="run turn 1 of every session, then turn 2, ...; report CPU per turn at each index",
    )
    p.add_argument(
        "--default-gc",
        action="store_true",
        help="CPython's default collector thresholds in every client (default: engine.tuned_gc "
        "in every client, as the nanoedit command runs)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--profile", default="nanoedit", help="clients to profile with --profile-dir")
    p.add_argument("--profile-dir", help="write pyinstrument profiles of the workload here")
    # Internal: one client in its own process.
    p.add_argument("--child", choices=tuple(CLIENTS), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("stream", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
