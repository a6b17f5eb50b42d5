"""GeminiProvider against a scripted loopback server: encoding, streaming, checks, failures."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
import structlog

from engine import (
    ContentBlocked,
    EventTooLarge,
    InvalidRequest,
    MalformedResponse,
    RateLimited,
    Secret,
    ServerError,
    StreamBroken,
    Timeouts,
    Unauthorized,
)
from engine.providers import GeminiProvider, GenerateRequest, ProviderResult
from engine.wire import ImageDelta, PartialImageDelta, TextDelta, Transport
from sessions import (
    Content,
    Part,
    SessionSettings,
    Usage,
    WireError,
    decode_content,
    decode_contents,
    decode_part,
)
from tests._loopback import LoopbackServer, Reply, sse_body

KEY = "AIzaSy-provider-test-key-42"
MODEL = "gemini-3.1-flash-image"
SIG1 = base64.b64encode(b"\x01signature-of-text\xff").decode()
SIG2 = base64.b64encode(b"\x02signature-of-image\xfe").decode()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PNG_B64 = base64.b64encode(PNG).decode()
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}
USAGE = {
    "promptTokenCount": 1370,
    "candidatesTokenCount": 1130,
    "thoughtsTokenCount": 212,
    "totalTokenCount": 2712,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 250},
        {"modality": "IMAGE", "tokenCount": 1120},
    ],
    "candidatesTokensDetails": [
        {"modality": "IMAGE", "tokenCount": 1120},
        {"modality": "TEXT", "tokenCount": 10},
    ],
}
EXPECTED_USAGE = Usage(
    prompt_tokens=1370,
    output_tokens=1130,
    thoughts_tokens=212,
    total_tokens=2712,
    prompt_image_tokens=1120,
    prompt_text_tokens=250,
    output_image_tokens=1120,
    output_text_tokens=10,
)
IMAGE_PART = {"inlineData": {"mimeType": "image/png", "data": PNG_B64}, "thoughtSignature": SIG2}
ANSWER_PARTS: list[dict[str, Any]] = [
    {"text": "Let me think. ✓", "thought": True},
    {"text": "Here is the image.", "thoughtSignature": SIG1},
    IMAGE_PART,
]


def response(
    parts: list[dict[str, Any]] | None,
    *,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """One GenerateContentResponse (or stream chunk) as JSON builtins."""
    candidate: dict[str, Any] = {}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate], **top}
    if usage is not None:
        out["usageMetadata"] = usage
    return out


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


WHOLE = response(
    ANSWER_PARTS,
    finish="STOP",
    usage=USAGE,
    modelVersion="gemini-3.1-flash-image-001",
    responseId="resp-1",
)
STREAM_CHUNKS = [
    response(
        [{"text": "Let me ", "thought": True}],
        usage={"promptTokenCount": 1370},
        modelVersion="gemini-3.1-flash-image-001",
        responseId="resp-1",
    ),
    response([{"text": "think. ✓", "thought": True}]),
    response([{"text": "Here is "}]),
    response([{"text": "the image."}]),
    response([{"text": "", "thoughtSignature": SIG1}]),
    response([IMAGE_PART], finish="STOP", usage=USAGE, responseId="resp-1"),
]
STREAM_BODY = sse_body(*[dumps(c) for c in STREAM_CHUNKS])
EXPECTED = decode_content(dumps({"role": "model", "parts": ANSWER_PARTS}))


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as srv:
        yield srv


@pytest_asyncio.fixture
async def transport() -> AsyncIterator[Transport]:
    timeouts = Timeouts(connect=1.0, first_byte=5.0, idle=5.0, total=30.0)
    async with Transport(timeouts=timeouts, max_connections=4) as tr:
        yield tr


@pytest.fixture
def provider(server: LoopbackServer, transport: Transport) -> GeminiProvider:
    return GeminiProvider(transport, base_url=server.url + "/", api_key=Secret(KEY))


async def generate(
    provider: GeminiProvider, *, stream: bool, images_only: bool = False
) -> tuple[ProviderResult, list[TextDelta | ImageDelta]]:
    deltas: list[TextDelta | ImageDelta] = []

    async def on_delta(delta: TextDelta | ImageDelta | PartialImageDelta) -> None:
        assert not isinstance(delta, PartialImageDelta)  # Gemini has no previews
        deltas.append(delta)

    result = await provider.generate(
        MODEL, b'{"contents": []}', stream=stream, on_delta=on_delta, images_only=images_only
    )
    return result, deltas


def _conns(transport: Transport) -> tuple[int, int]:
    connector = transport.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return sum(len(v) for v in connector._conns.values()), len(connector._acquired)


# --- encode ------------------------------------------------------------------------------------


HISTORY_JSON = dumps(
    [
        {
            "role": "user",
            "parts": [
                {"text": "A ceramic mug"},
                {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"text": "thinking", "thought": True},
                {"text": "Here it is.", "thoughtSignature": SIG1},
                {
                    "inlineData": {"mimeType": "image/png", "data": PNG_B64},
                    "thoughtSignature": SIG2,
                },
            ],
        },
        {"role": "user", "parts": [{"text": "Add a eucalyptus sprig. Keep everything else."}]},
    ]
)


def test_encode_sends_the_history_verbatim_with_signatures(provider: GeminiProvider) -> None:
    """A 3-content history goes out with every model part and thoughtSignature byte for byte."""
    body = provider.encode(
        GenerateRequest(
            model=MODEL, contents=decode_contents(HISTORY_JSON), settings=SessionSettings()
        )
    )
    assert json.loads(body)["contents"] == json.loads(HISTORY_JSON)
    assert f'"thoughtSignature":"{SIG1}"'.encode() in body
    assert f'"thoughtSignature":"{SIG2}"'.encode() in body
    assert json.loads(body).keys() == {"contents"}


UNSIGNED = [
    Content(role="user", parts=[Part(text="a mug")]),
    Content(role="model", parts=[Part(text="Here it is.")]),  # a real Gemini text turn, unsigned
    Content(role="user", parts=[Part(text="add a sprig")]),
]


@pytest.mark.parametrize("foreign", [frozenset(), frozenset({1})])
def test_the_placeholder_signature_only_for_turns_of_another_api(
    provider: GeminiProvider, foreign: frozenset[int]
) -> None:
    """A Gemini answer without a signature goes back as it came; only a model turn that came
    through another API (request.foreign) gets Google's placeholder -- encode and the lazy body
    alike."""
    request = GenerateRequest(
        model=MODEL, contents=UNSIGNED, settings=SessionSettings(), signatures=True, foreign=foreign
    )
    body = provider.encode(request)
    assert b"".join(provider.encode_body(request).pieces()) == body
    placeholder = base64.b64encode(b"skip_thought_signature_validator")
    assert (placeholder in body) == bool(foreign)
    sent = json.loads(body)["contents"][1]["parts"][0]
    assert ("thoughtSignature" in sent) == bool(foreign)


def test_encode_carries_the_session_settings(provider: GeminiProvider) -> None:
    """Settings become systemInstruction, tools, toolConfig, safetySettings, generationConfig."""
    settings = SessionSettings(
        image_config={"aspectRatio": "16:9", "imageSize": "2K"},
        response_modalities=["IMAGE"],
        system_instruction=Content(parts=[Part(text="Be precise.")]),
        tools=[{"google_search": {}}],
        tool_config={"functionCallingConfig": {"mode": "NONE"}},
        safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        generation_config={"temperature": 0.5, "responseModalities": ["TEXT"]},
    )
    body = json.loads(
        provider.encode(
            GenerateRequest(
                model=MODEL,
                contents=[Content(role="user", parts=[Part(text="hi")])],
                settings=settings,
            )
        )
    )
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be precise."}]},
        "tools": [{"google_search": {}}],
        "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "generationConfig": {
            "temperature": 0.5,
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
        },
    }
    assert GenerateRequest(model=MODEL, contents=[], settings=settings).images_only


def test_encode_keeps_unknown_part_fields(provider: GeminiProvider) -> None:
    """A part field nanoedit does not model goes back out under its own name, unchanged."""
    part = decode_part(b'{"text": "x", "thoughtSignature": "AAE=", "partMetadata": {"k": [1, 2]}}')
    body = provider.encode(
        GenerateRequest(
            model=MODEL, contents=[Content(role="model", parts=[part])], settings=SessionSettings()
        )
    )
    assert json.loads(body)["contents"][0]["parts"] == [
        {"text": "x", "thoughtSignature": "AAE=", "partMetadata": {"k": [1, 2]}}
    ]


# --- generate: success -------------------------------------------------------------------------


async def test_plain_call_returns_content_usage_and_metadata(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """generateContent: the right URL and headers; content, usage split, ids and deltas back."""
    server.script(Reply(body=dumps(WHOLE), headers=JSON))
    result, deltas = await generate(provider, stream=False)
    [req] = server.requests
    assert (req.method, req.path, req.query) == (
        "POST",
        f"/v1beta/models/{MODEL}:generateContent",
        "",
    )
    assert req.headers["x-goog-api-key"] == KEY
    assert req.headers["content-type"] == "application/json"
    assert req.body == b'{"contents": []}'
    assert result.content == EXPECTED
    assert result.usage == EXPECTED_USAGE
    assert (result.finish_reason, result.model_version, result.response_id, result.status) == (
        "STOP",
        "gemini-3.1-flash-image-001",
        "resp-1",
        200,
    )
    assert (result.request_bytes, result.response_bytes) == (16, len(dumps(WHOLE)))
    assert set(result.timings) == {"headers_s", "done_s"}
    assert deltas == [
        TextDelta("Let me think. ✓", True),
        TextDelta("Here is the image.", False),
        ImageDelta(EXPECTED.parts[2]),
    ]


async def test_stream_merges_chunks_into_one_content(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """streamGenerateContent?alt=sse: pieces merge into the same Content a plain call returns."""
    server.script(Reply(chunks=[STREAM_BODY], headers=SSE))
    result, deltas = await generate(provider, stream=True)
    [req] = server.requests
    assert (req.path, req.query) == (f"/v1beta/models/{MODEL}:streamGenerateContent", "alt=sse")
    assert result.content == EXPECTED
    assert result.usage == EXPECTED_USAGE
    assert (result.finish_reason, result.response_id) == ("STOP", "resp-1")
    assert result.response_bytes == len(STREAM_BODY)
    assert set(result.timings) == {"headers_s", "first_event_s", "first_image_s", "done_s"}
    assert deltas == [
        TextDelta("Let me ", True),
        TextDelta("think. ✓", True),
        TextDelta("Here is ", False),
        TextDelta("the image.", False),
        ImageDelta(EXPECTED.parts[2]),
    ]


async def test_stream_and_plain_call_agree(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """The same answer streamed or not gives equal content, usage and finish reason."""
    server.script(Reply(body=dumps(WHOLE), headers=JSON), Reply(chunks=[STREAM_BODY], headers=SSE))
    plain, _ = await generate(provider, stream=False)
    streamed, _ = await generate(provider, stream=True)
    assert (plain.content, plain.usage, plain.finish_reason) == (
        streamed.content,
        streamed.usage,
        streamed.finish_reason,
    )


def _comparable(result: ProviderResult) -> tuple[Any, ...]:
    return (
        result.content,
        result.usage,
        result.finish_reason,
        result.finish_message,
        result.model_version,
        result.response_id,
        result.status,
        result.response_bytes,
    )


async def test_chunk_boundaries_do_not_change_the_result(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """The same SSE body cut at arbitrary byte positions gives an identical result."""
    server.script(Reply(chunks=[STREAM_BODY], headers=SSE))
    reference, _ = await generate(provider, stream=True)
    # Cut inside "data:", inside CRLF pairs, inside the multi-byte check mark, and at random.
    tricky = {2, 5, 6, STREAM_BODY.index(b"\r\n\r\n") + 1, STREAM_BODY.index("✓".encode()) + 1}
    for seed in range(6):
        rng = random.Random(seed)
        cuts = sorted(tricky | set(rng.sample(range(1, len(STREAM_BODY)), 12)))
        bounds = [0, *cuts, len(STREAM_BODY)]
        pieces: list[bytes | float] = []
        for a, b in itertools.pairwise(bounds):
            pieces += [STREAM_BODY[a:b], 0.001]
        server.script(Reply(chunks=pieces, headers=SSE))
        result, _ = await generate(provider, stream=True)
        assert _comparable(result) == _comparable(reference), seed


async def test_a_20mb_image_in_one_data_line_decodes(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """A multi-megabyte image arriving as one SSE data line comes back byte for byte."""
    image = random.Random(7).randbytes(20 * 1024 * 1024)
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}}
    body = sse_body(dumps(response([part], finish="STOP")))
    server.script(Reply(body=body, headers=SSE))
    result, deltas = await generate(provider, stream=True)
    blob = result.content.parts[0].inline_data
    assert blob is not None and blob.data == image
    assert len(deltas) == 1 and isinstance(deltas[0], ImageDelta)


async def test_a_gateway_json_answer_to_a_stream_request_is_accepted(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """A streaming request answered with plain JSON (a JSON array of chunks) still works."""
    server.script(Reply(body=dumps(STREAM_CHUNKS), headers=JSON))
    result, _ = await generate(provider, stream=True)
    assert result.content == EXPECTED


async def test_no_key_header_without_a_key(server: LoopbackServer, transport: Transport) -> None:
    """An empty key sends no x-goog-api-key header at all."""
    provider = GeminiProvider(transport, base_url=server.url, api_key=Secret(""), name="local")
    server.script(Reply(body=dumps(WHOLE), headers=JSON))
    await provider.generate("models/" + MODEL, b"{}", stream=False)
    assert "x-goog-api-key" not in server.requests[0].headers
    assert server.requests[0].path == f"/v1beta/models/{MODEL}:generateContent"
    assert provider.name == "local" and provider.supports_streaming


# --- generate: failures ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_http_errors_are_typed(
    server: LoopbackServer, provider: GeminiProvider, stream: bool
) -> None:
    """An error status from either endpoint raises the ApiError for it."""
    body = dumps(
        {
            "error": {
                "code": 400,
                "message": "Image part is missing a thought_signature",
                "status": "INVALID_ARGUMENT",
            }
        }
    )
    server.script(Reply(400, body, headers=JSON))
    with pytest.raises(InvalidRequest, match="thought_signature"):
        await generate(provider, stream=stream)


async def test_stream_cut_mid_way_is_stream_broken(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """A connection dropped in the middle of the stream raises StreamBroken."""
    server.script(
        Reply(chunks=[STREAM_BODY[:200], 0.01, STREAM_BODY[200:300]], headers=SSE, cut=True)
    )
    with pytest.raises(StreamBroken):
        await generate(provider, stream=True)


@pytest.mark.parametrize("failure", ["cut", "idle"])
async def test_a_failure_after_the_finish_reason_keeps_the_answer(
    server: LoopbackServer, failure: str
) -> None:
    """A stream that breaks or stalls after its finish event still returns the whole answer."""
    tail: list[bytes | float] = [b"data: {partial", 5.0] if failure == "idle" else [b"data: {"]
    server.script(Reply(chunks=[STREAM_BODY, 0.01, *tail], headers=SSE, cut=failure == "cut"))
    timeouts = Timeouts(connect=1, first_byte=1, idle=0.05, total=5)
    async with Transport(timeouts=timeouts) as transport:
        provider = GeminiProvider(transport, base_url=server.url, api_key=Secret(KEY))
        result, _ = await generate(provider, stream=True)
        assert result.content == EXPECTED and result.finish_reason == "STOP"
        assert _conns(transport) == (0, 0)


async def test_stream_ending_without_finish_reason_is_stream_broken(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """A cleanly closed stream that never carried a finish reason raises StreamBroken."""
    server.script(Reply(chunks=[sse_body(*[dumps(c) for c in STREAM_CHUNKS[:4]])], headers=SSE))
    with pytest.raises(StreamBroken, match="finish reason"):
        await generate(provider, stream=True)


async def test_in_stream_error_object_is_typed(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """An {"error": ...} event raises its ApiError, with RetryInfo and the key scrubbed."""
    error = {
        "error": {
            "code": 429,
            "message": f"Quota exceeded for key {KEY}",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}],
        }
    }
    server.script(Reply(chunks=[sse_body(dumps(STREAM_CHUNKS[0]), dumps(error))], headers=SSE))
    with pytest.raises(RateLimited) as info:
        await generate(provider, stream=True)
    assert (info.value.status, info.value.code, info.value.retry_after) == (
        429,
        "RESOURCE_EXHAUSTED",
        2.0,
    )
    assert KEY not in str(info.value) and "***" in str(info.value)


async def test_in_stream_error_without_code_maps_its_status(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """An in-stream error with only a Google status string gets the matching HTTP status."""
    error = {"error": {"message": "overloaded", "status": "UNAVAILABLE"}}
    server.script(Reply(chunks=[sse_body(dumps(error))], headers=SSE))
    with pytest.raises(ServerError) as info:
        await generate(provider, stream=True)
    assert info.value.status == 503


@pytest.mark.parametrize(
    "event",
    [
        b"{not json",
        b'{"candidates": "nope"}',
        dumps(response([{"inlineData": {"mimeType": "image/png", "data": "@@@"}}])),
        b'{"candidates": [{"content": {"parts": [{"text": "a", "x": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}]}}]}",
    ],
    ids=["syntax", "shape", "base64", "nested"],
)
async def test_malformed_stream_event(
    server: LoopbackServer, provider: GeminiProvider, event: bytes
) -> None:
    """An event that is not a GenerateContentResponse raises MalformedResponse (status 200)."""
    server.script(Reply(chunks=[sse_body(dumps(STREAM_CHUNKS[0]), event)], headers=SSE))
    with pytest.raises(MalformedResponse) as info:
        await generate(provider, stream=True)
    assert info.value.status == 200


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"candidates": [', JSON),
        (b"<html><title>Captive portal</title></html>", {"content-type": "text/html"}),
        (b'{"usageMetadata": {}}', JSON),
        (b'{"candidates": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON),
    ],
    ids=["truncated", "html", "no-candidates", "nested"],
)
async def test_malformed_plain_answer(
    server: LoopbackServer, provider: GeminiProvider, body: bytes, headers: dict[str, str]
) -> None:
    """A 200 whose body is not a usable response raises MalformedResponse(status=200)."""
    server.script(Reply(body=body, headers=headers))
    with pytest.raises(MalformedResponse) as info:
        await generate(provider, stream=False)
    assert info.value.status == 200


async def test_html_answer_to_a_stream_request_is_malformed(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """A 200 HTML page (captive portal) on the stream endpoint is MalformedResponse(title)."""
    page = b"<html><head><title>Sign in to Wi-Fi</title></head><body>...</body></html>"
    server.script(Reply(body=page, headers={"content-type": "text/html"}))
    with pytest.raises(MalformedResponse, match="Sign in to Wi-Fi") as info:
        await generate(provider, stream=True)
    assert info.value.status == 200
    assert "<" not in info.value.message


async def test_event_too_large(server: LoopbackServer, transport: Transport) -> None:
    """An event over max_event_bytes raises the engine's EventTooLarge."""
    provider = GeminiProvider(
        transport, base_url=server.url, api_key=Secret(KEY), max_event_bytes=512
    )
    server.script(Reply(chunks=[STREAM_BODY], headers=SSE))
    with pytest.raises(EventTooLarge):
        await generate(provider, stream=True)
    assert _conns(transport)[1] == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_prompt_block_is_content_blocked(
    server: LoopbackServer, provider: GeminiProvider, stream: bool
) -> None:
    """promptFeedback.blockReason raises ContentBlocked with its reason and message."""
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "nope"}
    }
    if stream:
        server.script(Reply(chunks=[sse_body(dumps(blocked))], headers=SSE))
    else:
        server.script(Reply(body=dumps(blocked), headers=JSON))
    with pytest.raises(ContentBlocked) as info:
        await generate(provider, stream=stream)
    assert (info.value.reason, info.value.message) == ("PROHIBITED_CONTENT", "nope")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "reason", ["IMAGE_SAFETY", "NO_IMAGE", "SAFETY", "IMAGE_OTHER", "RECITATION"]
)
async def test_blocking_finish_reasons_are_content_blocked(
    server: LoopbackServer, provider: GeminiProvider, stream: bool, reason: str
) -> None:
    """A safety/recitation/no-image finish raises ContentBlocked with finishMessage."""
    answer = response([{"text": "Sorry."}], finish=reason)
    answer["candidates"][0]["finishMessage"] = "The image was withheld."
    if stream:
        server.script(Reply(chunks=[sse_body(dumps(answer))], headers=SSE))
    else:
        server.script(Reply(body=dumps(answer), headers=JSON))
    with pytest.raises(ContentBlocked) as info:
        await generate(provider, stream=stream)
    assert (info.value.reason, info.value.message) == (reason, "The image was withheld.")


@pytest.mark.parametrize("stream", [False, True])
async def test_image_only_answer_without_an_image_is_content_blocked(
    server: LoopbackServer, provider: GeminiProvider, stream: bool
) -> None:
    """With images_only, text alone (or only a thought image) raises ContentBlocked(NO_IMAGE)."""
    thought_image = {"inlineData": {"mimeType": "image/png", "data": PNG_B64}, "thought": True}
    answer = response([thought_image, {"text": "I can't draw that."}], finish="STOP")
    if stream:
        server.script(Reply(chunks=[sse_body(dumps(answer))], headers=SSE))
    else:
        server.script(Reply(body=dumps(answer), headers=JSON))
    with pytest.raises(ContentBlocked) as info:
        await generate(provider, stream=stream, images_only=True)
    assert info.value.reason == "NO_IMAGE"
    # Text answers are fine when text was allowed.
    result, _ = await generate(provider, stream=stream)
    assert result.content.text() == "I can't draw that."


async def test_an_answer_without_parts_is_content_blocked(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """A STOP with no parts at all cannot become a turn: ContentBlocked(EMPTY_RESPONSE)."""
    server.script(Reply(body=dumps(response(None, finish="STOP")), headers=JSON))
    with pytest.raises(ContentBlocked) as info:
        await generate(provider, stream=False)
    assert info.value.reason == "EMPTY_RESPONSE"


async def test_the_key_never_appears_in_errors_or_logs(
    server: LoopbackServer, provider: GeminiProvider
) -> None:
    """An error page echoing the key yields messages and log lines without it."""
    echo = dumps(
        {"error": {"code": 401, "message": f"API key {KEY} not valid", "status": "UNAUTHENTICATED"}}
    )
    server.script(Reply(401, echo, headers=JSON))
    with structlog.testing.capture_logs() as logs, pytest.raises(Unauthorized) as info:
        await generate(provider, stream=True)
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert logs and KEY not in repr(logs)


async def test_cancel_mid_stream_leaves_no_connection_or_task(
    server: LoopbackServer, provider: GeminiProvider, transport: Transport
) -> None:
    """Cancelling generate() during the stream closes its connection and leaks no task."""
    server.script(Reply(chunks=[sse_body(dumps(STREAM_CHUNKS[0])), 5.0, STREAM_BODY], headers=SSE))
    before = asyncio.all_tasks()
    first = asyncio.Event()

    async def on_delta(delta: TextDelta | ImageDelta | PartialImageDelta) -> None:
        first.set()

    task = asyncio.create_task(provider.generate(MODEL, b"{}", stream=True, on_delta=on_delta))
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _conns(transport) == (0, 0)
    for _ in range(50):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert server.open_connections == 0
    assert asyncio.all_tasks() <= before


def test_usage_defaults_to_zero_without_metadata() -> None:
    """No usageMetadata means a zero Usage, not an error."""
    from engine.providers._gemini import usage_from

    assert usage_from(None) == Usage()
    assert msgspec.structs.asdict(usage_from(None)) == msgspec.structs.asdict(Usage())


@pytest.mark.parametrize(
    "data",
    [b"{", b'{"role": 5}', b'{"parts": [' + b"[" * 5000 + b"]" * 5000 + b"]}"],
    ids=["syntax", "shape", "nested"],
)
def test_decode_content_raises_wire_error(data: bytes) -> None:
    """decode_content: only WireError, whatever the bytes (deep nesting included)."""
    with pytest.raises(WireError):
        decode_content(data)
