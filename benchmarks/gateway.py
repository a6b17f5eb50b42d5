"""What `nanoedit serve` costs on top of the engine, and how it fans events out, side by side.

    python benchmarks/gateway.py [--sessions 40] [--turns 3] [--concurrency 20]
                                 [--subscribers 1000] [--latency 0.5] [--grain]

Part 1, CPU per turn: the same workload (sessions x turns, `--concurrency` at once, against the
emulator in its own process) run by the engine used directly in this process, and through
`nanoedit serve` in a process of its own driven over HTTP from this process (plain JSON turns).
The engine's figure is this process's CPU; the gateway's is this process's (the HTTP client)
plus the server process's. The emulator's CPU is in neither. Target: the gateway adds <= 15%.

Part 2, fan-out: `--subscribers` SSE connections to one session's `/events` while that session
runs `--turns` turns (emulator latency `--latency`). Every subscriber must get every event; the
delivery lag of an event is its arrival time at a subscriber minus its `ts` (stamped when the
server published it; one machine, one clock). Target: p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, cast

import aiohttp
from _common import (
    append_results,
    emulator_process,
    fmt,
    machine_info,
    markdown_table,
    process_cpu_seconds,
    raise_nofile,
)

from engine import Engine, EngineConfig
from engine.cli._common import configure_logging, run_loop
from engine.cli._procs import serve_process, stop_process

_TS = re.compile(rb'"ts":([0-9.]+)')
_SEQ = re.compile(rb"^id: (\d+)", re.MULTILINE)


async def _direct(base_url: str, sessions: int, turns: int, concurrency: int) -> float:
    cfg = EngineConfig(provider="custom", base_url=base_url, history_images="inline")
    gate = asyncio.Semaphore(concurrency)
    async with Engine(cfg) as engine:

        async def one(n: int) -> None:
            async with gate:
                session = await engine.create_session()
                for t in range(turns):
                    await session.send(f"a mug number {n}, edit {t}")

        start = time.process_time()
        await asyncio.gather(*(one(n) for n in range(sessions)))
        return time.process_time() - start


def _start_serve(base_url: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    options = ["--store", "memory", "--base-url", base_url, "--history-images", "inline"]
    return serve_process([*options, "--max-in-flight", "256", *extra])


async def _through(base: str, sessions: int, turns: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def one(n: int) -> None:
            async with gate:
                async with http.post(f"{base}/v1/sessions", json={}) as resp:
                    sid = (await resp.json())["id"]
                for t in range(turns):
                    async with http.post(
                        f"{base}/v1/sessions/{sid}/turns",
                        json={"text": f"a mug number {n}, edit {t}"},
                    ) as resp:
                        body = await resp.json()
                        assert resp.status == 200, body
                # The direct engine drops its sessions with the engine after each round; the
                # long-running server drops them here, so its store does not grow round by round.
                async with http.delete(f"{base}/v1/sessions/{sid}") as resp:
                    assert resp.status == 204

        start = time.process_time()
        await asyncio.gather(*(one(n) for n in range(sessions)))
        return time.process_time() - start


class _Subscriber(asyncio.Protocol):
    """One `/events` connection, read in `data_received` (no task per subscriber: a thousand
    aiohttp readers in one process measured their own scheduling, not the server)."""

    def __init__(self, request: bytes, turns: int, finished: asyncio.Future[None]) -> None:
        self.request = request
        self.turns = turns
        self.finished = finished
        self.buffer = b""
        self.arrivals: list[tuple[float, bytes]] = []
        self.seqs: list[int] = []
        self.lags: list[float] = []
        self.connected = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        # Only the arrival time here (parsing waits for the end): the client's own work must
        # not be what is measured.
        self.arrivals.append((time.time(), data))
        if not self.connected.done() and b": connected" in data:
            self.connected.set_result(None)
        last = b"turn.completed" in data and f'"turn":{self.turns},'.encode() in data
        if last and not self.finished.done():
            self.finished.set_result(None)

    def parse(self) -> None:
        """The seqs and lags of what arrived."""
        for now, data in self.arrivals:
            self.buffer += data
            while b"\n\n" in self.buffer:
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                seq, ts = _SEQ.search(block), _TS.search(block)
                if seq and ts:
                    self.seqs.append(int(seq.group(1)))
                    self.lags.append(now - float(ts.group(1)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def _fan_out(base: str, subscribers: int, turns: int) -> dict[str, Any]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/sessions", json={}) as resp:
            sid = (await resp.json())["id"]
        request = (
            f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        subs: list[_Subscriber] = []
        for _ in range(subscribers):
            finished: asyncio.Future[None] = loop.create_future()
            _, sub = await loop.create_connection(
                functools.partial(_Subscriber, request, turns, finished), host, int(port)
            )
            subs.append(sub)
        await asyncio.wait_for(asyncio.gather(*(s.connected for s in subs)), 120)
        started = time.monotonic()
        for t in range(turns):
            async with http.post(
                f"{base}/v1/sessions/{sid}/turns", json={"text": f"edit {t}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
        await asyncio.wait_for(asyncio.gather(*(s.finished for s in subs)), 120)
        elapsed = time.monotonic() - started
        for sub in subs:
            if sub.transport is not None:
                sub.transport.close()
            sub.parse()
    expected = set(subs[0].seqs)
    complete = sum(1 for s in subs if set(s.seqs) == expected and len(s.seqs) == len(expected))
    lags = sorted(lag for s in subs for lag in s.lags)
    return {
        "subscribers": subscribers,
        "events": len(expected),
        "complete": complete,
        "deliveries": len(lags),
        "p50_ms": lags[len(lags) // 2] * 1000,
        "p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "max_ms": lags[-1] * 1000,
        "seconds": elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3, help="direct/gateway runs, alternating")
    parser.add_argument("--grain", action="store_true", help="1K grain images, not flat ones")
    args = parser.parse_args()
    configure_logging(0)
    raise_nofile(args.subscribers * 2 + 256)
    info = machine_info()
    image = () if args.grain else ("--flat",)
    turns_total = args.sessions * args.turns
    rows = []
    ratios = []
    with emulator_process(*image) as (_, emu_url):
        # Warm both paths once (imports, connections), then alternate.
        proc, base = _start_serve(emu_url, *image)
        try:
            run_loop(_direct(emu_url, 4, 1, 4))
            run_loop(_through(base, 4, 1, 4))
            for _ in range(args.rounds):
                direct = run_loop(_direct(emu_url, args.sessions, args.turns, args.concurrency))
                server_before = process_cpu_seconds(proc.pid)
                client = run_loop(_through(base, args.sessions, args.turns, args.concurrency))
                server = process_cpu_seconds(proc.pid) - server_before
                through = client + server
                ratios.append(through / direct)
                rows.append(
                    [
                        fmt(direct / turns_total * 1000, 3),
                        fmt(client / turns_total * 1000, 3),
                        fmt(server / turns_total * 1000, 3),
                        fmt(through / turns_total * 1000, 3),
                        fmt(through / direct, 2),
                    ]
                )
        finally:
            stop_process(proc)
        table = markdown_table(
            [
                "engine direct ms/turn",
                "HTTP client ms/turn",
                "serve ms/turn",
                "client + serve ms/turn",
                "x direct",
            ],
            rows,
            right=range(5),
        )
        print(
            f"CPU per turn, {args.sessions} sessions x {args.turns} turns, "
            f"{args.concurrency} at once ({'grain 1K' if args.grain else 'flat'} images)"
        )
        print(table)
        overhead = statistics.median(ratios) - 1
        note1 = f"gateway overhead (median of {args.rounds}): {overhead:+.0%} (target <= +15%)"
        print(note1)

    with emulator_process("--flat", "--latency", str(args.latency)) as (_, emu_url):
        proc, base = _start_serve(emu_url, "--flat")
        try:
            fan = run_loop(_fan_out(base, args.subscribers, args.turns))
        finally:
            stop_process(proc)
    fan_table = markdown_table(
        ["subscribers", "events", "got every event", "deliveries", "p50 ms", "p99 ms", "max ms"],
        [
            [
                str(fan["subscribers"]),
                str(fan["events"]),
                str(fan["complete"]),
                f"{fan['deliveries']:,}",
                fmt(fan["p50_ms"], 1),
                fmt(fan["p99_ms"], 1),
                fmt(fan["max_ms"], 1),
            ]
        ],
        right=range(7),
    )
    print(f"\nfan-out: {args.subscribers} SSE subscribers on one session, {args.turns} turns")
    print(fan_table)
    note2 = (
        f"fan-out: {fan['complete']}/{fan['subscribers']} subscribers got all {fan['events']} "
        f"events; p99 delivery lag {fan['p99_ms']:.1f} ms (target <= 50)"
    )
    print(note2)
    append_results(
        "nanoedit serve: gateway CPU overhead and SSE fan-out",
        info,
        table + "\n\n" + fan_table,
        [note1, note2],
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
