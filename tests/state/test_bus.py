"""Tests for engine.bus: numbering, replay, overflow policies, callbacks, logging, shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

from engine import Closed, SubscriberDisconnected
from engine.events import (
    Event,
    EventsMissed,
    ImageRef,
    SessionCreated,
    TurnCompleted,
    TurnImage,
    TurnStarted,
    TurnTextDelta,
    Usage,
)
from engine.state import EventBus, Subscription


def delta(session_id: str = "s", text: str = "x", turn: int | None = 1) -> TurnTextDelta:
    """A small event for session `session_id`."""
    return TurnTextDelta(session_id=session_id, turn=turn, text=text)


async def take(sub: Subscription, n: int) -> list[Event]:
    """The next `n` events of `sub`."""
    out: list[Event] = []
    async for event in sub:
        out.append(event)
        if len(out) == n:
            break
    return out


async def settle(rounds: int = 5) -> None:
    """Let every ready task run a few steps (no wall-clock waiting)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this loop that are still running, the test's own excepted."""
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


async def test_seq_gap_free_per_session_under_500_concurrent_sessions() -> None:
    """500 sessions, two concurrent publishers each: a global subscriber sees 1..N per session."""
    sessions, publishers, per_publisher = 500, 2, 10
    total = sessions * publishers * per_publisher
    seen: dict[str, list[int]] = defaultdict(list)
    with capture_logs() as logs:
        async with EventBus() as bus, bus.subscribe() as sub:

            async def publish(sid: str, rng: random.Random) -> None:
                for _ in range(per_publisher):
                    await bus.publish(delta(sid))
                    if rng.random() < 0.5:
                        await asyncio.sleep(0)

            async def read() -> None:
                for event in await take(sub, total):
                    seen[event.session_id].append(event.seq)

            reader = asyncio.create_task(read())
            rng = random.Random(7)
            await asyncio.gather(
                *(
                    publish(f"s{i}", random.Random(rng.random()))
                    for i in range(sessions)
                    for _ in range(publishers)
                )
            )
            await reader
    assert len(seen) == sessions
    expected = list(range(1, publishers * per_publisher + 1))
    assert all(seqs == expected for seqs in seen.values())
    assert len([e for e in logs if e["event"] == "turn.text_delta"]) == total


async def test_replay_seam_while_publishing_misses_nothing_and_repeats_nothing() -> None:
    """Subscribers joining with since_seq mid-stream see exactly since_seq+1..last, in order."""
    n = 3000
    with capture_logs():
        async with EventBus(retain=4096) as bus:
            results: dict[int, list[int]] = {}

            async def publisher() -> None:
                rng = random.Random(1)
                for _ in range(n):
                    await bus.publish(delta())
                    if rng.random() < 0.3:
                        await asyncio.sleep(0)

            joins = [(100, 0), (500, 450), (1200, 1199), (2000, 1000), (2999, 2999)]
            reached = {at: asyncio.Event() for at, _ in joins}

            def mark(event: Event) -> None:
                if event.seq in reached:
                    reached[event.seq].set()

            bus.on("*", mark)

            async def joiner(at_seq: int, since: int) -> None:
                await reached[at_seq].wait()
                async with bus.subscribe("s", since_seq=since, maxsize=64) as sub:
                    results[since] = [e.seq for e in await take(sub, n - since)]

            await asyncio.gather(publisher(), *(joiner(at, since) for at, since in joins))
    for _, since in joins:
        assert results[since] == list(range(since + 1, n + 1))


async def test_since_seq_older_than_window_yields_marker_first() -> None:
    """A since_seq the window no longer reaches gets EventsMissed(missed=N), then the window."""
    async with EventBus(retain=10) as bus:
        for _ in range(25):
            await bus.publish(delta())
        async with bus.subscribe("s", since_seq=5) as sub:
            events = await take(sub, 11)
    marker, rest = events[0], events[1:]
    assert isinstance(marker, EventsMissed)
    assert (marker.missed, marker.session_id) == (10, "s")
    assert [e.seq for e in rest] == list(range(16, 26))


async def test_replay_applies_the_type_filter() -> None:
    """Replayed events pass through the subscription's type patterns too."""
    async with EventBus() as bus:
        await bus.publish(TurnStarted(session_id="s", model="m", stream=True, history_turns=0))
        await bus.publish(delta())
        await bus.publish(SessionCreated(session_id="s", model="m"))
        async with bus.subscribe("s", types=("turn.*",), since_seq=0) as sub:
            events = await take(sub, 2)
    assert [type(e) for e in events] == [TurnStarted, TurnTextDelta]


async def test_block_policy_applies_backpressure_only_to_its_publisher() -> None:
    """A full "block" subscriber stalls the publisher that fills it, nobody else, loses nothing."""
    async with EventBus() as bus:
        slow = bus.subscribe("a", maxsize=2, overflow="block")
        fast = bus.subscribe(maxsize=100, overflow="drop_oldest")
        async with slow, fast:
            for _ in range(2):
                await bus.publish(delta("a"))
            stalled = asyncio.create_task(bus.publish(delta("a")))
            await settle()
            assert not stalled.done()
            # Other sessions publish freely, and other subscribers already have the stalled event.
            await bus.publish(delta("b"))
            assert [(e.session_id, e.seq) for e in await take(fast, 4)] == [
                ("a", 1),
                ("a", 2),
                ("a", 3),
                ("b", 1),
            ]
            assert [e.seq for e in await take(slow, 1)] == [1]
            await stalled
            assert [e.seq for e in await take(slow, 2)] == [2, 3]


async def test_block_policy_keeps_order_when_a_publisher_arrives_as_room_frees() -> None:
    """A newcomer never overtakes a publisher blocked on the same subscriber."""
    async with EventBus() as bus, bus.subscribe("s", maxsize=1, overflow="block") as sub:
        await bus.publish(delta(text="1"))
        blocked = asyncio.create_task(bus.publish(delta(text="2")))
        await settle()
        first = await sub.__anext__()  # frees room: event 2 is handed over at once
        newcomer = asyncio.create_task(bus.publish(delta(text="3")))
        rest = await take(sub, 2)
        await asyncio.gather(blocked, newcomer)
    assert [e.text for e in [first, *rest] if isinstance(e, TurnTextDelta)] == ["1", "2", "3"]


async def test_cancelled_blocked_publisher_still_delivers_its_event() -> None:
    """Cancelling a publisher waiting for room does not take its event back."""
    async with EventBus() as bus, bus.subscribe("s", maxsize=1) as sub:
        await bus.publish(delta())
        stalled = asyncio.create_task(bus.publish(delta()))
        await settle()
        stalled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stalled
        assert [e.seq for e in await take(sub, 2)] == [1, 2]


async def test_drop_oldest_marker_counts_dropped_events() -> None:
    """drop_oldest keeps the newest events and first reports how many were dropped."""
    async with EventBus() as bus, bus.subscribe("s", maxsize=3, overflow="drop_oldest") as sub:
        for _ in range(10):
            await bus.publish(delta())
        first = await take(sub, 4)
        for _ in range(5):
            await bus.publish(delta())
        second = await take(sub, 4)
    assert isinstance(first[0], EventsMissed) and first[0].missed == 7
    assert [e.seq for e in first[1:]] == [8, 9, 10]
    assert isinstance(second[0], EventsMissed) and second[0].missed == 2
    assert [e.seq for e in second[1:]] == [13, 14, 15]


async def test_drop_oldest_marker_on_a_global_subscription_is_engine_wide() -> None:
    """The marker of a subscription to all sessions carries session_id "*"."""
    async with EventBus() as bus, bus.subscribe(maxsize=1, overflow="drop_oldest") as sub:
        await bus.publish(delta("a"))
        await bus.publish(delta("b"))
        marker = await sub.__anext__()
    assert isinstance(marker, EventsMissed)
    assert (marker.session_id, marker.missed) == ("*", 1)


async def test_disconnect_drains_buffer_then_raises() -> None:
    """disconnect: the buffered events come out, then SubscriberDisconnected; it is removed."""
    async with EventBus() as bus, bus.subscribe("s", maxsize=2, overflow="disconnect") as sub:
        for _ in range(5):
            await bus.publish(delta())
        assert bus.subscribers == 0
        got = [(await sub.__anext__()).seq for _ in range(2)]
        with pytest.raises(SubscriberDisconnected) as info:
            await sub.__anext__()
    assert got == [1, 2]
    assert info.value.missed == 1


async def test_failing_or_cancelled_subscriber_does_not_disturb_others() -> None:
    """A subscriber that raises and one that is cancelled leave the others and publish intact."""
    n = 200
    async with EventBus() as bus:
        got: list[int] = []

        async def crashing() -> None:
            async with bus.subscribe("s", maxsize=4) as sub:
                async for event in sub:
                    if event.seq == 3:
                        raise RuntimeError("subscriber bug")

        async def healthy() -> None:
            async with bus.subscribe("s", maxsize=4) as sub:
                got.extend(e.seq for e in await take(sub, n))

        async def idle() -> None:
            async with bus.subscribe("s", maxsize=4) as sub:
                async for _ in sub:
                    await asyncio.sleep(3600)

        tasks = [asyncio.create_task(f()) for f in (crashing, healthy, idle)]
        await settle()
        assert bus.subscribers == 3
        for _ in range(5):
            await bus.publish(delta())
        await settle()
        tasks[2].cancel()
        for _ in range(n - 5):
            await bus.publish(delta())
        await tasks[1]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert bus.subscribers == 0
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[2], asyncio.CancelledError)
    assert got == list(range(1, n + 1))


async def test_on_sync_and_async_handlers_in_order_with_errors_logged() -> None:
    """Sync handlers run inline, async ones in a worker, each in order; errors are logged."""
    sync_seen: list[int] = []
    async_seen: list[int] = []

    def sync_handler(event: Event) -> None:
        sync_seen.append(event.seq)

    all_seen = asyncio.Event()

    async def async_handler(event: Event) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.seq)
        if len(async_seen) == 20:
            all_seen.set()

    def broken_sync(event: Event) -> None:
        raise ValueError("sync handler bug")

    async def broken_async(event: Event) -> None:
        raise ValueError("async handler bug")

    with capture_logs() as logs:
        async with EventBus() as bus:
            for h in (broken_sync, sync_handler, broken_async, async_handler):
                bus.on("turn.*", h)
            for _ in range(20):
                await bus.publish(delta())
            assert sync_seen == list(range(1, 21))  # inline: done when publish returns
            await all_seen.wait()
    assert async_seen == list(range(1, 21))
    failures = [e for e in logs if e["event"] == "bus.handler_failed"]
    assert {e["handler"].rsplit(".", 1)[-1] for e in failures} == {"broken_sync", "broken_async"}
    assert len(failures) == 40
    assert all(e["log_level"] == "error" and e["session_id"] == "s" for e in failures)


async def test_on_pattern_session_and_unsubscribe() -> None:
    """`on` honours its pattern and session; the returned function stops the calls."""
    seen: list[str] = []
    async with EventBus() as bus:
        off = bus.on("turn.text_delta", lambda e: seen.append(e.session_id), session_id="a")
        await bus.publish(delta("a"))
        await bus.publish(delta("b"))
        await bus.publish(SessionCreated(session_id="a", model="m"))
        off()
        await bus.publish(delta("a"))
    assert seen == ["a"]


async def test_type_patterns_exact_prefix_and_all() -> None:
    """Exact types, `prefix.*` patterns and the empty tuple (all) select what they say."""
    async with EventBus() as bus:
        exact = bus.subscribe(types=("session.created",))
        prefix = bus.subscribe(types=("turn.*",))
        mixed = bus.subscribe(types=("session.created", "turn.text_delta"))
        every = bus.subscribe()
        async with exact, prefix, mixed, every:
            await bus.publish(SessionCreated(session_id="s", model="m"))
            await bus.publish(TurnStarted(session_id="s", model="m", stream=True, history_turns=0))
            await bus.publish(delta())
            counts = [sub.pending for sub in (exact, prefix, mixed, every)]
    assert counts == [1, 2, 2, 3]
    with pytest.raises(ValueError, match="pattern"):
        bus.subscribe(types=("turn*",))


async def test_leaving_async_with_unsubscribes() -> None:
    """After the `async with`, the subscription is gone and publishing buffers nothing for it."""
    async with EventBus() as bus:
        async with bus.subscribe("s") as own:
            async with bus.subscribe() as everything:
                assert bus.subscribers == 2
                await bus.publish(delta())
            await bus.publish(delta())
            assert (own.pending, everything.pending) == (2, 0)
        assert bus.subscribers == 0
        await bus.publish(delta())
        assert own.pending == 0


async def test_aclose_leaves_no_tasks_and_ends_iteration() -> None:
    """aclose stops handler workers, ends subscriptions and refuses further publishing."""
    bus = EventBus()

    async def slow_handler(event: Event) -> None:
        await asyncio.sleep(3600)

    bus.on("*", slow_handler)
    bus.on("turn.*", slow_handler, session_id="s")
    sub = bus.subscribe()
    sub.open()
    reader = asyncio.create_task(take(sub, 100))
    await bus.publish(delta())
    await settle()
    await bus.aclose()
    assert [e.seq for e in await reader] == [1]
    assert other_tasks() == set()
    with pytest.raises(Closed):
        await bus.publish(delta())
    with pytest.raises(Closed):
        bus.subscribe().open()


async def test_log_lines_carry_session_and_fields_never_bytes() -> None:
    """One structlog line per event, with session_id, turn, seq and no bytes anywhere."""
    image = ImageRef(sha256="ab" * 32, mime_type="image/png", size=10, width=1, height=1)
    with capture_logs() as logs:
        async with EventBus() as bus:
            await bus.publish(TurnImage(session_id="s1", turn=2, image=image))
            await bus.publish(
                TurnCompleted(
                    session_id="s1",
                    turn=2,
                    finish_reason="STOP",
                    attempts=1,
                    latency_s=0.5,
                    images=[image],
                    text="done",
                    usage=Usage(prompt_tokens=5),
                )
            )
    lines = [e for e in logs if e["event"] in ("turn.image", "turn.completed")]
    assert len(lines) == 2
    assert all(e["session_id"] == "s1" and e["turn"] == 2 for e in lines)
    assert [e["seq"] for e in lines] == [1, 2]

    def has_bytes(value: object) -> bool:
        if isinstance(value, bytes | bytearray | memoryview):
            return True
        if isinstance(value, dict):
            return any(has_bytes(v) for v in value.values())
        if isinstance(value, list | tuple):
            return any(has_bytes(v) for v in value)
        return False

    assert not any(has_bytes(e) for e in logs)


async def test_log_lines_follow_structlog_being_reconfigured() -> None:
    """The bus keeps its bound logger between events, yet a configuration made later (here
    two captures one after the other, then a level filter) takes effect at the next event."""
    image = ImageRef(sha256="ab" * 32, mime_type="image/png", size=10, width=1, height=1)
    async with EventBus() as bus:
        with capture_logs() as first:
            await bus.publish(TurnImage(session_id="s1", turn=1, image=image))
            await bus.publish(TurnImage(session_id="s1", turn=2, image=image))
        with capture_logs() as second:
            await bus.publish(TurnImage(session_id="s1", turn=3, image=image))
        saved = structlog.get_config()
        try:
            with capture_logs() as third:
                structlog.configure(
                    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
                )
                await bus.publish(TurnImage(session_id="s1", turn=4, image=image))
        finally:
            structlog.configure(**saved)
    assert [e["turn"] for e in first] == [1, 2]
    assert [e["turn"] for e in second] == [3]
    assert third == []


def test_no_event_type_can_carry_bytes() -> None:
    """No field of any event type (nested structs included) can hold bytes, so logs cannot."""

    def walk(t: msgspec.inspect.Type, seen: set[type]) -> Iterator[msgspec.inspect.Type]:
        yield t
        if isinstance(t, msgspec.inspect.StructType):
            if t.cls in seen:
                return
            seen.add(t.cls)
            for f in t.fields:
                yield from walk(f.type, seen)
        for attr in ("item_type", "key_type", "value_type"):
            inner = getattr(t, attr, None)
            if isinstance(inner, msgspec.inspect.Type):
                yield from walk(inner, seen)
        for inner in getattr(t, "types", ()) or ():
            yield from walk(inner, seen)

    def subclasses(cls: type) -> Iterator[type]:
        child: type
        for child in cls.__subclasses__():
            yield child
            yield from subclasses(child)

    forbidden = (
        msgspec.inspect.BytesType,
        msgspec.inspect.ByteArrayType,
        msgspec.inspect.MemoryViewType,
        msgspec.inspect.AnyType,
    )
    types = [Event, *subclasses(Event)]
    assert len(types) > 15
    for cls in types:
        found = [t for t in walk(msgspec.inspect.type_info(cls), set()) if isinstance(t, forbidden)]
        assert found == [], cls


async def test_seq_helpers_and_forget() -> None:
    """last_seq tracks each session; forget drops its window and counter."""
    async with EventBus(retain=3) as bus:
        assert (bus.last_seq("s"), bus.last_seq("s") + 1) == (0, 1)
        for _ in range(5):
            await bus.publish(delta())
        assert (bus.last_seq("s"), bus.last_seq("s") + 1) == (5, 6)
        assert [e.seq for e in bus.retained("s")] == [3, 4, 5]
        assert bus.last_seq("other") == 0
        bus.forget("s")
        assert bus.retained("s") == []
        assert (await bus.publish(delta())).seq == 1


async def test_subscribe_arguments_are_checked() -> None:
    """since_seq without a session, maxsize < 1 and unknown policies are refused."""
    async with EventBus() as bus:
        with pytest.raises(ValueError, match="session_id"):
            bus.subscribe(since_seq=3)
        with pytest.raises(ValueError, match="maxsize"):
            bus.subscribe("s", maxsize=0)
        with pytest.raises(ValueError, match="overflow"):
            bus.subscribe("s", overflow="bogus")  # type: ignore[arg-type]
