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
import asyncio
import dataclasses
import importlib.util
import itertools
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine._config import EngineConfig
from engine._exceptions import ConfigError, NanoeditError
from engine.catalog import ImageConfig, ModelSpec, resolve_model
from engine.cli._common import config_from_args, retry_from_args

__all__ = [
    "DEFAULT_SCRIPT",
    "PERCENTILES",
    "TurnSample",
    "add_arguments",
    "arrival_offsets",
    "describe",
    "estimate_cost",
    "load_prompts",
    "percentile",
    "run",
    "summarize",
]

PERCENTILES = (50, 90, 95, 99)
METRICS = (
    "latency_s",
    "headers_s",
    "first_event_s",
    "first_image_s",
    "attempts",
    "request_bytes",
    "response_bytes",
    "prompt_tokens",
    "output_tokens",
    "cost_usd",
)
# The built-in edit script: one scene, then the edits a user typically asks for next.
DEFAULT_SCRIPT = (
    "A ceramic mug on an oak table, morning light, photographed from the side",
    "Add a eucalyptus sprig to the left of the mug. Keep everything else.",
    "Change the light to a warm golden-hour glow from the right.",
    "Recolour the mug to deep teal; keep its glaze and reflections.",
    "Add a folded linen napkin under the mug.",
    "Make the background a soft-focus kitchen window.",
    "Add a thin wisp of steam rising from the mug.",
    "Change the table to white marble with grey veining.",
)
_PROGRESS_INTERVAL = 0.25  # at most four progress updates per second
NO_DATA = "\u2013"  # an en dash: what a table shows for an empty metric, never NaN


# --- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, min, p50/p90/p95/p99, max of `values`; every figure None when empty."""
    out: dict[str, float | int | None] = {"count": len(values)}
    out["mean"] = sum(values) / len(values) if values else None
    out["min"] = min(values) if values else None
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    out["max"] = max(values) if values else None
    return out


class TurnSample(msgspec.Struct, kw_only=True):
    """What the benchmark recorded about one turn (failed turns included)."""

    session: int  # the session's number in start order, from 0
    session_id: str | None
    turn: int  # turn index from 1
    warmup: bool
    ok: bool
    started_s: float  # offset from the start of the run
    ended_s: float
    latency_s: float  # wall time around Session.send, retries included
    engine_latency_s: float | None = None  # Turn.latency_s (start of the turn to its commit)
    headers_s: float | None = None
    first_event_s: float | None = None
    first_image_s: float | None = None
    done_s: float | None = None
    attempts: int | None = None
    request_bytes: int | None = None
    response_bytes: int | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    thoughts_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    images: int = 0
    image_bytes: int = 0
    finish_reason: str | None = None
    error_type: str | None = None
    status: int | None = None
    error: str | None = None


def _values(samples: Sequence[TurnSample], metric: str) -> list[float]:
    return [v for s in samples if (v := getattr(s, metric)) is not None]


def _metrics(samples: Sequence[TurnSample]) -> dict[str, dict[str, float | int | None]]:
    ok = [s for s in samples if s.ok]
    return {m: describe(_values(samples if m == "attempts" else ok, m)) for m in METRICS}


def summarize(
    samples: Sequence[TurnSample],
    *,
    wall_s: float,
    sessions_started: int,
) -> dict[str, Any]:
    """The report: counts, rates, throughput, cost and per-metric / per-turn-index percentiles."""
    measured = [s for s in samples if not s.warmup]
    ok = [s for s in measured if s.ok]
    failed = [s for s in measured if not s.ok]
    retried = [s for s in measured if (s.attempts or 1) > 1]
    images = sum(s.images for s in ok)
    if measured:
        window_start = min(s.started_s for s in measured)
        window_end = max(s.ended_s for s in measured)
        window = window_end - window_start
    else:
        window = 0.0
    n = len(measured)
    by_turn: dict[str, Any] = {}
    for index in sorted({s.turn for s in measured}):
        group = [s for s in measured if s.turn == index]
        by_turn[str(index)] = {
            "turns": len(group),
            "ok": sum(s.ok for s in group),
            "failed": sum(not s.ok for s in group),
            "metrics": _metrics(group),
        }
    sessions = {s.session for s in samples}
    warm_sessions = {s.session for s in samples if s.warmup}
    failed_sessions = {s.session for s in samples if not s.ok}
    return {
        "wall_s": wall_s,
        "window_s": window,
        "sessions": {
            "started": sessions_started,
            "with_turns": len(sessions),
            "warmup": len(warm_sessions),
            "measured": len(sessions - warm_sessions),
            "failed": len(failed_sessions - warm_sessions),
        },
        "turns": {
            "total": len(samples),
            "warmup": len(samples) - n,
            "measured": n,
            "ok": len(ok),
            "failed": len(failed),
        },
        "images": images,
        "throughput": {
            "turns_per_s": len(ok) / window if window > 0 else None,
            "images_per_s": images / window if window > 0 else None,
        },
        "errors": {
            "rate": len(failed) / n if n else None,
            "by_type": dict(Counter(s.error_type or "?" for s in failed).most_common()),
            "by_status": {
                str(k): v for k, v in Counter(s.status for s in failed if s.status).most_common()
            },
            "samples": list(dict.fromkeys(f"{s.error_type}: {s.error}" for s in failed))[:3],
        },
        "retries": {
            "rate": len(retried) / n if n else None,
            "retried_turns": len(retried),
            "extra_attempts": sum((s.attempts or 1) - 1 for s in measured),
        },
        "cost_usd": sum(s.cost_usd or 0.0 for s in measured),
        "cost_usd_all": sum(s.cost_usd or 0.0 for s in samples),
        "metrics": _metrics(measured),
        "by_turn": by_turn,
    }


# --- workload -------------------------------------------------------------------------------------


def arrival_offsets(rate: float, seed: int) -> Iterator[float]:
    """Arrival times (s from the start) of a Poisson process of `rate` per second, seeded."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def load_prompts(path: str | Path) -> list[list[str]]:
    """Scripted sessions from JSON lines: each line a list of prompts or {"turns": [...]}."""
    scripts: list[list[str]] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: not JSON: {exc.msg}") from exc
        turns = item.get("turns") if isinstance(item, dict) else item
        if (
            not isinstance(turns, list)
            or not turns
            or not all(isinstance(t, str) and t for t in turns)
        ):
            raise ConfigError(
                f'{path}:{lineno}: expected a non-empty list of prompts or {{"turns": [...]}}'
            )
        scripts.append(turns)
    if not scripts:
        raise ConfigError(f"{path}: no sessions in the file")
    return scripts


def _script_for(scripts: Sequence[Sequence[str]], session: int, turns: int | None) -> list[str]:
    script = list(scripts[session % len(scripts)])
    if turns is None:
        return script
    # An explicit --turns cycles or cuts the script to that length.
    return [
        p if i < len(script) else f"{p} (pass {i // len(script) + 1})"
        for i, p in zip(range(turns), itertools.cycle(script), strict=False)
    ]


def estimate_cost(spec: ModelSpec, provider: str, image_size: str | None, turns: int) -> float:
    """USD for `turns` one-image turns: the gateway's flat price, else Google's per-image price."""
    per_turn = spec.prices.per_request.get(provider)
    if per_turn is None:
        per_turn = spec.image_price(image_size)
    return per_turn * turns


# --- the run --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    sessions: int  # 0: no cap (then --duration bounds the run)
    turns: int | None
    scripts: list[list[str]]
    concurrency: int
    rate: float
    duration: float
    warmup_s: float
    warmup_sessions: int
    seed: int
    model: str
    image_config: ImageConfig | None
    stream: bool
    progress: bool


class _Run:
    """State shared by the session tasks of one benchmark run."""

    def __init__(self, engine: Any, plan: _Plan) -> None:
        self.engine = engine
        self.plan = plan
        self.samples: list[TurnSample] = []
        self.started = 0
        self.t0 = time.perf_counter()
        self.done_turns = 0
        self.errors = 0
        self.latencies: list[float] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def may_start(self) -> bool:
        p = self.plan
        if p.sessions and self.started >= p.sessions:
            return False
        return not (p.duration and self.now() >= p.duration)

    async def session(self, number: int) -> None:
        """One session: its turns in order, stopping at the first failure."""
        p = self.plan
        started = self.now()
        warm = number < p.warmup_sessions or started < p.warmup_s
        prompts = _script_for(p.scripts, number, p.turns)
        try:
            session = await self.engine.create_session(p.model, image_config=p.image_config)
        except NanoeditError as exc:
            self._failed(number, None, 1, warm, started, exc)
            return
        for index, prompt in enumerate(prompts, 1):
            t = self.now()
            try:
                turn = await session.send(prompt, stream=p.stream)
            except Exception as exc:  # a failed turn ends its session, never the benchmark
                self._failed(number, session.id, index, warm, t, exc)
                return
            end = self.now()
            timings = turn.record.timings
            usage = turn.usage
            self.samples.append(
                TurnSample(
                    session=number,
                    session_id=session.id,
                    turn=index,
                    warmup=warm,
                    ok=True,
                    started_s=t,
                    ended_s=end,
                    latency_s=end - t,
                    engine_latency_s=turn.latency_s,
                    headers_s=timings.get("headers_s"),
                    first_event_s=timings.get("first_event_s"),
                    first_image_s=timings.get("first_image_s"),
                    done_s=timings.get("done_s"),
                    attempts=turn.attempts,
                    request_bytes=turn.record.request_bytes,
                    response_bytes=turn.record.response_bytes,
                    prompt_tokens=usage.prompt_tokens,
                    output_tokens=usage.output_tokens,
                    thoughts_tokens=usage.thoughts_tokens,
                    total_tokens=usage.total_tokens,
                    cost_usd=turn.cost_usd,
                    images=len(turn.images),
                    image_bytes=sum(len(i.data) for i in turn.images),
                    finish_reason=turn.finish_reason,
                )
            )
            self.done_turns += 1
            if not warm:
                self.latencies.append(end - t)

    def _failed(
        self, number: int, sid: str | None, index: int, warm: bool, t: float, exc: BaseException
    ) -> None:
        end = self.now()
        self.samples.append(
            TurnSample(
                session=number,
                session_id=sid,
                turn=index,
                warmup=warm,
                ok=False,
                started_s=t,
                ended_s=end,
                latency_s=end - t,
                attempts=getattr(exc, "attempts", None) or 1,
                error_type=type(exc).__name__,
                status=getattr(exc, "status", None),
                error=str(exc)[:300],
            )
        )
        self.done_turns += 1
        self.errors += 1

    async def closed_loop(self) -> None:
        """At most `concurrency` sessions at once; each worker starts the next when one ends."""

        async def worker() -> None:
            while self.may_start():
                number = self.started
                self.started += 1
                await self.session(number)

        n = self.plan.concurrency
        if self.plan.sessions:
            n = min(n, self.plan.sessions)
        await asyncio.gather(*(worker() for _ in range(n)))

    async def open_loop(self) -> None:
        """Sessions arrive on a seeded Poisson schedule, however many are already running."""
        tasks: list[asyncio.Task[None]] = []
        for offset in arrival_offsets(self.plan.rate, self.plan.seed):
            if self.plan.duration and offset >= self.plan.duration:
                break
            if self.plan.sessions and self.started >= self.plan.sessions:
                break
            delay = offset - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            number = self.started
            self.started += 1
            tasks.append(asyncio.create_task(self.session(number)))
        await asyncio.gather(*tasks)

    async def progress(self) -> None:
        """Rewrite one stderr line with done/total turns, errors, turns/s and p50 so far."""
        p = self.plan
        total = str(p.sessions * len(_script_for(p.scripts, 0, p.turns))) if p.sessions else "?"
        width = 0
        try:
            while True:
                await asyncio.sleep(_PROGRESS_INTERVAL)
                width = self._progress_line(total, width)
        finally:
            self._progress_line(total, width)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _progress_line(self, total: str, width: int) -> int:
        elapsed = self.now()
        rate = self.done_turns / elapsed if elapsed > 0 else 0.0
        p50 = percentile(self.latencies, 50)
        line = (
            f"bench: {self.done_turns}/{total} turns · {self.errors} errors · "
            f"{rate:.1f} turns/s · p50 {NO_DATA if p50 is None else f'{p50:.3f} s'}"
        )
        sys.stderr.write("\r" + line.ljust(width))
        sys.stderr.flush()
        return len(line)


async def _bench(cfg: EngineConfig, plan: _Plan) -> tuple[list[TurnSample], dict[str, Any]]:
    from engine.runtime import Engine

    async with Engine(cfg) as engine:
        run = _Run(engine, plan)
        ticker = asyncio.create_task(run.progress()) if plan.progress else None
        run.t0 = time.perf_counter()
        cpu0 = _cpu()
        try:
            if plan.rate:
                await run.open_loop()
            else:
                await run.closed_loop()
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        wall = run.now()
        cpu = _cpu() - cpu0
    samples = sorted(run.samples, key=lambda s: (s.session, s.turn))
    summary = summarize(samples, wall_s=wall, sessions_started=run.started)
    summary["process_cpu_s"] = cpu
    return samples, summary


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


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
        f"images/s over {summary['window_s']:.2f} s (wall {summary['wall_s']:.2f} s, "
        f"bench process CPU {summary.get('process_cpu_s', 0.0):.2f} s)"
    )
    lines.append(f"cost: ${summary['cost_usd']:.4f} settled (measured turns)")
    if e["by_type"]:
        kinds = ", ".join(f"{k} x{v}" for k, v in e["by_type"].items())
        statuses = ", ".join(f"{k} x{v}" for k, v in e["by_status"].items())
        lines.append(f"errors: {kinds}" + (f" (HTTP {statuses})" if statuses else ""))
        lines.extend(f"  e.g. {sample}" for sample in e["samples"][:1])
    return "\n".join(lines) + "\n"


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
    g = parser.add_argument_group("embedded emulator")
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
    )


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
    samples, summary = asyncio.run(_bench(cfg, plan))
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
