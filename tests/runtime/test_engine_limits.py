"""Concurrency limits through the Engine: adaptive allowance, the in-flight cap at the server,
FIFO across sessions, graceful close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web

from engine import Closed, Engine, RateLimited, RetryPolicy, Session, Turn
from engine.emulator import Emulator, EmulatorSettings, create_app
from engine.events import Event, LimitsChanged
from sessions import MemoryStore
from tests.conftest import EmulatorFactory, config_for


def collect(engine: Engine, pattern: str = "*") -> list[Event]:
    """Every event matching `pattern` the engine publishes from now on."""
    seen: list[Event] = []
    engine.bus.on(pattern, seen.append)
    return seen


async def until(condition: Callable[[], bool]) -> None:
    """Poll in tiny sleeps until `condition` holds (at most ~5 s)."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def queued(engine: Engine, n: int) -> Callable[[], bool]:
    """One request holds the only slot and `n` wait behind it."""
    return lambda: engine.limiter.total_in_flight == 1 and engine.limiter.waiting == n


def sent(emu: Emulator) -> int:
    """Generate requests the emulator has received (streamed or not)."""
    requests = emu.stats()["requests"]
    return int(requests["generateContent"] + requests["streamGenerateContent"])


# --- adaptive allowance ----------------------------------------------------------------------


async def test_429s_halve_the_allowance_and_successes_grow_it_back(
    make_emulator: EmulatorFactory,
) -> None:
    """Half the requests get 429 (retry 0s): the allowance halves, then recovers once clean."""
    emu = await make_emulator(faults="rate=0.5:429:retry=0")
    retry = RetryPolicy(max_attempts=6, base_delay=0.001, max_delay=0.01)
    async with Engine(config_for(emu.base_url, max_in_flight=8, retry=retry)) as e:
        changes = collect(e, "limits.changed")
        model = e.config.model
        sessions = [await e.create_session() for _ in range(24)]
        results = await asyncio.gather(
            *(s.send("A red circle") for s in sessions), return_exceptions=True
        )
        assert e.limiter.total_in_flight == 0 and e.limiter.in_flight(model) == 0
        phase1_changes = list(changes)
        low = e.limiter.allowed(model)
        phase1 = sent(emu)
        # Once the server stops refusing, every 10 successes give one slot back.
        emu.set_faults("")
        for _ in range(12):
            if e.limiter.allowed(model) == 8:
                break
            more = [await e.create_session() for _ in range(16)]
            await asyncio.gather(*(s.send("A red circle") for s in more))
        assert e.limiter.allowed(model) == 8
        assert e.limiter.total_in_flight == 0 and e.limiter.waiting == 0
    attempts = succeeded = 0
    for result in results:
        if isinstance(result, Turn):
            succeeded += 1
        else:
            assert isinstance(result, RateLimited), result
            assert result.attempts == retry.max_attempts
        attempts += result.attempts
    # Every attempt was one request at the server; all but the successful ones got a 429.
    assert attempts == phase1
    assert emu.stats()["faults"]["429"] == phase1 - succeeded > 0
    assert any(isinstance(ev, LimitsChanged) and "halved" in ev.reason for ev in phase1_changes)
    previous = 8
    for ev in changes:
        assert isinstance(ev, LimitsChanged) and ev.session_id == "*" and ev.model == model
        if "halved" in ev.reason:
            assert ev.allowed_in_flight == max(1, previous // 2)
        else:
            assert ev.allowed_in_flight == previous + 1
        previous = ev.allowed_in_flight
    assert low < 8 and previous == 8


# --- the in-flight cap, as the server sees it --------------------------------------------------


class Gauge:
    """Counts requests inside the server's handlers: now, and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.total = 0

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Count the request while its handler runs (the whole answer, streamed or not)."""
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self.now -= 1


@pytest.fixture
async def gauged(no_leaked_tasks: None) -> AsyncIterator[tuple[str, Gauge]]:
    """The emulator app (latency 0.05 s) behind a counting middleware, on 127.0.0.1."""
    gauge = Gauge()
    app = create_app(EmulatorSettings(flat=True, latency=0.05))
    app.middlewares.append(gauge.middleware)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", gauge
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [True, False])
async def test_server_never_sees_more_than_max_in_flight(
    gauged: tuple[str, Gauge], stream: bool
) -> None:
    """20 sessions at once, max_in_flight=4: the server sees at most 4 at once (and reaches 4)."""
    base_url, gauge = gauged
    async with Engine(config_for(base_url, max_in_flight=4, stream=stream)) as e:
        sessions = [await e.create_session() for _ in range(20)]
        turns = await asyncio.gather(*(s.send("A yellow star") for s in sessions))
        assert e.limiter.total_in_flight == 0
    assert all(t.index == 1 for t in turns)
    assert gauge.total == 20 and gauge.now == 0
    assert gauge.peak == 4


async def test_turns_are_served_first_come_first_served_across_sessions(
    make_emulator: EmulatorFactory,
) -> None:
    """max_in_flight=1: turns reach the server in the order they asked for the slot."""
    emu = await make_emulator(latency=0.05, record_requests=True)
    async with Engine(config_for(emu.base_url, max_in_flight=1)) as e:
        sessions = [await e.create_session() for _ in range(5)]
        order = [3, 0, 4, 1, 2]
        tasks = []
        for n, i in enumerate(order):
            tasks.append(asyncio.create_task(sessions[i].send(f"A mug for session {i}")))
            # The first takes the slot; each later one queues behind those before it.
            await until(queued(e, n))
        await asyncio.gather(*tasks)
    served = [msgspec.json.decode(r.body)["contents"][0]["parts"][0]["text"] for r in emu.requests]
    assert served == [f"A mug for session {i}" for i in order]


# --- graceful close ----------------------------------------------------------------------------


async def test_aclose_lets_in_flight_turns_finish_within_the_deadline(
    make_emulator: EmulatorFactory,
) -> None:
    """aclose(deadline=1.0) with 5 turns in flight (0.3 s each): all complete and are committed."""
    emu = await make_emulator(latency=0.3)
    store = MemoryStore()
    e = Engine(config_for(emu.base_url), store=store)
    async with e:
        completed = collect(e, "turn.completed")
        sessions = [await e.create_session() for _ in range(5)]
        tasks = [asyncio.create_task(s.send("A green triangle")) for s in sessions]
        await until(lambda: sent(emu) == 5)
        await e.aclose(deadline=1.0)
        turns = [t.result() for t in tasks]  # all done: aclose waited for them
    assert [t.index for t in turns] == [1] * 5
    assert sorted(ev.session_id for ev in completed) == sorted(s.id for s in sessions)
    for s in sessions:
        state = await store.load(s.id)
        assert len(state.path()) == 1
    with pytest.raises(Closed):
        await sessions[0].send("Add a sprig")


async def test_aclose_past_the_deadline_cancels_and_commits_nothing(
    make_emulator: EmulatorFactory,
) -> None:
    """aclose(deadline=0.2) with 2 s turns: each ends turn.cancelled, send() raises Closed."""
    emu = await make_emulator(latency=2.0)
    store = MemoryStore()
    e = Engine(config_for(emu.base_url), store=store)
    async with e:
        seen = collect(e, "turn.*")
        sessions = [await e.create_session() for _ in range(5)]
        sends = [asyncio.create_task(s.send("A green triangle")) for s in sessions[:3]]
        streams = [asyncio.create_task(stream_types(s)) for s in sessions[3:]]
        await until(lambda: sent(emu) == 5)
        await e.aclose(deadline=0.2)
        assert e.limiter.total_in_flight == 0
    for send in sends:
        # The caller was not cancelled: it learns that the engine closed under its turn.
        assert isinstance(send.exception(), Closed)
    for streamed in streams:
        assert streamed.result()[-1] == "turn.cancelled"
    for s in sessions:
        terminal = [ev.type for ev in seen if ev.session_id == s.id][-1]
        assert terminal == "turn.cancelled"
        state = await store.load(s.id)
        assert state.path() == [] and state.record.head is None
        assert s.contents() == []
    with pytest.raises(Closed):
        await sessions[0].send("A mug")


async def stream_types(session: Session) -> list[str]:
    """The types of the events a streamed turn yields."""
    types = []
    async with session.stream("A green triangle") as events:
        async for event in events:
            types.append(event.type)
    return types
