"""nanoedit's side of the behaviour claims against the official SDK's chat helper.

benchmarks/behaviour.py measures both clients side by side; these tests pin down nanoedit's
side only (the SDK's behaviour changes between versions, so it is reported, never asserted):
one model Content per streamed turn, failed turns that leave no trace in the next request,
server-directed retry delays, serialised turns on one session, signatures that round-trip.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from engine import (
    ContentBlocked,
    Engine,
    NanoeditError,
    RateLimited,
    RetryPolicy,
    ServerError,
    Session,
    StreamBroken,
    Turn,
)
from engine.emulator import Emulator
from engine.events import Event, TurnRetrying, TurnTextDelta
from sessions import encode_contents
from tests.conftest import FAST_RETRY, EmulatorFactory, config_for

PROMPTS = ("A ceramic mug on an oak table", "Make it grayscale", "Add a red circle on the left")


def generate_bodies(emu: Emulator) -> list[dict[str, Any]]:
    """Decoded generate requests the emulator received, in arrival order."""
    return [
        msgspec.json.decode(r.body)
        for r in emu.requests
        if r.endpoint in ("generateContent", "streamGenerateContent") and r.body
    ]


def roles(contents: list[dict[str, Any]]) -> list[str]:
    """The role of each Content of a request body."""
    return [c.get("role", "user") for c in contents]


def alternating(n: int) -> list[str]:
    """user, model, user, ... of length n."""
    return ["user" if i % 2 == 0 else "model" for i in range(n)]


def user_texts(contents: list[dict[str, Any]]) -> list[str]:
    """The text of every user Content of a request body."""
    return [c["parts"][0]["text"] for c in contents if c.get("role", "user") == "user"]


async def collect(engine: Engine) -> list[Event]:
    """Every event the engine publishes from now on."""
    seen: list[Event] = []
    engine.bus.on("*", seen.append)
    return seen


# --- 1. a streamed turn is one model Content ------------------------------------------------------


@pytest.mark.parametrize("faults", ["", "sig_last"])
async def test_streamed_turn_is_one_model_content_in_the_next_request(
    make_emulator: EmulatorFactory, faults: str
) -> None:
    """A streamed turn is one model Content, equal to the plain answer, and is sent back as one."""
    emu = await make_emulator(faults=faults, record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        streamed = await e.create_session()
        plain = await e.create_session()
        turn = await streamed.send(PROMPTS[0], stream=True)
        # `sig_last` only shapes streams: the plain answer has the signature on its text part.
        reference = await plain.send(PROMPTS[0], stream=False)
        assert [c.role for c in streamed.contents()] == ["user", "model"]
        assert turn.model_content == reference.model_content
        signed = [p for p in turn.model_content.parts if p.thought_signature and not p.thought]
        assert len(signed) == 2  # the answer text and the image
        await streamed.send(PROMPTS[1], stream=False)
    body = generate_bodies(emu)[-1]["contents"]
    assert roles(body) == ["user", "model", "user"]
    assert body[1] == msgspec.json.decode(encode_contents([turn.model_content]))[0]


# --- 2. a failed turn leaves no trace -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "stream", "error"),
    [
        ("cut:2", True, StreamBroken),
        ("500", False, ServerError),
        ("block", False, ContentBlocked),
        ("image_safety", True, ContentBlocked),
    ],
)
async def test_failed_turn_leaves_the_next_request_valid(
    make_emulator: EmulatorFactory, fault: str, stream: bool, error: type[NanoeditError]
) -> None:
    """A failed turn raises its typed error, and the next request carries no trace of it."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        await s.send(PROMPTS[0])
        before = encode_contents(s.contents())
        emu.set_faults(fault)
        with pytest.raises(error):
            await s.send(PROMPTS[1], stream=stream)
        assert encode_contents(s.contents()) == before
        emu.set_faults("")
        turn = await s.send(PROMPTS[2])
    assert turn.index == 2
    body = generate_bodies(emu)[-1]["contents"]
    assert roles(body) == ["user", "model", "user"]
    assert user_texts(body) == [PROMPTS[0], PROMPTS[2]]


async def test_stream_cut_mid_turn_after_partial_output_commits_nothing(
    make_emulator: EmulatorFactory,
) -> None:
    """Text already streamed before a cut is announced as deltas but never committed."""
    emu = await make_emulator(faults="cut:2")
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        with pytest.raises(StreamBroken) as info:
            await s.send(PROMPTS[0], stream=True)
        assert s.contents() == []
    assert info.value.attempts == FAST_RETRY.max_attempts
    deltas = [ev for ev in seen if isinstance(ev, TurnTextDelta)]
    # Each attempt streamed its thought before the cut; every attempt but the last was retried.
    assert {ev.attempt for ev in deltas} == {1, 2, 3}
    assert sum(isinstance(ev, TurnRetrying) for ev in seen) == FAST_RETRY.max_attempts - 1
    assert [ev.type for ev in seen][-1] == "turn.failed"


async def test_stream_cut_once_is_retried_without_partial_output_in_the_history(
    make_emulator: EmulatorFactory,
) -> None:
    """After one cut stream the retried turn commits one Content equal to the plain answer."""
    emu = await make_emulator(faults="fail_first=1:cut:2")
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        turn = await s.send(PROMPTS[0], stream=True)
        reference = await (await e.create_session()).send(PROMPTS[0], stream=False)
    assert turn.attempts == 2
    assert [c.role for c in s.contents()] == ["user", "model"]
    assert turn.model_content == reference.model_content
    # The broken attempt's deltas come before turn.retrying; the committed text is attempt 2's.
    types = [(ev.type, getattr(ev, "attempt", None)) for ev in seen if ev.turn == 1]
    retry_at = types.index(("turn.retrying", 1))
    assert all(a == 1 for t, a in types[:retry_at] if t == "turn.text_delta")
    assert all(a == 2 for t, a in types[retry_at:] if t == "turn.text_delta")
    answer = [
        ev.text
        for ev in seen
        if isinstance(ev, TurnTextDelta) and ev.session_id == s.id and not ev.thought
    ]
    assert "".join(answer) != turn.text  # attempt 1's partial text was streamed too
    assert "".join(answer).endswith(turn.text)


# --- 3. server-directed retry delays --------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("429", 429), ("503", 503)])
async def test_server_retry_delay_wins_over_backoff(
    make_emulator: EmulatorFactory, fault: str, status: int
) -> None:
    """RetryInfo/Retry-After of 0 s is used instead of a 60 s backoff: one retry, two requests."""
    emu = await make_emulator(faults=f"fail_first=1:{fault}:retry=0", record_requests=True)
    slow_backoff = RetryPolicy(max_attempts=3, base_delay=60.0, max_delay=60.0)
    async with Engine(config_for(emu.base_url, retry=slow_backoff)) as e:
        seen = await collect(e)
        s = await e.create_session()
        turn = await s.send(PROMPTS[0])
    assert turn.attempts == 2
    assert len(generate_bodies(emu)) == 2
    retrying = [ev for ev in seen if isinstance(ev, TurnRetrying)]
    assert [(ev.delay_s, ev.status, ev.attempt) for ev in retrying] == [(0.0, status, 1)]


async def test_server_delay_beyond_the_limit_fails_fast(make_emulator: EmulatorFactory) -> None:
    """A 429 asking for longer than max_server_delay raises at once with the server's delay."""
    emu = await make_emulator(faults="429:retry=300", record_requests=True)
    async with Engine(config_for(emu.base_url, retry=RetryPolicy(max_server_delay=120))) as e:
        seen = await collect(e)
        s = await e.create_session()
        with pytest.raises(RateLimited) as info:
            await s.send(PROMPTS[0])
        assert s.contents() == []
    assert info.value.retry_after == pytest.approx(300.0)
    assert len(generate_bodies(emu)) == 1
    assert not any(isinstance(ev, TurnRetrying) for ev in seen)


# --- 4. concurrent sends on one session -----------------------------------------------------------


async def _consume(s: Session, prompt: str) -> Turn:
    async with s.stream(prompt) as events:
        async for _ in events:
            pass
    assert events.turn is not None
    return events.turn


async def test_concurrent_sends_each_carry_every_earlier_turn(
    make_emulator: EmulatorFactory,
) -> None:
    """Concurrent send() and stream() on one session run one at a time, in call order."""
    emu = await make_emulator(latency=0.05, record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        seen = await collect(e)
        s = await e.create_session()
        await s.send(PROMPTS[0])
        prompts = ["Make it grayscale", "Add a red circle on the left", "Make it sepia"]
        turns = await asyncio.gather(
            s.send(prompts[0]), _consume(s, prompts[1]), s.send(prompts[2])
        )
        history = s.contents()
    assert [t.index for t in turns] == [2, 3, 4]
    assert [c.role for c in history] == alternating(8)
    bodies = [b["contents"] for b in generate_bodies(emu)]
    assert [len(b) for b in bodies] == [1, 3, 5, 7]
    for k, body in enumerate(bodies):
        assert roles(body) == alternating(2 * k + 1)
        assert user_texts(body) == [PROMPTS[0], *prompts][: k + 1]
    # Never two turns of the session in flight: each turn starts after the previous one ended.
    lifecycle = [(ev.type, ev.turn) for ev in seen if ev.type in ("turn.started", "turn.completed")]
    assert lifecycle == [(t, i) for i in range(1, 5) for t in ("turn.started", "turn.completed")]


# --- 7. thought signatures ------------------------------------------------------------------------


@pytest.mark.parametrize("faults", ["", "sig_last"])
async def test_signatures_round_trip_over_plain_and_streamed_turns(
    make_emulator: EmulatorFactory, faults: str
) -> None:
    """Three plain then three streamed turns: every request accepted, every signature sent back."""
    emu = await make_emulator(faults=faults, record_requests=True)
    prompts = [*PROMPTS, "Make it sepia", "Add a blue square on the right", "Add text 'hi'"]
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        turns = [await s.send(p, stream=i >= 3) for i, p in enumerate(prompts)]
        history = s.contents()
    assert [t.attempts for t in turns] == [1] * 6  # no 400 for a missing signature, no retry
    last = generate_bodies(emu)[-1]["contents"]
    assert roles(last) == alternating(11)
    # The sixth request carries the five earlier turns exactly as committed, signatures included.
    assert last[:10] == msgspec.json.decode(encode_contents(history[:10]))
    for content in last[1:10:2]:
        images = [p for p in content["parts"] if "inlineData" in p and not p.get("thought")]
        texts = [p for p in content["parts"] if "text" in p and not p.get("thought")]
        assert len(images) == 1 and "thoughtSignature" in images[0]
        assert any("thoughtSignature" in p for p in texts)
