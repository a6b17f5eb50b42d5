"""Throughput benchmark: ``engine.wire.RawSSEDecoder`` versus the ``httpx-sse`` decoder.

Run as ``python benchmarks/sse.py [--json FILE]``. Both decoders get the same bytes in
the same 64 KiB chunks. ``httpx-sse`` is given the pipeline it runs in production: an
incremental UTF-8 ``codecs`` decoder with ``errors="replace"`` (what httpx's
``TextDecoder`` does), its line splitter, ``line.rstrip("\\n")`` and its ``SSEDecoder``.
The table is printed, optionally written as JSON, and appended to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import random
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from engine.wire import RawSSEDecoder

CHUNK_SIZE = 64 * 1024
RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_HEADER = (
    "# SSE decoder benchmark results\n\n"
    "Appended by `python benchmarks/sse.py`. Throughput is best of N repeats "
    "(`time.perf_counter`), each decoding the whole stream fed in 64 KiB chunks.\n"
)


class LineDecoder(Protocol):
    """The shape shared by httpx's ``LineDecoder`` and httpx-sse's ``SSELineDecoder``."""

    def decode(self, text: str) -> list[str]:
        """Split newly decoded text into complete lines."""

    def flush(self) -> list[str]:
        """Return the final unterminated line, if any."""


class SplitlinesLineDecoder:
    """Copy of httpx's ``LineDecoder`` (str.splitlines based), for when httpx is absent."""

    def __init__(self) -> None:
        """Start with no buffered text."""
        self.buffer: list[str] = []
        self.trailing_cr = False

    def decode(self, text: str) -> list[str]:
        """Split newly decoded text into complete lines, buffering the tail."""
        newline_chars = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
        if self.trailing_cr:
            text = "\r" + text
            self.trailing_cr = False
        if text.endswith("\r"):
            self.trailing_cr = True
            text = text[:-1]
        if not text:
            return []
        trailing_newline = text[-1] in newline_chars
        lines = text.splitlines()
        if len(lines) == 1 and not trailing_newline:
            self.buffer.append(lines[0])
            return []
        if self.buffer:
            lines = ["".join(self.buffer) + lines[0], *lines[1:]]
            self.buffer = []
        if not trailing_newline:
            self.buffer = [lines.pop()]
        return lines

    def flush(self) -> list[str]:
        """Return the buffered unterminated line, if any."""
        if not self.buffer and not self.trailing_cr:
            return []
        lines = ["".join(self.buffer)]
        self.buffer = []
        self.trailing_cr = False
        return lines


def _load_httpx_sse_decoders() -> types.ModuleType:
    """Import ``httpx_sse._decoders``, bypassing the package ``__init__`` if httpx is absent."""
    try:
        return importlib.import_module("httpx_sse._decoders")
    except ImportError:
        # httpx_sse/__init__.py imports httpx (via _api); the decoders themselves do not.
        spec = importlib.util.find_spec("httpx_sse")
        if spec is None or spec.submodule_search_locations is None:
            raise
        package = types.ModuleType("httpx_sse")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["httpx_sse"] = package
        return importlib.import_module("httpx_sse._decoders")


def _peer_line_decoder(decoders: types.ModuleType) -> tuple[Callable[[], LineDecoder], str]:
    """Pick the line splitter httpx-sse really uses, falling back to httpx's own."""
    sse_lines = getattr(decoders, "SSELineDecoder", None)
    if sse_lines is not None:
        return sse_lines, "httpx_sse._decoders.SSELineDecoder"
    try:
        httpx_decoders = importlib.import_module("httpx._decoders")
    except ImportError:
        return SplitlinesLineDecoder, "httpx LineDecoder (vendored copy)"
    factory: Callable[[], LineDecoder] = httpx_decoders.LineDecoder
    return factory, "httpx._decoders.LineDecoder"


def run_nanoedit(chunks: Sequence[bytes]) -> list[str]:
    """Decode ``chunks`` with nanoedit's decoder and return the event data strings."""
    decoder = RawSSEDecoder()
    out: list[str] = []
    for chunk in chunks:
        for event in decoder.feed(chunk):
            out.append(event.data.decode())
    for event in decoder.close():
        out.append(event.data.decode())
    return out


def make_peer_runner(
    decoders: types.ModuleType, line_factory: Callable[[], LineDecoder]
) -> Callable[[Sequence[bytes]], list[str]]:
    """Build a function that decodes chunks the way httpx + httpx-sse do."""
    event_decoder_cls: Any = decoders.SSEDecoder

    def run_peer(chunks: Sequence[bytes]) -> list[str]:
        """Decode ``chunks`` with httpx-sse and return the event data strings."""
        text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        line_decoder = line_factory()
        decoder = event_decoder_cls()
        out: list[str] = []

        def lines() -> Any:
            for chunk in chunks:
                text = text_decoder.decode(chunk)
                if text:
                    yield from line_decoder.decode(text)
            text = text_decoder.decode(b"", True)
            if text:
                yield from line_decoder.decode(text)
            yield from line_decoder.flush()

        for line in lines():
            sse = decoder.decode(line.rstrip("\n"))
            if sse is not None:
                out.append(sse.data)
        return out

    return run_peer


def large_line_stream(newline: bytes) -> bytes:
    """Return a Gemini-like stream: a text event, one 8 MB base64 image line, a final event."""
    rng = random.Random(0)
    image_b64 = base64.b64encode(rng.randbytes(6 * 1024 * 1024)).decode("ascii")
    assert len(image_b64) == 8 * 1024 * 1024
    events = [
        {"candidates": [{"content": {"parts": [{"text": "Here is the edit."}], "role": "model"}}]},
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"inlineData": {"mimeType": "image/png", "data": image_b64}}],
                        "role": "model",
                    },
                    "index": 0,
                }
            ]
        },
        {"candidates": [{"finishReason": "STOP", "index": 0}]},
    ]
    return b"".join(
        b"data: " + json.dumps(e, separators=(",", ":")).encode() + newline + newline
        for e in events
    )


def small_events_stream(newline: bytes, count: int) -> bytes:
    """Return ``count`` small Gemini-like text events."""
    line = b'data: {"candidates":[{"content":{"parts":[{"text":"word "}]}}]}'
    return (line + newline + newline) * count


def best_time(
    func: Callable[[Sequence[bytes]], list[str]], chunks: Sequence[bytes], n: int
) -> float:
    """Return the fastest of ``n`` wall-clock runs of ``func(chunks)``."""
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        func(chunks)
        best = min(best, time.perf_counter() - start)
    return best


def chunked(data: bytes, size: int) -> list[bytes]:
    """Split ``data`` into ``size``-byte pieces, as network reads would deliver it."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run both workloads, print the table, write JSON and append to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--repeats", type=int, default=7, help="runs per case (best is kept)")
    parser.add_argument("--events", type=int, default=100_000, help="small events to decode")
    parser.add_argument("--newline", choices=["lf", "crlf"], default="crlf")
    parser.add_argument("--no-append", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)

    newline = b"\r\n" if args.newline == "crlf" else b"\n"
    decoders = _load_httpx_sse_decoders()
    line_factory, line_name = _peer_line_decoder(decoders)
    run_peer = make_peer_runner(decoders, line_factory)

    cases = [
        ("one 8 MB base64 data line", large_line_stream(newline)),
        (f"{args.events:,} small events", small_events_stream(newline, args.events)),
    ]
    results: list[dict[str, Any]] = []
    for name, stream in cases:
        chunks = chunked(stream, CHUNK_SIZE)
        ours, theirs = run_nanoedit(chunks), run_peer(chunks)
        if ours != theirs:
            raise SystemExit(f"decoders disagree on {name!r}; refusing to report numbers")
        t_ours = best_time(run_nanoedit, chunks, args.repeats)
        t_peer = best_time(run_peer, chunks, args.repeats)
        mb = len(stream) / 1e6
        results.append(
            {
                "case": name,
                "bytes": len(stream),
                "events": len(ours),
                "nanoedit_s": t_ours,
                "httpx_sse_s": t_peer,
                "nanoedit_mb_s": mb / t_ours,
                "httpx_sse_mb_s": mb / t_peer,
                "nanoedit_events_s": len(ours) / t_ours,
                "httpx_sse_events_s": len(ours) / t_peer,
                "speedup": t_peer / t_ours,
            }
        )

    table = render_table(results)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    machine = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
    }
    print(table)
    print(
        f"\nhttpx-sse line splitter: {line_name}; line ends: {args.newline}; "
        f"chunk: {CHUNK_SIZE} B; best of {args.repeats}"
    )

    if args.json:
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": command,
            "machine": machine,
            "chunk_size": CHUNK_SIZE,
            "newline": args.newline,
            "repeats": args.repeats,
            "peer_line_decoder": line_name,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if not args.no_append:
        append_results(table, machine, command, line_name, args.newline, args.repeats)
    return 0


def render_table(results: Sequence[dict[str, Any]]) -> str:
    """Format results as a Markdown table."""
    rows = [
        "| case | decoder | MB/s | events/s | time (ms) | speedup |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r['case']} | nanoedit | {r['nanoedit_mb_s']:,.1f} | "
            f"{r['nanoedit_events_s']:,.0f} | {r['nanoedit_s'] * 1e3:,.2f} | "
            f"{r['speedup']:.2f}x |"
        )
        rows.append(
            f"| {r['case']} | httpx-sse | {r['httpx_sse_mb_s']:,.1f} | "
            f"{r['httpx_sse_events_s']:,.0f} | {r['httpx_sse_s'] * 1e3:,.2f} | 1.00x |"
        )
    return "\n".join(rows)


def append_results(
    table: str,
    machine: dict[str, Any],
    command: str,
    line_name: str,
    newline: str,
    repeats: int,
) -> None:
    """Append one dated run, with machine details, to ``benchmarks/RESULTS.md``."""
    existing = RESULTS_PATH.read_text(encoding="utf-8") if RESULTS_PATH.exists() else ""
    if not existing:
        existing = RESULTS_HEADER
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {when}\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine['platform']} ({machine['machine']}), "
        f"{machine['cpu_count']} CPUs, {machine['implementation']} {machine['python']}\n"
        f"- chunk: {CHUNK_SIZE} B, line ends: {newline}, best of {repeats}, "
        f"httpx-sse line splitter: `{line_name}`\n\n"
        f"{table}\n"
    )
    RESULTS_PATH.write_text(existing.rstrip("\n") + "\n" + section, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
