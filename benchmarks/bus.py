"""Fan-out benchmark: ``engine.bus.EventBus`` versus a plain ``asyncio.Queue`` per subscriber.

Run as ``python benchmarks/bus.py [--json FILE]``. Both sides get the same event objects
(``turn.text_delta``, the most frequent event, spread over 10 sessions). Two workloads, for 1, 10
and 100 subscribers:

- publish cost: the subscribers' buffers are big enough and nobody reads, so each `publish` is
  pure numbering, retention, logging and fan-out. The floor is ``for q in queues:
  q.put_nowait(event)`` inside an ``async def`` awaited once per event, as `publish` is; a second
  floor also does the bookkeeping every bus must (per-session seq, ts, a bounded replay window).
- delivery: subscribers drain concurrently (``async for`` over a subscription; ``await q.get()``
  for the floor) with buffers of 1024 and backpressure (policy "block"; ``await q.put()`` for the
  floor) until every subscriber has every event. Reported as events delivered per second.

structlog is configured as a production CLI would (filtering at INFO, logger cached), so the bus
pays for its per-event log call but `turn.text_delta`, a debug line, is not rendered. The table
is printed, optionally written as JSON, and appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog
from _common import RESULTS_PATH, append_results, fmt, machine_info, markdown_table

from engine.events import Event, TurnTextDelta
from engine.state import EventBus

SESSIONS = 10
BUFFER = 1024


def make_events(n: int) -> list[Event]:
    """`n` text deltas over SESSIONS sessions, created once and shared by both sides."""
    return [
        TurnTextDelta(session_id=f"session-{i % SESSIONS}", turn=1, text="a few words of text")
        for i in range(n)
    ]


async def publish_cost_bus(events: Sequence[Event], subscribers: int) -> float:
    """Seconds to publish every event to `subscribers` idle subscriptions."""
    async with EventBus(retain=1024) as bus:
        subs = [bus.subscribe(maxsize=len(events) + 1) for _ in range(subscribers)]
        for sub in subs:
            sub.open()
        publish = bus.publish
        gc.collect()
        start = time.perf_counter()
        for event in events:
            await publish(event)
        elapsed = time.perf_counter() - start
        if any(sub.pending != len(events) for sub in subs):
            raise SystemExit("bus lost events in the publish-cost run")
        return elapsed


async def publish_cost_floor(events: Sequence[Event], subscribers: int) -> float:
    """Seconds to fan every event out to `subscribers` unbounded asyncio.Queues."""
    queues: list[asyncio.Queue[Event]] = [asyncio.Queue() for _ in range(subscribers)]

    async def publish(event: Event) -> None:
        for q in queues:
            q.put_nowait(event)

    gc.collect()
    start = time.perf_counter()
    for event in events:
        await publish(event)
    elapsed = time.perf_counter() - start
    if any(q.qsize() != len(events) for q in queues):
        raise SystemExit("floor lost events in the publish-cost run")
    return elapsed


async def publish_cost_floor_numbered(events: Sequence[Event], subscribers: int) -> float:
    """The floor plus the bus's bookkeeping: per-session seq, ts and a bounded replay window."""
    queues: list[asyncio.Queue[Event]] = [asyncio.Queue() for _ in range(subscribers)]
    seqs: dict[str, int] = {}
    windows: dict[str, deque[Event]] = defaultdict(lambda: deque(maxlen=1024))
    now = time.time

    async def publish(event: Event) -> None:
        sid = event.session_id
        seq = seqs[sid] = seqs.get(sid, 0) + 1
        event.seq = seq
        event.ts = now()
        windows[sid].append(event)
        for q in queues:
            q.put_nowait(event)

    gc.collect()
    start = time.perf_counter()
    for event in events:
        await publish(event)
    elapsed = time.perf_counter() - start
    if any(q.qsize() != len(events) for q in queues):
        raise SystemExit("floor lost events in the publish-cost run")
    return elapsed


async def delivery_bus(events: Sequence[Event], subscribers: int) -> float:
    """Seconds until `subscribers` concurrent readers have each received every event."""
    total = len(events)
    counts = [0] * subscribers
    async with EventBus(retain=1024) as bus:
        subs = [bus.subscribe(maxsize=BUFFER, overflow="block") for _ in range(subscribers)]
        for sub in subs:
            sub.open()

        async def read(i: int) -> None:
            n = 0
            async for _ in subs[i]:
                n += 1
                if n == total:
                    break
            counts[i] = n

        gc.collect()
        start = time.perf_counter()
        readers = [asyncio.create_task(read(i)) for i in range(subscribers)]
        publish = bus.publish
        for event in events:
            await publish(event)
        await asyncio.gather(*readers)
        elapsed = time.perf_counter() - start
    if counts != [total] * subscribers:
        raise SystemExit("bus lost events in the delivery run")
    return elapsed


async def delivery_floor(events: Sequence[Event], subscribers: int) -> float:
    """The same with bounded asyncio.Queues, `await put` and `await get`."""
    total = len(events)
    counts = [0] * subscribers
    queues: list[asyncio.Queue[Event]] = [asyncio.Queue(BUFFER) for _ in range(subscribers)]

    async def read(i: int) -> None:
        q = queues[i]
        n = 0
        while n < total:
            await q.get()
            n += 1
        counts[i] = n

    async def publish(event: Event) -> None:
        for q in queues:
            await q.put(event)

    gc.collect()
    start = time.perf_counter()
    readers = [asyncio.create_task(read(i)) for i in range(subscribers)]
    for event in events:
        await publish(event)
    await asyncio.gather(*readers)
    elapsed = time.perf_counter() - start
    if counts != [total] * subscribers:
        raise SystemExit("floor lost events in the delivery run")
    return elapsed


Runner = Callable[[Sequence[Event], int], Coroutine[Any, Any, float]]


def best(runner: Runner, events: Sequence[Event], subscribers: int, repeats: int) -> float:
    """Best time of `repeats` runs, each on a fresh event loop."""
    return min(asyncio.run(runner(events, subscribers)) for _ in range(repeats))


def run(counts: Sequence[int], n_events: int, repeats: int) -> list[dict[str, Any]]:
    """Measure every case; one result row per subscriber count."""
    results: list[dict[str, Any]] = []
    for subscribers in counts:
        # Fewer events with many subscribers keeps each run short; per-event figures compare.
        n = max(1000, n_events // max(1, subscribers // 10))
        events = make_events(n)
        pub_bus = best(publish_cost_bus, events, subscribers, repeats) / n
        pub_floor = best(publish_cost_floor, events, subscribers, repeats) / n
        pub_numbered = best(publish_cost_floor_numbered, events, subscribers, repeats) / n
        del_bus = best(delivery_bus, events, subscribers, repeats)
        del_floor = best(delivery_floor, events, subscribers, repeats)
        results.append(
            {
                "subscribers": subscribers,
                "events": n,
                "bus_publish_us": pub_bus * 1e6,
                "floor_publish_us": pub_floor * 1e6,
                "publish_ratio": pub_bus / pub_floor,
                "floor_numbered_publish_us": pub_numbered * 1e6,
                "publish_ratio_numbered": pub_bus / pub_numbered,
                "bus_delivered_per_s": n * subscribers / del_bus,
                "floor_delivered_per_s": n * subscribers / del_floor,
                "delivery_ratio": del_bus / del_floor,
            }
        )
    return results


def render(results: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (ratios: bus time / floor time, lower is better)."""
    headers = [
        "subscribers",
        "events",
        "bus publish µs/event",
        "floor publish µs/event",
        "publish ratio",
        "floor+seq µs/event",
        "ratio vs floor+seq",
        "bus delivered/s",
        "floor delivered/s",
        "delivery time ratio",
    ]
    rows = [
        [
            str(r["subscribers"]),
            f"{r['events']:,}",
            fmt(r["bus_publish_us"], 3),
            fmt(r["floor_publish_us"], 3),
            fmt(r["publish_ratio"], 2, "x"),
            fmt(r["floor_numbered_publish_us"], 3),
            fmt(r["publish_ratio_numbered"], 2, "x"),
            fmt(r["bus_delivered_per_s"], 0),
            fmt(r["floor_delivered_per_s"], 0),
            fmt(r["delivery_ratio"], 2, "x"),
        ]
        for r in results
    ]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON and append to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--events", type=int, default=50_000, help="events per run (1-10 subs)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (best is kept)")
    parser.add_argument(
        "--subscribers", type=int, nargs="+", default=[1, 10, 100], help="subscriber counts"
    )
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)

    # What a production CLI configures; the library itself never calls configure().
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    results = run(args.subscribers, args.events, args.repeats)
    table = render(results)
    info = machine_info(sys.argv if argv is None else [sys.argv[0], *argv])
    print(table)
    notes = [
        f"best of {args.repeats}; `turn.text_delta` events over {SESSIONS} sessions; delivery "
        f"buffers {BUFFER} with backpressure (bus policy block vs `await Queue.put`)",
        "publish floor: `Queue.put_nowait` per subscriber in an awaited `async def`; "
        "floor+seq also numbers, timestamps and retains each event as the bus must; "
        "ratios = bus time / floor time (lower is better)",
        "structlog filtering at INFO with a cached logger (text deltas log at debug)",
    ]
    if args.json:
        payload = {"machine": info, "notes": notes, "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if not args.no_append:
        if not RESULTS_PATH.exists():
            # Append mode again: another script may be creating the file at the same moment.
            with RESULTS_PATH.open("a", encoding="utf-8") as fh:
                fh.write("# Benchmark results\n\nAppended by the scripts in `benchmarks/`.\n")
        append_results("Event bus fan-out", info, table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
