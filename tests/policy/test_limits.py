"""Tests for engine.policy._limits: FIFO slots, the in-flight cap, adaptive allowances, rates."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from engine import Closed, RateLimited, ServerError
from engine.policy import AllowanceChange, Limiter, SlotHandle

MODEL = "gemini-3-pro-image"


async def settle(rounds: int = 10) -> None:
    """Let every ready task run a few steps (no wall-clock waiting)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        """The current fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by `seconds` and yield once."""
        self.now += seconds
        await asyncio.sleep(0)


async def hold(
    limiter: Limiter, model: str, release: asyncio.Event, order: list[int], i: int
) -> None:
    """Take a slot, note the order it came in, keep it until `release` is set."""
    async with limiter.slot(model):
        order.append(i)
        await release.wait()


async def test_waiters_are_served_first_come_first_served() -> None:
    """With one slot, 50 waiters across sessions get it in the order they asked."""
    limiter = Limiter(max_in_flight=1)
    order: list[int] = []
    async with anyio.create_task_group() as tg:
        gate = asyncio.Event()
        tg.start_soon(hold, limiter, MODEL, gate, order, -1)
        await settle()
        releases = [asyncio.Event() for _ in range(50)]
        for i in range(50):
            tg.start_soon(hold, limiter, MODEL if i % 2 else "other-model", releases[i], order, i)
        await settle()
        assert limiter.waiting == 50
        gate.set()
        for ev in releases:
            await settle()
            ev.set()
    assert order == [-1, *range(50)]


async def test_a_newcomer_never_overtakes_a_waiter_when_a_slot_frees() -> None:
    """A freed slot goes to the queued waiter in the same step, before any newcomer runs."""
    limiter = Limiter(max_in_flight=1)
    order: list[int] = []
    first_out = asyncio.Event()
    never = asyncio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, limiter, MODEL, first_out, order, 0)
        await settle()
        tg.start_soon(hold, limiter, MODEL, never, order, 1)
        await settle()
        first_out.set()
        tg.start_soon(hold, limiter, MODEL, never, order, 2)  # arrives as slot 0 is freed
        await settle()
        assert order == [0, 1]
        assert limiter.total_in_flight == 1 and limiter.waiting == 1
        never.set()
    assert order == [0, 1, 2]


async def test_max_in_flight_is_never_exceeded_by_200_tasks() -> None:
    """200 concurrent requests never hold more than max_in_flight slots at once."""
    limiter = Limiter(max_in_flight=10)
    current = peak = done = 0

    async def request(i: int) -> None:
        nonlocal current, peak, done
        async with limiter.slot(MODEL if i % 3 else "other-model") as handle:
            current += 1
            peak = max(peak, current)
            for _ in range(i % 4):
                await asyncio.sleep(0)
            current -= 1
            handle.report(200)
        done += 1

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(request, i)
    assert (peak, done, limiter.total_in_flight, limiter.waiting) == (10, 200, 0, 0)


async def test_429_halves_once_per_congestion_window_and_successes_recover() -> None:
    """A burst of 429s halves the allowance once; 503 later halves again; successes add 1."""
    changes: list[AllowanceChange] = []
    limiter = Limiter(max_in_flight=16, on_change=changes.append, recover_after=2)
    handles: list[SlotHandle] = []
    release = asyncio.Event()

    async def burst() -> None:
        async with limiter.slot(MODEL) as h:
            handles.append(h)
            await release.wait()
            h.report(429, RateLimited("slow down", status=429))

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(burst)
        await settle()
        release.set()
    assert limiter.allowed(MODEL) == 8
    assert [(c.model, c.allowed_in_flight) for c in changes] == [(MODEL, 8)]
    assert "429" in changes[0].reason

    async with limiter.slot(MODEL) as h:
        h.report(503)
    assert limiter.allowed(MODEL) == 4
    for _ in range(4):
        async with limiter.slot(MODEL) as h:
            h.report(200)
    assert limiter.allowed(MODEL) == 6
    assert [c.allowed_in_flight for c in changes] == [8, 4, 5, 6]
    assert limiter.allowed("other-model") == 16


async def test_allowance_never_goes_below_min_in_flight() -> None:
    """Repeated congestion stops at min_in_flight."""
    limiter = Limiter(max_in_flight=8, min_in_flight=2)
    for _ in range(10):
        async with limiter.slot(MODEL) as h:
            h.report(429)
    assert limiter.allowed(MODEL) == 2


async def test_errors_raised_in_the_slot_are_reported_automatically() -> None:
    """Leaving the slot with a 503 ApiError counts as congestion; clean exits as success."""
    changes: list[AllowanceChange] = []
    limiter = Limiter(max_in_flight=8, recover_after=1, on_change=changes.append)
    with pytest.raises(ServerError):
        async with limiter.slot(MODEL):
            raise ServerError("unavailable", status=503)
    assert limiter.allowed(MODEL) == 4
    async with limiter.slot(MODEL):
        pass
    assert limiter.allowed(MODEL) == 5
    with pytest.raises(ConnectionError):
        async with limiter.slot(MODEL):
            raise ConnectionError("no status: neutral")
    assert [c.allowed_in_flight for c in changes] == [4, 5]


async def test_reduced_allowance_limits_only_its_model() -> None:
    """A model at its allowance waits; another model's waiter behind it goes ahead."""
    limiter = Limiter(max_in_flight=4)
    async with limiter.slot(MODEL) as h:
        h.report(429)
    async with limiter.slot(MODEL) as h:
        h.report(429)
    assert limiter.allowed(MODEL) == 1
    order: list[int] = []
    release = asyncio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, limiter, MODEL, release, order, 0)
        await settle()
        tg.start_soon(hold, limiter, MODEL, release, order, 1)
        tg.start_soon(hold, limiter, "other-model", release, order, 2)
        await settle()
        assert order == [0, 2] and limiter.in_flight(MODEL) == 1
        release.set()
    assert order == [0, 2, 1]


async def test_async_on_change_is_awaited_in_order() -> None:
    """An async on_change callback is awaited, one change after another."""
    seen: list[int] = []

    async def on_change(event: AllowanceChange) -> None:
        await asyncio.sleep(0)
        seen.append(event.allowed_in_flight)

    limiter = Limiter(max_in_flight=8, on_change=on_change)
    for _ in range(3):
        async with limiter.slot(MODEL) as h:
            h.report(429)
    assert seen == [4, 2, 1]


async def test_token_bucket_paces_requests_per_minute() -> None:
    """60 requests/minute: one slot per (fake) second once the burst of one is used."""
    fake = FakeTime()
    limiter = Limiter(requests_per_minute=60, clock=fake.clock, sleep=fake.sleep)
    granted: list[float] = []

    async def request() -> None:
        async with limiter.slot(MODEL):
            granted.append(fake.now)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(request)
    assert granted == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    # Buckets are per model: another model starts with a full one.
    async with limiter.slot("other-model"):
        assert fake.now == pytest.approx(4.0)


async def test_token_bucket_burst_and_refill() -> None:
    """A burst of 3 goes at once; idle time refills the bucket up to the burst, no more."""
    fake = FakeTime()
    limiter = Limiter(requests_per_minute=30, burst=3, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):
        async with limiter.slot(MODEL):
            pass
    assert fake.now == 0.0
    async with limiter.slot(MODEL):
        pass
    assert fake.now == pytest.approx(2.0)
    fake.now += 100.0
    for _ in range(3):
        async with limiter.slot(MODEL):
            pass
    assert fake.now == pytest.approx(102.0)
    async with limiter.slot(MODEL):
        pass
    assert fake.now == pytest.approx(104.0)


async def test_cancelled_waiter_leaves_no_slot_behind() -> None:
    """Cancelling a queued waiter removes it; the slots add up afterwards."""
    limiter = Limiter(max_in_flight=1)
    release = asyncio.Event()
    order: list[int] = []
    holder = asyncio.create_task(hold(limiter, MODEL, release, order, 0))
    waiter = asyncio.create_task(hold(limiter, MODEL, release, order, 1))
    await settle()
    assert limiter.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 0
    release.set()
    await holder
    assert (limiter.total_in_flight, limiter.in_flight(MODEL)) == (0, 0)
    with anyio.fail_after(5):
        async with limiter.slot(MODEL):
            assert limiter.total_in_flight == 1


async def test_waiter_cancelled_right_after_being_granted_gives_the_slot_back() -> None:
    """A waiter granted a slot but cancelled before it runs hands the slot on."""
    limiter = Limiter(max_in_flight=1)
    release = asyncio.Event()
    order: list[int] = []
    holder = asyncio.create_task(hold(limiter, MODEL, release, order, 0))
    doomed = asyncio.create_task(hold(limiter, MODEL, release, order, 1))
    third = asyncio.create_task(hold(limiter, MODEL, release, order, 2))
    await settle()
    release.set()
    await settle(1)  # the holder leaves and grants `doomed` its slot synchronously ...
    assert (limiter.total_in_flight, limiter.waiting) == (1, 1)
    doomed.cancel()  # ... which is cancelled before it gets to run
    await asyncio.gather(holder, third)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert order == [0, 2]
    assert limiter.total_in_flight == 0


async def test_cancelled_rate_sleeper_hands_over_to_the_next_waiter() -> None:
    """Cancelling the waiter sleeping for the rate lets the next one of its model proceed."""
    fake = FakeTime()
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await gate.wait()
        await fake.sleep(seconds)

    limiter = Limiter(requests_per_minute=60, clock=fake.clock, sleep=slow_sleep)
    async with limiter.slot(MODEL):
        pass
    got: list[int] = []

    async def request(i: int) -> None:
        async with limiter.slot(MODEL):
            got.append(i)

    first = asyncio.create_task(request(1))
    second = asyncio.create_task(request(2))
    await settle()
    assert limiter.waiting == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    await second
    assert got == [2] and limiter.waiting == 0


async def test_close_wakes_waiters_with_closed() -> None:
    """close() wakes every waiter (also one sleeping for the rate) with Closed."""
    fake = FakeTime()
    never = asyncio.Event()

    async def stuck_sleep(seconds: float) -> None:
        await never.wait()

    limiter = Limiter(max_in_flight=1, requests_per_minute=1, clock=fake.clock, sleep=stuck_sleep)
    async with limiter.slot("rated"):
        pass
    release = asyncio.Event()
    order: list[int] = []
    holder = asyncio.create_task(hold(limiter, MODEL, release, order, 0))
    await settle()
    waiters = [asyncio.create_task(hold(limiter, MODEL, release, order, i)) for i in (1, 2)]
    sleeper = asyncio.create_task(hold(limiter, "rated", release, order, 3))
    await settle()
    assert limiter.waiting == 3
    await limiter.aclose()
    results = await asyncio.gather(*waiters, sleeper, return_exceptions=True)
    assert all(isinstance(r, Closed) for r in results)
    release.set()
    await holder  # a slot already held stays valid
    assert order == [0] and limiter.total_in_flight == 0
    with pytest.raises(Closed):
        async with limiter.slot(MODEL):
            pass


async def test_report_rules() -> None:
    """report() once, before release; transport errors without a status are neutral."""
    limiter = Limiter(max_in_flight=4)
    async with limiter.slot(MODEL) as h:
        h.report(None, ConnectionError("reset"))
        with pytest.raises(RuntimeError, match="already"):
            h.report(200)
    with pytest.raises(RuntimeError, match="released"):
        h.report(200)
    assert limiter.allowed(MODEL) == 4
