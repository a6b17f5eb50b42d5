"""Client CPU to encode one request that carries an image history, side by side in one run.

    python benchmarks/encode.py [--turns 10] [--image-mb 5] [--repeat 10]

A history of T model turns, each with an image of the given size (random bytes: base64 cost
depends on the size only), plus the new user turn. Three encoders write the same bytes:

- nanoedit: `GeminiProvider.encode_body`, the pieces the transport writes (SIMD base64 per image);
- msgspec scalar: `GeminiProvider.encode`, one msgspec call (its own scalar base64), which is how
  every request body was written before;
- SIMD floor: the least work possible: each image's base64 from pybase64, the small JSON around
  them written by hand, as pieces (no join: the transport writes pieces).

CPU is `time.process_time()` per request, the median of `--repeat`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import pybase64
from _common import append_results, fmt, machine_info, markdown_table

from engine import Secret
from engine.providers import GeminiProvider, GenerateRequest
from engine.wire import Transport
from sessions import Blob, Content, Part, SessionSettings


def _history(turns: int, image_bytes: int) -> list[Content]:
    out = []
    for i in range(turns):
        image = Blob(mime_type="image/png", data=os.urandom(image_bytes))
        out.append(Content(role="user", parts=[Part(text=f"edit number {i}")]))
        out.append(
            Content(
                role="model",
                parts=[
                    Part(text="Here is the edited image.", thought_signature=b"sig-text"),
                    Part(inline_data=image, thought_signature=b"sig-image"),
                ],
            )
        )
    out.append(Content(role="user", parts=[Part(text="one more edit")]))
    return out


def _cpu_ms(fn: Callable[[], int], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        samples.append((time.process_time() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    """Measure the three encoders; print and append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--image-mb", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    provider = GeminiProvider(Transport(), base_url="http://127.0.0.1:1", api_key=Secret(""))
    history = _history(args.turns, int(args.image_mb * 1e6))
    request = GenerateRequest("gemini-3.1-flash-image", history, SessionSettings())
    expected = provider.encode(request)

    def nanoedit() -> int:
        return sum(len(p) for p in provider.encode_body(request).pieces())

    def scalar() -> int:
        return len(provider.encode(request))

    head = (
        b'{"role":"model","parts":[{"text":"Here is the edited image.",'
        b'"thoughtSignature":"c2lnLXRleHQ="},{"inlineData":{"mimeType":"image/png","data":"'
    )
    tail = b'"},"thoughtSignature":"c2lnLWltYWdl"}]}'

    def floor_pieces() -> Iterator[bytes]:
        yield b'{"contents":['
        for content in history:
            images = [p.inline_data.data for p in content.parts if p.inline_data is not None]
            if images:
                yield head
                yield pybase64.b64encode(images[0])
                yield tail + b","
            else:
                text = (content.parts[0].text or "").encode()
                yield b'{"role":"user","parts":[{"text":"' + text + b'"}]},'

    def floor() -> int:
        # Written piece by piece as the transport would: each image's base64 is dropped once
        # written, like nanoedit's.
        return sum(len(p) for p in floor_pieces())

    assert nanoedit() == len(expected)
    rows = []
    results = {
        name: _cpu_ms(fn, args.repeat)
        for name, fn in (("nanoedit", nanoedit), ("msgspec scalar", scalar), ("SIMD floor", floor))
    }
    for name, ms in results.items():
        rows.append([name, fmt(ms, 1), fmt(ms / results["SIMD floor"], 2)])
    mb = len(expected) / 1e6
    table = markdown_table(["encoder", "CPU ms per request", "x SIMD floor"], rows)
    print(f"request: {args.turns} image turns, {mb:.1f} MB\n")
    print(table)
    append_results(
        f"encode: a {mb:.0f} MB request ({args.turns} turns of {args.image_mb:g} MB images)",
        machine_info(),
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
