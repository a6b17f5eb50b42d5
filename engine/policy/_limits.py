"""Concurrency limits: an engine-wide in-flight cap, adaptive per-model allowances, request rates.

`Limiter.slot(model)` waits until three things hold, then grants a slot:

1. fewer than `max_in_flight` requests are in flight engine-wide;
2. fewer than the model's *allowed* count are in flight for the model (adaptive, below);
3. the model's token bucket holds a token (`requests_per_minute`; 0 = unlimited; the bucket holds
   `burst` tokens, by default one second's worth and at least 1).

Order. Waiters queue in one FIFO and are granted in arrival order. A waiter is passed over only
while its *model* cannot take a request (allowance or rate exhausted); it is never overtaken by a
waiter of the same model, nor by anyone for an engine-wide slot. A slot that frees is handed to
the first eligible waiter in the same synchronous step, so a newcomer cannot barge in ahead of a
waiter however the wake-ups interleave. A cancelled waiter leaves the FIFO at once; if it was
granted in the meantime, its slot goes back.

Adaptive allowance (AIMD). A 429 or 503 reported on a slot halves its model's allowance (not below
`min_in_flight`), once per congestion window: every halving starts a new window, and congestion
reported by requests granted before it (they were sent under the old allowance) is ignored. So a
burst of 20 concurrent 429s halves once, not 20 times. Every `recover_after` successes add 1, up
to `max_in_flight`. Each change is reported as an `AllowanceChange` (plain data; the engine
publishes it as the engine-wide `limits.changed` event) to `on_change`, in order; async
callbacks are awaited when a slot is released.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import anyio

from engine._exceptions import Closed
from engine._logs import Logger

__all__ = ["AllowanceChange", "Limiter", "SlotHandle"]

_CONGESTION: Final = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class AllowanceChange:
    """The allowed in-flight count of a model changed (plain data: the engine publishes it as
    the engine-wide `limits.changed` event)."""

    model: str
    allowed_in_flight: int
    reason: str


OnChange = Callable[[AllowanceChange], Awaitable[None] | None]

_log = Logger("nanoedit.limits")


class _Bucket:
    """A token bucket: `rate` tokens per second, at most `capacity` kept."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was taken, else the seconds until one will be there."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Model:
    __slots__ = ("allowed", "bucket", "epoch", "in_flight", "successes")

    def __init__(self, allowed: int, bucket: _Bucket | None) -> None:
        self.allowed = allowed
        self.in_flight = 0
        self.epoch = 0  # congestion window: grows at every halving
        self.successes = 0
        self.bucket = bucket


class _Waiter:
    __slots__ = ("delay", "epoch", "future", "granted", "model", "sleeping")

    def __init__(self, model: str) -> None:
        self.model = model
        self.future: asyncio.Future[None] | None = None
        self.granted = False
        self.epoch = 0
        self.delay: float | None = None  # set when only the rate holds it back: sleep this long
        self.sleeping = False


class SlotHandle:
    """A granted slot. `report()` what the request got back; leaving the `async with` frees it."""

    __slots__ = ("_limiter", "_reported", "_waiter", "released", "status")

    def __init__(self, limiter: Limiter, waiter: _Waiter) -> None:
        self._limiter = limiter
        self._waiter = waiter
        self._reported = False
        self.released = False
        self.status: int | None = None  # what `report` was told (a cluster shares 429/503)

    @property
    def model(self) -> str:
        """The model this slot is for."""
        return self._waiter.model

    @property
    def reported(self) -> bool:
        """Whether `report` was called."""
        return self._reported

    def report(self, status: int | None, error: BaseException | None = None) -> None:
        """Record the outcome: an HTTP status (429/503 shrink the allowance; 2xx grows it back).

        `status` None with an `error` uses the error's `status` attribute if it has one (an
        ApiError); None with no error is a success. Other statuses and transport errors leave
        the allowance alone. Call at most once, before the slot is released.
        """
        if self.released:
            raise RuntimeError("report() after the slot was released")
        if self._reported:
            raise RuntimeError("report() was already called for this slot")
        self._reported = True
        if status is None and error is not None:
            found = getattr(error, "status", None)
            status = found if isinstance(found, int) else None
            if status is None:
                return  # a transport error says nothing about the server's capacity
        self.status = status
        self._limiter._report(self._waiter, status)


class _Slot:
    __slots__ = ("_handle", "_limiter", "_model")

    def __init__(self, limiter: Limiter, model: str) -> None:
        self._limiter = limiter
        self._model = model
        self._handle: SlotHandle | None = None

    async def __aenter__(self) -> SlotHandle:
        self._handle = await self._limiter._acquire(self._model)
        return self._handle

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handle = self._handle
        if handle is None:
            return
        if not handle.reported:
            if exc is None:
                handle.report(200)
            elif isinstance(exc, Exception):
                handle.report(None, exc)
        handle.released = True
        self._limiter._release(handle._waiter.model)
        await self._limiter._notify()


class Limiter:
    """Grants request slots under the engine-wide cap, per-model allowances and rates (FIFO)."""

    def __init__(
        self,
        max_in_flight: int = 64,
        requests_per_minute: float = 0.0,
        *,
        on_change: OnChange | None = None,
        min_in_flight: int = 1,
        recover_after: int = 10,
        burst: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not 1 <= min_in_flight <= max_in_flight:
            raise ValueError("min_in_flight must be between 1 and max_in_flight")
        if requests_per_minute < 0:
            raise ValueError("requests_per_minute must be >= 0 (0 = unlimited)")
        if recover_after < 1:
            raise ValueError("recover_after must be at least 1")
        self._max = max_in_flight
        self._min = min_in_flight
        self._rate = requests_per_minute / 60.0
        self._burst = burst if burst > 0 else max(1.0, self._rate)
        self._recover_after = recover_after
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._models: dict[str, _Model] = {}
        self._fifo: deque[_Waiter] = deque()
        self._total = 0
        self._closed = False
        self._changes: deque[AllowanceChange] = deque()
        self._notifying = False

    # -- public state -------------------------------------------------------------------------

    @property
    def max_in_flight(self) -> int:
        """The engine-wide cap."""
        return self._max

    def allowed(self, model: str) -> int:
        """The model's current adaptive allowance of requests in flight."""
        st = self._models.get(model)
        return self._max if st is None else st.allowed

    def in_flight(self, model: str) -> int:
        """Requests of `model` holding a slot now."""
        st = self._models.get(model)
        return 0 if st is None else st.in_flight

    @property
    def total_in_flight(self) -> int:
        """Requests holding a slot now, all models."""
        return self._total

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return len(self._fifo)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    # -- slots --------------------------------------------------------------------------------

    def slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]:
        """``async with limiter.slot(model) as handle:`` waits for a slot and frees it after."""
        return _Slot(self, model)

    def _model(self, model: str) -> _Model:
        st = self._models.get(model)
        if st is None:
            bucket = _Bucket(self._rate, self._burst, self._clock()) if self._rate > 0 else None
            st = self._models[model] = _Model(self._max, bucket)
        return st

    async def _acquire(self, model: str) -> SlotHandle:
        if self._closed:
            raise Closed("the limiter is closed")
        self._model(model)
        w = _Waiter(model)
        self._fifo.append(w)
        self._pump()
        try:
            while not w.granted:
                if self._closed:
                    raise Closed("the limiter is closed")
                delay, w.delay = w.delay, None
                await self._wait(w, delay)
                if delay is not None:
                    # The rate was what held us back: the bucket may have refilled.
                    self._pump()
        except BaseException:
            if w.granted:
                self._release(model)
            else:
                try:
                    self._fifo.remove(w)
                except ValueError:
                    pass  # close() emptied the FIFO
                else:
                    self._pump()  # we may have been the one the others of our model waited on
            raise
        return SlotHandle(self, w)

    async def _wait(self, w: _Waiter, delay: float | None) -> None:
        fut = w.future = asyncio.get_running_loop().create_future()
        try:
            if delay is None:
                await fut
                return
            w.sleeping = True
            # Sleep until the bucket refills, unless granted or closed first.
            alarm = asyncio.ensure_future(self._alarm(fut, delay))
            try:
                await fut
            finally:
                alarm.cancel()
                await asyncio.gather(alarm, return_exceptions=True)
        finally:
            w.future = None
            w.sleeping = False

    async def _alarm(self, fut: asyncio.Future[None], delay: float) -> None:
        await self._sleep(delay)
        if not fut.done():
            fut.set_result(None)

    def _pump(self) -> None:
        # Grant slots to waiters in FIFO order while the engine-wide cap allows; a waiter whose
        # model is exhausted is passed over, and so are the later waiters of that model.
        fifo = self._fifo
        if not fifo or self._total >= self._max:
            return
        skipped: deque[_Waiter] = deque()
        blocked: set[str] = set()
        now: float | None = None
        while fifo and self._total < self._max:
            w = fifo.popleft()
            model = w.model
            if model in blocked:
                skipped.append(w)
                continue
            st = self._models[model]
            if st.in_flight >= st.allowed:
                blocked.add(model)
                skipped.append(w)
                continue
            if st.bucket is not None:
                if now is None:
                    now = self._clock()
                wait = st.bucket.take(now)
                if wait > 0:
                    blocked.add(model)
                    skipped.append(w)
                    if not w.sleeping:
                        # The first waiter of the model sleeps until the refill, then pumps.
                        w.delay = wait
                        _wake(w)
                    continue
            st.in_flight += 1
            self._total += 1
            w.granted = True
            w.epoch = st.epoch
            _wake(w)
        if skipped:
            skipped.extend(fifo)
            self._fifo = skipped

    def _release(self, model: str) -> None:
        st = self._models[model]
        st.in_flight -= 1
        self._total -= 1
        self._pump()

    # -- adaptation ---------------------------------------------------------------------------

    def _report(self, w: _Waiter, status: int | None) -> None:
        st = self._models[w.model]
        if status in _CONGESTION:
            st.successes = 0
            if w.epoch != st.epoch:
                return  # sent under an allowance that was already cut
            st.epoch += 1
            halved = max(self._min, st.allowed // 2)
            if halved != st.allowed:
                st.allowed = halved
                self._changed(w.model, st.allowed, f"{status} from the server: halved")
        elif status is None or 200 <= status < 300:
            st.successes += 1
            if st.successes >= self._recover_after and st.allowed < self._max:
                st.successes = 0
                st.allowed += 1
                self._changed(w.model, st.allowed, f"{self._recover_after} successes: +1")
                self._pump()

    def _changed(self, model: str, allowed: int, reason: str) -> None:
        _log.info("limits.changed", model=model, allowed_in_flight=allowed, reason=reason)
        self._changes.append(AllowanceChange(model, allowed, reason))

    async def _notify(self) -> None:
        # One notifier at a time, so that on_change sees changes in the order they happened.
        if self._notifying or not self._changes:
            return
        self._notifying = True
        try:
            while self._changes:
                event = self._changes.popleft()
                if self._on_change is None:
                    continue
                try:
                    result = self._on_change(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    _log.exception("limits.on_change_failed", model=event.model)
        finally:
            self._notifying = False

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new slots and wake every waiter with Closed (slots held stay valid)."""
        self._closed = True
        fifo, self._fifo = self._fifo, deque()
        for w in fifo:
            _wake(w)

    async def aclose(self) -> None:
        """`close()`, then deliver the pending `LimitsChanged` notifications."""
        self.close()
        await self._notify()

    async def __aenter__(self) -> Limiter:
        """The limiter itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the limiter."""
        await self.aclose()


def _wake(w: _Waiter) -> None:
    fut = w.future
    if fut is not None and not fut.done():
        fut.set_result(None)
