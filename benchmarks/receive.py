"""Client CPU to receive one streamed image answer, side by side in one run.

    python benchmarks/receive.py [--image-mb 9] [--repeat 15]

One `streamGenerateContent?alt=sse` answer as the emulator sends it (thought text, answer text,
the image part with its signature, the finish event), CRLF line ends, fed in 64 KiB chunks as a
socket delivers them: each chunk a new bytes object, copied just before it is handed over, so it
is in the cache as a socket read leaves it (handing out 12 MB of chunks prepared in advance makes
every scan of them a trip to memory). What producing the chunks costs is measured alone in the
same run and taken off. The image is random bytes of the given size (a 2K grain PNG from the
emulator is about 9 MB; decode and hash costs depend on the size only). Two receivers:

- nanoedit: `GeminiProvider._read_events` (the image's base64 decoded chunk by chunk as it
  arrives and cut out of the stream, then SSE decoder, wire decoding, merging) with the
  pipeline's image handling (`Image.from_blob`: dimensions and sha256, once);
- SIMD floor: pybase64 decoding of the image's base64 (already cut out) and sha256 only: the
  physical limit, which the ratio is taken against (what nanoedit adds is finding the event
  and parsing the JSON around the image).

CPU is `time.process_time()` per answer, the median of `--repeat`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator

import msgspec
import pybase64
from _common import append_results, fmt, machine_info, markdown_table

from engine import Secret
from engine.providers import GeminiProvider
from engine.providers._gemini import _Answer
from engine.runtime import Image
from engine.wire import ContentMerger, ImageDelta, Transport

CHUNK = 64 * 1024


def _stream(image: bytes) -> bytes:
    def event(obj: object) -> bytes:
        return b"data: " + msgspec.json.encode(obj) + b"\r\n\r\n"

    def parts(*p: object) -> dict[str, object]:
        return {"candidates": [{"content": {"role": "model", "parts": list(p)}, "index": 0}]}

    return b"".join(
        [
            event(parts({"text": "Planning the edit.", "thought": True})),
            event(parts({"text": "Here is the edited image.", "thoughtSignature": "c2ln"})),
            event(
                parts(
                    {
                        "inlineData": {
                            "mimeType": "image/png",
                            "data": pybase64.b64encode(image).decode(),
                        },
                        "thoughtSignature": "c2lnLWltYWdl",
                    }
                )
            ),
            event(
                {
                    "candidates": [{"finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 20},
                }
            ),
        ]
    )


class _Chunks:
    """The stream as a socket hands it over: a fresh bytes object per read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        view = memoryview(self._data)
        for i in range(0, len(view), CHUNK):
            yield bytes(view[i : i + CHUNK])


def main() -> int:
    """Measure both receivers; print and append the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-mb", type=float, default=9.0)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    image = os.urandom(int(args.image_mb * 1e6))
    stream = _Chunks(_stream(image))
    provider = GeminiProvider(Transport(), base_url="http://127.0.0.1:1", api_key=Secret(""))
    expected = hashlib.sha256(image).hexdigest()

    async def nanoedit() -> str:
        digests: list[str] = []

        async def on_delta(delta: object) -> None:
            if isinstance(delta, ImageDelta) and delta.part.inline_data is not None:
                digests.append(Image.from_blob(delta.part.inline_data).sha256)

        answer = _Answer(200, ())
        merger = ContentMerger()
        await provider._read_events(stream, answer, merger, on_delta, {}, 0.0)  # type: ignore[arg-type]
        merger.content()
        return digests[0]

    encoded = pybase64.b64encode(image)

    async def decode_and_hash() -> str:
        return hashlib.sha256(pybase64.b64decode(encoded, validate=True)).hexdigest()

    async def chunks_alone() -> str:
        async for _ in stream:
            pass
        return expected

    receivers = (
        ("nanoedit", nanoedit),
        ("SIMD floor", decode_and_hash),
        ("the chunks alone", chunks_alone),
    )

    async def measure() -> dict[str, float]:
        out: dict[str, list[float]] = {name: [] for name, _ in receivers}
        for _ in range(args.repeat):
            for name, fn in receivers:
                start = time.process_time()
                digest = await fn()
                out[name].append((time.process_time() - start) * 1000)
                assert digest == expected, name
        return {name: statistics.median(v) for name, v in out.items()}

    results = asyncio.run(measure())
    source = results.pop("the chunks alone")
    results["nanoedit"] -= source
    rows = [[name, fmt(ms, 2), fmt(ms / results["SIMD floor"], 2)] for name, ms in results.items()]
    rows.append(["producing the chunks (taken off nanoedit)", fmt(source, 2), ""])
    table = markdown_table(["receiver", "CPU ms per answer", "x SIMD floor"], rows)
    mb = len(image) / 1e6
    print(f"answer: one {mb:.1f} MB image, streamed in {CHUNK // 1024} KiB chunks\n")
    print(table)
    append_results(
        f"receive: a streamed answer with a {mb:.1f} MB image (2K)", machine_info(), table
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
