"""Several machines: what PostgreSQL + Redis cost per turn against SQLite + in-process, and a
cluster of `nanoedit serve` nodes under load, side by side in one run.

    python benchmarks/cluster.py [--sessions 100] [--turns 3] [--concurrency 20]
                                 [--cluster-sessions 500] [--nodes 2,4] [--cap 8]

Part 1, one engine in this process, the emulator in its own (flat images): the same workload
with a SQLite store and nothing shared, then with PostgreSQL and Redis (events sequenced in
Redis, the in-flight cap held there). Reported: turn latency p50/p99 (send to commit) and this
process's CPU per turn; and what each turn cost the servers: Redis commands (INFO
commandstats), PostgreSQL rows written and bytes stored (pg_stat_database, database size).

Part 2, `--nodes` serve processes on one PostgreSQL database and one Redis, `--cluster-sessions`
sessions x `--turns` turns spread round-robin over the nodes, `--cap` upstream calls at once
cluster-wide: every turn must commit, `nanoedit sessions check` must be clean, and the emulator
must never see more than `--cap` calls at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    append_results,
    emulator_process,
    emulator_stats,
    fmt,
    machine_info,
    markdown_table,
    raise_nofile,
)

from engine import Engine, EngineConfig
from engine.cli._common import configure_logging, run_loop
from engine.cli._procs import serve_process, stop_process
from sessions import PostgresStore, SessionStore, SqliteStore

ADMIN = os.environ.get("NANOEDIT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("NANOEDIT_BENCH_REDIS", "redis://127.0.0.1:6379/15")


async def _admin(sql: str) -> None:
    import asyncpg

    db = await asyncpg.connect(ADMIN)
    try:
        await db.execute(sql)
    finally:
        await db.close()


async def _pg_counters(dsn: str) -> dict[str, float]:
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        row = await db.fetchrow(
            "SELECT tup_inserted + tup_updated + tup_deleted AS rows, xact_commit "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        size = await db.fetchval("SELECT pg_database_size(current_database())")
        return {"rows": float(row["rows"]), "commits": float(row["xact_commit"]), "bytes": size}
    finally:
        await db.close()


async def _redis_calls(prefix: str) -> float:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return float(sum(v["calls"] for v in stats.values() if isinstance(v, dict)))


async def _run_engine(
    cfg: EngineConfig, store: SessionStore, sessions: int, turns: int, concurrency: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with store, Engine(cfg, store=store) as engine:

        async def one(n: int) -> None:
            async with gate:
                session = await engine.create_session()
                for t in range(turns):
                    start = time.perf_counter()
                    await session.send(f"a mug number {n}, edit {t}")
                    latencies.append(time.perf_counter() - start)

        cpu = time.process_time()
        await asyncio.gather(*(one(n) for n in range(sessions)))
        cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "cpu_ms": cpu / len(latencies) * 1000,
        "turns": len(latencies),
    }


def _part1(args: argparse.Namespace, emu_url: str) -> tuple[str, list[str]]:
    rows = []
    notes = []
    name = f"nanoedit_bench_{uuid.uuid4().hex[:10]}"
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
    prefix = f"nanoedit-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        base = EngineConfig(provider="custom", base_url=emu_url, history_images="inline")
        local = run_loop(
            _run_engine(
                base, SqliteStore(Path(tmp) / "s.db"), args.sessions, args.turns, args.concurrency
            )
        )
        run_loop(_admin(f'CREATE DATABASE "{name}"'))
        try:
            # Migrations and connections first, outside the measurement.
            run_loop(_run_engine(base, PostgresStore(dsn), 2, 1, 2))
            before_pg = run_loop(_pg_counters(dsn))
            before_redis = run_loop(_redis_calls(prefix))
            cfg = EngineConfig(
                provider="custom",
                base_url=emu_url,
                history_images="inline",
                redis_url=REDIS,
                redis_prefix=prefix,
            )
            shared = run_loop(
                _run_engine(cfg, PostgresStore(dsn), args.sessions, args.turns, args.concurrency)
            )
            after_pg = run_loop(_pg_counters(dsn))
            after_redis = run_loop(_redis_calls(prefix))
        finally:
            run_loop(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            run_loop(_drop_prefix(prefix))
    n = shared["turns"]
    for label, r in (("SQLite + in-process", local), ("PostgreSQL + Redis", shared)):
        rows.append([label, fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1), fmt(r["cpu_ms"], 2)])
    table = markdown_table(
        ["store and sharing", "turn p50 ms", "turn p99 ms", "client CPU ms/turn"],
        rows,
        right=range(1, 4),
    )
    redis_per_turn = (after_redis - before_redis) / n
    rows_per_turn = (after_pg["rows"] - before_pg["rows"]) / n
    commits_per_turn = (after_pg["commits"] - before_pg["commits"]) / n
    bytes_per_turn = (after_pg["bytes"] - before_pg["bytes"]) / n
    notes.append(
        f"per turn (sessions created included): {redis_per_turn:.1f} Redis commands, "
        f"{rows_per_turn:.1f} PostgreSQL rows written in {commits_per_turn:.1f} transactions, "
        f"{bytes_per_turn / 1024:.1f} KiB stored (flat images)"
    )
    notes.append(
        f"added by PostgreSQL + Redis: p50 {shared['p50_ms'] - local['p50_ms']:+.1f} ms, "
        f"client CPU {shared['cpu_ms'] - local['cpu_ms']:+.2f} ms per turn"
    )
    notes.append(
        f"at 100 turns/s: {redis_per_turn * 100:,.0f} Redis commands/s, "
        f"{rows_per_turn * 100:,.0f} PostgreSQL rows/s in {commits_per_turn * 100:,.0f} "
        f"transactions/s, {bytes_per_turn * 100 * 86400 / 1e9:,.1f} GB a day stored at this "
        "image size (1K images: ~1.3 MB each instead, ~11 TB a day before deletions)"
    )
    return table, notes


async def _drop_prefix(prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def _start_nodes(
    count: int, dsn: str, prefix: str, emu_url: str, cap: int
) -> list[tuple[subprocess.Popen[str], str]]:
    options = ["--store", dsn, "--redis", REDIS, "--redis-prefix", prefix, "--base-url", emu_url]
    options += ["--max-in-flight", str(cap), "--history-images", "inline"]
    return [serve_process(options) for _ in range(count)]


async def _drive(bases: list[str], sessions: int, turns: int) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    failures = 0
    committed = 0
    errors: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:

        async def one(n: int) -> None:
            nonlocal failures, committed
            async with http.post(f"{bases[n % len(bases)]}/v1/sessions", json={}) as resp:
                created = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"session not created: {resp.status} {created}")
                sid = created["id"]
            for t in range(turns):
                base = bases[(n + t) % len(bases)]  # every turn on the next node
                async with http.post(
                    f"{base}/v1/sessions/{sid}/turns", json={"text": f"mug {n}, edit {t}"}
                ) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        committed += 1
                    else:
                        failures += 1
                        errors[f"{resp.status} {json.loads(body)['error']['message'][:80]}"] += 1

        start = time.monotonic()
        await asyncio.gather(*(one(n) for n in range(sessions)))
        wall = time.monotonic() - start
    return {"wall": wall, "committed": committed, "failures": failures, "errors": dict(errors)}


def _part2(args: argparse.Namespace) -> tuple[str, list[str]]:
    rows = []
    notes = []
    for count in [int(n) for n in args.nodes.split(",") if n]:
        name = f"nanoedit_bench_{uuid.uuid4().hex[:10]}"
        dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
        prefix = f"nanoedit-bench-{uuid.uuid4().hex[:8]}"
        run_loop(_admin(f'CREATE DATABASE "{name}"'))
        try:
            with emulator_process("--flat", "--latency", str(args.latency)) as (_, emu_url):
                nodes = _start_nodes(count, dsn, prefix, emu_url, args.cap)
                try:
                    result = run_loop(
                        _drive([b for _, b in nodes], args.cluster_sessions, args.turns)
                    )
                    seen = emulator_stats(emu_url)["max_in_flight"]
                finally:
                    for proc, _ in nodes:
                        stop_process(proc)
            check = subprocess.run(
                [sys.executable, "-m", "engine", "sessions", "check", "--store", dsn],
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            run_loop(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            run_loop(_drop_prefix(prefix))
        total = args.cluster_sessions * args.turns
        rows.append(
            [
                str(count),
                f"{result['committed']:,} / {total:,}",
                str(result["failures"]),
                fmt(result["committed"] / result["wall"], 1),
                f"{seen} (cap {args.cap})",
                "clean" if check.returncode == 0 else f"exit {check.returncode}",
            ]
        )
        notes.append(
            f"{count} nodes: {result['committed']}/{total} turns committed in "
            f"{result['wall']:.1f} s; most calls at the emulator at once: {seen} "
            f"(cap {args.cap}); errors: {result['errors'] or 'none'}; sessions check: "
            f"{'clean' if check.returncode == 0 else check.stdout[-300:]}"
        )
    table = markdown_table(
        ["nodes", "turns committed", "failed", "turns/s", "most at the emulator", "sessions check"],
        rows,
        right=range(5),
    )
    return table, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--cluster-sessions", type=int, default=500)
    parser.add_argument("--nodes", default="2,4")
    parser.add_argument("--cap", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="emulator seconds per call")
    args = parser.parse_args()
    configure_logging(0)
    raise_nofile(args.cluster_sessions * 4 + 256)
    info = machine_info()
    with emulator_process("--flat") as (_, emu_url):
        table1, notes1 = _part1(args, emu_url)
    print(f"one engine, {args.sessions} sessions x {args.turns} turns, {args.concurrency} at once")
    print(table1)
    for note in notes1:
        print(note)
    table2, notes2 = _part2(args)
    print(f"\n{args.cluster_sessions} sessions x {args.turns} turns, round-robin over the nodes")
    print(table2)
    for note in notes2:
        print(note)
    append_results(
        "several machines: PostgreSQL + Redis against SQLite, and serve clusters",
        info,
        table1 + "\n\n" + table2,
        notes1 + notes2,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
