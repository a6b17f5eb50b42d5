"""Does a long-running `nanoedit serve` keep its memory flat however many sessions it touched?

    python benchmarks/serve_memory.py [--sessions 2000] [--every 100] [--grain] [--store sqlite]

Starts the emulator and `nanoedit serve` in processes of their own (the server on a SQLite
store in a temporary directory by default: images live on disk, as in production; `--store
memory` keeps every image in the server by design), then opens `--sessions` sessions one after
another, each with one turn (a 1K image) and a GET of the session and of its image, and prints
the server's RSS (from /proc) after every `--every` sessions. Flat means: after the first few
hundred sessions (caches filling: the idle-handle LRU, the blob cache, the event windows), the
RSS stops growing with the count. Printed with the growth per 100 sessions over the second half.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import aiohttp
from _common import append_results, emulator_process, fmt, machine_info, markdown_table

from engine.cli._procs import serve_process, stop_process

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (from /proc/PID/statm)."""
    with open(f"/proc/{pid}/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE / 2**20


async def _drive(base: str, pid: int, sessions: int, every: int) -> list[tuple[int, float]]:
    points: list[tuple[int, float]] = [(0, rss_mib(pid))]
    async with aiohttp.ClientSession() as http:
        for n in range(1, sessions + 1):
            async with http.post(f"{base}/v1/sessions", json={"title": f"s{n}"}) as resp:
                sid = (await resp.json())["id"]
            async with http.post(
                f"{base}/v1/sessions/{sid}/turns", json={"text": f"a mug number {n}"}
            ) as resp:
                turn = await resp.json()
                if resp.status != 200:
                    raise SystemExit(f"turn {n}: {resp.status} {turn}")
            async with http.get(f"{base}/v1/sessions/{sid}") as resp:
                await resp.read()
            async with http.get(base + turn["images"][0]["url"]) as resp:
                await resp.read()
            if n % every == 0:
                points.append((n, rss_mib(pid)))
                print(f"{n:>6} sessions  server RSS {points[-1][1]:8.1f} MiB", flush=True)
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--grain", action="store_true", help="1K grain images (default: flat)")
    p.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    info = machine_info()
    with (
        tempfile.TemporaryDirectory() as tmp,
        emulator_process(*(() if args.grain else ("--flat",))) as (_, emu_url),
    ):
        store = str(Path(tmp) / "sessions.db") if args.store == "sqlite" else "memory"
        proc, base = serve_process(["--base-url", emu_url, "--store", store])
        try:
            points = asyncio.run(_drive(base, proc.pid, args.sessions, args.every))
        finally:
            stop_process(proc)
    half = [pt for pt in points if pt[0] >= args.sessions // 2]
    growth = (half[-1][1] - half[0][1]) / max(1, (half[-1][0] - half[0][0]) / 100)
    rows = [[str(n), fmt(rss, 1)] for n, rss in points]
    table = markdown_table(["sessions", "server RSS MiB"], rows)
    summary = (
        f"second half: {growth:+.2f} MiB per 100 sessions "
        f"({half[0][0]}..{half[-1][0]}: {half[0][1]:.1f} -> {half[-1][1]:.1f} MiB)"
    )
    print(table + "\n" + summary)
    if not args.no_append:
        append_results(
            f"serve memory, {args.sessions} sessions ({args.store}, "
            f"{'grain' if args.grain else 'flat'} 1K)",
            info,
            table,
            [summary],
        )


if __name__ == "__main__":
    main()
