"""The emulator's OpenAI-compatible endpoints on the wire: chat completions with images,
images generations and edits (plain and streamed), size mapping, auth and errors."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from engine.emulator import Emulator, EmulatorSettings
from engine.emulator._generate import InputImage
from engine.emulator._openai import openai_size
from sessions import Blob, resolve_model
from tests._emulator_fixtures import (
    FLASH,
    JSON,
    KEY,
    NANO,
    PRO,
    b64,
    call,
    is_grayscale,
    open_image,
    png,
    red_pixels,
    sse_payloads,
)

# isort: split
# pytest finds these fixtures (named `emu` and `http`) through this import.
from tests._emulator_fixtures import emu_fixture, http_fixture  # noqa: F401


def _data_url(data: bytes) -> str:
    return f"data:image/png;base64,{b64(data)}"


def _image_from_url(url: str) -> bytes:
    head, _, data = url.partition(",")
    assert head.startswith("data:image/png;base64")
    return base64.b64decode(data)


def _text(text: str) -> JSON:
    return {"type": "text", "text": text}


def _image(data: bytes) -> JSON:
    return {"type": "image_url", "image_url": {"url": _data_url(data)}}


async def _chat(
    http: aiohttp.ClientSession, emu: Emulator, payload: JSON, headers: dict[str, str] | None = None
) -> tuple[int, JSON]:
    status, raw, _ = await call(http, f"{emu.base_url}/v1/chat/completions", payload, headers)
    decoded: JSON = json.loads(raw)
    return status, decoded


def _form(fields: dict[str, str], images: list[bytes], name: str = "image") -> aiohttp.FormData:
    form = aiohttp.FormData()
    for key, value in fields.items():
        # A content type makes the form multipart even without files (any aiohttp version).
        form.add_field(key, value, content_type="text/plain")
    for index, data in enumerate(images):
        form.add_field(name, data, filename=f"in{index}.png", content_type="image/png")
    return form


# --- chat completions ---------------------------------------------------------------------


async def test_chat_returns_text_and_image(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """A chat completion answers text in content and a PNG data URL in message.images."""
    status, answer = await _chat(
        http, emu, {"model": FLASH, "messages": [{"role": "user", "content": "a red apple"}]}
    )
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and answer["model"] == FLASH
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    (image,) = choice["message"]["images"]
    assert image["type"] == "image_url"
    assert open_image(_image_from_url(image["image_url"]["url"])).size == (1024, 1024)
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_edits_the_image_from_history(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """An assistant image in the history is the base of the next edit."""
    first_messages: list[JSON] = [{"role": "user", "content": "a red apple on a blue table"}]
    _, first = await _chat(http, emu, {"model": FLASH, "messages": first_messages})
    assistant = first["choices"][0]["message"]
    messages = [
        *first_messages,
        {"role": "assistant", "content": assistant["content"], "images": assistant["images"]},
        {"role": "user", "content": [_text("make it grayscale")]},
    ]
    status, answer = await _chat(http, emu, {"model": "nano-banana-2", "messages": messages})
    assert status == 200, answer
    url = answer["choices"][0]["message"]["images"][0]["image_url"]["url"]
    assert is_grayscale(open_image(_image_from_url(url)))


async def test_chat_user_image_and_image_config(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """A user image is edited; image_config sets the output size by the catalogue."""
    payload = {
        "model": f"google/{PRO}",
        "messages": [
            {"role": "system", "content": "You edit images."},
            {
                "role": "user",
                "content": [_text("add a red circle on the left"), _image(png(64, 64))],
            },
        ],
        "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
    }
    status, answer = await _chat(http, emu, payload)
    assert status == 200, answer
    url = answer["choices"][0]["message"]["images"][0]["image_url"]["url"]
    image = open_image(_image_from_url(url))
    assert image.size == (2752, 1536)
    left, right = red_pixels(image)
    assert left > right


async def test_chat_stream_chunks_then_done(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """stream: role chunk, content pieces, one images delta, finish with usage, then [DONE]."""
    payload = {
        "model": FLASH,
        "stream": True,
        "messages": [{"role": "user", "content": "a red apple"}],
    }
    status, raw, headers = await call(http, f"{emu.base_url}/v1/chat/completions", payload)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_payloads(raw, b"\n\n")
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    texts = [d["content"] for d in deltas[1:] if d.get("content")]
    assert len(texts) >= 2
    image_deltas = [d for d in deltas if "images" in d]
    assert len(image_deltas) == 1
    assert deltas.index(image_deltas[0]) > max(i for i, d in enumerate(deltas) if d.get("content"))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]
    _, plain = await _chat(http, emu, {k: v for k, v in payload.items() if k != "stream"})
    assert "".join(texts) == plain["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("spec", "finish"), [("block", "content_filter"), ("no_image", "stop")])
async def test_chat_content_outcomes(
    http: aiohttp.ClientSession, emu: Emulator, spec: str, finish: str
) -> None:
    """Blocked chats finish with content_filter, no_image with stop; neither has images."""
    payload = {"model": FLASH, "messages": [{"role": "user", "content": "a cat"}]}
    status, answer = await _chat(http, emu, payload, {"x-emulator-fault": spec})
    assert status == 200
    assert answer["choices"][0]["finish_reason"] == finish
    assert "images" not in answer["choices"][0]["message"]


async def test_chat_rejects_remote_image_urls(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """Only data: URLs are accepted (the emulator never fetches)."""
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    payload = {"model": FLASH, "messages": [{"role": "user", "content": [remote]}]}
    status, answer = await _chat(http, emu, payload)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"


async def test_chat_unknown_model_and_missing_model(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """An unknown model answers 404 model_not_found; no model at all answers 400."""
    messages = [{"role": "user", "content": "a cat"}]
    status, answer = await _chat(http, emu, {"model": "gpt-9", "messages": messages})
    assert status == 404 and answer["error"]["code"] == "model_not_found"
    status, answer = await _chat(http, emu, {"messages": messages})
    assert status == 400


async def test_openai_auth(http: aiohttp.ClientSession) -> None:
    """With a key: none -> 401, wrong -> 403 (not echoed), Bearer or bare key -> 200."""
    payload = {"model": FLASH, "messages": [{"role": "user", "content": "a cat"}]}
    async with Emulator(EmulatorSettings(flat=True, api_key=KEY)) as emulator:
        status, answer = await _chat(http, emulator, payload)
        assert status == 401 and set(answer["error"]) >= {"message", "type", "code"}
        status, answer = await _chat(http, emulator, payload, {"Authorization": "Bearer nope-x"})
        assert status == 403 and "nope-x" not in json.dumps(answer)
        assert (await _chat(http, emulator, payload, {"Authorization": f"Bearer {KEY}"}))[0] == 200
        assert (await _chat(http, emulator, payload, {"Authorization": KEY}))[0] == 200
        assert emulator.stats()["requests"]["chat.completions"] == 4


async def test_models_list_in_openai_shape(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """GET /v1/models with a Bearer key lists models in OpenAI's shape."""
    async with http.get(
        f"{emu.base_url}/v1/models", headers={"Authorization": "Bearer x"}
    ) as response:
        listing = await response.json()
    assert listing["object"] == "list"
    assert {FLASH, "nano-banana-2"} <= {m["id"] for m in listing["data"]}


# --- images -------------------------------------------------------------------------------


async def test_generations_n_size_and_formats(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """n=2 gives two different images at the mapped size; revised_prompt and usage present."""
    url = f"{emu.base_url}/v1/images/generations"
    status, raw, _ = await call(http, url, {"prompt": "a cat", "n": 2, "size": "1536x1024"})
    assert status == 200
    answer = json.loads(raw)
    first, second = (base64.b64decode(d["b64_json"]) for d in answer["data"])
    assert first != second
    assert open_image(first).size == (1264, 848)
    assert answer["data"][0]["revised_prompt"] == "a cat"
    assert answer["usage"]["output_tokens"] == 2 * 1120
    assert answer["size"] == "1264x848"


async def test_generations_url_and_jpeg(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """response_format=url answers a data URL; output_format=jpeg a JPEG."""
    url = f"{emu.base_url}/v1/images/generations"
    payload = {"prompt": "a cat", "response_format": "url", "output_format": "jpeg"}
    status, raw, _ = await call(http, url, payload)
    assert status == 200
    data_url = json.loads(raw)["data"][0]["url"]
    assert data_url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(data_url.partition(",")[2])[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "payload",
    [
        {"size": "1024x1024"},
        {"prompt": ""},
        {"prompt": "a cat", "n": 0},
        {"prompt": "a cat", "size": "huge"},
        {"prompt": "a cat", "partial_images": 4},
        {"prompt": "a cat", "model": NANO, "size": "2K"},
    ],
)
async def test_generations_invalid_parameters(
    http: aiohttp.ClientSession, emu: Emulator, payload: JSON
) -> None:
    """Missing prompt, bad n, size or partial_images answer 400 in OpenAI's shape."""
    status, raw, _ = await call(http, f"{emu.base_url}/v1/images/generations", payload)
    assert status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


async def test_generations_stream_partial_images(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """stream + partial_images=2: two partial_image events (index 0, 1), then completed."""
    url = f"{emu.base_url}/v1/images/generations"
    payload = {"prompt": "a cat", "stream": True, "partial_images": 2}
    status, raw, _ = await call(http, url, payload)
    assert status == 200
    names = [line for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names == [
        b"event: image_generation.partial_image",
        b"event: image_generation.partial_image",
        b"event: image_generation.completed",
    ]
    events = [json.loads(p) for p in sse_payloads(raw, b"\n\n")]
    assert [e.get("partial_image_index") for e in events] == [0, 1, None]
    final = base64.b64decode(events[-1]["b64_json"])
    assert open_image(final).size == (1024, 1024)
    assert events[-1]["usage"]["output_tokens"] == 1120
    partials = [base64.b64decode(e["b64_json"]) for e in events[:2]]
    assert partials[0] != partials[1] != final


async def test_edits_multipart_applies_prompt(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """images/edits takes a multipart image and prompt; the edit follows the prompt."""
    form = _form({"prompt": "make it grayscale", "size": "auto"}, [png(300, 200, (200, 30, 30))])
    async with http.post(f"{emu.base_url}/v1/images/edits", data=form) as response:
        assert response.status == 200
        answer = await response.json()
    edited = open_image(base64.b64decode(answer["data"][0]["b64_json"]))
    assert is_grayscale(edited)
    assert edited.size == (1264, 848)  # auto: 3:2 like the input, at 1K


async def test_edits_several_images_and_mask(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """image[] with several files and a mask is accepted; input tokens count every image."""
    form = _form({"prompt": "add a red circle on the left"}, [png(64, 64), png(32, 32)], "image[]")
    form.add_field("mask", png(64, 64), filename="mask.png", content_type="image/png")
    async with http.post(f"{emu.base_url}/v1/images/edits", data=form) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["usage"]["input_tokens_details"]["image_tokens"] == 2 * 1120


async def test_edits_stream_uses_image_edit_events(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Streamed edits emit image_edit.partial_image and image_edit.completed."""
    form = _form(
        {"prompt": "make it sepia", "stream": "true", "partial_images": "1"}, [png(64, 64)]
    )
    async with http.post(f"{emu.base_url}/v1/images/edits", data=form) as response:
        raw = await response.read()
    events = [json.loads(p) for p in sse_payloads(raw, b"\n\n")]
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.completed"]


async def test_edits_without_image_is_400(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """An edit without an image file answers 400 missing_required_parameter."""
    async with http.post(f"{emu.base_url}/v1/images/edits", data=_form({"prompt": "x"}, [])) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "missing_required_parameter"


async def test_edits_reject_non_images(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """A file that is not an image answers 400 invalid_image_format."""
    form = aiohttp.FormData()
    form.add_field("prompt", "make it grayscale")
    form.add_field("image", b"%PDF-1.4", filename="x.pdf", content_type="application/pdf")
    async with http.post(f"{emu.base_url}/v1/images/edits", data=form) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_image_format"


async def test_image_safety_on_images_endpoint(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """block / image_safety on images endpoints answer 400 moderation_blocked."""
    url = f"{emu.base_url}/v1/images/generations"
    status, raw, _ = await call(http, url, {"prompt": "a cat"}, {"x-emulator-fault": "block"})
    assert status == 400
    assert json.loads(raw)["error"]["code"] == "moderation_blocked"


# --- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (FLASH, "1024x1024", ("1:1", "1K")),
        (FLASH, "1536x1024", ("3:2", "1K")),
        (FLASH, "1024x1536", ("2:3", "1K")),
        (FLASH, "1792x1024", ("16:9", "1K")),
        (FLASH, "256x256", ("1:1", "512")),
        (FLASH, "2048x2048", ("1:1", "2K")),
        (FLASH, "4096x2304", ("16:9", "4K")),
        (FLASH, "auto", ("1:1", None)),
        (FLASH, "0.5K", ("1:1", "512")),
        (PRO, "256x256", ("1:1", "1K")),
        (NANO, "1536x1024", ("3:2", None)),
        (NANO, "1K", ("1:1", None)),
    ],
)
def test_openai_size_mapping(model: str, size: str, expected: tuple[str, str | None]) -> None:
    """OpenAI sizes map to the nearest catalogue ratio and image size."""
    assert openai_size(resolve_model(model), size, None) == expected


def test_openai_auto_size_follows_input_image() -> None:
    """'auto' takes the ratio of the image being edited."""
    base = InputImage(
        blob=Blob(mime_type="image/png", data=b""), sha256=b"", width=900, height=1600
    )
    assert openai_size(resolve_model(FLASH), "auto", base) == ("9:16", None)


async def test_raw_multipart_as_curl_sends_it(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """A hand-framed multipart body (curl -F): fields and the exact image bytes arrive."""
    image = png(64, 64)
    raw = (
        b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nmake it grayscale\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="image[]"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--xyz--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    async with http.post(f"{emu.base_url}/v1/images/edits", data=raw, headers=headers) as r:
        assert r.status == 200, await r.text()


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"--xyz\r\nno headers end", "multipart/form-data; boundary=xyz"),
        (b'{"prompt": "x"}', "application/json"),
        (b"--abc\r\n\r\n--abc--", "multipart/form-data"),
    ],
    ids=["truncated", "not-multipart", "no-boundary"],
)
async def test_malformed_multipart_is_a_400(
    http: aiohttp.ClientSession, emu: Emulator, raw: bytes, content_type: str
) -> None:
    """A body aiohttp's reader cannot split is a 400 with OpenAI's error shape."""
    headers = {"Content-Type": content_type}
    async with http.post(f"{emu.base_url}/v1/images/edits", data=raw, headers=headers) as r:
        assert r.status == 400
        assert "error" in await r.json()
