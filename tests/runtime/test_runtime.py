"""engine.runtime._engine: multi-turn sessions end to end against the emulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web

from engine import (
    Closed,
    ConfigError,
    ContentBlocked,
    EmulatorOptions,
    Engine,
    EngineConfig,
    ImageConfig,
    InvalidRequest,
    MalformedResponse,
    RateLimited,
    Secret,
    ServerError,
    StreamBroken,
    Unauthorized,
)
from engine.events import Event, TurnFailed, TurnRetrying
from sessions import encode_contents
from tests.conftest import FAST_RETRY, EmulatorFactory, EmulatorThread, config_for


@pytest.fixture
async def engine(emulator_url: str) -> AsyncIterator[Engine]:
    """An engine on the shared flat emulator."""
    async with Engine(config_for(emulator_url)) as e:
        yield e


def requests_for(emu: EmulatorThread, session_contents_len: int) -> list[dict[str, Any]]:
    """Decoded generate requests the emulator recorded whose history has this many contents."""
    assert emu.emulator is not None
    out = []
    for rec in emu.emulator.requests:
        if "generateContent" not in rec.endpoint and "streamGenerateContent" not in rec.endpoint:
            continue
        body = msgspec.json.decode(rec.body)
        if len(body["contents"]) == session_contents_len:
            out.append(body)
    return out


@pytest.mark.parametrize("stream", [True, False])
async def test_three_turns_carry_history_verbatim(
    engine: Engine, emulator_thread: EmulatorThread, stream: bool
) -> None:
    """Each later request carries earlier model Contents (images, signatures) byte for byte."""
    s = await engine.create_session("nano-banana-2", title=f"three-{stream}")
    marker = f"marker-{stream}-{s.id}"
    t1 = await s.send(f"A ceramic mug on an oak table {marker}", stream=stream)
    t2 = await s.send("Add a red circle on the left", stream=stream)
    t3 = await s.send("Make it grayscale", stream=stream)
    assert [t.index for t in (t1, t2, t3)] == [1, 2, 3]
    assert all(len(t.images) == 1 for t in (t1, t2, t3))
    assert all(p.thought_signature for p in t1.model_content.parts if p.inline_data)
    history = s.contents()
    assert len(history) == 6
    assert history[1] == t1.model_content and history[3] == t2.model_content
    # What the emulator received for turn 3: the first four contents exactly as committed.
    sent = [
        b
        for b in requests_for(emulator_thread, 5)
        if marker in b["contents"][0]["parts"][0].get("text", "")
    ]
    assert len(sent) == 1
    expected = msgspec.json.decode(encode_contents(history[:4]))
    assert sent[0]["contents"][:4] == expected


async def test_stream_events_in_order(engine: Engine) -> None:
    """stream() yields started, deltas, an image, then completed, with increasing seq."""
    s = await engine.create_session()
    events: list[Event] = []
    async with s.stream("A blue square") as st:
        async for ev in st:
            events.append(ev)
    types = [ev.type for ev in events]
    assert types[0] == "turn.started" and types[-1] == "turn.completed"
    assert "turn.text_delta" in types and "turn.image" in types
    seqs = [ev.seq for ev in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert st.turn is not None and st.turn.index == 1
    assert len(s.contents()) == 2


async def test_streamed_and_plain_turns_commit_equal_content(engine: Engine) -> None:
    """A streamed turn's merged Content equals the non-streamed answer to the same request."""
    a = await engine.create_session()
    b = await engine.create_session()
    ta = await a.send("A green triangle at the top", stream=True)
    tb = await b.send("A green triangle at the top", stream=False)
    assert ta.model_content == tb.model_content
    assert ta.usage == tb.usage
    assert ta.cost_usd == pytest.approx(tb.cost_usd)


async def test_image_config_reaches_the_server(engine: Engine) -> None:
    """imageConfig is sent and the output has the table's pixel size."""
    s = await engine.create_session(
        "nano-banana-2", image_config=ImageConfig(aspect_ratio="16:9", image_size="512")
    )
    turn = await s.send("A wide landscape")
    assert (turn.images[0].width, turn.images[0].height) == (688, 384)


async def test_invalid_image_config_rejected_before_sending(engine: Engine) -> None:
    """A lowercase size is rejected with a clear message and nothing is created."""
    with pytest.raises(ConfigError, match="uppercase"):
        await engine.create_session("nano-banana-2", image_config=ImageConfig(image_size="1k"))


async def test_concurrent_sends_on_one_session_queue_in_order(engine: Engine) -> None:
    """Concurrent send() calls on one session run one at a time, in call order."""
    s = await engine.create_session()
    turns = await asyncio.gather(*(s.send(f"Add a label 'step {i}'") for i in range(4)))
    assert [t.index for t in turns] == [1, 2, 3, 4]
    assert [t.record.user.parts[0].text for t in s.turns()] == [
        f"Add a label 'step {i}'" for i in range(4)
    ]


async def test_sessions_run_concurrently(engine: Engine) -> None:
    """Different sessions' turns overlap rather than queue behind each other."""
    sessions = [await engine.create_session() for _ in range(8)]
    turns = await asyncio.gather(*(s.send("A yellow star") for s in sessions))
    assert all(t.index == 1 for t in turns)


async def test_unknown_part_field_survives_a_turn(unused_tcp_port: int) -> None:
    """A part field the engine does not model is sent back unchanged in the next request."""
    bodies: list[dict[str, Any]] = []
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        import base64

        part = {
            "inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()},
            "thoughtSignature": "c2ln",
            "futureField": {"keep": [1, "two"]},
        }
        return web.json_response(
            {
                "candidates": [
                    {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}
                ],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 5},
            }
        )

    app = web.Application()
    app.router.add_post("/v1beta/models/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    try:
        async with Engine(config_for(f"http://127.0.0.1:{unused_tcp_port}", stream=False)) as e:
            s = await e.create_session()
            await s.send("one")
            await s.send("two")
    finally:
        await runner.cleanup()
    assert bodies[1]["contents"][1]["parts"][0]["futureField"] == {"keep": [1, "two"]}
    assert bodies[1]["contents"][1]["parts"][0]["thoughtSignature"] == "c2ln"


# --- faults ----------------------------------------------------------------------------------


async def collect(engine: Engine) -> list[Event]:
    """Start collecting every event of the engine's bus."""
    seen: list[Event] = []
    engine.bus.on("*", seen.append)
    return seen


@pytest.mark.parametrize(
    ("fault", "status"),
    [("fail_first=1:429:retry=0.05", 429), ("fail_first=1:503:retry=0.05", 503)],
)
async def test_retry_honours_server_delay(
    make_emulator: EmulatorFactory, fault: str, status: int
) -> None:
    """A 429 / 503 is retried after the server's delay: the larger of RetryInfo and Retry-After.

    The emulator sends RetryInfo "0.05s" and `Retry-After: 1` (HTTP allows whole seconds only).
    """
    emu = await make_emulator(faults=fault)
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        turn = await s.send("A red circle")
    assert turn.attempts == 2
    retrying = [ev for ev in seen if isinstance(ev, TurnRetrying)]
    assert len(retrying) == 1
    assert retrying[0].delay_s == pytest.approx(1.0)
    assert retrying[0].status == status


@pytest.mark.parametrize("stream", [True, False])
async def test_cut_stream_is_retried(make_emulator: EmulatorFactory, stream: bool) -> None:
    """A connection reset or a stream cut before the finish reason is retried."""
    emu = await make_emulator(faults="fail_first=1:cut:1" if stream else "fail_first=1:reset")
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        turn = await s.send("A red circle", stream=stream)
    assert turn.attempts == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("429:retry=0", RateLimited),
        ("cut:1", StreamBroken),
        ("html502", ServerError),
        ("malformed", MalformedResponse),
        ("image_safety", ContentBlocked),
        ("block", ContentBlocked),
    ],
)
async def test_persistent_fault_leaves_session_unchanged(
    make_emulator: EmulatorFactory, fault: str, error: type[Exception]
) -> None:
    """A turn that keeps failing raises a typed error and commits nothing."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        await s.send("A mug")
        before = encode_contents(s.contents())
        emu.set_faults(fault)
        with pytest.raises(error) as info:
            await s.send("Add a sprig")
        assert encode_contents(s.contents()) == before
        reopened = await e.open_session(s.id)
        assert encode_contents(reopened.contents()) == before
    if fault.startswith(("429", "cut")):
        assert getattr(info.value, "attempts", None) == FAST_RETRY.max_attempts


async def test_wrong_key_is_unauthorized(make_emulator: EmulatorFactory) -> None:
    """A wrong key gives Unauthorized, and the key is not in the message."""
    emu = await make_emulator(api_key="right-key")
    cfg = config_for(emu.base_url, api_key=Secret("wrong-key-123"))
    async with Engine(cfg) as e:
        s = await e.create_session()
        with pytest.raises(Unauthorized) as info:
            await s.send("A mug")
    assert "wrong-key-123" not in str(info.value)
    assert info.value.attempts == 1


async def test_signature_missing_is_invalid_request(make_emulator: EmulatorFactory) -> None:
    """History edited to drop one signature is rejected by the server as INVALID_ARGUMENT (a
    model turn without any signature is taken for a gateway's and gets the placeholder)."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        await s.send("A mug")
        for part in s.state.turn(s.state.record.head or "").model.parts:
            if part.is_image:
                part.thought_signature = None
        with pytest.raises(InvalidRequest, match="thought_signature"):
            await s.send("Add a sprig")


# --- cancellation ----------------------------------------------------------------------------


async def test_cancel_mid_stream_leaves_session_unchanged(make_emulator: EmulatorFactory) -> None:
    """Cancelling a turn mid-stream commits nothing and publishes turn.cancelled."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        await s.send("A mug")
        before = encode_contents(s.contents())
        emu.set_faults("drip:0.05")
        streaming = asyncio.Event()
        e.bus.on("turn.text_delta", lambda ev: streaming.set() if ev.turn == 2 else None)
        task = asyncio.create_task(s.send("Add a sprig"))
        await streaming.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert encode_contents(s.contents()) == before
        assert any(ev.type == "turn.cancelled" for ev in seen)
        # The engine tracks turns in flight only while they are (aclose waits for them).
        assert not e._turn_tasks
        emu.set_faults("")
        turn = await s.send("Add a sprig")
        assert turn.index == 2
        assert not e._turn_tasks
    assert e._transport is not None and e._transport.closed


async def test_breaking_out_of_stream_cancels_the_turn(make_emulator: EmulatorFactory) -> None:
    """A consumer leaving stream() early leaves contents() exactly as before."""
    emu = await make_emulator(faults="drip:0.02")
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        async with s.stream("A mug") as events:
            async for ev in events:
                if ev.type == "turn.text_delta":
                    break
        assert s.contents() == []
        assert any(ev.type == "turn.cancelled" for ev in seen)


async def test_closed_engine_refuses_turns(emulator_url: str) -> None:
    """After aclose() a send raises Closed."""
    e = Engine(config_for(emulator_url))
    async with e:
        s = await e.create_session()
    with pytest.raises(Closed):
        await s.send("A mug")


async def test_embedded_emulator_is_the_default(no_leaked_tasks: None) -> None:
    """With the local provider the engine starts and stops its own emulator."""
    async with Engine(EngineConfig(emulator=EmulatorOptions(flat=True))) as e:
        assert e.base_url is not None and e.base_url.startswith("http://127.0.0.1:")
        s = await e.create_session()
        turn = await s.send("A mug")
        assert turn.images and turn.images[0].mime_type == "image/png"


async def test_stream_hands_over_the_failure(make_emulator: EmulatorFactory) -> None:
    """A streamed turn that fails ends with turn.failed and exposes the typed error."""
    emu = await make_emulator(faults="image_safety")
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        async with s.stream("A mug") as events:
            types = [ev.type async for ev in events]
        assert types[-1] == "turn.failed"
        assert isinstance(events.error, ContentBlocked)
        assert events.turn is None


async def test_send_queued_behind_close_gets_closed(make_emulator: EmulatorFactory) -> None:
    """A send waiting for the session lock when the engine closes raises Closed."""
    emu = await make_emulator(latency=0.2)
    e = Engine(config_for(emu.base_url))
    async with e:
        s = await e.create_session()
        first = asyncio.create_task(s.send("A mug"))
        second = asyncio.create_task(s.send("Add a sprig"))
        await asyncio.sleep(0.05)
        await e.aclose(deadline=5)
        assert (await first).index == 1
        with pytest.raises(Closed, match="closed"):
            await second


async def test_large_request_body_sends_without_warning(engine: Engine) -> None:
    """A request over 1 MiB (an attached photo) goes out without aiohttp's ResourceWarning."""
    import io
    import random

    from PIL import Image as PILImage

    rng = random.Random(7)
    photo = PILImage.frombytes("RGB", (700, 700), rng.randbytes(700 * 700 * 3))
    buf = io.BytesIO()
    photo.save(buf, format="PNG", compress_level=1)
    assert len(buf.getvalue()) > 1024 * 1024
    s = await engine.create_session()
    turn = await s.send("Make it grayscale", [buf.getvalue()])
    assert turn.images


async def test_idle_sessions_hold_no_lock(engine: Engine) -> None:
    """A session's lock exists only while a turn holds or waits for it."""
    s = await engine.create_session()
    await s.send("A mug")
    assert s.id not in engine._locks


async def test_failed_start_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch, no_leaked_tasks: None
) -> None:
    """If start() fails after the embedded emulator is up, the emulator is stopped again."""
    import engine.runtime._engine as runtime

    def broken_provider(*args: object, **kwargs: object) -> None:
        raise ConfigError("provider construction failed")

    monkeypatch.setattr(runtime, "GeminiProvider", broken_provider)
    e = Engine(EngineConfig(emulator=EmulatorOptions(flat=True)))
    with pytest.raises(ConfigError, match="provider construction failed"):
        async with e:
            pass
    assert e._emulator is not None
    assert e._emulator._runner is None  # stopped
    assert e._transport is not None and e._transport.closed


async def test_failed_event_counts_every_attempt(make_emulator: EmulatorFactory) -> None:
    """turn.failed reports as many attempts as the raised error (all retries included)."""
    emu = await make_emulator(faults="cut:1")
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        with pytest.raises(StreamBroken) as info:
            await s.send("A mug")
    failed = [ev for ev in seen if isinstance(ev, TurnFailed)]
    assert len(failed) == 1
    assert failed[0].attempts == info.value.attempts == FAST_RETRY.max_attempts


async def test_failed_regenerate_leaves_the_session_as_it_was(
    make_emulator: EmulatorFactory,
) -> None:
    """A regenerate whose new turn fails keeps the head (and the store) where they were."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        await s.send("A mug")
        t2 = await s.send("Add a sprig")
        before = encode_contents(s.contents())
        emu.set_faults("image_safety")
        with pytest.raises(ContentBlocked):
            await s.regenerate()
        assert s.head is not None and s.head.id == t2.id
        assert encode_contents(s.contents()) == before
        reopened = await e.open_session(s.id)
        assert reopened.head is not None and reopened.head.id == t2.id
        emu.set_faults("")
        again = await s.regenerate()
        assert again.index == 2 and again.id != t2.id
        assert len(s.branches()) == 2
