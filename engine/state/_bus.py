"""The event bus: per-session sequence numbers, a replay window, bounded subscribers, callbacks.

`publish` numbers an event, retains it, logs it and hands it to every matching subscriber in one
synchronous step, so events of one session reach every subscriber in `seq` order whatever the
number of concurrent publishers. Delivery to a queue subscriber is a deque append plus, when its
reader is parked, one future wake-up: no task per event, no copies. The only await in `publish` is
backpressure from subscribers whose overflow policy is "block".

Subscriber overflow policies (each subscriber has its own buffer of `maxsize` events):

- ``"block"``: `publish` waits until the subscriber has room; only that publisher waits, and the
  event is already queued for the subscriber, so cancelling the waiting publisher loses nothing.
- ``"drop_oldest"``: the oldest buffered event is dropped; the next read first returns an
  `EventsMissed` marker counting the events dropped since the previous marker.
- ``"disconnect"``: the subscriber is removed at the first overflow; its iterator yields what was
  already buffered, then raises `SubscriberDisconnected(missed=1)`. To resume, subscribe again with
  `since_seq` = the last seq seen (the replay window may still hold the rest).

`EventsMissed` markers are not published: they have `seq` 0, and `session_id` is the subscription's
session (or ``"*"`` for a subscription to all sessions).

Every subscriber gets the same event object (no copies): treat events as read-only. The bus is
not thread-safe; use it from its event loop's thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Literal, TypeGuard

import msgspec

from engine._exceptions import Closed, SubscriberDisconnected
from engine._logs import Logger
from engine.events import ENGINE_WIDE, Event, EventsMissed

__all__ = ["EventBus", "Handler", "Overflow", "Subscription"]

Overflow = Literal["block", "drop_oldest", "disconnect"]
Handler = Callable[[Event], None] | Callable[[Event], Awaitable[None]]

_OVERFLOWS: Final = ("block", "drop_oldest", "disconnect")

# Log level per event type: per-chunk events are debug so that an INFO-level production config
# pays (almost) nothing for them; failures are warnings.
_LEVELS: Final[dict[str, str]] = {
    "turn.text_delta": "debug",
    "turn.image": "debug",
    "turn.retrying": "warning",
    "turn.failed": "warning",
    "budget.warning": "warning",
    "budget.exceeded": "warning",
    "events.missed": "warning",
}
_LEVEL_NUMBERS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
}

_to_builtins = msgspec.to_builtins
_now = time.time


_TAGS: dict[type[Event], str] = {}


def _tag(event: Event) -> str:
    cls = type(event)
    tag = _TAGS.get(cls)
    if tag is None:
        found = cls.__struct_config__.tag
        if not isinstance(found, str):
            raise TypeError(f"{cls.__name__} is not a tagged event type")
        tag = _TAGS[cls] = found
    return tag


def _compile(patterns: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]] | None:
    """Exact types and prefixes for `patterns`; None means every type."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for pattern in patterns:
        if pattern == "*":
            return None
        if pattern.endswith(".*"):
            prefixes.append(pattern[:-1])  # "turn.*" -> "turn."
        elif "*" in pattern:
            raise ValueError(
                f"bad event type pattern {pattern!r}: use 'turn.completed' or 'turn.*'"
            )
        else:
            exact.add(pattern)
    if not exact and not prefixes:
        return None
    return frozenset(exact), tuple(prefixes)


class _Filter:
    """A precompiled type filter with a per-type cache, so matching costs one dict lookup."""

    __slots__ = ("cache", "exact", "prefixes")

    def __init__(self, exact: frozenset[str], prefixes: tuple[str, ...]) -> None:
        self.exact = exact
        self.prefixes = prefixes
        self.cache: dict[str, bool] = {}

    def learn(self, tag: str) -> bool:
        ok = tag in self.exact or tag.startswith(self.prefixes)
        self.cache[tag] = ok
        return ok


def _make_filter(types: Sequence[str]) -> _Filter | None:
    if isinstance(types, str):
        types = (types,)  # a lone pattern is an easy mistake; a str is a Sequence[str]
    compiled = _compile(types)
    return None if compiled is None else _Filter(*compiled)


def _is_async(handler: Handler) -> TypeGuard[Callable[[Event], Awaitable[None]]]:
    if inspect.iscoroutinefunction(handler):
        return True
    # An object with an `async def __call__`.
    return not inspect.isroutine(handler) and inspect.iscoroutinefunction(type(handler).__call__)


class _SessionLog:
    __slots__ = ("seq", "window")

    def __init__(self, retain: int) -> None:
        self.seq = 0
        self.window: deque[Event] = deque(maxlen=retain)


class Subscription:
    """A bounded, per-subscriber event buffer: an async context manager and async iterator.

    Leaving the `async with` unsubscribes. Iteration ends when the bus closes (after the buffered
    events), and raises `SubscriberDisconnected` after an overflow with policy "disconnect".
    """

    __slots__ = (
        "_bus",
        "_closed",
        "_entered",
        "_error",
        "_filter",
        "_maxsize",
        "_missed",
        "_pending",
        "_reader",
        "_replay",
        "_since_seq",
        "buf",
        "overflow",
        "session_id",
    )

    def __init__(
        self,
        bus: EventBus,
        session_id: str | None,
        types: Sequence[str],
        since_seq: int | None,
        maxsize: int,
        overflow: Overflow,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {', '.join(_OVERFLOWS)}, not {overflow!r}")
        if since_seq is not None and session_id is None:
            raise ValueError("since_seq needs a session_id: seq numbers are per session")
        self._bus = bus
        self.session_id = session_id
        self.overflow = overflow
        self._filter = _make_filter(types)
        self._maxsize = maxsize
        self._since_seq = since_seq
        self.buf: deque[Event] = deque()
        # Events waiting for room, in order (policy "block"), with their publisher's future.
        self._pending: deque[tuple[Event, asyncio.Future[None] | None]] = deque()
        self._replay: deque[Event] = deque()
        self._missed = 0
        self._reader: asyncio.Future[None] | None = None
        self._error: SubscriberDisconnected | None = None
        self._closed = False
        self._entered = False

    # -- context manager ----------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        """Register with the bus (and snapshot the replay window in the same step)."""
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Unsubscribe; publishers blocked on this subscriber go on."""
        self.close()

    def open(self) -> None:
        """Register without `async with` (call `close()` when done)."""
        if self._entered:
            raise RuntimeError("a Subscription can be entered only once")
        self._entered = True
        self._bus._register(self)

    def close(self) -> None:
        """Unsubscribe and drop whatever is buffered."""
        self._bus._unregister(self)
        self._finish()
        self.buf.clear()
        self._replay.clear()

    def _finish(self) -> None:
        # No more events will come: events waiting for room join the buffer (the reader drains
        # them all), their publishers and the reader wake up.
        self._closed = True
        pending = self._pending
        while pending:
            event, fut = pending.popleft()
            self.buf.append(event)
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._wake()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(None)

    @property
    def waiting(self) -> bool:
        """True while a reader waits for the next event."""
        return self._reader is not None

    @property
    def pending(self) -> int:
        """Events buffered and not read yet (replay and events waiting for room included)."""
        return len(self.buf) + len(self._pending) + len(self._replay)

    # -- delivery (called by the bus, synchronously) ------------------------------------------

    def _accepts(self, tag: str) -> bool:
        f = self._filter
        if f is None:
            return True
        ok = f.cache.get(tag)
        return f.learn(tag) if ok is None else ok

    def _overflowed(self, event: Event, wait: bool) -> asyncio.Future[None] | None:
        # Slow path of delivery: the buffer is full.
        if self.overflow == "block":
            fut = asyncio.get_running_loop().create_future() if wait else None
            self._pending.append((event, fut))
            return fut
        if self.overflow == "drop_oldest":
            self.buf.popleft()
            self._missed += 1
            self.buf.append(event)
            return None
        # disconnect
        self._error = SubscriberDisconnected(
            f"subscriber fell {self._maxsize} events behind and was disconnected", missed=1
        )
        self._bus._unregister(self)
        self._wake()
        return None

    def _admit(self) -> None:
        # Move events waiting for room into the buffer, in order, and release their publishers.
        buf, pending, maxsize = self.buf, self._pending, self._maxsize
        while pending and len(buf) < maxsize:
            event, fut = pending.popleft()
            buf.append(event)
            if fut is not None and not fut.done():
                fut.set_result(None)

    # -- iteration ----------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        """The subscription is its own iterator."""
        return self

    async def __anext__(self) -> Event:
        """The next event: replayed ones first, then a missed-marker if any, then live ones."""
        if not self._entered:
            raise RuntimeError("use `async with bus.subscribe(...) as events:` before iterating")
        buf = self.buf
        while True:
            if self._replay:
                return self._replay.popleft()
            if self._missed:
                missed, self._missed = self._missed, 0
                return EventsMissed(session_id=self.session_id or ENGINE_WIDE, missed=missed)
            if buf:
                event = buf.popleft()
                if self._pending:
                    self._admit()
                return event
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            if self._reader is not None:
                raise RuntimeError("another task is already reading this subscription")
            reader = self._reader = asyncio.get_running_loop().create_future()
            try:
                await reader
            finally:
                self._reader = None


class _SyncHandler:
    __slots__ = ("filter", "handler", "name", "session_id")

    def __init__(self, handler: Callable[[Event], Any], f: _Filter | None, sid: str | None) -> None:
        self.handler = handler
        self.filter = f
        self.session_id = sid
        self.name = getattr(handler, "__qualname__", type(handler).__qualname__)


class EventBus:
    """Numbers, retains, logs and fans out events; see the module docstring for the guarantees.

    `retain` is the replay window per session (events kept for `since_seq`). Use as an async
    context manager, or call `aclose()`, to stop the workers of async `on` handlers.
    """

    def __init__(self, retain: int = 1024, max_windows: int = 10_000) -> None:
        if retain < 0 or max_windows < 1:
            raise ValueError("retain must be >= 0 and max_windows >= 1")
        self._retain = retain
        # Replay windows of the sessions that published most recently, at most `max_windows`;
        # an idle session beyond that keeps only its last seq (numbering never restarts), and
        # a subscriber asking it for replay gets an events.missed marker.
        self._max_windows = max_windows
        self._logs: OrderedDict[str, _SessionLog] = OrderedDict()
        self._dormant: dict[str, int] = {}
        # Copy-on-write tuples: delivery iterates a stable snapshot even if a subscriber is
        # removed (disconnect) in the middle of it.
        self._all_subs: tuple[Subscription, ...] = ()
        self._session_subs: dict[str, tuple[Subscription, ...]] = {}
        self._targets: dict[str, tuple[Subscription, ...]] = {}
        self._handlers: tuple[_SyncHandler, ...] = ()
        self._workers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._in_handlers = False
        self._deferred: deque[Event] = deque()
        self._logger = Logger("nanoedit.events")
        self._gate_for: object = None
        self._gate: dict[type[Event], tuple[str, str | None]] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        """The bus itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bus."""
        await self.aclose()

    async def aclose(self) -> None:
        """End every subscription (after its buffered events), stop handler workers, refuse more.

        Blocked publishers are released. When this returns, no task of the bus is left.
        """
        self._closed = True
        for sub in self._subscriptions():
            sub._finish()
        self._all_subs = ()
        self._session_subs.clear()
        self._targets.clear()
        self._handlers = ()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    @property
    def closed(self) -> bool:
        """Whether `aclose()` was called."""
        return self._closed

    # -- sequence numbers ---------------------------------------------------------------------

    def last_seq(self, session_id: str) -> int:
        """The seq of the session's last published event (0: none yet)."""
        log = self._logs.get(session_id)
        return self._dormant.get(session_id, 0) if log is None else log.seq

    def _open_log(self, sid: str) -> _SessionLog:
        log = self._logs[sid] = _SessionLog(self._retain)
        log.seq = self._dormant.pop(sid, 0)
        if len(self._logs) > self._max_windows:
            idle, old = self._logs.popitem(last=False)
            self._dormant[idle] = old.seq
        return log

    def retained(self, session_id: str) -> list[Event]:
        """The session's replay window, oldest first."""
        log = self._logs.get(session_id)
        return [] if log is None else list(log.window)

    def forget(self, session_id: str) -> None:
        """Drop a closed session's window and counter (its seq starts at 1 again if reused).

        Live subscriptions to the session are left alone.
        """
        self._logs.pop(session_id, None)
        self._dormant.pop(session_id, None)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, event: Event) -> Event:
        """Number, retain, log and deliver `event`; wait only for "block" subscribers' room.

        The bus takes ownership of `event`: it sets `seq` and `ts` on it and returns it.
        """
        waits = self._emit(event, True, True)
        if waits is not None:
            for fut in waits:
                await fut
        return event

    def _emit(self, event: Event, wait: bool, number: bool) -> list[asyncio.Future[None]] | None:
        # The hot path of the bus, kept in one function: numbering, retention, the log line and
        # delivery to every queue subscriber, all before any await.
        if self._closed:
            raise Closed("the event bus is closed")
        if number:
            # Numbering and retention happen before delivery and before any await: concurrent
            # publishers can never reorder a session's events.
            sid = event.session_id
            log = self._logs.get(sid)
            if log is None:
                log = self._open_log(sid)
            else:
                self._logs.move_to_end(sid)
            seq = log.seq + 1
            log.seq = seq
            event.seq = seq
            event.ts = _now()
            log.window.append(event)
            if self._in_handlers:
                # A sync handler published from inside delivery: deliver once the current event
                # is delivered, so that everybody still sees seq order.
                self._deferred.append(event)
                return None
        # One log line per event; `_gate` maps an event class to its tag and enabled log method.
        logger = self._logger.get()
        gate = self._gate.get(type(event)) if logger is self._gate_for else None
        if gate is None:
            gate = self._log_gate(logger, event)
        tag, method = gate
        if method is not None:
            # Fields only (session_id, turn, seq, ts, ...) as JSON-ready builtins: events never
            # hold bytes or keys.
            fields = _to_builtins(event)
            del fields["type"]
            getattr(logger, method)(tag, **fields)
        waits: list[asyncio.Future[None]] | None = None
        for sub in self._targets.get(event.session_id, self._all_subs):
            f = sub._filter
            if f is not None:
                ok = f.cache.get(tag)
                if not (f.learn(tag) if ok is None else ok):
                    continue
            buf = sub.buf
            # Fast path, inlined: room. (Events waiting for room exist only while the buffer is
            # full: every read moves one in. So room means nobody is queued before us.)
            if len(buf) < sub._maxsize:
                buf.append(event)
                reader = sub._reader
                if reader is not None:
                    sub._reader = None
                    if not reader.done():
                        reader.set_result(None)
                continue
            fut = sub._overflowed(event, wait)
            if fut is not None:
                if waits is None:
                    waits = [fut]
                else:
                    waits.append(fut)
        if self._handlers:
            self._call_handlers(event, tag)
        return waits

    def _call_handlers(self, event: Event, tag: str) -> None:
        # Handlers are the only user code that runs inside delivery; events they publish are
        # numbered at once but delivered after this one.
        self._in_handlers = True
        try:
            self._run_handlers(event, tag)
        finally:
            self._in_handlers = False
        deferred = self._deferred
        while deferred:
            self._emit(deferred.popleft(), False, False)

    def _run_handlers(self, event: Event, tag: str) -> None:
        sid = event.session_id
        for h in self._handlers:
            if h.session_id is not None and h.session_id != sid:
                continue
            f = h.filter
            if f is not None:
                ok = f.cache.get(tag)
                if not (f.learn(tag) if ok is None else ok):
                    continue
            try:
                result = h.handler(event)
                if inspect.isawaitable(result):
                    # Looked sync at registration but returned an awaitable: never awaited.
                    if inspect.iscoroutine(result):
                        result.close()
                    raise TypeError("sync handler returned an awaitable; register an async def")
            except Exception:
                self._logger.get().exception(
                    "bus.handler_failed",
                    handler=h.name,
                    event_type=tag,
                    session_id=sid,
                    turn=event.turn,
                    seq=event.seq,
                )

    def _log_gate(self, logger: object, event: Event) -> tuple[str, str | None]:
        # With `cache_logger_on_first_use` the bound logger is the same object every time, so
        # whether a type's level is enabled is looked up once per type; a disabled level then
        # costs one dict lookup, not a dict of the event's fields. Without caching, structlog
        # builds a new logger per call anyway, and this lookup is the smaller cost.
        if logger is not self._gate_for:
            self._gate_for = logger
            self._gate = {}
        tag = _tag(event)
        level = _LEVELS.get(tag, "info")
        check = getattr(logger, "is_enabled_for", None)
        enabled = check is None or bool(check(_LEVEL_NUMBERS[level]))
        gate = self._gate[type(event)] = (tag, level if enabled else None)
        return gate

    # -- subscribing --------------------------------------------------------------------------

    def subscribe(
        self,
        session_id: str | None = None,
        types: Sequence[str] = (),
        since_seq: int | None = None,
        maxsize: int = 1024,
        overflow: Overflow = "block",
    ) -> Subscription:
        """A subscription to one session (or all), to some types (``"turn.*"``) or all.

        With `since_seq`, the retained events after it are replayed first, then live ones, with
        nothing missed or repeated at the seam. If the window no longer reaches back to
        `since_seq`, an `EventsMissed` marker counting the lost events (of any type) comes first.
        A `since_seq` ahead of the session's last seq replays nothing.
        """
        return Subscription(self, session_id, types, since_seq, maxsize, overflow)

    def _register(self, sub: Subscription) -> None:
        # Registration and the window snapshot happen in one synchronous step: the seam.
        if self._closed:
            raise Closed("the event bus is closed")
        sid = sub.session_id
        since = sub._since_seq
        if since is not None and sid is not None:
            log = self._logs.get(sid)
            if log is None and sid in self._dormant:
                log = _SessionLog(0)  # an idle session's window was dropped: only its seq
                log.seq = self._dormant[sid]
            if log is not None:
                window = log.window
                first = window[0].seq if window else log.seq + 1
                if since < first - 1:
                    # The marker goes before the replay: it stands for the oldest events.
                    sub._replay.append(EventsMissed(session_id=sid, missed=first - 1 - since))
                sub._replay.extend(e for e in window if e.seq > since and sub._accepts(_tag(e)))
        if sid is None:
            self._all_subs = (*self._all_subs, sub)
        else:
            self._session_subs[sid] = (*self._session_subs.get(sid, ()), sub)
        self._retarget(sid)

    def _unregister(self, sub: Subscription) -> None:
        sid = sub.session_id
        if sid is None:
            self._all_subs = tuple(s for s in self._all_subs if s is not sub)
        else:
            subs = self._session_subs.get(sid)
            if subs is None:
                return
            rest = tuple(s for s in subs if s is not sub)
            if rest:
                self._session_subs[sid] = rest
            else:
                del self._session_subs[sid]
        self._retarget(sid)

    def _retarget(self, sid: str | None) -> None:
        # Delivery looks up one precomputed tuple per event: all-session subscribers, then the
        # session's own. A change to the all-session list rebuilds every session's tuple.
        if sid is None:
            everyone = self._all_subs
            self._targets = {s: (*everyone, *subs) for s, subs in self._session_subs.items()}
            return
        subs = self._session_subs.get(sid)
        if subs:
            self._targets[sid] = (*self._all_subs, *subs)
        else:
            self._targets.pop(sid, None)

    def _subscriptions(self) -> list[Subscription]:
        out = list(self._all_subs)
        for subs in self._session_subs.values():
            out.extend(subs)
        return out

    @property
    def subscribers(self) -> int:
        """Queue subscriptions currently registered (async `on` handlers included)."""
        return len(self._all_subs) + sum(len(s) for s in self._session_subs.values())

    # -- callbacks ----------------------------------------------------------------------------

    def on(
        self,
        pattern: str,
        handler: Handler,
        *,
        session_id: str | None = None,
        maxsize: int = 1024,
    ) -> Callable[[], None]:
        """Call `handler` for events matching `pattern`; returns the function that unsubscribes.

        A sync handler runs inline in `publish`, in publish order; its exceptions are logged and
        swallowed. An async handler (``async def``) gets its own queue (policy "drop_oldest",
        `maxsize` events, so it also receives `EventsMissed` markers) and one worker task that
        awaits it for one event at a time: order is kept per handler, and a slow handler never
        slows publishing. Async handlers need a running event loop; `aclose()` stops them.
        """
        if self._closed:
            raise Closed("the event bus is closed")
        f = _make_filter((pattern,))
        if not _is_async(handler):
            entry = _SyncHandler(handler, f, session_id)
            self._handlers = (*self._handlers, entry)

            def unsubscribe_sync() -> None:
                self._handlers = tuple(h for h in self._handlers if h is not entry)

            return unsubscribe_sync

        sub = Subscription(self, session_id, (pattern,), None, maxsize, "drop_oldest")
        sub.open()
        name = getattr(handler, "__qualname__", type(handler).__qualname__)
        task = asyncio.get_running_loop().create_task(
            self._work(sub, handler, name), name=f"nanoedit-bus-handler-{name}"
        )
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

        def unsubscribe_async() -> None:
            # The worker finishes the event in hand, then sees the end of its subscription.
            sub.close()

        return unsubscribe_async

    async def _work(
        self, sub: Subscription, handler: Callable[[Event], Awaitable[None]], name: str
    ) -> None:
        try:
            async for event in sub:
                try:
                    await handler(event)
                except Exception:
                    self._logger.get().exception(
                        "bus.handler_failed",
                        handler=name,
                        event_type=_tag(event),
                        session_id=event.session_id,
                        turn=event.turn,
                        seq=event.seq,
                    )
        finally:
            sub.close()
