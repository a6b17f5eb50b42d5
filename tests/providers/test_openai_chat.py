"""The openai-chat provider against the emulator's chat completions, in every image dialect
gateways use, streamed and not, through the command line."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import structlog

from engine import Engine, EngineConfig, Secret, Unauthorized
from engine.cli import main
from engine.emulator import EmulatorSettings
from engine.events import Event, TurnRetrying
from engine.providers import extract_images
from sessions import MemoryStore
from tests._loopback import LoopbackServer, Reply, sse_body
from tests.conftest import ENV_VARS, FAST_RETRY, EmulatorThread, png

PROMPTS = ("A ceramic mug on an oak table", "Add a red circle on the left", "Make it grayscale")
DIALECTS = ("images", "parts", "markdown", "json")


@pytest.fixture(scope="module")
def dialect_emulators() -> Iterator[dict[str, EmulatorThread]]:
    """One flat emulator per dialect, recording requests."""
    emus = {
        d: EmulatorThread(EmulatorSettings(flat=True, record_requests=True, openai_dialect=d))
        for d in DIALECTS
    }
    for emu in emus.values():
        emu.start()
    yield emus
    for emu in emus.values():
        emu.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No key variables; structlog's config restored after main() configured it."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _assistant_images(request_body: bytes) -> list[bytes]:
    doc = msgspec.json.decode(request_body)
    out = []
    for message in doc["messages"]:
        if message["role"] != "assistant":
            continue
        for part in message["content"]:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_three_turns_through_the_cli(
    dialect_emulators: dict[str, EmulatorThread],
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    dialect: str,
    stream: bool,
) -> None:
    """Turn 3's request carries both earlier assistant images byte for byte; --json turns hold
    the image and the model's words, never the data URL or the JSON."""
    emu = dialect_emulators[dialect]
    out = tmp_path / "out"
    argv = ["edit", *PROMPTS, "--api", "openai-chat", "--base-url", emu.base_url + "/v1"]
    argv += ["--json", "--out", str(out), "--store", "memory"]
    argv += [] if stream else ["--no-stream"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    turns = doc["turns"]
    assert [len(t["images"]) for t in turns] == [1, 1, 1]
    for turn in turns:
        assert turn["text"] and "data:" not in turn["text"] and "b64" not in turn["text"]
        assert "```" not in turn["text"] and "![" not in turn["text"]
    assert "grayscale" in turns[2]["text"]
    assert emu.emulator is not None
    third = [
        r
        for r in emu.emulator.requests
        if r.endpoint == "chat.completions" and b"grayscale" in r.body
    ][-1]
    sent = [hashlib.sha256(i).hexdigest() for i in _assistant_images(third.body)]
    assert sent == [turns[0]["images"][0]["sha256"], turns[1]["images"][0]["sha256"]]
    assert (b'"stream":true' in third.body) is stream


@pytest.mark.parametrize(("scheme", "ok"), [("bearer", True), ("raw", True), ("goog", False)])
async def test_bearer_and_raw_auth(scheme: str, ok: bool) -> None:
    """`Authorization: Bearer KEY` and `Authorization: KEY` are accepted; x-goog-api-key is
    not what an OpenAI-compatible endpoint reads."""
    emu = EmulatorThread(EmulatorSettings(flat=True, api_key="gw-key-123"))
    emu.start()
    try:
        config = EngineConfig(
            provider="custom",
            base_url=emu.base_url + "/v1",
            api="openai-chat",
            auth=scheme,  # type: ignore[arg-type]
            api_key=Secret("gw-key-123"),
            retry=FAST_RETRY,
        )
        async with Engine(config) as engine:
            s = await engine.create_session()
            if ok:
                assert len((await s.send("a mug")).images) == 1
            else:
                with pytest.raises(Unauthorized):
                    await s.send("a mug")
    finally:
        emu.stop()


async def test_a_429_with_retry_after_ms_waits_that_long() -> None:
    """The gateway's retry-after-ms is the delay of the retry."""
    emu = EmulatorThread(EmulatorSettings(flat=True, faults="fail_first=1:429:retry=0.25"))
    emu.start()
    try:
        config = EngineConfig(
            provider="custom", base_url=emu.base_url + "/v1", api="openai-chat", retry=FAST_RETRY
        )
        seen: list[Event] = []
        async with Engine(config) as engine:
            engine.bus.on("turn.retrying", seen.append)
            turn = await (await engine.create_session()).send("a mug")
        assert turn.attempts == 2
        assert isinstance(seen[0], TurnRetrying) and seen[0].delay_s == pytest.approx(0.25)
    finally:
        emu.stop()


def test_embedded_images_are_taken_out_of_the_text() -> None:
    """Each dialect's embedding, with stray text around it: text clean, image found."""
    data = png()
    b64 = base64.b64encode(data).decode()
    cases = [
        f"Here it is.\n\n![image](data:image/png;base64,{b64})",
        f'Sure! ```json\n{{"mime_type": "image/png", "b64": "{b64}"}}\n``` Enjoy.',
        f'Result: {{"mimeType": "image/png", "data": "{b64}"}} done',
        f"inline data:image/png;base64,{b64} end",
    ]
    for text in cases:
        clean, images = extract_images(text)
        assert [i.data for i in images] == [data]
        assert b64[:20] not in clean and not re.search(r"data:|```|\{", clean)


async def test_a_gateway_session_continues_on_the_gemini_api_and_back(
    emulator_thread: EmulatorThread,
) -> None:
    """A turn through openai-chat (no signatures), the next through Gemini-native (the
    placeholder signature satisfies the check), the next through openai-chat again."""
    store = MemoryStore()
    url = emulator_thread.base_url
    chat = EngineConfig(provider="custom", base_url=url + "/v1", api="openai-chat")
    gemini = EngineConfig(provider="custom", base_url=url)
    async with Engine(chat, store=store) as engine:
        s = await engine.create_session()
        first = await s.send("A ceramic mug on an oak table")
        assert not any(p.thought_signature for p in first.model_content.parts)
    async with Engine(gemini, store=store) as engine:
        second = await (await engine.open_session(s.id)).send("Add a red circle on the left")
    async with Engine(chat, store=store) as engine:
        third = await (await engine.open_session(s.id)).send("Make it grayscale")
    assert [t.index for t in (first, second, third)] == [1, 2, 3]
    assert emulator_thread.emulator is not None
    sent = [
        r
        for r in emulator_thread.emulator.requests
        if "enerateContent" in r.endpoint and b"Add a red circle on the left" in r.body
    ]
    assert sent and PLACEHOLDER in sent[-1].body


PLACEHOLDER = base64.b64encode(b"skip_thought_signature_validator")


def _completion() -> bytes:
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    message = {"role": "assistant", "content": "ok", "images": [{"image_url": {"url": url}}]}
    doc = {"id": "c1", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("preset", "model_sent", "auth"),
    [
        ("openrouter", "google/gemini-nano-banana-2.1", "Bearer gw-key-9"),
        ("wisdom-gate-openai", "gemini-nano-banana-2.1", "gw-key-9"),
    ],
)
async def test_presets_speak_their_gateways_dialect(
    preset: str, model_sent: str, auth: str
) -> None:
    """openrouter: Bearer auth and Google's models as google/...; wisdom-gate-openai: the bare
    key in Authorization (both pointed at a loopback server instead of their hosts)."""
    async with LoopbackServer() as server:
        server.script(Reply(body=_completion(), headers={"content-type": "application/json"}))
        config = EngineConfig(
            provider=preset,  # type: ignore[arg-type]
            base_url=server.url + "/v1",
            api_key=Secret("gw-key-9"),
            retry=FAST_RETRY,
            stream=False,
        )
        async with Engine(config) as engine:
            assert len((await (await engine.create_session()).send("a mug")).images) == 1
        (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == auth
    assert json.loads(request.body)["model"] == model_sent


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps({"id": "c", "choices": [choice], **extra}).encode()


@pytest.mark.parametrize("embedding", ["markdown", "json"])
async def test_a_data_url_split_over_many_deltas_never_reaches_a_text_event(
    embedding: str,
) -> None:
    """The image arrives in 200-character deltas of the content: it is reassembled, and the
    text events and the turn's text carry only the words."""
    data = png(64, 64)
    b64 = base64.b64encode(data).decode()
    embedded = (
        f"\n\n![image](data:image/png;base64,{b64})"
        if embedding == "markdown"
        else f'\n```json\n{{"mime_type": "image/png", "b64": "{b64}"}}\n```'
    )
    content = "Here is your mug." + embedded
    pieces = [content[i : i + 200] for i in range(0, len(content), 200)]
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": p}) for p in pieces]
    usage = {"prompt_tokens": 10, "completion_tokens": 1130}
    events += [_chunk({}, "stop", usage=usage), b"[DONE]"]
    async with LoopbackServer() as server:
        server.script(
            Reply(chunks=[sse_body(*events)], headers={"content-type": "text/event-stream"})
        )
        config = EngineConfig(provider="custom", base_url=server.url, api="openai-chat")
        seen: list[Event] = []
        async with Engine(config) as engine:
            engine.bus.on("turn.text_delta", seen.append)
            turn = await (await engine.create_session()).send("a mug")
    assert [i.data for i in turn.images] == [data]
    assert turn.text == "Here is your mug."
    shown = "".join(getattr(e, "text", "") for e in seen)
    assert shown.strip() == "Here is your mug." and b64[:16] not in shown


async def test_a_plain_answer_to_a_stream_request_is_read() -> None:
    """A gateway that ignores `stream`: its JSON answer is the turn."""
    async with LoopbackServer() as server:
        server.script(Reply(body=_completion(), headers={"content-type": "application/json"}))
        config = EngineConfig(provider="custom", base_url=server.url, api="openai-chat")
        async with Engine(config) as engine:
            turn = await (await engine.create_session()).send("a mug", stream=True)
    assert len(turn.images) == 1 and turn.text == "ok"


def _restored(node: Any) -> Any:
    """A decode_chat result with every spliced URL back as plain text (for comparison)."""
    from engine.providers._openai_chat import _SplicedUrl

    if isinstance(node, dict):
        return {k: _restored(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_restored(v) for v in node]
    if isinstance(node, _SplicedUrl):
        assert node.blob is not None
        return f"data:{node.blob.mime_type};base64,{base64.b64encode(node.blob.data).decode()}"
    return node


def test_long_data_urls_are_decoded_from_the_bytes_and_nothing_else_changes() -> None:
    """An image's data URL in a `url` field comes out decoded from the received bytes (its
    image attached), equal to what parsing it would give; the same long string elsewhere (a
    text content, a list item) comes back as its text; a URL-safe one takes the regular path;
    short documents are parsed as they are."""
    from engine.providers._openai_chat import _image_parts, _SplicedUrl, decode_chat

    image = png(64, 64) + bytes(range(256)) * 100
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    safe = "data:image/png;base64," + base64.urlsafe_b64encode(b"\xfb\xff" * 20_000).decode()
    doc = {
        "choices": [
            {
                "delta": {
                    "images": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "image_url", "image_url": {"url": safe}},
                    ],
                    "content": url,
                },
                "finish_reason": None,
            }
        ],
        "extra": [url, "short"],
    }
    raw = msgspec.json.encode(doc)
    decoded = decode_chat(raw)
    images = decoded["choices"][0]["delta"]["images"]
    spliced = images[0]["image_url"]["url"]
    assert isinstance(spliced, _SplicedUrl) and spliced.blob is not None
    assert spliced.blob.data == image and spliced.blob.mime_type == "image/png"
    assert not isinstance(images[1]["image_url"]["url"], _SplicedUrl)
    assert decoded["choices"][0]["delta"]["content"] == url
    assert decoded["extra"] == [url, "short"]
    assert _restored(decoded) == json.loads(raw)
    assert [b.data for b in _image_parts(images)] == [image, b"\xfb\xff" * 20_000]
    small = msgspec.json.encode({"url": "data:image/png;base64,AAAA"})
    assert decode_chat(small) == {"url": "data:image/png;base64,AAAA"}


_BIG_URLS = [
    "data:image/png;base64," + base64.b64encode(bytes([i]) * 20_000).decode() for i in (1, 2)
] + ["data:image/webp;base64," + base64.urlsafe_b64encode(b"\xfb" * 20_000).decode()]


def _documents() -> Any:
    from hypothesis import strategies as st

    leaves = st.one_of(st.sampled_from(_BIG_URLS), st.text(max_size=8), st.integers(), st.none())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(
                st.sampled_from(["url", "content", "image_url", "x"]), inner, max_size=3
            ),
        ),
        max_leaves=8,
    )


def test_any_document_decodes_as_parsing_it_would() -> None:
    """Wherever long data URLs sit in a document, decode_chat gives what parsing gives, with
    only `url` values carrying their decoded image."""
    from hypothesis import given, settings

    from engine.providers._openai_chat import decode_chat

    @settings(max_examples=150, deadline=None)
    @given(doc=_documents())
    def check(doc: Any) -> None:
        raw = msgspec.json.encode(doc)
        assert _restored(decode_chat(raw)) == json.loads(raw)

    check()
