"""The emulator's Gemini-native API over loopback HTTP: answers, determinism, signatures,
sizes, limits, auth, streaming, countTokens and stats."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import EmulatorOptions, Engine, EngineConfig, RetryPolicy, ServerError
from engine.emulator import Emulator, EmulatorSettings
from engine.emulator._gemini import _split
from tests._emulator_fixtures import (
    FLASH,
    JSON,
    KEY,
    NANO,
    PRO,
    b64,
    body,
    call,
    gemini_url,
    generate,
    image_bytes,
    is_grayscale,
    model_content,
    open_image,
    parts_of,
    png,
    red_pixels,
    sse_payloads,
    user,
)

# isort: split
# pytest finds these fixtures (named `emu` and `http`) through this import.
from tests._emulator_fixtures import emu_fixture, http_fixture  # noqa: F401

GOOGLE_MESSAGE = (
    "{kind} part is missing a thought_signature in content position {c}, part position {p}. "
    "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures#model-behavior "
    "for more details."
)


async def _turn1(http: aiohttp.ClientSession, emu: Emulator, prompt: str, **config: object) -> JSON:
    status, answer = await generate(http, emu, body(user(prompt), **config))
    assert status == 200, answer
    return answer


async def test_first_turn_has_thought_signed_text_and_signed_image(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Turn 1 answers signed text, then a signed 1K 1:1 PNG; the thought summary comes first
    only with includeThoughts (the thinking is billed either way)."""
    answer = await _turn1(http, emu, "a red apple on a blue table")
    parts = parts_of(answer)
    assert not any(p.get("thought") for p in parts)
    assert answer["usageMetadata"]["thoughtsTokenCount"] > 0
    assert parts[0]["text"] and parts[0]["thoughtSignature"]
    assert parts[1]["inlineData"]["mimeType"] == "image/png" and parts[1]["thoughtSignature"]
    thinking = {"thinkingConfig": {"includeThoughts": True}}
    status, with_thoughts = await generate(http, emu, body(user("a red apple"), **thinking))
    assert status == 200
    first = parts_of(with_thoughts)[0]
    assert first["thought"] is True and "thoughtSignature" not in first
    assert open_image(image_bytes(answer)).size == (1024, 1024)
    assert answer["candidates"][0]["finishReason"] == "STOP"
    assert answer["modelVersion"] == FLASH
    assert answer["responseId"]


async def test_same_request_gives_identical_bytes(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Two identical requests get byte-identical answers (responseId and signatures included)."""
    payload = body(user("a lighthouse at dusk"))
    first = await call(http, gemini_url(emu), payload)
    second = await call(http, gemini_url(emu), payload)
    assert first[0] == 200
    assert first[1] == second[1]


async def test_different_history_gives_different_image(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """The same instruction on top of different histories yields different images."""
    images = []
    for prompt in ("a green tree on a hill", "a yellow boat on the sea"):
        first = await _turn1(http, emu, prompt)
        payload = body(user(prompt), model_content(first), user("add a red circle on the left"))
        status, answer = await generate(http, emu, payload)
        assert status == 200, answer
        images.append(image_bytes(answer))
    assert images[0] != images[1]


async def test_edit_applies_instruction_to_latest_image(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """'make it grayscale' edits the latest image in the history: R == G == B everywhere."""
    first = await _turn1(http, emu, "a red apple on a blue table")
    assert not is_grayscale(open_image(image_bytes(first)))
    payload = body(user("a red apple"), model_content(first), user("make it grayscale"))
    status, answer = await generate(http, emu, payload)
    assert status == 200, answer
    assert is_grayscale(open_image(image_bytes(answer)))
    text = parts_of(answer)[0]["text"]
    assert "grayscale" in text


async def test_red_circle_lands_on_the_left(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """'add a red circle on the left' puts red pixels in the left half, not the right."""
    base = png(1024, 1024, (40, 90, 200))
    status, answer = await generate(http, emu, body(user("add a red circle on the left", base)))
    assert status == 200, answer
    left, right = red_pixels(open_image(image_bytes(answer)))
    assert left > 1000
    assert right < left / 20


@pytest.mark.parametrize(
    ("model", "ratio", "size", "expected"),
    [
        (FLASH, "16:9", "2K", (2752, 1536)),
        (FLASH, "1:1", "512", (512, 512)),
        (FLASH, "1:8", "1K", (384, 3072)),
        (FLASH, "8:1", "4K", (12288, 1536)),
        (PRO, "4:3", "1K", (1200, 896)),
        (PRO, "21:9", "2K", (3168, 1344)),
        (NANO, "21:9", None, (1536, 672)),
        (NANO, "3:4", None, (864, 1184)),
    ],
)
async def test_output_size_follows_catalog(
    http: aiohttp.ClientSession,
    emu: Emulator,
    model: str,
    ratio: str,
    size: str | None,
    expected: tuple[int, int],
) -> None:
    """imageConfig maps to the catalogue's exact pixel size per model, ratio and size."""
    image_config = {"aspectRatio": ratio} | ({"imageSize": size} if size else {})
    payload = body(user("a cat"), imageConfig=image_config)
    status, answer = await generate(http, emu, payload, model=model)
    assert status == 200, answer
    assert open_image(image_bytes(answer)).size == expected


async def test_default_ratio_follows_input_image(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Without aspectRatio the output takes the catalogue ratio closest to the input image."""
    status, answer = await generate(http, emu, body(user("make it sepia", png(1600, 900))))
    assert status == 200, answer
    assert open_image(image_bytes(answer)).size == (1376, 768)


@pytest.mark.parametrize(
    ("model", "image_config", "needle"),
    [
        (FLASH, {"imageSize": "1k"}, "image_size must be one of '512', '1K', '2K', or '4K'"),
        (PRO, {"imageSize": "512"}, "image_size must be one of '1K', '2K', or '4K'"),
        (NANO, {"imageSize": "1K"}, "image_size is not supported for models/gemini-2.5"),
        (FLASH, {"aspectRatio": "5:3"}, "aspect_ratio must be one of '1:1', '1:4', '1:8'"),
        (PRO, {"aspectRatio": "1:4"}, "aspect_ratio must be one of '1:1', '2:3'"),
    ],
)
async def test_invalid_image_config_is_rejected(
    http: aiohttp.ClientSession, emu: Emulator, model: str, image_config: JSON, needle: str
) -> None:
    """An imageConfig the model does not accept answers 400 INVALID_ARGUMENT."""
    status, answer = await generate(
        http, emu, body(user("a cat"), imageConfig=image_config), model=model
    )
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert needle in answer["error"]["message"]


async def test_snake_case_and_url_safe_base64_are_equivalent(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """camelCase + standard base64 and snake_case + URL-safe base64 get the same answer."""
    # Pick an image whose base64 contains '+' or '/', so the two alphabets really differ.
    image = next(
        data
        for shade in range(256)
        if "+" in b64(data := png(64, 48, (shade, 17, 99))) or "/" in b64(data)
    )
    camel = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "make it grayscale"},
                    {"inlineData": {"mimeType": "image/png", "data": b64(image)}},
                ],
            }
        ],
        "generationConfig": {"imageConfig": {"aspectRatio": "4:3"}},
    }
    snake = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "make it grayscale"},
                    {
                        "inline_data": {
                            "mime_type": "image/png",
                            "data": base64.urlsafe_b64encode(image).decode().rstrip("="),
                        }
                    },
                ],
            }
        ],
        "generation_config": {"image_config": {"aspect_ratio": "4:3"}},
    }
    first = await call(http, gemini_url(emu), camel)
    second = await call(http, gemini_url(emu), snake)
    assert first[0] == second[0] == 200
    assert first[1] == second[1]


async def _history(http: aiohttp.ClientSession, emu: Emulator, model: str = FLASH) -> list[JSON]:
    status, first = await generate(http, emu, body(user("a blue square")), model=model)
    assert status == 200, first
    return [user("a blue square"), model_content(first)]


async def test_missing_image_signature_is_rejected(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A model image sent back without its signature gets Google's exact 400 message."""
    history = await _history(http, emu)
    del history[1]["parts"][1]["thoughtSignature"]
    status, answer = await generate(http, emu, body(*history, user("make it grayscale")))
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert answer["error"]["message"] == GOOGLE_MESSAGE.format(kind="Image", c=2, p=2)


async def test_altered_image_signature_is_rejected(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A model image whose signature was altered is rejected like a missing one."""
    history = await _history(http, emu)
    signature = bytearray(base64.b64decode(history[1]["parts"][1]["thoughtSignature"]))
    signature[-1] ^= 1
    history[1]["parts"][1]["thoughtSignature"] = b64(bytes(signature))
    status, answer = await generate(http, emu, body(*history, user("make it grayscale")))
    assert status == 400
    assert answer["error"]["message"] == GOOGLE_MESSAGE.format(kind="Image", c=2, p=2)


async def test_signature_moved_to_another_image_is_rejected(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """An image signature is bound to its image: a swapped image fails validation."""
    history = await _history(http, emu)
    history[1]["parts"][1]["inlineData"]["data"] = b64(png(64, 64))
    status, answer = await generate(http, emu, body(*history, user("make it grayscale")))
    assert status == 400
    assert answer["error"]["message"] == GOOGLE_MESSAGE.format(kind="Image", c=2, p=2)


async def test_missing_text_signature_is_rejected(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """The first model text part without its signature gets the 'Text part' message."""
    history = await _history(http, emu)
    del history[1]["parts"][0]["thoughtSignature"]
    status, answer = await generate(http, emu, body(*history, user("make it grayscale")))
    assert status == 400
    assert answer["error"]["message"] == GOOGLE_MESSAGE.format(kind="Text", c=2, p=1)


async def test_verbatim_history_is_accepted(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """History sent back verbatim passes signature validation for three turns."""
    contents = [user("a blue square")]
    for instruction in ("make it grayscale", "add a red circle on the left"):
        status, answer = await generate(http, emu, body(*contents))
        assert status == 200, answer
        contents += [model_content(answer), user(instruction)]
    status, answer = await generate(http, emu, body(*contents))
    assert status == 200, answer


@pytest.mark.parametrize(
    "signature",
    [
        "skip_thought_signature_validator",
        "context_engineering_is_the_way_to_go",
        b64(b"skip_thought_signature_validator"),
        b64(b"context_engineering_is_the_way_to_go"),
    ],
)
async def test_dummy_signatures_are_accepted(
    http: aiohttp.ClientSession, emu: Emulator, signature: str
) -> None:
    """Google's documented dummy signatures pass, sent literally or base64-encoded."""
    history = await _history(http, emu)
    for part in history[1]["parts"][1:]:
        part["thoughtSignature"] = signature
    status, answer = await generate(http, emu, body(*history, user("make it grayscale")))
    assert status == 200, answer


async def test_gemini_25_neither_signs_nor_enforces(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """gemini-2.5-flash-image returns no signatures or thoughts and accepts unsigned history."""
    history = await _history(http, emu, model=NANO)
    assert all("thoughtSignature" not in p and not p.get("thought") for p in history[1]["parts"])
    history[1]["parts"].append({"inlineData": {"mimeType": "image/png", "data": b64(png(8, 8))}})
    status, answer = await generate(http, emu, body(*history, user("add a red circle")), model=NANO)
    assert status == 200, answer


async def test_context_window_limit_message(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """Input over the model's context window answers Google's exact token-count message."""
    text = "word " * 27_000  # 135,000 bytes -> 33,750 tokens > 32,768
    status, answer = await generate(http, emu, body(user(text)), model=NANO)
    assert status == 400
    assert answer["error"]["message"] == (
        "The input token count (33750) exceeds the maximum number of tokens allowed (32768)."
    )


async def test_oversized_body_gets_googles_400(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """A body over 20 MiB answers Google's JSON 400, not aiohttp's 413 page."""
    big = json.dumps(body(user("x" * (21 * 1024 * 1024)))).encode()
    status, raw, headers = await call(http, gemini_url(emu), big)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["error"]["message"] == (
        "Request payload size exceeds the limit: 20971520 bytes."
    )


async def test_oversized_chunked_body_gets_googles_400(
    http: aiohttp.ClientSession,
) -> None:
    """A chunked body (no Content-Length) is cut off at the configured limit too."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    settings = EmulatorSettings(flat=True, max_request_bytes=10_000)
    async with (
        Emulator(settings) as emulator,
        http.post(gemini_url(emulator), data=chunks()) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["message"] == "Request payload size exceeds the limit: 10000 bytes."


async def test_too_many_input_images(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """More input images than the model accepts answers 400."""
    images = [png(32, 32, (i * 40, 0, 0)) for i in range(4)]
    status, answer = await generate(http, emu, body(user("merge these", *images)), model=NANO)
    assert status == 400
    assert "at most 3" in answer["error"]["message"]


async def test_malformed_json_is_invalid_argument(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """A body that is not JSON answers 400 INVALID_ARGUMENT."""
    status, raw, _ = await call(http, gemini_url(emu), b'{"contents": [')
    assert status == 400
    assert json.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"


async def test_undecodable_input_image_is_invalid_argument(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """An inline image that is not an image answers 400."""
    status, answer = await generate(http, emu, body(user("edit", b"not an image")))
    assert status == 400
    assert answer["error"]["message"].startswith("Unable to process input image.")


async def test_unknown_model_is_not_found(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """An unknown model answers 404 NOT_FOUND in Google's error shape."""
    status, answer = await generate(http, emu, body(user("a cat")), model="gemini-9-ultra")
    assert status == 404
    assert answer["error"]["status"] == "NOT_FOUND"
    assert answer["error"]["code"] == 404
    assert "models/gemini-9-ultra is not found" in answer["error"]["message"]


async def test_alias_and_v1_prefix(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """/v1/models/nano-banana-2 works and reports the canonical model version."""
    url = f"{emu.base_url}/v1/models/nano-banana-2:generateContent"
    status, raw, _ = await call(http, url, body(user("a cat")))
    assert status == 200
    assert json.loads(raw)["modelVersion"] == FLASH


async def test_models_list_and_get(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """GET /v1beta/models lists the catalogue but its shut-down models (Google no longer lists
    them); GET by alias returns that model."""
    async with http.get(f"{emu.base_url}/v1beta/models") as response:
        names = [m["name"] for m in (await response.json())["models"]]
    assert f"models/{FLASH}" in names and f"models/{NANO}" not in names
    async with http.get(f"{emu.base_url}/v1beta/models/nano-banana-pro") as response:
        model = await response.json()
    assert model["name"] == f"models/{PRO}"
    assert model["inputTokenLimit"] == 65_536
    async with http.get(f"{emu.base_url}/v1beta/models/nope") as response:
        assert response.status == 404


async def test_usage_metadata_follows_catalog(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """usageMetadata prices input images, output image and text by the catalogue's rules."""
    prompt = "make it grayscale"
    status, answer = await generate(
        http,
        emu,
        body(user(prompt, png(100, 100)), imageConfig={"imageSize": "2K"}),
    )
    assert status == 200, answer
    usage = answer["usageMetadata"]
    text_tokens = -(-len(prompt) // 4)
    assert usage["promptTokenCount"] == text_tokens + 1120
    assert usage["promptTokensDetails"] == [
        {"modality": "TEXT", "tokenCount": text_tokens},
        {"modality": "IMAGE", "tokenCount": 1120},
    ]
    # As real image answers report it: only IMAGE is listed; the rest of the count is text.
    assert usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": 1680}]
    text = parts_of(answer)[0]["text"]
    assert usage["candidatesTokenCount"] == 1680 + -(-len(text.encode()) // 4)
    assert usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )


@pytest.mark.parametrize("wrapped", [False, True])
async def test_count_tokens(http: aiohttp.ClientSession, emu: Emulator, wrapped: bool) -> None:
    """countTokens counts text and tiled 2.5 image tokens, plain or wrapped request."""
    contents = [user("abcdefgh", png(1600, 900))]  # 2 text tokens; 3x2 tiles of 258
    payload: JSON = (
        {"generateContentRequest": {"model": f"models/{NANO}", "contents": contents}}
        if wrapped
        else {"contents": contents}
    )
    status, raw, _ = await call(http, gemini_url(emu, NANO, "countTokens"), payload)
    assert status == 200
    assert json.loads(raw) == {
        "totalTokens": 2 + 6 * 258,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 2},
            {"modality": "IMAGE", "tokenCount": 6 * 258},
        ],
    }


async def test_auth_missing_wrong_and_right_key(http: aiohttp.ClientSession) -> None:
    """With a key: none -> 401, wrong -> 403 (key not echoed), header or ?key= -> 200."""
    async with Emulator(EmulatorSettings(flat=True, api_key=KEY)) as emulator:
        url = gemini_url(emulator)
        payload = body(user("a cat"))
        status, raw, _ = await call(http, url, payload)
        assert status == 401
        assert json.loads(raw)["error"]["status"] == "UNAUTHENTICATED"
        status, raw, _ = await call(http, url, payload, {"x-goog-api-key": "wrong-secret"})
        assert status == 403
        assert json.loads(raw)["error"]["status"] == "PERMISSION_DENIED"
        assert b"wrong-secret" not in raw and KEY.encode() not in raw
        assert (await call(http, url, payload, {"x-goog-api-key": KEY}))[0] == 200
        assert (await call(http, f"{url}?key={KEY}", payload))[0] == 200
        assert emulator.stats()["requests"]["generateContent"] == 4


async def test_stream_order_text_then_one_image_then_finish(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """SSE: thought (includeThoughts), text pieces (first signed), one image event, a finish
    chunk; no [DONE]."""
    url = gemini_url(emu, method="streamGenerateContent")
    thinking = {"thinkingConfig": {"includeThoughts": True}}
    status, raw, headers = await call(http, url, body(user("a red apple"), **thinking))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert raw.endswith(b"\r\n\r\n") and b"[DONE]" not in raw
    chunks = [json.loads(p) for p in sse_payloads(raw)]
    kinds = []
    for chunk in chunks[:-1]:
        (part,) = chunk["candidates"][0]["content"]["parts"]
        kinds.append(
            "thought" if part.get("thought") else "image" if "inlineData" in part else "text"
        )
        assert "finishReason" not in chunk["candidates"][0]
    thoughts = len(kinds) - len("".join("t" if k == "thought" else "x" for k in kinds).lstrip("t"))
    assert thoughts >= 1  # the summary (and, with includeThoughts, an interim thought image)
    assert kinds[-1] == "image" and kinds.count("image") == 1
    assert kinds[thoughts:-1] == ["text"] * (len(kinds) - thoughts - 1)
    assert len(kinds) - thoughts - 1 >= 2
    texts = [c["candidates"][0]["content"]["parts"][0] for c in chunks[thoughts:-2]]
    assert "thoughtSignature" in texts[0] and all("thoughtSignature" not in t for t in texts[1:])
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    plain = await generate(http, emu, body(user("a red apple"), **thinking))
    assert last["usageMetadata"] == plain[1]["usageMetadata"]
    streamed_text = "".join(t["text"] for t in texts)
    answer_text = next(
        p["text"] for p in parts_of(plain[1]) if "text" in p and not p.get("thought")
    )
    assert streamed_text == answer_text


async def test_stream_events_ready_together_share_one_write(
    http: aiohttp.ClientSession, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thought goes out alone; the text pieces, the image and the finish chunk, ready at
    the same moment after the render, go out in one write; the client reads every event."""
    writes: list[int] = []
    write = web.StreamResponse.write

    async def counting(self: web.StreamResponse, data: bytes) -> None:
        writes.append(data.count(b"data: "))
        await write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", counting)
    url = gemini_url(emu, method="streamGenerateContent")
    thinking = {"thinkingConfig": {"includeThoughts": True}}
    status, raw, _ = await call(http, url, body(user("a red apple"), **thinking))
    assert status == 200
    assert writes[0] == 1 and len(writes) == 2
    assert sum(writes) == len(list(sse_payloads(raw))) >= 5


async def test_streamed_signature_on_trailing_empty_part(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """sig_last puts the text signature on a trailing empty part; that history is accepted."""
    url = gemini_url(emu, method="streamGenerateContent")
    _, raw, _ = await call(http, url, body(user("a red apple")), {"x-emulator-fault": "sig_last"})
    chunks = [json.loads(p) for p in sse_payloads(raw)]
    merged: list[JSON] = []
    for chunk in chunks:
        merged += chunk["candidates"][0].get("content", {}).get("parts", [])
    empty = [p for p in merged if p.get("text") == "" and "thoughtSignature" in p]
    assert len(empty) == 1
    text_parts = [p for p in merged if p.get("text") and not p.get("thought")]
    assert all("thoughtSignature" not in p for p in text_parts)
    history = [user("a red apple"), {"role": "model", "parts": merged}]
    status, answer = await generate(http, emu, body(*history, user("make it grayscale")))
    assert status == 200, answer


async def test_stream_chunks_sent_back_as_separate_contents_are_accepted(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Each stream chunk kept as its own model Content (as the SDK's chat does) validates."""
    url = gemini_url(emu, method="streamGenerateContent")
    _, raw, _ = await call(http, url, body(user("a red apple")))
    contents = [user("a red apple")]
    contents += [json.loads(p)["candidates"][0]["content"] for p in sse_payloads(raw)]
    status, answer = await generate(http, emu, body(*contents, user("make it grayscale")))
    assert status == 200, answer


async def test_stream_without_alt_sse_is_a_json_array(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """streamGenerateContent without alt=sse answers one JSON array of the chunks."""
    url = f"{emu.base_url}/v1beta/models/{FLASH}:streamGenerateContent"
    status, raw, _ = await call(http, url, body(user("a red apple")))
    assert status == 200
    chunks = json.loads(raw)
    assert isinstance(chunks, list) and len(chunks) >= 4
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_include_thoughts_adds_unsigned_thought_image(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """includeThoughts adds an interim thought image that carries no signature."""
    answer = await _turn1(http, emu, "a cat", thinkingConfig={"includeThoughts": True})
    thought_images = [p for p in parts_of(answer) if p.get("thought") and "inlineData" in p]
    assert len(thought_images) == 1
    assert "thoughtSignature" not in thought_images[0]
    assert open_image(image_bytes(answer)).size == (1024, 1024)


async def test_image_only_modality(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """responseModalities ["IMAGE"] answers no visible text; the image is still signed."""
    answer = await _turn1(http, emu, "a cat", responseModalities=["IMAGE"])
    visible = [p for p in parts_of(answer) if not p.get("thought")]
    assert len(visible) == 1 and "inlineData" in visible[0] and visible[0]["thoughtSignature"]


async def test_concurrent_identical_requests_render_once(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Twenty concurrent identical requests cause one render and identical answers."""
    payload = body(user("a castle on a cliff"))
    results = await asyncio.gather(*(call(http, gemini_url(emu), payload) for _ in range(20)))
    assert {r[0] for r in results} == {200}
    assert len({r[1] for r in results}) == 1
    assert emu.stats()["render"]["renders"] == 1


async def test_stats_count_rejected_requests_and_reset(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Stats count every request that reached a handler, errors included; reset zeroes them."""
    await call(http, gemini_url(emu), b"not json")
    await generate(http, emu, body(user("a cat")), model="unknown-model")
    await generate(http, emu, body(user("a cat")))
    await call(http, gemini_url(emu, method="countTokens"), body(user("a cat")))
    async with http.get(f"{emu.base_url}/emulator/stats") as response:
        stats = await response.json()
    assert stats["requests"]["generateContent"] == 3
    assert stats["requests"]["countTokens"] == 1
    # The process's CPU so far grows between two readings; everything else is the same.
    now = emu.stats()
    assert 0 < stats.pop("cpu_s") <= now.pop("cpu_s")
    assert stats == now
    async with http.post(f"{emu.base_url}/emulator/reset") as response:
        assert response.status == 200
    assert emu.stats()["requests"]["generateContent"] == 0


async def test_recorded_requests_omit_the_key(http: aiohttp.ClientSession) -> None:
    """record_requests keeps endpoint, model and body, but never the API key."""
    settings = EmulatorSettings(flat=True, api_key=KEY, record_requests=True)
    async with Emulator(settings) as emulator:
        payload = body(user("a cat"))
        await call(http, f"{gemini_url(emulator)}?key={KEY}", payload)
        await call(http, gemini_url(emulator), payload, {"x-goog-api-key": KEY})
        (first, second) = emulator.requests
    assert first.endpoint == second.endpoint == "generateContent"
    assert first.model == FLASH
    assert json.loads(second.body) == payload
    for recorded in (first, second):
        assert KEY not in repr(recorded.headers) and KEY not in repr(recorded.query)
    assert KEY not in repr(settings)


async def test_unknown_path_is_json_404(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """Unknown paths answer JSON errors, not aiohttp's text pages."""
    async with http.get(f"{emu.base_url}/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == 404


async def test_grain_images_weigh_like_real_ones(http: aiohttp.ClientSession) -> None:
    """Default (grain) 1K PNGs weigh 1-2 MB; sending one back (parsed off-loop) still edits."""
    async with Emulator(EmulatorSettings()) as emulator:
        status, first = await generate(http, emulator, body(user("a red apple")))
        assert status == 200, first
        image = image_bytes(first)
        assert 1_000_000 <= len(image) <= 2_000_000
        history = [user("a red apple"), model_content(first), user("make it grayscale")]
        status, second = await generate(http, emulator, body(*history))
        assert status == 200, second
        assert is_grayscale(open_image(image_bytes(second)))


async def test_engine_options_reach_the_embedded_emulator() -> None:
    """The engine's EmulatorOptions (flat, seed, faults) configure the emulator it embeds."""
    options = EmulatorOptions(flat=True, seed=5, faults="503")
    config = EngineConfig(emulator=options, retry=RetryPolicy(max_attempts=1))
    async with Engine(config) as eng:
        session = await eng.create_session()
        with pytest.raises(ServerError) as caught:
            await session.send("a cat")
        assert caught.value.status == 503


async def test_signatures_depend_on_the_seed(http: aiohttp.ClientSession) -> None:
    """A server with another seed rejects the first server's signatures (and draws otherwise)."""
    async with Emulator(EmulatorSettings(flat=True, seed=1)) as one:
        history = await _history(http, one)
    async with Emulator(EmulatorSettings(flat=True, seed=2)) as two:
        status, answer = await generate(http, two, body(*history, user("make it grayscale")))
        assert status == 400
        # The first foreign signature in part order (the text's) is the one reported.
        assert answer["error"]["message"] == GOOGLE_MESSAGE.format(kind="Text", c=2, p=1)
        status, other = await generate(http, two, body(history[0]))
        assert image_bytes(other) != base64.b64decode(history[1]["parts"][1]["inlineData"]["data"])


async def test_latency_does_not_block_the_server(http: aiohttp.ClientSession) -> None:
    """While a generation sleeps its latency, the server answers other requests."""
    async with Emulator(EmulatorSettings(flat=True, latency=60)) as emulator:
        slow = asyncio.ensure_future(generate(http, emulator, body(user("a cat"))))
        for _ in range(100):
            if emulator.stats()["requests"]["generateContent"]:
                break
            await asyncio.sleep(0.01)
        async with http.get(f"{emulator.base_url}/emulator/stats") as response:
            stats = await response.json()
        assert stats["requests"]["generateContent"] == 1
        assert not slow.done()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow


@given(st.text(max_size=200), st.integers(min_value=1, max_value=8))
def test_stream_text_split_is_lossless(text: str, pieces: int) -> None:
    """Splitting answer text into stream pieces loses nothing and makes at most N pieces."""
    out = _split(text, pieces) if text else []
    assert "".join(out) == text
    assert len(out) <= pieces


async def test_calls_in_progress_hold_their_memory_under_the_bound(
    http: aiohttp.ClientSession,
) -> None:
    """With room for two calls (their requests and images), six concurrent distinct requests,
    plain and streamed, all get their image; the most held at once stays within the bound and
    the rest waited for room instead of piling up (6,000 concurrent grain edits once took the
    emulator to 17 GB and the kernel killed it)."""
    emu = Emulator(EmulatorSettings(flat=True, latency=0.1, held_bytes=300_000))
    await emu.start()
    try:
        prompts = [f"a red cube number {i}" for i in range(6)]
        plain = [generate(http, emu, body(user(p))) for p in prompts[:3]]
        streamed = [
            call(http, gemini_url(emu, method="streamGenerateContent"), body(user(p)))
            for p in prompts[3:]
        ]
        both = asyncio.gather(asyncio.gather(*plain), asyncio.gather(*streamed))
        plain_answers, streamed_answers = await both
        stats = emu.stats()["render"]
    finally:
        await emu.aclose()
    for status, answer in plain_answers:
        assert status == 200 and any("inlineData" in p for p in parts_of(answer))
    for status, raw, _ in streamed_answers:
        assert status == 200 and b'"inlineData"' in raw
    assert 0 < stats["held_bytes_peak"] <= 300_000
    assert stats["held_waits"] > 0


_IMAGE = bytes(range(256)) * 100  # 25.6 KB: base64 long enough to be cut out
_TEXT = base64.b64encode(_IMAGE).decode()
_OTHER = base64.b64encode(_IMAGE[::-1] + b"12").decode()  # another image, unpadded
_REQUEST_PARTS: dict[str, JSON] = {
    "image": {"inlineData": {"mimeType": "image/png", "data": _TEXT}},
    "signed image": {
        "inlineData": {"mimeType": "image/png", "data": _OTHER},
        "thoughtSignature": "c2ln",
    },
    "escaped slashes": {"inlineData": {"mimeType": "image/png", "data": _TEXT.replace("/", "\\/")}},
    "url-safe": {
        "inlineData": {"mimeType": "image/png", "data": _TEXT.replace("+", "-").replace("/", "_")}
    },
    "snake case": {"inline_data": {"mime_type": "image/png", "data": _OTHER[:-4]}},
    "unknown field": {"inlineData": {"mimeType": "image/png", "data": _TEXT}, "extra": 1},
    "function response": {"functionResponse": {"name": "f", "response": {"data": _TEXT}}},
    "text": {"text": 'say "data":"AAAA" twice'},
    "not base64": {"inlineData": {"mimeType": "image/png", "data": "!" * 20_000}},
}


def _read_whole(raw: bytes) -> object:
    from engine.emulator._gemini import _contents, _decode_request, _system

    try:
        incoming = _decode_request(raw)
        return _seen(incoming, _contents(incoming.contents), _system(incoming.systemInstruction))
    except Exception as exc:
        return type(exc), str(exc)


def _seen(incoming: Any, contents: object, system: object) -> object:
    """What a request means to the emulator (the raw parts aside)."""
    return contents, system, incoming.generationConfig, incoming.tools, incoming.safetySettings


@settings(max_examples=300, deadline=None)
@example(contents=[["image", "signed image"]], system=None, config_data=False)
@given(
    contents=st.lists(
        st.lists(st.sampled_from(sorted(_REQUEST_PARTS)), min_size=1, max_size=3),
        min_size=1,
        max_size=3,
    ),
    system=st.none() | st.sampled_from(sorted(_REQUEST_PARTS)),
    config_data=st.booleans(),
)
def test_requests_read_with_images_cut_out_equal_the_whole_parse(
    contents: list[list[str]], system: str | None, config_data: bool
) -> None:
    """Cutting history images out before parsing gives exactly the whole parse: the same
    contents, system instruction and config, or the same error."""
    from engine.emulator._gemini import _read_request

    request: JSON = {
        "contents": [
            {"role": "user" if i % 2 == 0 else "model", "parts": [_REQUEST_PARTS[n] for n in c]}
            for i, c in enumerate(contents)
        ]
    }
    if system is not None:
        request["systemInstruction"] = {"parts": [_REQUEST_PARTS[system]]}
    if config_data:  # the key pattern outside any part
        request["generationConfig"] = {"data": _TEXT}
    raw = json.dumps(request, separators=(",", ":")).encode()  # as clients send it
    try:
        cut: object = _seen(*_read_request(raw))
    except Exception as exc:
        cut = type(exc), str(exc)
    assert cut == _read_whole(raw)


def test_a_plain_history_is_parsed_without_its_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual request (images as servers and nanoedit send them) is parsed once, from a
    document without the base64, and its images are the bytes sent."""
    import engine.emulator._gemini as gemini

    parsed: list[int] = []
    decode = gemini._decode_request

    def recording(raw: bytes) -> object:
        parsed.append(len(raw))
        return decode(raw)

    monkeypatch.setattr(gemini, "_decode_request", recording)
    request = {"contents": [{"role": "user", "parts": [_REQUEST_PARTS["image"], {"text": "t"}]}]}
    raw = json.dumps(request, separators=(",", ":")).encode()  # as clients send it
    _, contents, _ = gemini._read_request(raw)
    assert len(parsed) == 1 and parsed[0] < 1000 < len(raw)
    assert contents[0].parts[0].inline_data is not None
    assert contents[0].parts[0].inline_data.data == _IMAGE
