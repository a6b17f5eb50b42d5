"""Helpers for the emulator tests: request builders, SSE parsing, pixel checks."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageChops

from engine.emulator import Emulator, EmulatorSettings

FLASH = "gemini-3.1-flash-image"
PRO = "gemini-3-pro-image"
NANO = "gemini-2.5-flash-image"
KEY = "test-key"

JSON = dict[str, Any]


# Registered under the names `emu` and `http`; test modules import the *_fixture functions.
@pytest.fixture(name="emu")
async def emu_fixture() -> AsyncIterator[Emulator]:
    """A flat-image emulator without auth on an ephemeral loopback port."""
    async with Emulator(EmulatorSettings(flat=True)) as emulator:
        yield emulator


@pytest.fixture(name="http")
async def http_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode()


def png(width: int, height: int, color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    """A solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def user(text: str, *images: bytes) -> JSON:
    """A user Content in camelCase JSON."""
    parts: list[JSON] = [{"text": text}] if text else []
    parts += [{"inlineData": {"mimeType": "image/png", "data": b64(i)}} for i in images]
    return {"role": "user", "parts": parts}


def body(*contents: JSON, **generation_config: Any) -> JSON:
    """A generateContent request body."""
    out: JSON = {"contents": list(contents)}
    if generation_config:
        out["generationConfig"] = generation_config
    return out


def gemini_url(emu: Emulator, model: str = FLASH, method: str = "generateContent") -> str:
    """The URL of a Gemini-native call (streaming calls get ?alt=sse)."""
    query = "?alt=sse" if method == "streamGenerateContent" else ""
    return f"{emu.base_url}/v1beta/models/{model}:{method}{query}"


async def call(
    http: aiohttp.ClientSession,
    url: str,
    payload: JSON | bytes,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes, Mapping[str, str]]:
    """POST JSON (or raw bytes); return status, body bytes and headers."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    # aiohttp warns (ResourceWarning) about large raw bytes bodies; a BytesIO is streamed.
    sent: bytes | io.BytesIO = io.BytesIO(data) if len(data) > 1 << 20 else data
    async with http.post(url, data=sent, headers=all_headers) as response:
        return response.status, await response.read(), response.headers


async def generate(
    http: aiohttp.ClientSession,
    emu: Emulator,
    payload: JSON | bytes,
    *,
    model: str = FLASH,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, JSON]:
    """generateContent; return status and decoded JSON."""
    status, raw, _ = await call(http, gemini_url(emu, model), payload, headers)
    decoded: JSON = json.loads(raw)
    return status, decoded


def parts_of(response: JSON) -> list[JSON]:
    """Parts of the first candidate."""
    parts: list[JSON] = response["candidates"][0]["content"]["parts"]
    return parts


def model_content(response: JSON) -> JSON:
    """The model Content of a response, to send back verbatim."""
    content: JSON = response["candidates"][0]["content"]
    return content


def image_bytes(response: JSON) -> bytes:
    """The one non-thought output image of a response."""
    images = [p for p in parts_of(response) if "inlineData" in p and not p.get("thought")]
    assert len(images) == 1
    return base64.b64decode(images[0]["inlineData"]["data"])


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes with Pillow (fully loaded, RGB)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def is_grayscale(image: Image.Image) -> bool:
    """R == G == B for every pixel."""
    r, g, b = image.split()
    return ImageChops.difference(r, g).getbbox() is None and (
        ImageChops.difference(g, b).getbbox() is None
    )


def red_pixels(image: Image.Image) -> tuple[int, int]:
    """Count strongly red pixels in the left and right halves."""
    r, g, b = image.split()
    mask = ImageChops.multiply(
        r.point(lambda v: 255 if v > 150 else 0),
        ImageChops.multiply(
            g.point(lambda v: 255 if v < 90 else 0), b.point(lambda v: 255 if v < 90 else 0)
        ),
    )
    half = image.width // 2
    left = mask.crop((0, 0, half, image.height)).histogram()[255]
    right = mask.crop((half, 0, image.width, image.height)).histogram()[255]
    return left, right


def sse_payloads(raw: bytes, separator: bytes = b"\r\n\r\n") -> list[bytes]:
    """The `data:` payloads of an event stream body, in order."""
    out = []
    for event in raw.split(separator):
        if not event.strip():
            continue
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(line[len(b"data: ") :].rstrip(b"\r"))
    return out
