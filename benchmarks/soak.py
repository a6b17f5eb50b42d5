"""Soak: sessions through several processes sharing one SQLite store, under injected faults and
random `kill -9`, then `nanoedit sessions check` and a ledger reconciliation.

The parent starts the emulator (in its own process) with faults on 15% of requests
(429, 500, 503, a cut stream, a reset, a malformed event, an HTML 502 page, a dripped body),
creates the sessions, then runs worker processes that send turns to random sessions
(`on_busy="wait"`) and print one JSON line per committed turn. Every few seconds one worker is
killed with SIGKILL and a new one started. At the end:

- `nanoedit sessions check` must report no problem (roles, parts, images, blob digests, heads,
  parents, stale leases);
- every turn a worker reported is stored, with the cost it reported; stored turns nobody
  reported are at most one per kill (committed just before the kill);
- every stored turn's cost equals the price of the usage it recorded (the ledger reconciles).

    python benchmarks/soak.py [--duration 60] [--workers 3] [--sessions 12] [--kill-every 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from _common import append_results, emulator_process, emulator_stats, machine_info, markdown_table

from engine import Budget, Engine, EngineConfig, NanoeditError, RetryPolicy
from engine.policy import settle_cost
from sessions import SqliteStore, new_id, resolve_model

FAULTS = "rate=0.15:429,500,503,cut:1,reset,malformed,html502,drip:0.002:4096"
PROMPTS = (
    "A ceramic mug on an oak table",
    "Add a red circle on the left",
    "Make it grayscale",
    "Add a blue square on the right",
    "Change the light to a warm golden glow",
    "Remove the circle",
)


# --- the worker process -------------------------------------------------------------------------


async def _work(db: str, url: str, seed: int) -> None:
    rng = random.Random(seed)
    cfg = EngineConfig(
        provider="custom",
        base_url=url,
        retry=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.2),
        on_busy="wait",
        lease_ttl=3.0,
        lease_wait=60.0,
    )
    async with SqliteStore(db) as store, Engine(cfg, store=store) as engine:
        ids = [s.id for s in await store.list()]
        while True:
            session = await engine.open_session(rng.choice(ids))
            prompt = rng.choice(PROMPTS)
            try:
                turn = await session.send(prompt)
            except NanoeditError as exc:
                _emit({"failed": type(exc).__name__})
                continue
            _emit({"turn": turn.id, "session": session.id, "cost": turn.cost_usd})


def _emit(obj: object) -> None:
    # One line per fact, flushed at once: a SIGKILL right after cannot swallow it.
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- the parent -----------------------------------------------------------------------------------


class _Worker:
    """One worker process and the lines it printed (read by a thread)."""

    def __init__(self, db: Path, url: str, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(db), url, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by SIGKILL
                self.lines.append(json.loads(line))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)


async def _create_sessions(db: Path, url: str, n: int) -> None:
    cfg = EngineConfig(provider="custom", base_url=url)
    async with SqliteStore(db) as store, Engine(cfg, store=store) as engine:
        for i in range(n):
            # Long sessions outgrow the context window: leave the oldest turns out.
            await engine.create_session(
                "nano-banana-2",
                session_id=new_id(),
                title=f"soak {i}",
                budget=Budget(policy="drop_oldest"),
            )


async def _stored(db: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with SqliteStore(db) as store:
        for summary in await store.list():
            state = await store.load(summary.id)
            for turn in state.turns.values():
                out[turn.id] = {"session": state.id, "record": turn}
    return out


def _reconcile(stored: dict[str, dict[str, Any]]) -> list[str]:
    """Stored costs that differ from the price of the usage they recorded."""
    problems = []
    for tid, entry in stored.items():
        record = entry["record"]
        spec = resolve_model(record.model_id)
        size = (record.image_config or {}).get("imageSize")
        price = settle_cost(spec, "custom", record.usage, size, len(record.model.images()))
        if abs(price.total_usd - record.cost_usd) > 1e-9:
            problems.append(f"turn {tid}: cost {record.cost_usd} != price {price.total_usd}")
    return problems


def main() -> int:
    """Run the soak; print figures; exit 1 on any problem."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--kill-every", type=float, default=4.0, metavar="S")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", nargs=3, metavar=("DB", "URL", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.worker:
        db, url, seed = args.worker
        # SIGTERM ends the worker like Ctrl-C: the turn in flight is cancelled, its lease freed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_work(db, url, int(seed)))
        return 0

    rng = random.Random(args.seed)
    with (
        emulator_process("--flat", "--faults", FAULTS) as (_, url),
        tempfile.TemporaryDirectory() as tmp,
    ):
        db = Path(tmp) / "soak.db"
        asyncio.run(_create_sessions(db, url, args.sessions))
        workers = [_Worker(db, url, rng.randrange(1 << 30)) for _ in range(args.workers)]
        finished: list[_Worker] = []
        kills = 0
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            time.sleep(min(rng.uniform(0.5, 2 * args.kill_every), max(end - time.monotonic(), 0)))
            if time.monotonic() >= end:
                break
            victim = rng.randrange(len(workers))
            workers[victim].kill()
            kills += 1
            finished.append(workers[victim])
            workers[victim] = _Worker(db, url, rng.randrange(1 << 30))
        for w in workers:
            w.stop()
        finished += workers
        stats = emulator_stats(url)
        check = subprocess.run(
            [sys.executable, "-m", "engine", "sessions", "--store", str(db), "check"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "NANOEDIT_HOME": tmp},
        )
        stored = asyncio.run(_stored(db))

    lines = [line for w in finished for line in w.lines]
    reported = {line["turn"]: line for line in lines if "turn" in line}
    failed: dict[str, int] = {}
    for line in lines:
        if "failed" in line:
            failed[line["failed"]] = failed.get(line["failed"], 0) + 1
    problems = [p for p in check.stdout.splitlines() if p.strip()]
    if check.returncode != 0 and not problems:
        problems.append(f"sessions check exited {check.returncode}: {check.stderr.strip()}")
    for tid, line in reported.items():
        if tid not in stored:
            problems.append(f"reported turn {tid} is not stored")
        elif abs(stored[tid]["record"].cost_usd - line["cost"]) > 1e-12:
            problems.append(f"turn {tid}: reported cost {line['cost']} is not the stored one")
    unreported = len(set(stored) - set(reported))
    if unreported > kills:
        problems.append(f"{unreported} stored turns nobody reported, with only {kills} kills")
    problems += _reconcile(stored)

    faults = sum(stats.get("faults", {}).values())
    rows = [
        [
            f"{args.duration:g}",
            str(args.workers),
            str(args.sessions),
            str(len(stored)),
            str(sum(failed.values())),
            str(faults),
            str(kills),
            str(unreported),
            str(len(problems)),
        ]
    ]
    table = markdown_table(
        [
            "seconds",
            "workers",
            "sessions",
            "turns stored",
            "turns failed",
            "faults injected",
            "kill -9",
            "committed at a kill",
            "problems",
        ],
        rows,
        right=0,
    )
    notes = [
        f"faults: {FAULTS}",
        "failed turns by error: "
        + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"),
        f"stored cost ${sum(e['record'].cost_usd for e in stored.values()):.4f} reconciles with "
        "the recorded usage turn by turn"
        if not _reconcile(stored)
        else "ledger does NOT reconcile",
    ]
    print(table)
    print("\n".join(notes))
    for problem in problems[:20]:
        print("problem:", problem)
    append_results(
        "soak: processes, faults and kill -9 on one SQLite store", machine_info(), table, notes
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
