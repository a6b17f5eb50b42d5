"""`nanoedit bench`: many multi-turn editing sessions through the engine, with latency percentiles.

Load models:

- closed loop (`--concurrency C`, the default): at most C sessions run at once; when one ends the
  next starts, until `--sessions` have started or `--duration` seconds have passed.
- open loop (`--rate R`): new sessions arrive as a Poisson process of R sessions per second
  (exponential gaps drawn from `random.Random(--seed)`, so a seed fixes the schedule), whatever
  the number already running, until `--sessions` have arrived or `--duration` has passed.

Each session runs its script of turns in order and stops at its first failed turn; a failed turn
never stops the benchmark.

Definitions used in the report:

- warm-up: a session is warm-up when it starts less than `--warmup` seconds after the run began or
  is among the first `--warmup-sessions` sessions to start. Warm-up sessions run like the others
  but every one of their turns is left out of the statistics (the JSON still lists them with
  `"warmup": true`). Whole sessions are excluded, never single turns, so the per-turn-index
  figures compare sessions that all ran under the same conditions.
- `latency_s`: wall time around `Session.send` as the benchmark sees it, retries and back-off
  included. `headers_s`, `first_event_s`, `first_image_s` come from the engine
  (`Turn.record.timings`): seconds from the start of the attempt that succeeded.
- `request_bytes` / `response_bytes`: the encoded request body and the response body of the
  attempt that succeeded (`Turn.record.request_bytes` / `response_bytes`).
- percentiles: linear interpolation between closest ranks (numpy's default, Hyndman-Fan type 7);
  one sample is every percentile of itself; no samples gives null (JSON) and an en dash (table).
- latency, timing, byte and token metrics cover successful measured turns; `attempts` covers
  every measured turn. Error rate = failed / attempted measured turns; retry rate = measured
  turns that needed more than one attempt / attempted measured turns.
- throughput: successful measured turns (and their images) divided by the measurement window,
  from the start of the first measured session to the end of the last measured turn.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine._config import EngineConfig
from engine._exceptions import ConfigError
from engine.cli._common import add_history_option, config_from_args, retry_from_args, run_loop
from engine.cli._load import (
    DEFAULT_SCRIPT,
    NO_DATA,
    PERCENTILES,
    TurnSample,
    _bench,
    _Plan,
    arrival_offsets,
    describe,
    estimate_cost,
    load_prompts,
    percentile,
    run_workers,
    summarize,
)
from engine.cli._procs import emulator_cpu, emulator_process
from sessions import ImageConfig, resolve_model

__all__ = [
    "DEFAULT_SCRIPT",
    "PERCENTILES",
    "TurnSample",
    "add_arguments",
    "add_parser",
    "arrival_offsets",
    "describe",
    "estimate_cost",
    "format_table",
    "load_prompts",
    "percentile",
    "run",
    "summarize",
]

# --- report ---------------------------------------------------------------------------------------


def _num(value: float | int | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NO_DATA
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


_ROWS = (
    ("latency_s", "latency (s)", 1.0, 3),
    ("headers_s", "headers (s)", 1.0, 3),
    ("first_event_s", "first event (s)", 1.0, 3),
    ("first_image_s", "first image (s)", 1.0, 3),
    ("attempts", "attempts", 1.0, 2),
    ("request_bytes", "request (KiB)", 1 / 1024, 1),
    ("response_bytes", "response (KiB)", 1 / 1024, 1),
    ("prompt_tokens", "prompt tokens", 1.0, 0),
    ("output_tokens", "output tokens", 1.0, 0),
    ("cost_usd", "cost (USD)", 1.0, 4),
)


def _pct(x: float | None) -> str:
    return NO_DATA if x is None else f"{100 * x:.1f} %"


def _scaled(stats: dict[str, Any], key: str, scale: float, digits: int) -> str:
    v = stats.get(key)
    return _num(None if v is None else float(v) * scale, digits)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as Markdown-ish text for stdout."""
    cfg = summary.get("config", {})
    lines = []
    if cfg:
        lines.append(
            f"## nanoedit bench: {cfg.get('load')}, {cfg.get('model')} "
            f"{cfg.get('image_size') or 'default size'}, "
            f"{cfg.get('aspect_ratio') or 'default ratio'}, "
            f"{'stream' if cfg.get('stream') else 'plain'}, target {cfg.get('target')}"
        )
        lines.append("")
    head = ["metric", "n", "mean", "p50", "p90", "p95", "p99", "max"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|" + "---:|" * (len(head) - 1))
    for key, label, scale, digits in _ROWS:
        st = summary["metrics"][key]
        cells = [label, _num(st["count"], 0)]
        cells += [_scaled(st, k, scale, digits) for k in ("mean", "p50", "p90", "p95", "p99")]
        cells.append(_scaled(st, "max", scale, digits))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    head = ["turn", "turns", "failed", "p50 (s)", "p90 (s)", "p99 (s)", "max (s)"]
    head += ["request KiB p50", "prompt tokens p50"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|" + "---:|" * (len(head) - 1))
    for index, group in summary["by_turn"].items():
        lat = group["metrics"]["latency_s"]
        cells = [index, _num(group["turns"], 0), _num(group["failed"], 0)]
        cells += [_scaled(lat, k, 1.0, 3) for k in ("p50", "p90", "p99", "max")]
        cells.append(_scaled(group["metrics"]["request_bytes"], "p50", 1 / 1024, 1))
        cells.append(_scaled(group["metrics"]["prompt_tokens"], "p50", 1.0, 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    t, e, r = summary["turns"], summary["errors"], summary["retries"]
    tp = summary["throughput"]
    lines.append(
        f"turns: {t['ok']} ok of {t['measured']} measured ({t['failed']} failed, "
        f"error rate {_pct(e['rate'])}); {t['warmup']} warm-up turns excluded"
    )
    lines.append(
        f"retries: {r['retried_turns']} turns retried ({_pct(r['rate'])}), "
        f"{r['extra_attempts']} extra attempts"
    )
    lines.append(
        f"throughput: {_num(tp['turns_per_s'], 2)} turns/s, {_num(tp['images_per_s'], 2)} "
        f"images/s over {summary['window_s']:.2f} s (wall {summary['wall_s']:.2f} s)"
    )
    lines.append(_cpu_line(summary))
    lines.append(f"cost: ${summary['cost_usd']:.4f} settled (measured turns)")
    if e["by_type"]:
        kinds = ", ".join(f"{k} x{v}" for k, v in e["by_type"].items())
        statuses = ", ".join(f"{k} x{v}" for k, v in e["by_status"].items())
        lines.append(f"errors: {kinds}" + (f" (HTTP {statuses})" if statuses else ""))
        lines.extend(f"  e.g. {sample}" for sample in e["samples"][:1])
    return "\n".join(lines) + "\n"


def _cpu_line(summary: dict[str, Any]) -> str:
    """Client CPU (every worker) and emulator CPU, in total and per successful turn."""
    ok = summary["turns"]["ok"]
    workers = summary.get("workers", 1)

    def per_turn(cpu: float) -> str:
        return f"{1000 * cpu / ok:.2f} ms/turn" if ok else NO_DATA

    client = summary.get("process_cpu_s", 0.0)
    who = f"{workers} worker processes" if workers > 1 else "the bench process"
    line = f"CPU: client {client:.2f} s ({per_turn(client)}, {who})"
    emulator = summary.get("emulator_cpu_s")
    if emulator is not None:
        line += f"; emulator {emulator:.2f} s ({per_turn(emulator)}, its own process)"
    elif summary.get("config", {}).get("emulator") == "inline":
        line += " (the emulator's included: it runs in the same process)"
    return line


def _plot(path: str, samples: Sequence[TurnSample], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [s for s in samples if s.ok and not s.warmup]
    lat = sorted(s.latency_s for s in ok)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    fig.suptitle("nanoedit bench: " + str(summary.get("config", {}).get("load", "")))
    if lat:
        ax1.hist(lat, bins=min(50, max(5, len(lat) // 4)), color="#4c72b0", alpha=0.7)
        cdf = ax1.twinx()
        cdf.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], color="#c44e52")
        cdf.set_ylabel("CDF")
        cdf.set_ylim(0, 1.02)
    ax1.set_title("turn latency (measured, successful)")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("turns")

    indexes = sorted({s.turn for s in ok})
    if indexes:
        data = [[s.latency_s for s in ok if s.turn == i] for i in indexes]
        ax2.boxplot(data, tick_labels=[str(i) for i in indexes], whis=(1, 99), showfliers=True)
    ax2.set_title("latency by turn index (whiskers p1-p99)")
    ax2.set_xlabel("turn index (history grows →)")
    ax2.set_ylabel("seconds")

    done = [s for s in samples if s.ok]
    if done:
        end = max(s.ended_s for s in done)
        # About 30 buckets, but at least a second (or a fifth of a short run): narrower ones
        # alias with the turn cadence and show only noise.
        step = max(end / 30, min(1.0, end / 5))
        buckets = max(1, math.ceil(end / step))
        turns = [0] * buckets
        images = [0] * buckets
        for s in done:
            b = min(int(s.ended_s / step), buckets - 1)
            turns[b] += 1
            images[b] += s.images
        # The last bucket may be cut short by the end of the run.
        widths = [min(step, end - i * step) or step for i in range(buckets)]
        xs = [i * step + w / 2 for i, w in enumerate(widths)]
        ax3.plot(xs, [n / w for n, w in zip(turns, widths, strict=True)], label="turns/s")
        ax3.plot(
            xs,
            [n / w for n, w in zip(images, widths, strict=True)],
            label="images/s",
            linestyle="--",
        )
        warm = [s.ended_s for s in samples if s.warmup]
        if warm:
            ax3.axvspan(0, max(warm), color="grey", alpha=0.15, label="warm-up sessions")
        ax3.legend()
    ax3.set_ylim(bottom=0)
    ax3.set_title("throughput over time")
    ax3.set_xlabel("seconds since start")
    ax3.set_ylabel("per second")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line ---------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `bench`."""
    p = sub.add_parser(
        "bench",
        help="concurrency benchmark with latency percentiles",
        description="Drive many multi-turn sessions (closed or open loop) against the "
        "embedded emulator or a provider; report latency percentiles, throughput, errors.",
        epilog="example:\n  nanoedit bench --sessions 200 --turns 3 --concurrency 50 --latency 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `nanoedit bench` options to `parser`."""
    g = parser.add_argument_group("load")
    g.add_argument(
        "--sessions", type=int, default=20, help="sessions to run (0: no cap, needs --duration)"
    )
    g.add_argument(
        "--turns",
        type=int,
        default=None,
        help="turns per session (default 3, or each --prompts line)",
    )
    mode = g.add_mutually_exclusive_group()
    mode.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="closed loop: at most C sessions at once (default min(sessions, 32))",
    )
    mode.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: new sessions per second (Poisson, seeded)",
    )
    g.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop starting sessions after S seconds (0: no limit)",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sessions starting in the first SECONDS are excluded from the statistics",
    )
    g.add_argument(
        "--warmup-sessions",
        type=int,
        default=0,
        metavar="N",
        help="the first N sessions started are excluded from the statistics",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the arrival process and of the emulator"
    )
    g.add_argument(
        "--prompts",
        metavar="FILE",
        help='JSON lines, one session each: ["p1", "p2"] or {"turns": [...]}',
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", default="nano-banana-2", help="model id or alias (default nano-banana-2)"
    )
    g.add_argument("--image-size", help="512 (3.1 Flash), 1K, 2K, 4K")
    g.add_argument("--aspect-ratio", help="e.g. 1:1, 16:9")
    g.add_argument("--no-stream", action="store_true", help="plain generateContent instead of SSE")
    add_history_option(g)
    g.add_argument(
        "--store",
        help="where the sessions go: 'memory' (default), a SQLite path, or a postgresql:// DSN "
        "(measures the store too)",
    )
    g = parser.add_argument_group("target (default: the embedded emulator)")
    g.add_argument(
        "--provider", choices=("local", "google", "wisdom-gate", "custom"), help="where requests go"
    )
    g.add_argument("--base-url", help="Gemini-native base URL (implies --provider custom)")
    g.add_argument(
        "--api-key-env", metavar="NAME", help="read the API key from this environment variable"
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="engine's in-flight cap (default: enough for the load)",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="connection pool size (default: as --max-in-flight)",
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        default=0,
        help="attempts per turn, retries included (default: the engine's RetryPolicy)",
    )
    g.add_argument(
        "--retry-delay",
        type=float,
        default=None,
        metavar="S",
        help="base back-off delay in seconds (default: the engine's RetryPolicy)",
    )
    g.add_argument(
        "--max-spend",
        type=float,
        default=1.0,
        metavar="USD",
        help="a non-local run estimated above this needs --yes (default 1)",
    )
    g.add_argument(
        "--yes", action="store_true", help="accept the estimated cost of a non-local run"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="client processes, each its own engine, sharing the load (default 1)",
    )
    g = parser.add_argument_group("embedded emulator")
    g.add_argument(
        "--emulator",
        choices=("process", "inline"),
        default="process",
        help="run the emulator in its own process (default), so that the figures are the "
        "client's, or inside the bench process",
    )
    g.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    g.add_argument(
        "--faults",
        default="",
        help='fault spec, e.g. "rate=0.1:429,500" (see `nanoedit emulator --help`)',
    )
    g.add_argument("--flat", action="store_true", help="small flat images (cheap to render)")
    g = parser.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write the summary and every turn record as JSON")
    g.add_argument(
        "--plot", metavar="FILE.png", help="latency histogram/CDF, by turn index, throughput"
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress line on stderr (default: when stderr is a terminal)",
    )
    if not any(a.dest == "verbose" for a in parser._actions):
        parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")


def _fail(msg: str) -> int:
    print(f"bench: {msg}", file=sys.stderr, flush=True)
    return 2


def _engine_config(args: argparse.Namespace, max_in_flight: int) -> EngineConfig:
    cfg = config_from_args(args, local_unless_target=True)
    return dataclasses.replace(
        cfg,
        retry=retry_from_args(args, cfg.retry),
        max_in_flight=max_in_flight,
        max_connections=args.max_connections or max(max_in_flight, cfg.max_connections),
        store=args.store or "memory",
    )


def _measure(
    args: argparse.Namespace, cfg: EngineConfig, plan: _Plan
) -> tuple[list[TurnSample], dict[str, Any]]:
    """Run the load: in this process or in `--workers` processes, against the emulator in its
    own process unless `--emulator inline` or a real target; the CPU of each side."""
    if cfg.provider != "local" or args.emulator == "inline":
        if args.workers > 1:
            return run_workers(cfg, plan, args.workers, args.verbose)
        return run_loop(_bench(cfg, plan))
    options = ["--latency", str(args.latency), "--seed", str(args.seed)]
    options += ["--faults", args.faults] if args.faults else []
    options += ["--flat"] if args.flat else []
    with emulator_process(options) as base_url:
        target = dataclasses.replace(cfg, provider="custom", base_url=base_url)
        before = emulator_cpu(base_url)
        if args.workers > 1:
            samples, summary = run_workers(target, plan, args.workers, args.verbose)
        else:
            samples, summary = run_loop(_bench(target, plan))
        after = emulator_cpu(base_url)
    if before is not None and after is not None:
        summary["emulator_cpu_s"] = after - before
    return samples, summary


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed `args`; the exit code (2: refused or bad options)."""
    if args.sessions < 0 or (args.turns is not None and args.turns < 1):
        return _fail("--sessions must be >= 0 and --turns >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    if args.max_attempts < 0 or (args.retry_delay is not None and args.retry_delay < 0):
        return _fail("--max-attempts and --retry-delay must not be negative")
    if args.rate < 0 or args.duration < 0 or args.warmup < 0 or args.warmup_sessions < 0:
        return _fail("--rate, --duration and --warmup must not be negative")
    if args.sessions == 0 and not args.duration:
        return _fail("--sessions 0 (no cap) needs --duration")
    if args.workers < 1:
        return _fail("--workers must be at least 1")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return _fail("--plot needs matplotlib: pip install matplotlib")
    try:
        spec = resolve_model(args.model)
        image_config = None
        if args.aspect_ratio or args.image_size:
            image_config = ImageConfig(aspect_ratio=args.aspect_ratio, image_size=args.image_size)
            spec.validate(image_config)
        scripts = load_prompts(args.prompts) if args.prompts else [list(DEFAULT_SCRIPT)]
    except (ConfigError, OSError) as exc:
        return _fail(str(exc))
    turns = args.turns if args.turns is not None else (None if args.prompts else 3)
    concurrency = args.concurrency or (min(args.sessions, 32) if args.sessions else 32)
    max_in_flight = args.max_in_flight or (max(64, concurrency) if not args.rate else 1024)
    try:
        cfg = _engine_config(args, max_in_flight)
    except ConfigError as exc:
        return _fail(str(exc))

    # Count the turns the run may send, to price a non-local run before anything is sent.
    per_session = turns if turns is not None else max(len(s) for s in scripts)
    sessions: float = args.sessions
    if args.rate and args.duration:
        expected = args.rate * args.duration
        sessions = min(sessions, expected) if sessions else expected
    if cfg.provider != "local":
        if not sessions:
            estimate = None
            print(
                "bench: cost estimate: unbounded (closed loop with --sessions 0)", file=sys.stderr
            )
        else:
            estimate = estimate_cost(
                spec, cfg.provider, args.image_size, math.ceil(sessions * per_session)
            )
            print(
                f"bench: estimated cost ${estimate:.2f} for about "
                f"{math.ceil(sessions * per_session)} turns on {cfg.provider} "
                f"({cfg.resolved_base_url}), retries not included",
                file=sys.stderr,
            )
        if (estimate is None or estimate > args.max_spend) and not args.yes:
            return _fail(
                f"refusing to spend more than --max-spend ${args.max_spend:.2f} without --yes"
            )

    load = (
        f"{args.sessions or 'unbounded'} sessions x {turns or 'scripted'} turns, "
        + (
            f"open loop {args.rate:g} sessions/s"
            if args.rate
            else f"closed loop, concurrency {concurrency}"
        )
        + (f", duration {args.duration:g} s" if args.duration else "")
    )
    target = (
        f"embedded emulator (latency {args.latency:g} s"
        + (f", faults {args.faults!r}" if args.faults else "")
        + (", flat" if args.flat else "")
        + ")"
        if cfg.provider == "local"
        else f"{cfg.provider} {cfg.resolved_base_url}"
    )
    plan = _Plan(
        sessions=args.sessions,
        turns=turns,
        scripts=scripts,
        concurrency=concurrency,
        rate=args.rate,
        duration=args.duration,
        warmup_s=args.warmup,
        warmup_sessions=args.warmup_sessions,
        seed=args.seed,
        model=spec.id,
        image_config=image_config,
        stream=not args.no_stream,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    if args.workers > 1 and cfg.provider == "local" and args.emulator == "inline":
        return _fail("--workers needs the emulator in its own process (--emulator process)")
    try:
        samples, summary = _measure(args, cfg, plan)
    except ConfigError as exc:
        return _fail(str(exc))
    summary = {
        "config": {
            "load": load,
            "target": target,
            "provider": cfg.provider,
            "model": spec.id,
            "image_size": args.image_size,
            "aspect_ratio": args.aspect_ratio,
            "stream": not args.no_stream,
            "sessions": args.sessions,
            "turns": turns,
            "concurrency": None if args.rate else concurrency,
            "rate": args.rate or None,
            "duration": args.duration or None,
            "warmup_s": args.warmup,
            "warmup_sessions": args.warmup_sessions,
            "seed": args.seed,
            "max_in_flight": cfg.max_in_flight,
            "max_connections": cfg.max_connections,
            "max_attempts": cfg.retry.max_attempts,
            "workers": args.workers,
            "emulator": args.emulator if cfg.provider == "local" else None,
            "percentiles": "linear interpolation between closest ranks (type 7)",
        },
        **summary,
    }
    sys.stdout.write(format_table(summary))
    sys.stdout.flush()
    if args.json:
        doc = {"summary": summary, "records": samples}
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=1))
    if args.plot:
        _plot(args.plot, samples, summary)
    return 0
