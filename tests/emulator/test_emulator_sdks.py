"""The official SDKs against the emulator: google-genai async chat (plain and streamed turns)
and the openai SDK's images and chat endpoints."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google import genai
from google.genai import types
from openai import AsyncOpenAI
from PIL import Image

from engine.emulator import Emulator, EmulatorSettings
from tests._emulator_fixtures import FLASH, KEY, is_grayscale, open_image, png

pytestmark = [
    # google-genai subclasses aiohttp.ClientSession, which aiohttp deprecates; the warning is
    # raised inside the SDK when it builds its session, nothing this project can change.
    pytest.mark.filterwarnings(
        "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
        ":DeprecationWarning"
    ),
]


@pytest.fixture
async def keyed_emu() -> AsyncIterator[Emulator]:
    """A flat-image emulator that requires the test key."""
    async with Emulator(EmulatorSettings(flat=True, api_key=KEY)) as emulator:
        yield emulator


@pytest.fixture
async def openai_client(keyed_emu: Emulator) -> AsyncIterator[AsyncOpenAI]:
    """The official openai client pointed at the emulator."""
    client = AsyncOpenAI(base_url=keyed_emu.base_url + "/v1", api_key=KEY, max_retries=0)
    async with client:
        yield client


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_genai_async_chat_plain_and_streamed_turns(keyed_emu: Emulator) -> None:
    """Three send_message and three send_message_stream turns return 2752x1536 images."""
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=keyed_emu.base_url))
    try:
        chat = client.aio.chats.create(
            model=FLASH,
            config=types.GenerateContentConfig(
                response_modalities=["TEXT", "IMAGE"],
                image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
            ),
        )
        images: list[bytes] = []
        for prompt in (
            "a mug on an oak table",
            "make it grayscale",
            "add a red circle on the left",
        ):
            response = await chat.send_message(prompt)
            assert response.candidates and response.candidates[0].content
            parts = response.candidates[0].content.parts or []
            found = [p.inline_data.data for p in parts if p.inline_data and p.inline_data.data]
            assert len(found) == 1
            assert all(p.thought_signature for p in parts if p.inline_data)
            images += found
        for prompt in ("add a blue square on the right", "make it sepia", "add text 'hello'"):
            streamed: list[bytes] = []
            async for chunk in await chat.send_message_stream(prompt):
                for candidate in chunk.candidates or []:
                    for part in (candidate.content.parts if candidate.content else None) or []:
                        if part.inline_data and part.inline_data.data:
                            streamed.append(part.inline_data.data)
            assert len(streamed) == 1
            images += streamed
        assert len(images) == 6
        assert all(_size(image) == (2752, 1536) for image in images)
        assert is_grayscale(open_image(images[1]))
        assert len(set(images)) == 6
        # Every turn carried the whole history: the SDK kept and resent the signatures.
        assert keyed_emu.stats()["requests"]["generateContent"] == 3
        assert keyed_emu.stats()["requests"]["streamGenerateContent"] == 3
        assert len(chat.get_history()) > 12
    finally:
        await client.aio.aclose()


async def test_openai_images_generate(openai_client: AsyncOpenAI) -> None:
    """images.generate returns b64_json images of the mapped size."""
    result = await openai_client.images.generate(
        model=FLASH, prompt="a lighthouse", size="1536x1024", n=1
    )
    assert result.data and result.data[0].b64_json
    assert _size(base64.b64decode(result.data[0].b64_json)) == (1264, 848)
    assert result.usage and result.usage.output_tokens == 1120


async def test_openai_images_edit(openai_client: AsyncOpenAI) -> None:
    """images.edit uploads an image and gets the edited one back."""
    result = await openai_client.images.edit(
        model=FLASH, image=("in.png", png(300, 300), "image/png"), prompt="make it grayscale"
    )
    assert result.data and result.data[0].b64_json
    edited = open_image(base64.b64decode(result.data[0].b64_json))
    assert edited.size == (1024, 1024)
    assert is_grayscale(edited)


async def test_openai_images_generate_stream(openai_client: AsyncOpenAI) -> None:
    """images.generate(stream=True, partial_images=2) yields two partials then completed."""
    stream = await openai_client.images.generate(
        model=FLASH, prompt="a lighthouse", stream=True, partial_images=2
    )
    kinds: list[str] = []
    async for event in stream:
        kinds.append(event.type)
        if event.type == "image_generation.partial_image":
            assert event.partial_image_index == kinds.count(event.type) - 1
        else:
            assert event.usage.output_tokens == 1120
    assert kinds == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]


async def test_openai_chat_stream(openai_client: AsyncOpenAI) -> None:
    """chat.completions.create(stream=True) yields text deltas, an image delta and a finish."""
    stream = await openai_client.chat.completions.create(
        model=FLASH,
        messages=[{"role": "user", "content": "a red apple"}],
        stream=True,
    )
    text = ""
    images: list[dict[str, Any]] = []
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        images += (delta.model_extra or {}).get("images") or []
        finish = chunk.choices[0].finish_reason or finish
    assert text.startswith("Here is the image")
    assert finish == "stop"
    assert len(images) == 1
    assert images[0]["image_url"]["url"].startswith("data:image/png;base64,")
