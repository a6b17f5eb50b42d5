"""A long-lived engine's memory over thousands of sessions: bounded against unbounded.

One engine with a SqliteStore runs N sessions (T turns each, C at a time) against the emulator in
its own process, and samples its resident memory, the blob cache and the bus's event windows
every N/8 sessions. Two configurations run side by side in one invocation:

- bounded (the defaults): a 256 MiB LRU blob cache, sessions closed when done (their event
  window and cost totals forgotten);
- unbounded (as before): every image ever committed held in the cache, sessions never closed.

    python benchmarks/memory.py [--sessions 2000] [--turns 1] [--image-size 512]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
from _common import (
    append_results,
    emulator_process,
    fmt,
    machine_info,
    markdown_table,
    rss_bytes,
)

from engine import Engine, EngineConfig, ImageConfig
from engine.state import EventBus
from sessions import SqliteStore

MiB = 1024 * 1024


async def _run(
    base_url: str, db: Path, args: argparse.Namespace, *, bounded: bool
) -> list[dict[str, Any]]:
    cache = 256 * MiB if bounded else 1 << 62
    store = SqliteStore(db, blob_cache_bytes=cache)
    cfg = EngineConfig(provider="custom", base_url=base_url)
    samples: list[dict[str, Any]] = []
    every = max(args.sessions // 8, 1)
    async with store, Engine(cfg, store=store) as engine:
        if not bounded:
            engine.bus = EventBus(max_windows=1 << 62)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(args.sessions):
            queue.put_nowait(n)
        done = 0

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                n = queue.get_nowait()
                s = await engine.create_session(
                    "nano-banana-2", image_config=ImageConfig(image_size=args.image_size)
                )
                for t in range(args.turns):
                    # Distinct prompts: distinct images (equal ones would be stored once).
                    await s.send(f"A ceramic mug number {n} on an oak table, edit {t}")
                if bounded:
                    await s.aclose()
                done += 1
                if done % every == 0:
                    gc.collect()
                    samples.append(
                        {
                            "sessions": done,
                            "rss": rss_bytes(),
                            "cache": store.blobs.total_bytes,
                            "windows": len(engine.bus._logs),
                        }
                    )

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return samples


def main() -> int:
    """Run both configurations and print (and append to RESULTS.md) the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--image-size", default="512")
    # Internal: one configuration in this process, samples as JSON on stdout.
    parser.add_argument("--only", choices=("bounded", "unbounded"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.only:
        samples = asyncio.run(
            _run(args.base_url, Path(args.db), args, bounded=args.only == "bounded")
        )
        print(json.dumps(samples))
        return 0
    rows = []
    results: dict[str, list[dict[str, Any]]] = {}
    with emulator_process() as (_, base_url), tempfile.TemporaryDirectory() as tmp:
        for name in ("bounded", "unbounded"):
            # Each configuration in a fresh process: RSS is not inherited from the other.
            out = subprocess.run(
                [
                    *(sys.executable, __file__, *sys.argv[1:], "--only", name),
                    *("--base-url", base_url, "--db", str(Path(tmp) / f"{name}.db")),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[name] = json.loads(out.splitlines()[-1])
    for name, samples in results.items():
        for s in samples:
            rows.append(
                [
                    name,
                    str(s["sessions"]),
                    fmt(s["rss"] / MiB, 0),
                    fmt(s["cache"] / MiB, 1),
                    str(s["windows"]),
                ]
            )
    table = markdown_table(
        ["config", "sessions", "RSS MiB", "blob cache MiB", "event windows"], rows, right=1
    )
    notes = []
    for name, samples in results.items():
        # From the middle on: the bounded cache has filled by then.
        first, last = samples[len(samples) // 2], samples[-1]
        per = (last["rss"] - first["rss"]) / max(last["sessions"] - first["sessions"], 1)
        notes.append(
            f"{name}: RSS grows {per / 1024:,.1f} KiB per session from session "
            f"{first['sessions']} to {last['sessions']}"
        )
    low, high = results["bounded"][-1], results["unbounded"][-1]
    notes.append(f"final RSS bounded / unbounded: {low['rss'] / high['rss']:.2f}x")
    print(table)
    print("\n".join(notes))
    title = f"memory: {args.sessions} sessions x {args.turns} turns, {args.image_size} images"
    append_results(title, machine_info(), table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
