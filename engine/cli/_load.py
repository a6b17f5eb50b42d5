"""The load generator behind `nanoedit bench`: the closed and open loops, per-turn samples and
their statistics (see the definitions in `engine.cli._bench`)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine._config import EngineConfig
from engine._exceptions import ConfigError, NanoeditError
from sessions import ImageConfig, ModelSpec

__all__ = [
    "DEFAULT_SCRIPT",
    "METRICS",
    "NO_DATA",
    "PERCENTILES",
    "TurnSample",
    "arrival_offsets",
    "describe",
    "estimate_cost",
    "load_prompts",
    "percentile",
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


async def _sleep_until(when: float, now: Callable[[], float]) -> None:
    """Sleep until `now()` reaches `when`. uvloop's timers have millisecond resolution: they
    may fire a little early, and a sub-millisecond sleep returns at once; so a short sleep of
    at least a millisecond may follow (the bound only guards against a clock that stands)."""
    delay = when - now()
    for _ in range(1000):
        if delay <= 0:
            return
        await asyncio.sleep(max(delay, 0.001))
        delay = when - now()


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
            await _sleep_until(offset, self.now)
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
    from engine.cli._common import open_store
    from engine.runtime import Engine

    async with open_store(cfg.store or "memory", cfg) as store, Engine(cfg, store=store) as engine:
        run = _Run(engine, plan)
        ticker = asyncio.create_task(run.progress()) if plan.progress else None
        run.t0 = time.perf_counter()
        t0_epoch = time.time()
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
    summary["t0_epoch"] = t0_epoch
    return samples, summary


# --- several client processes -------------------------------------------------------------------


def split_plan(plan: _Plan, workers: int) -> list[_Plan]:
    """`plan` shared among `workers` processes: sessions, concurrency, rate and warm-up
    sessions divided as evenly as whole numbers allow; each its own seed."""

    def share(total: int, i: int) -> int:
        return total // workers + (1 if i < total % workers else 0)

    return [
        dataclasses.replace(
            plan,
            sessions=share(plan.sessions, i),
            concurrency=max(1, share(plan.concurrency, i)),
            rate=plan.rate / workers,
            warmup_sessions=share(plan.warmup_sessions, i),
            seed=plan.seed + i,
            progress=False,
        )
        for i in range(workers)
        if not plan.sessions or share(plan.sessions, i)
    ]


def _worker(
    cfg: EngineConfig, plan: _Plan, start_at: float, verbose: int
) -> tuple[list[TurnSample], dict[str, Any]]:
    # A fresh interpreter (spawn): logging as the parent's command line set it.
    from engine.cli._common import configure_logging

    configure_logging(verbose)
    from engine.cli._common import run_loop

    # Every worker starts together, once all have imported what they need.
    time.sleep(max(0.0, start_at - time.time()))
    return run_loop(_bench(cfg, plan))


def run_workers(
    cfg: EngineConfig, plan: _Plan, workers: int, verbose: int
) -> tuple[list[TurnSample], dict[str, Any]]:
    """Run `plan` in `workers` processes (each its own Engine); merge their samples onto one
    clock (the earliest worker's start) and sum their CPU."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    plans = split_plan(plan, workers)
    start_at = time.time() + 1.5 + 0.25 * len(plans)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(plans), mp_context=context) as pool:
        futures = [pool.submit(_worker, cfg, p, start_at, verbose) for p in plans]
        results = [f.result() for f in futures]
    t0 = min(summary["t0_epoch"] for _, summary in results)
    merged: list[TurnSample] = []
    wall = 0.0
    for w, (samples, summary) in enumerate(results):
        shift = summary["t0_epoch"] - t0
        wall = max(wall, shift + summary["wall_s"])
        for s in samples:
            merged.append(
                msgspec.structs.replace(
                    s,
                    session=s.session * len(results) + w,
                    started_s=s.started_s + shift,
                    ended_s=s.ended_s + shift,
                )
            )
    merged.sort(key=lambda s: (s.session, s.turn))
    started = sum(summary["sessions"]["started"] for _, summary in results)
    out = summarize(merged, wall_s=wall, sessions_started=started)
    cpus = [summary["process_cpu_s"] for _, summary in results]
    out["process_cpu_s"] = sum(cpus)
    out["worker_cpu_s"] = cpus
    out["workers"] = len(results)
    return merged, out


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
