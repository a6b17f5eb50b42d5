"""Encoding a finished canvas: grain, metadata, the fixed PNG encoder, other formats."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from functools import lru_cache
from typing import Any

from PIL import (
    Image,
    ImageChops,
)

from engine.emulator.render._model import RenderResult, _Canvas
from engine.emulator.render._vocabulary import (
    GRAIN_AMPLITUDE,
    GRAIN_MASTER_SEED,
    GRAIN_OFFSET_ADD_Y,
    GRAIN_OFFSET_MUL_X,
    GRAIN_OFFSET_MUL_Y,
    GRAIN_TILE,
    JPEG_COMMENT_MAX,
    JPEG_QUALITY,
    MAX_EVENTS,
    MAX_MANIFEST_OBJECTS,
    META_KEY,
    META_VERSION,
    PNG_BAND_ROWS,
    PNG_FILTER_UP,
    PNG_IDAT_CHUNK,
    PNG_SIGNATURE,
    PNG_ZLIB_FLAT,
    PNG_ZLIB_GRAIN,
    PNG_ZLIB_LEVEL,
    WEBP_QUALITY,
)

# =========================================================================== output


def _finish(canvas: _Canvas, *, grain: bool, seed: int, mime: str) -> RenderResult:
    img = canvas.img
    width, height = img.size
    meta: dict[str, Any] = {
        "v": META_VERSION,
        "s": [width, height],
        "ni": canvas.next_id,
        "o": [
            [
                o.id,
                o.kind,
                o.label,
                list(o.colour),
                list(o.box),
                [round(v, 2) for v in o.shape],
                int(o.above),
            ]
            for o in canvas.objects[-MAX_MANIFEST_OBJECTS:]
        ],
    }
    if canvas.events is not None and len(canvas.events) <= MAX_EVENTS:
        meta["ev"] = canvas.events
    if grain:
        dx = (seed * GRAIN_OFFSET_MUL_X) % GRAIN_TILE
        dy = (seed * GRAIN_OFFSET_MUL_Y + GRAIN_OFFSET_ADD_Y) % GRAIN_TILE
        img = _add_grain(img, dx, dy)
        if mime == "image/png":
            meta["g"] = [dx, dy, GRAIN_AMPLITUDE]
    meta_text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    if mime == "image/png":
        data = _encode_png(img, meta_text, PNG_ZLIB_GRAIN if grain else PNG_ZLIB_FLAT)
    else:
        buf = io.BytesIO()
        if mime == "image/jpeg":
            # A JPEG comment segment holds < 64 KB: drop the history, then the objects, if needed.
            for key in ("ev", "o"):
                if len(meta_text) > JPEG_COMMENT_MAX:
                    meta.pop(key, None)
                    meta_text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
            img.save(buf, "JPEG", quality=JPEG_QUALITY, comment=f"{META_KEY}:{meta_text}")
        else:
            img.save(buf, "WEBP", quality=WEBP_QUALITY, method=0)
        data = buf.getvalue()
    return RenderResult(data, mime, width, height, tuple(canvas.applied))


@lru_cache(maxsize=1)
def _master_noise() -> Image.Image:
    """One grain tile with values 0..2*amplitude, built once (~15 ms) and shared."""
    raw = random.Random(GRAIN_MASTER_SEED).randbytes(GRAIN_TILE * GRAIN_TILE)
    span = 2 * GRAIN_AMPLITUDE + 1
    tile = Image.frombytes("L", (GRAIN_TILE, GRAIN_TILE), raw).point([v % span for v in range(256)])
    return Image.merge("RGB", (tile, tile, tile))


def _noise(size: tuple[int, int], dx: int, dy: int) -> Image.Image:
    tile = ImageChops.offset(_master_noise(), dx % GRAIN_TILE, dy % GRAIN_TILE)
    if size == tile.size:
        return tile
    out = Image.new("RGB", size)
    for y in range(0, size[1], GRAIN_TILE):
        for x in range(0, size[0], GRAIN_TILE):
            out.paste(tile, (x, y))
    return out


@lru_cache(maxsize=1)
def _clamp_lut() -> list[int]:
    return [min(max(v, GRAIN_AMPLITUDE), 255 - GRAIN_AMPLITUDE) for v in range(256)] * 3


def _add_grain(img: Image.Image, dx: int, dy: int) -> Image.Image:
    # Clamping first keeps img + noise inside 0..255, so _decode_base can subtract it exactly.
    clamped = img.point(_clamp_lut())
    return ImageChops.add(clamped, _noise(img.size, dx, dy), 1.0, -GRAIN_AMPLITUDE)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))
    )


def _encode_png(img: Image.Image, meta_text: str, zlib_profile: tuple[int, int]) -> bytes:
    """Encode RGB as PNG: the Up filter is done by Pillow C ops, deflate by zlib.

    Works in bands of PNG_BAND_ROWS rows: small temporaries are recycled by the allocator,
    whereas full-size ones cost fresh (page-faulting) memory on every call.
    """
    width, height = img.size
    stride = width * 3
    filter_byte = bytes([PNG_FILTER_UP])
    strategy, mem_level = zlib_profile
    comp = zlib.compressobj(PNG_ZLIB_LEVEL, zlib.DEFLATED, 15, mem_level, strategy)
    chunks: list[bytes] = []
    for y0 in range(0, height, PNG_BAND_ROWS):
        y1 = min(height, y0 + PNG_BAND_ROWS)
        # The crop one row higher reads zeros above the image, as PNG's first row needs.
        above = img.crop((0, y0 - 1, width, y1 - 1))
        raw = memoryview(ImageChops.subtract_modulo(img.crop((0, y0, width, y1)), above).tobytes())
        # Each PNG scanline is one filter-type byte followed by the filtered row.
        rows = (
            part
            for y in range(y1 - y0)
            for part in (filter_byte, raw[y * stride : (y + 1) * stride])
        )
        chunks.append(comp.compress(b"".join(rows)))
    chunks.append(comp.flush())
    idat = b"".join(chunks)
    parts = [
        PNG_SIGNATURE,
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
        _png_chunk(b"tEXt", META_KEY.encode("latin-1") + b"\0" + meta_text.encode("latin-1")),
    ]
    view = memoryview(idat)
    parts.extend(
        _png_chunk(b"IDAT", bytes(view[i : i + PNG_IDAT_CHUNK]))
        for i in range(0, len(idat), PNG_IDAT_CHUNK)
    )
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)
