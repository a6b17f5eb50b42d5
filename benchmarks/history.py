"""History images inline, by reference (the Files API) or kept at Google (the Interactions API):
request bytes, client CPU and time to image per turn, side by side in one run.

    python benchmarks/history.py [--sizes 1K,2K,4K] [--turns 10] [--mbps 20] [--rate-turns 10]
                                 [--cut-turns 40] [--cut-rate 0.15]

Part 1, for each image size: one session of `--turns` turns per mode (`inline`, `files`)
against the emulator in its own process (grain images, as large as real ones: 1K ~1.3 MB,
4K ~20 MB). Per turn: the request body's bytes, the bytes uploaded through the Files API since
the previous turn (counted apart), and the client's CPU for the turn (process time around
`send`, background uploads included). A session that cannot go on (the request over the
20 MB inline limit) says at which turn.

Part 2: time to image at a client uplink of `--mbps` Mbit/s (the emulator reads request bodies
and uploads no faster: `nanoedit emulator --upload-mbps`), 1K, per turn and mode: from `send`
until the image event. The next turn starts at once after the previous one, so `files` also
waits for the previous image's upload (in real use a person looks at the image first).

Part 1 also runs the Interactions session with `delivery: "uri"` (images downloaded from a URI
instead of base64 in the answer) and prints the client CPU per turn of both deliveries.

Part 3 (Interactions): `--cut-turns` streamed turns, `--cut-rate` of the streams cut mid-answer
(after the interaction exists, before its image); with resume (the default) and without. The
upstream spend is every interaction the emulator generated times the turn price; with resume it
equals the committed turns' cost, without it does not (the cut answers are paid twice).

Targets (issue 11): with files the turn-10 request <= 1.1x the turn-2 request; a 10-turn 4K
session completes; at 20 Mbit/s the turn-10 time to image with files <= 0.3x inline.
(issue 23): an Interactions turn-10 request under 4 KB; its client CPU at turn 10 within 1.2x
turn 2's; with resume, no double pay.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from _common import PROMPTS, append_results, emulator_process, fmt, machine_info, markdown_table

from engine import Engine, EngineConfig, NanoeditError
from engine._config import HistoryImages, ImageDelivery
from engine.cli._common import configure_logging
from engine.events import Event
from sessions import ImageConfig

MODES = ("inline", "files", "interactions")


async def _session(
    base_url: str, mode: str, size: str, turns: int, *, timed: bool
) -> list[dict[str, Any]]:
    if mode.startswith("interactions"):
        delivery: ImageDelivery = "uri" if mode.endswith("uri") else "inline"
        cfg = EngineConfig(
            provider="custom", base_url=base_url, api="interactions", image_delivery=delivery
        )
    else:
        history: HistoryImages = "files" if mode == "files" else "inline"
        cfg = EngineConfig(provider="custom", base_url=base_url, history_images=history)
    rows: list[dict[str, Any]] = []
    async with Engine(cfg) as engine:
        session = await engine.create_session(image_config=ImageConfig(image_size=size))
        image_at: list[float] = []

        def on_image(event: Event) -> None:
            image_at.append(time.monotonic())

        engine.bus.on("turn.image", on_image, session_id=session.id)
        uploaded = 0
        for n in range(turns):
            cpu, start = time.process_time(), time.monotonic()
            try:
                turn = await session.send(PROMPTS[n % len(PROMPTS)])
            except NanoeditError as exc:
                rows.append({"turn": n + 1, "error": f"{type(exc).__name__}: {exc}"[:90]})
                break
            files = engine.files
            now_uploaded = files.uploaded_bytes if files is not None else 0
            rows.append(
                {
                    "turn": n + 1,
                    "request_bytes": turn.record.request_bytes,
                    "uploaded_bytes": now_uploaded - uploaded,
                    "cpu_ms": (time.process_time() - cpu) * 1000,
                    "to_image_s": (image_at[-1] - start) if timed and image_at else None,
                }
            )
            uploaded = now_uploaded
    return rows


async def _cut_session(base_url: str, turns: int, *, resume: bool) -> dict[str, Any]:
    cfg = EngineConfig(provider="custom", base_url=base_url, api="interactions")
    async with Engine(cfg) as engine:
        provider: Any = engine.provider
        if not resume:
            provider.max_resumes = 0
        session = await engine.create_session()
        costs, attempts = [], 0
        for n in range(turns):
            turn = await session.send(PROMPTS[n % len(PROMPTS)], stream=True)
            costs.append(turn.cost_usd)
            attempts += turn.attempts
        return {"costs": costs, "attempts": attempts, "resumes": provider.resumes}


def _cut_part(turns: int, rate: float) -> tuple[str, list[str]]:
    """Streams cut after the interaction exists and before its image, with and without resume."""
    import json
    import urllib.request

    rows, notes = [], []
    for resume in (True, False):
        # 6 events: created, status, the thought's start, signature and stop, the output's start.
        spec = f"rate={rate}:cut:6"
        with emulator_process("--faults", spec, "--flat", "--seed", "7") as (_, base_url):
            run = asyncio.run(_cut_session(base_url, turns, resume=resume))
            with urllib.request.urlopen(f"{base_url}/emulator/stats") as resp:
                stats = json.loads(resp.read())
        created = stats["interactions"]["created"]
        committed = sum(run["costs"])
        upstream = created * committed / len(run["costs"])
        label = "with resume" if resume else "without resume"
        rows.append(
            [
                label,
                str(turns),
                str(created),
                str(run["resumes"]),
                f"{committed:.4f}",
                f"{upstream:.4f}",
                f"{upstream / committed:.3f}",
            ]
        )
        notes.append(
            f"cut at {rate:.0%}, {label}: {created} interactions generated for {turns} turns, "
            f"upstream spend ${upstream:.4f} vs committed ${committed:.4f} "
            f"({upstream / committed:.3f}x)"
        )
    table = markdown_table(
        [
            "streams",
            "turns",
            "interactions generated",
            "resumed",
            "committed USD",
            "upstream USD",
            "upstream / committed",
        ],
        rows,
        right=range(1, 7),
    )
    print(f"\nstreams cut at {rate:.0%} (Interactions)")
    print(table)
    for note in notes:
        print(note)
    return table, notes


def _kb(n: float) -> str:
    return f"{n / 1e3:,.1f}"


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1K,2K,4K")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--mbps", type=float, default=20.0)
    parser.add_argument("--rate-turns", type=int, default=10, help="turns in part 2 (0: skip)")
    parser.add_argument("--cut-turns", type=int, default=40, help="turns in part 3 (0: skip)")
    parser.add_argument("--cut-rate", type=float, default=0.15, help="share of streams cut")
    args = parser.parse_args()
    configure_logging(0)  # errors only: the tables are the output
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    info = machine_info()
    tables: list[str] = []
    notes: list[str] = []

    with emulator_process() as (_, base_url):
        for size in sizes:
            runs = {
                mode: asyncio.run(_session(base_url, mode, size, args.turns, timed=False))
                for mode in MODES
            }
            rows = []
            for n in range(args.turns):
                row = [str(n + 1)]
                for mode in MODES:
                    r = runs[mode][n] if n < len(runs[mode]) else None
                    if r is None:
                        row += ["", ""]
                    elif "error" in r:
                        row += ["stopped", r["error"][:30]]
                    else:
                        row += [_kb(r["request_bytes"]), fmt(r["cpu_ms"], 1)]
                    if mode == "files":
                        row.append(_mb(r["uploaded_bytes"]) if r and "error" not in r else "")
                rows.append(row)
            table = markdown_table(
                [
                    "turn",
                    "inline request KB",
                    "inline CPU ms",
                    "files request KB",
                    "files CPU ms",
                    "files uploaded MB",
                    "interactions request KB",
                    "interactions CPU ms",
                ],
                rows,
                right=range(1, 8),
            )
            completed = {m: sum("error" not in r for r in runs[m]) for m in runs}
            print(
                f"\n{size}: turns completed inline {completed['inline']}, files "
                f"{completed['files']}, interactions {completed['interactions']} of {args.turns}"
            )
            print(table)
            tables.append(f"**{size}**\n\n{table}")
            files = [r for r in runs["files"] if "error" not in r]
            if len(files) >= args.turns and args.turns >= 2:
                ratio = files[-1]["request_bytes"] / files[1]["request_bytes"]
                inline = [r for r in runs["inline"] if "error" not in r]
                growth = (files[-1]["request_bytes"] - files[1]["request_bytes"]) / (args.turns - 2)
                note = (
                    f"{size}: files turn-{args.turns} request {files[-1]['request_bytes']:,} B "
                    f"= {ratio:.2f}x turn 2 ({files[1]['request_bytes']:,} B; the text and "
                    f"signatures of the history still grow, about "
                    f"{growth:,.0f} B a turn); inline's last request "
                    f"{inline[-1]['request_bytes']:,} B at turn "
                    f"{len(inline)}; turns completed inline {completed['inline']}/{args.turns}, "
                    f"files {completed['files']}/{args.turns}"
                )
            else:
                note = f"{size}: files completed {completed['files']}/{args.turns} turns"
            print(note)
            notes.append(note)
            uri = asyncio.run(_session(base_url, "interactions-uri", size, args.turns, timed=False))
            cpu_inline = sorted(r["cpu_ms"] for r in runs["interactions"][1:] if "error" not in r)
            cpu_uri = sorted(r["cpu_ms"] for r in uri[1:] if "error" not in r)
            if cpu_inline and cpu_uri:
                med_i, med_u = cpu_inline[len(cpu_inline) // 2], cpu_uri[len(cpu_uri) // 2]
                note = (
                    f"{size}: interactions image delivery, client CPU per turn (median of turns "
                    f"2-{args.turns}): inline {med_i:.1f} ms, uri {med_u:.1f} ms "
                    f"({med_u / med_i:.2f}x)"
                )
                print(note)
                notes.append(note)
            chained = [r for r in runs["interactions"] if "error" not in r]
            if len(chained) >= args.turns and args.turns >= 2:
                final, second = chained[-1], chained[1]
                note = (
                    f"{size}: interactions turn-{args.turns} request {final['request_bytes']:,} B "
                    f"(target < 4,096 B); client CPU turn {args.turns} / turn 2 = "
                    f"{final['cpu_ms'] / second['cpu_ms']:.2f}x (target <= 1.2x); "
                    f"inline turn {args.turns} CPU {fmt(runs['inline'][-1].get('cpu_ms'), 1)} ms"
                )
                print(note)
                notes.append(note)

    if args.rate_turns:
        with emulator_process("--upload-mbps", str(args.mbps)) as (_, base_url):
            both = ("inline", "files")
            timed = {
                mode: asyncio.run(_session(base_url, mode, "1K", args.rate_turns, timed=True))
                for mode in both
            }
        rows = []
        for n in range(args.rate_turns):
            a, b = timed["inline"][n], timed["files"][n]
            ta, tb = a.get("to_image_s"), b.get("to_image_s")
            ratio = tb / ta if ta and tb else None
            rows.append([str(n + 1), fmt(ta, 2), fmt(tb, 2), fmt(ratio, 2)])
        table = markdown_table(
            ["turn", "inline s to image", "files s to image", "files / inline"],
            rows,
            right=range(1, 4),
        )
        print(f"\ntime to image at {args.mbps:g} Mbit/s (1K)")
        print(table)
        tables.append(f"**time to image at {args.mbps:g} Mbit/s, 1K**\n\n{table}")
        last = rows[-1][3]
        note = (
            f"turn {args.rate_turns} time to image, files / inline at {args.mbps:g} Mbit/s: "
            f"{last} (target <= 0.3)"
        )
        print(note)
        notes.append(note)

    if args.cut_turns:
        table, cut_notes = _cut_part(args.cut_turns, args.cut_rate)
        tables.append(f"**streams cut at {args.cut_rate:.0%}, Interactions**\n\n{table}")
        notes.extend(cut_notes)

    append_results(
        "history images inline vs Files API references vs Interactions",
        info,
        "\n\n".join(tables),
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
