"""Events through the Engine: per-session order and seq, stream() vs the bus, slow and failing
subscribers, and nothing secret or heavy in events or logs."""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict

import pytest
from structlog.testing import capture_logs

from engine import Budget, Engine, Secret, WireError
from engine.events import Event, EventsMissed, decode_event, encode_event
from engine.state import Subscription
from tests.conftest import EmulatorFactory, config_for

TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")
PNG_BASE64 = "iVBORw0KGgo"  # base64 of the PNG signature: the start of any base64 PNG


async def drain(sub: Subscription) -> list[Event]:
    """Every event buffered in `sub`, without waiting for more."""
    out: list[Event] = []
    while sub.pending:
        out.append(await sub.__anext__())
    return out


async def test_seq_is_gap_free_and_ordered_per_session_under_500_sessions(
    make_emulator: EmulatorFactory,
) -> None:
    """500 concurrent one-turn sessions: a global subscriber sees 1..n per session, in order."""
    emu = await make_emulator()
    n_sessions = 500
    cfg = config_for(emu.base_url, max_in_flight=n_sessions)
    async with Engine(cfg) as e, e.bus.subscribe(maxsize=1_000_000) as sub:
        sessions = await asyncio.gather(*(e.create_session() for _ in range(n_sessions)))
        await asyncio.gather(*(s.send("A yellow star") for s in sessions))
        events = await drain(sub)
    by_session: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_session[event.session_id].append(event)
    assert set(by_session) == {s.id for s in sessions}
    for evs in by_session.values():
        assert [ev.seq for ev in evs] == list(range(1, len(evs) + 1))
        types = [ev.type for ev in evs]
        assert types[:2] == ["session.created", "turn.started"]
        assert types[-1] == "turn.completed"
        assert "turn.image" in types
        assert all(ev.turn == 1 for ev in evs[1:])


async def test_stream_yields_exactly_the_turns_events(make_emulator: EmulatorFactory) -> None:
    """stream() yields what a session subscriber sees for the turn (budget events too), no more."""
    emu = await make_emulator(latency=0.02)
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session(budget=Budget(max_request_bytes=100_000, warn_at=0.001))
        other = await e.create_session()
        await s.send("A mug")
        async with e.bus.subscribe(session_id=s.id) as sub:
            busy = asyncio.create_task(other.send("A busy neighbour"))
            streamed = [ev async for ev in s.stream("Add a red circle on the left")]
            await busy
            seen = await drain(sub)
    assert [(ev.seq, ev.type) for ev in streamed] == [(ev.seq, ev.type) for ev in seen]
    assert streamed[0].type == "turn.started" and streamed[-1].type == "turn.completed"
    assert "budget.warning" in [ev.type for ev in streamed]
    assert all(ev.session_id == s.id and ev.turn == 2 for ev in streamed)


async def test_since_seq_joining_mid_turn_misses_nothing(make_emulator: EmulatorFactory) -> None:
    """A subscriber joining mid-turn with since_seq gets the replay, then live events, no gaps."""
    emu = await make_emulator(latency=0.05)
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        late: Subscription | None = None
        streamed: list[Event] = []
        async with s.stream("A mug") as events:
            async for ev in events:
                streamed.append(ev)
                if late is None and ev.type == "turn.text_delta":
                    # Mid-turn: the thought arrived, the answer has not.
                    late = e.bus.subscribe(session_id=s.id, since_seq=streamed[0].seq)
                    late.open()
        assert late is not None
        joined = await drain(late)
        late.close()
    start = streamed[0].seq
    assert [ev.seq for ev in joined] == list(range(start + 1, streamed[-1].seq + 1))
    assert [ev.seq for ev in joined] == [ev.seq for ev in streamed[1:]]
    assert joined[-1].type == "turn.completed"


async def test_slow_drop_oldest_subscriber_does_not_slow_turns(
    make_emulator: EmulatorFactory,
) -> None:
    """A blocked subscriber (drop_oldest, maxsize 2): turns complete; it learns what it missed."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        everything: list[Event] = []
        e.bus.on("*", everything.append)
        gate, stuck = asyncio.Event(), asyncio.Event()
        received: list[Event] = []

        async def slow_reader(sub: Subscription) -> None:
            async for ev in sub:
                received.append(ev)
                stuck.set()
                await gate.wait()  # blocked after the first event until the turns are done
                if ev.type == "turn.completed" and ev.turn == 3:
                    return

        async with e.bus.subscribe(maxsize=2, overflow="drop_oldest") as sub:
            reader = asyncio.create_task(slow_reader(sub))
            s = await e.create_session()
            await stuck.wait()  # the reader holds session.created and reads no further
            turns = [await s.send(p) for p in ("A mug", "Add a sprig", "Make it grayscale")]
            assert [t.index for t in turns] == [1, 2, 3]
            assert len(received) == 1  # the reader is still stuck on its first event
            gate.set()
            await reader
    first, marker, *rest = received
    assert first.seq == 1 and first.type == "session.created"
    assert isinstance(marker, EventsMissed)
    assert rest == everything[-2:]  # the two newest, the buffer's size
    assert 1 + marker.missed + 2 == len(everything)


async def test_failing_handlers_do_not_disturb_the_turn(make_emulator: EmulatorFactory) -> None:
    """Sync and async handlers that raise are logged; the turn and other subscribers go on."""
    emu = await make_emulator()

    def broken(event: Event) -> None:
        raise RuntimeError("sync handler bug")

    async def broken_async(event: Event) -> None:
        raise RuntimeError("async handler bug")

    with capture_logs() as logs:
        async with Engine(config_for(emu.base_url)) as e:
            e.bus.on("*", broken)
            e.bus.on("turn.*", broken_async)
            s = await e.create_session()
            async with e.bus.subscribe(session_id=s.id) as sub:
                types = [ev.type async for ev in s.stream("A mug")]
                turn = await s.send("Add a sprig")
                seen = await drain(sub)
            await asyncio.sleep(0)  # let the async handler's worker reach the last event
    assert types[0] == "turn.started" and types[-1] == "turn.completed"
    assert turn.index == 2 and len(s.contents()) == 4
    assert [ev.type for ev in seen].count("turn.completed") == 2
    failures = [line for line in logs if line["event"] == "bus.handler_failed"]
    handlers = {line["handler"] for line in failures}
    assert any(h.endswith("broken") for h in handlers)
    assert any(h.endswith("broken_async") for h in handlers)


@pytest.mark.parametrize("stream", [True, False])
async def test_events_and_logs_never_hold_keys_or_image_bytes(
    make_emulator: EmulatorFactory, stream: bool
) -> None:
    """Every event as JSON, and every log line, is free of the key and of base64 image data."""
    key = "sk-test-secret"
    emu = await make_emulator(api_key=key)
    lines: list[bytes] = []
    with capture_logs() as logs:
        async with Engine(config_for(emu.base_url, api_key=Secret(key))) as e:
            e.bus.on("*", lambda ev: lines.append(encode_event(ev)))
            s = await e.create_session()
            turns = [await s.send(p, stream=stream) for p in ("A mug", "Add a red circle")]
            async with s.stream("Make it grayscale") as events:
                async for _ in events:
                    pass
            turns.append(s.turns()[-1])
    assert len(turns) == 3 and all(t.images for t in turns)
    images = [i.data for t in turns for i in t.images]
    assert any(b"turn.image" in line for line in lines)  # images were announced, by reference
    forbidden = [key, PNG_BASE64] + [base64.b64encode(d[:300]).decode() for d in images]
    events_text = b"\n".join(lines).decode()
    logs_text = "\n".join(repr(line) for line in logs)
    assert logs and len(lines) > 10
    for needle in forbidden:
        assert needle not in events_text
        assert needle not in logs_text


@pytest.mark.parametrize(
    "data",
    [b"{", b"[]", b'{"type": "no.such.event"}', b"[" * 5000 + b"]" * 5000],
    ids=["syntax", "array", "unknown-type", "nested"],
)
def test_decode_event_raises_wire_error(data: bytes) -> None:
    """decode_event: a WireError for anything that is not an event."""
    with pytest.raises(WireError):
        decode_event(data)
