"""The engine runtime: sessions and the turn pipeline.

One turn: take the session's lock, then its store lease (other processes sharing the store wait
or get `SessionBusy` before anything is sent; the state is reloaded if one of them committed),
build a draft user Content, plan the request against the budget, get a slot from the limiter, send
(streaming when the provider can), merge the answer into one model Content, commit the turn
atomically, publish `turn.completed`, release the lease. Any failure or cancellation before the
commit leaves the session exactly as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import random
import secrets
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from engine._config import EngineConfig
from engine._exceptions import (
    ApiError,
    BudgetExceeded,
    Closed,
    ConfigError,
    NanoeditError,
    SessionBusy,
    TransportError,
)
from engine._merge import ImageDelta, TextDelta
from engine._retry import retry_delay, should_retry
from engine._transport import RequestBody, Transport
from engine.budget import Budget, CostLedger, exceeded_event, plan_request, settle_cost
from engine.bus import EventBus
from engine.catalog import ImageConfig, ModelSpec, resolve_model
from engine.events import (
    Event,
    ImageRef,
    SessionClosed,
    SessionCreated,
    SessionForked,
    SessionResumed,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
    TurnImage,
    TurnRetrying,
    TurnStarted,
    TurnTextDelta,
)
from engine.limits import Limiter
from engine.providers._base import GenerateRequest, Provider, ProviderResult
from engine.providers.gemini import GeminiProvider
from sessions import (
    Blob,
    BlobStore,
    Content,
    MemoryStore,
    Part,
    SessionRecord,
    SessionSettings,
    SessionState,
    SessionStore,
    TurnRecord,
    Usage,
    intern_turn,
    new_id,
)
from sessions import _ops as ops
from sessions._images import image_dimensions

__all__ = [
    "Engine",
    "Image",
    "Session",
    "Turn",
    "TurnStream",
    "build_user_content",
    "open_engine",
    "sniff_mime",
]

log = structlog.get_logger("nanoedit.engine")

DEFAULT_MODALITIES = ("TEXT", "IMAGE")
_TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)
# Polling for a lease another engine holds (on_busy="wait"): jittered, doubling between these.
_LEASE_POLL_MIN = 0.02
_LEASE_POLL_MAX = 1.0


def sniff_mime(data: bytes, fallback: str = "application/octet-stream") -> str:
    """The image MIME type from magic bytes."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return fallback


@dataclass(frozen=True, slots=True)
class Image:
    """One image of a turn: bytes, type, size, digest."""

    mime_type: str
    data: bytes = field(repr=False)
    width: int
    height: int
    sha256: str

    @classmethod
    def from_blob(cls, blob: Blob, digest: str | None = None) -> Image:
        """Describe an inline blob (dimensions from the header; `digest` if already known)."""
        w, h = image_dimensions(blob.data) or (0, 0)
        digest = digest or hashlib.sha256(blob.data).hexdigest()
        return cls(blob.mime_type, blob.data, w, h, digest)

    @property
    def extension(self) -> str:
        """File extension for the MIME type, with the dot."""
        return {"image/jpeg": ".jpg"}.get(self.mime_type) or (
            mimetypes.guess_extension(self.mime_type) or ".bin"
        )

    def ref(self) -> ImageRef:
        """The event-safe reference (no bytes)."""
        return ImageRef(
            sha256=self.sha256,
            mime_type=self.mime_type,
            size=len(self.data),
            width=self.width,
            height=self.height,
        )

    def save(self, path: str | Path) -> Path:
        """Write the bytes to `path`; returns the path."""
        p = Path(path)
        p.write_bytes(self.data)
        return p


@dataclass(frozen=True, slots=True)
class Turn:
    """A committed turn, as the caller sees it."""

    record: TurnRecord = field(repr=False)
    images: list[Image]
    text: str

    @classmethod
    def from_record(cls, record: TurnRecord, blobs: BlobStore | None = None) -> Turn:
        """Wrap a stored turn; `blobs` knows the digests of interned images."""
        images = [
            Image.from_blob(b, blobs.digest(b.data) if blobs else None)
            for b in record.model.images()
        ]
        return cls(record, images, record.model.text())

    @property
    def id(self) -> str:
        """The turn id."""
        return self.record.id

    @property
    def index(self) -> int:
        """Position on its branch, from 1."""
        return self.record.index

    @property
    def usage(self) -> Usage:
        """Token counts as the server reported them."""
        return self.record.usage

    @property
    def finish_reason(self) -> str | None:
        """The model's finish reason."""
        return self.record.finish_reason

    @property
    def attempts(self) -> int:
        """Attempts it took (1 = no retry)."""
        return self.record.attempts

    @property
    def latency_s(self) -> float:
        """Seconds from the start of the turn to its commit."""
        return self.record.latency_s

    @property
    def cost_usd(self) -> float:
        """Settled cost in USD."""
        return self.record.cost_usd

    @property
    def model_content(self) -> Content:
        """The model Content verbatim (signatures included)."""
        return self.record.model


ImageInput = bytes | str | Path | Blob | Image


def _image_part(image: ImageInput) -> Part:
    if isinstance(image, Blob):
        return Part(inline_data=image)
    if isinstance(image, Image):
        return Part(inline_data=Blob(mime_type=image.mime_type, data=image.data))
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
        guessed = mimetypes.guess_type(str(image))[0] or "application/octet-stream"
        return Part(inline_data=Blob(mime_type=sniff_mime(data, guessed), data=data))
    return Part(inline_data=Blob(mime_type=sniff_mime(image, "image/png"), data=bytes(image)))


def build_user_content(text: str, images: Iterable[ImageInput] = ()) -> Content:
    """The draft user Content: the text first, then the images."""
    parts = [Part(text=text)] if text else []
    parts.extend(_image_part(i) for i in images)
    if not parts:
        raise ConfigError("a turn needs text or at least one image")
    return Content(role="user", parts=parts)


class Engine:
    """Runs editing sessions against one provider; an async context manager."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        store: SessionStore | None = None,
        provider: Provider | None = None,
        close_deadline: float = 30.0,
    ) -> None:
        self.config = config if config is not None else EngineConfig()
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.bus = EventBus()
        self.limiter = Limiter(
            self.config.max_in_flight,
            self.config.requests_per_minute,
            on_change=self._publish_engine_event,
        )
        self.ledger = CostLedger()
        self.close_deadline = close_deadline
        self._provider = provider
        self._transport: Transport | None = None
        self._emulator: Any = None
        # A session's lock lives while a turn holds or waits for it; idle sessions cost nothing.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Names this engine in the store's session leases; unique per engine, not per process.
        self.lease_owner = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._turn_tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._started = False
        self._stack = AsyncExitStack()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        try:
            await self.start()
        except BaseException:
            # Whatever did start (the emulator, the transport) must not outlive a failed start.
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the transport, and the embedded emulator when the provider is `local`."""
        if self._started:
            return
        self._started = True
        cfg = self.config
        if self._provider is None:
            base_url = cfg.resolved_base_url
            if cfg.provider == "local" and not base_url:
                from engine.emulator import Emulator, EmulatorSettings

                # The emulator enforces the same body limit the engine budgets for.
                emu = Emulator(
                    EmulatorSettings.from_options(
                        cfg.emulator, max_request_bytes=cfg.max_request_bytes
                    )
                )
                base_url = await emu.start()
                self._emulator = emu
                self._stack.push_async_callback(emu.aclose)
            self._transport = Transport(
                timeouts=cfg.timeouts,
                max_connections=cfg.max_connections,
                user_agent=cfg.user_agent,
            )
            self._stack.push_async_callback(self._transport.aclose)
            self._provider = GeminiProvider(
                self._transport, base_url=base_url, api_key=cfg.api_key, name=cfg.provider
            )
        self._stack.push_async_callback(self.bus.aclose)
        log.debug("engine.started", provider=self.provider.name)

    @property
    def provider(self) -> Provider:
        """The provider requests go through."""
        if self._provider is None:
            raise Closed("engine not started: use `async with Engine(...)`")
        return self._provider

    @property
    def base_url(self) -> str | None:
        """The embedded emulator's base URL, when one runs."""
        return None if self._emulator is None else str(self._emulator.base_url)

    async def aclose(self, deadline: float | None = None) -> None:
        """Stop taking turns, let in-flight turns finish within `deadline`, cancel the rest."""
        if self._closed:
            return
        self._closed = True
        pending = {t for t in self._turn_tasks if not t.done()}
        if pending:
            wait = self.close_deadline if deadline is None else deadline
            _, late = await asyncio.wait(pending, timeout=wait)
            for t in late:
                t.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        await self.limiter.aclose()
        await self._stack.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("engine is closed")
        if not self._started:
            raise Closed("engine not started: use `async with Engine(...)`")

    async def _publish_engine_event(self, event: Event) -> None:
        await self.bus.publish(event)

    # --- sessions --------------------------------------------------------------------------

    async def create_session(
        self,
        model: str | None = None,
        *,
        image_config: ImageConfig | None = None,
        response_modalities: Sequence[str] = DEFAULT_MODALITIES,
        system_instruction: str | Content | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_config: dict[str, Any] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        generation_config: dict[str, Any] | None = None,
        budget: Budget | None = None,
        title: str = "",
        session_id: str | None = None,
    ) -> Session:
        """A new session; the model and image config are validated before anything is sent."""
        self._check_open()
        spec = resolve_model(model or self.config.model)
        if image_config is not None:
            spec.validate(image_config)
        modalities = [m.upper() for m in response_modalities]
        if not modalities or any(m not in ("TEXT", "IMAGE") for m in modalities):
            raise ConfigError(f"response_modalities must be TEXT and/or IMAGE, got {modalities}")
        if isinstance(system_instruction, str):
            system_instruction = Content(parts=[Part(text=system_instruction)])
        settings = SessionSettings(
            image_config=_image_config_dict(image_config),
            response_modalities=modalities,
            system_instruction=system_instruction,
            tools=tools,
            tool_config=tool_config,
            safety_settings=safety_settings,
            generation_config=generation_config,
            budget=budget.to_builtins() if budget is not None else None,
        )
        record = SessionRecord(
            id=session_id or new_id(), model=spec.id, settings=settings, title=title
        )
        await self.store.create(record)
        state = await self.store.load(record.id)
        session = Session(self, state)
        await session._publish(SessionCreated(session_id=record.id, model=spec.id))
        return session

    async def open_session(self, session_id: str) -> Session:
        """Resume a stored session where it was left; the next request carries its history."""
        self._check_open()
        state = await self.store.load(session_id)
        session = Session(self, state)
        head = state.record.head
        turns = state.turn(head).index if head else 0
        await session._publish(
            SessionResumed(session_id=state.id, model=state.record.model, turns=turns)
        )
        return session

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock


def _image_config_dict(config: ImageConfig | None) -> dict[str, str] | None:
    if config is None:
        return None
    d: dict[str, str] = msgspec.to_builtins(config)
    return d or None


class TurnStream:
    """Events of one streamed turn, ending with completed, failed or cancelled.

    Iterate it with `async for`; leaving early (break, exception) cancels the turn and leaves the
    session as it was. `async with` makes that cleanup happen at the block's end; `turn` holds
    the committed Turn once `turn.completed` has been seen, `error` the exception of a turn
    that ended with `turn.failed`.
    """

    def __init__(self, session: Session, draft: Content, stream: bool | None) -> None:
        self.turn: Turn | None = None
        self.error: BaseException | None = None
        self._agen: AsyncGenerator[Event, None] = session._stream_events(draft, stream, self)

    def __aiter__(self) -> TurnStream:
        return self

    async def __anext__(self) -> Event:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop early: cancels the turn if it is still running."""
        await self._agen.aclose()

    async def __aenter__(self) -> TurnStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Session:
    """A handle on one editing session. Turns of a session run one at a time, in order."""

    def __init__(self, engine: Engine, state: SessionState) -> None:
        self._engine = engine
        self._state = state
        self.spec: ModelSpec = resolve_model(state.record.model)
        self._budget = Budget.from_builtins(state.record.settings.budget)
        self._log = log.bind(session_id=state.id)

    # --- read ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The session id."""
        return self._state.id

    @property
    def model(self) -> str:
        """The model id."""
        return self.spec.id

    @property
    def state(self) -> SessionState:
        """The record and turn tree as last loaded or committed by this handle."""
        return self._state

    @property
    def budget(self) -> Budget:
        """The session's budget."""
        return self._budget

    def contents(self) -> list[Content]:
        """Exactly the history the next request will carry (before any budget policy)."""
        return self._state.contents()

    def turns(self) -> list[Turn]:
        """The turns on the current branch, oldest first."""
        blobs = self._engine.store.blobs
        return [Turn.from_record(t, blobs) for t in self._state.path()]

    def branches(self) -> list[list[Turn]]:
        """Every branch, root to leaf."""
        blobs = self._engine.store.blobs
        return [[Turn.from_record(t, blobs) for t in b] for b in self._state.branches()]

    @property
    def head(self) -> Turn | None:
        """The current turn, or None before the first."""
        head = self._state.record.head
        return Turn.from_record(self._state.turn(head), self._engine.store.blobs) if head else None

    # --- tree operations ---------------------------------------------------------------------

    async def _reload(self) -> None:
        self._state = await self._engine.store.load(self.id)

    async def _move(self, op: Callable[..., Awaitable[object]], *args: object) -> Turn | None:
        """Apply a head move (`sessions._ops`) under the lock and the lease; the new head."""
        async with self._engine._lock(self.id), self._leased():
            await op(self._engine.store, self.id, *args)
            await self._reload()
        return self.head

    async def undo(self) -> Turn | None:
        """Move the head back one turn; returns the new head."""
        return await self._move(ops.undo)

    async def redo(self) -> Turn | None:
        """Move the head forward one turn along the branch; returns the new head."""
        return await self._move(ops.redo)

    async def checkout(self, turn: Turn | str | None) -> Turn | None:
        """Move the head to any turn (None: before the first)."""
        return await self._move(ops.checkout, turn.id if isinstance(turn, Turn) else turn)

    async def fork(self, at: Turn | int | None = None) -> Session:
        """A new session holding this branch's turns up to `at` (a Turn or 1-based index)."""
        index = at.index if isinstance(at, Turn) else at
        record = await ops.fork(self._engine.store, self.id, at_index=index)
        child = Session(self._engine, await self._engine.store.load(record.id))
        await child._publish(
            SessionForked(session_id=record.id, parent_id=self.id, at_turn=record.forked_at or 0)
        )
        return child

    async def regenerate(self, *, stream: bool | None = None) -> Turn:
        """Send the head turn's user Content again as a sibling turn."""
        if self._state.record.head is None:
            raise ConfigError("nothing to regenerate: the session has no turns")
        async with self._engine._lock(self.id):
            return await self._leased_turn(None, stream=stream)

    def _regenerate_draft(self) -> Content:
        """The head turn's user Content, with this handle's view moved to the head's parent.

        Only the view moves: the stored head moves when the sibling turn commits, so a
        regenerate that fails leaves the session as it was (the caller restores the view).
        """
        head = self._state.record.head
        if head is None:
            raise ConfigError("nothing to regenerate: the session has no turns")
        turn = self._state.turn(head)
        record = msgspec.structs.replace(self._state.record, head=turn.parent)
        self._state = SessionState(record, self._state.turns)
        return turn.user

    async def aclose(self) -> None:
        """Publish `session.closed`; the stored session stays."""
        await self._publish(SessionClosed(session_id=self.id))

    # --- turns -------------------------------------------------------------------------------

    async def send(
        self, text: str = "", images: Iterable[ImageInput] = (), *, stream: bool | None = None
    ) -> Turn:
        """Run one turn and return it once committed."""
        draft = build_user_content(text, images)
        self._engine._check_open()
        async with self._engine._lock(self.id):
            self._engine._check_open()  # it may have closed while we waited for the lock
            return await self._tracked(self._leased_turn(draft, stream=stream))

    def stream(
        self, text: str = "", images: Iterable[ImageInput] = (), *, stream: bool | None = None
    ) -> TurnStream:
        """Run one turn, yielding its events as they happen (a filtered bus subscription)."""
        return TurnStream(self, build_user_content(text, images), stream)

    async def _stream_events(
        self, draft: Content, stream: bool | None, holder: TurnStream
    ) -> AsyncGenerator[Event, None]:
        engine = self._engine
        engine._check_open()
        async with engine._lock(self.id), AsyncExitStack() as stack:
            engine._check_open()  # the engine may have closed while we waited for the lock
            sub = await stack.enter_async_context(
                engine.bus.subscribe(
                    session_id=self.id,
                    types=("turn.*", "budget.*", "history.*"),
                    since_seq=engine.bus.last_seq(self.id),
                    overflow="block",
                )
            )
            task = asyncio.ensure_future(self._leased_turn(draft, stream=stream))
            engine._turn_tasks.add(task)
            task.add_done_callback(engine._turn_tasks.discard)
            ended = False
            try:
                async for event in sub:
                    if isinstance(event, TurnCompleted):
                        holder.turn = await task
                    ended = event.type in _TERMINAL
                    yield event
                    if ended:
                        break
            finally:
                # Leaving before the terminal event cancels the turn; after it, the task is
                # only unwinding and must keep its own outcome.
                if not ended and not task.done():
                    task.cancel()
                # Wait without being cancellable: the turn must finish its cleanup (publish
                # turn.cancelled, release the slot) before the lock is released.
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(task, return_exceptions=True)
                if not task.cancelled() and isinstance(task.exception(), NanoeditError):
                    holder.error = task.exception()

    async def _tracked(self, coro: Any) -> Turn:
        task = asyncio.ensure_future(coro)
        self._engine._turn_tasks.add(task)
        task.add_done_callback(self._engine._turn_tasks.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # The engine cancelled the turn (aclose past its deadline), not our caller: a
                # CancelledError here would read as the caller's own cancellation.
                raise Closed(
                    "the engine closed before the turn finished; nothing was committed"
                ) from None
            # Our caller was cancelled: cancel the turn and let it clean up before we go.
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
            raise

    async def _publish(self, event: Event) -> Event:
        return await self._engine.bus.publish(event)

    # --- the store lease ---------------------------------------------------------------------

    @asynccontextmanager
    async def _leased(self) -> AsyncIterator[None]:
        """Hold the session's store lease for the block. The caller holds the session lock.

        Taken before anything is sent, so a turn racing another process's turn fails or waits
        (`on_busy`) without paying for a request; renewed in the background every third of
        `lease_ttl` while the block runs; released even when the block is cancelled. Once it is
        held, the state is reloaded if another process committed meanwhile.
        """
        engine = self._engine
        await self._acquire_lease()
        renewal = asyncio.ensure_future(self._renew_lease())
        try:
            record = await engine.store.load_record(self.id)
            if record.version != self._state.record.version:
                await self._reload()
            yield
        finally:
            renewal.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(renewal, return_exceptions=True)
                await self._release_lease()

    async def _acquire_lease(self) -> None:
        engine = self._engine
        cfg = engine.config
        deadline = time.monotonic() + cfg.lease_wait
        delay = _LEASE_POLL_MIN
        while True:
            try:
                if await engine.store.acquire_lease(self.id, engine.lease_owner, cfg.lease_ttl):
                    return
            except asyncio.CancelledError:
                # The store may have granted the lease just before the cancellation arrived.
                with anyio.CancelScope(shield=True):
                    await self._release_lease()
                raise
            left = deadline - time.monotonic()
            if cfg.on_busy == "raise":
                raise SessionBusy(f"session {self.id} is busy: another engine holds its lease")
            if left <= 0:
                raise SessionBusy(
                    f"session {self.id} is busy: another engine held its lease for "
                    f"{cfg.lease_wait:g}s"
                )
            self._log.debug("lease.waiting", delay_s=delay)
            await asyncio.sleep(min(random.uniform(delay / 2, delay), left))
            delay = min(delay * 2, _LEASE_POLL_MAX)

    async def _renew_lease(self) -> None:
        engine = self._engine
        ttl = engine.config.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await engine.store.acquire_lease(self.id, engine.lease_owner, ttl)
            except NanoeditError as exc:
                self._log.warning("lease.renew_failed", error=str(exc))
                continue
            if not held:
                # It ran out (a stalled loop) and another engine took it: the version check at
                # commit decides which turn lands.
                self._log.warning("lease.lost")
                return

    async def _release_lease(self) -> None:
        try:
            await self._engine.store.release_lease(self.id, self._engine.lease_owner)
        except NanoeditError as exc:
            # Harmless: the lease runs out after lease_ttl anyway.
            self._log.warning("lease.release_failed", error=str(exc))

    async def _leased_turn(self, draft: Content | None, *, stream: bool | None) -> Turn:
        """Run a turn under the store lease; `draft=None` regenerates the head turn.

        The caller holds the session lock. Not getting the lease publishes `turn.failed`
        (`SessionBusy`, attempts 0: nothing was sent), so a stream() consumer always sees an end.
        """
        async with AsyncExitStack() as stack:
            before = self._state
            try:
                await stack.enter_async_context(self._leased())
                before = self._state  # the lease may have reloaded it
                if draft is None:
                    draft = self._regenerate_draft()
            except asyncio.CancelledError:
                with anyio.CancelScope(shield=True):
                    await self._publish(
                        TurnCancelled(session_id=self.id, turn=len(self._state.path()) + 1)
                    )
                raise
            except NanoeditError as exc:
                await self._publish(
                    TurnFailed(
                        session_id=self.id,
                        turn=len(self._state.path()) + 1,
                        error=str(exc),
                        error_type=type(exc).__name__,
                        attempts=0,
                    )
                )
                raise
            try:
                return await self._run_turn(draft, stream=stream)
            except BaseException:
                if self._state.record.version == before.record.version:
                    # Nothing was committed: drop a regenerate's moved view.
                    self._state = before
                raise

    async def _run_turn(self, draft: Content, *, stream: bool | None) -> Turn:
        """The turn pipeline. The caller holds the session lock and the store lease."""
        engine = self._engine
        provider = engine.provider
        state = self._state
        history = state.path()
        index = len(history) + 1
        settings = state.record.settings
        use_stream = engine.config.stream if stream is None else stream
        use_stream = use_stream and provider.supports_streaming
        started = time.monotonic()
        await self._publish(
            TurnStarted(
                session_id=self.id,
                turn=index,
                model=self.spec.id,
                stream=use_stream,
                history_turns=len(history),
            )
        )
        attempts = 0
        reservation = None
        try:
            image_size = (settings.image_config or {}).get("imageSize")
            try:
                plan = plan_request(
                    spec=self.spec,
                    budget=self._budget,
                    engine_max_request_bytes=engine.config.max_request_bytes,
                    turns=history,
                    draft=draft,
                    encode_size=lambda contents: len(
                        provider.encode(GenerateRequest(self.spec.id, contents, settings))
                    ),
                    provider=provider.name,
                    image_size=image_size,
                    spent_usd=engine.ledger.spent_for(self.id)
                    + engine.ledger.reserved_for(self.id),
                )
            except BudgetExceeded as exc:
                event = exceeded_event(exc, self._budget.policy)
                event.session_id, event.turn = self.id, index
                await self._publish(event)
                raise
            for decision in plan.decisions:
                decision.session_id = self.id
                decision.turn = index
                await self._publish(decision)
            body = provider.encode_body(GenerateRequest(self.spec.id, plan.contents, settings))
            reservation = engine.ledger.reserve(plan.reserved_usd, session_id=self.id)
            # Each image is hashed once, for its turn.image event; interning reuses the digest.
            digests: dict[int, str] = {}
            result, attempts = await self._attempts(body, index, use_stream, digests)
            breakdown = settle_cost(
                self.spec, provider.name, result.usage, image_size, len(result.content.images())
            )
            engine.ledger.settle(reservation, breakdown)
            reservation = None
            record = intern_turn(
                TurnRecord(
                    id=new_id(),
                    parent=state.record.head,
                    index=index,
                    user=draft,
                    model=result.content,
                    model_id=self.spec.id,
                    image_config=settings.image_config,
                    usage=result.usage,
                    cost_usd=breakdown.total_usd,
                    finish_reason=result.finish_reason,
                    attempts=attempts,
                    latency_s=time.monotonic() - started,
                    timings=result.timings,
                    request_bytes=result.request_bytes,
                    response_bytes=result.response_bytes,
                    carried=plan.carried,
                    rebased=plan.rebased,
                    metadata=_turn_metadata(result),
                ),
                engine.store.blobs,
                digests,
            )
            # Once the commit starts it must finish: a half-observed commit would leave the
            # caller unsure whether the turn exists.
            with anyio.CancelScope(shield=True):
                rec = await engine.store.commit_turn(
                    self.id, record, expected_version=state.record.version
                )
                self._state = SessionState(rec, {**state.turns, record.id: record})
                turn = Turn.from_record(record, engine.store.blobs)
                await self._publish(
                    TurnCompleted(
                        session_id=self.id,
                        turn=index,
                        finish_reason=turn.finish_reason,
                        attempts=attempts,
                        latency_s=turn.latency_s,
                        images=[i.ref() for i in turn.images],
                        text=turn.text,
                        usage=turn.usage,
                        cost_usd=turn.cost_usd,
                    )
                )
            self._log.info("turn.committed", turn=index, attempts=attempts)
            return turn
        except asyncio.CancelledError:
            if reservation is not None:
                engine.ledger.release(reservation)
            with anyio.CancelScope(shield=True):
                await self._publish(TurnCancelled(session_id=self.id, turn=index))
            raise
        except NanoeditError as exc:
            if reservation is not None:
                engine.ledger.release(reservation)
            # _attempts() stamps the attempt count on the error it gives up with.
            attempts = max(getattr(exc, "attempts", 0), attempts)
            await self._publish(
                TurnFailed(
                    session_id=self.id,
                    turn=index,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    status=getattr(exc, "status", None),
                    attempts=max(attempts, 1),
                )
            )
            raise

    async def _attempts(
        self, body: RequestBody, index: int, use_stream: bool, digests: dict[int, str]
    ) -> tuple[ProviderResult, int]:
        """Send `body`, retrying what the policy says may be retried."""
        engine = self._engine
        policy = engine.config.retry
        images_only = self._state.record.settings.response_modalities == ["IMAGE"]
        attempt = 0
        while True:
            attempt += 1
            on_delta = self._delta_publisher(index, attempt, digests) if use_stream else None
            status: int | None = None
            try:
                async with engine.limiter.slot(self.spec.id) as slot:
                    try:
                        result = await engine.provider.generate(
                            self.spec.id,
                            body,
                            stream=use_stream,
                            on_delta=on_delta,
                            images_only=images_only,
                        )
                    except (ApiError, TransportError) as exc:
                        status = getattr(exc, "status", None)
                        slot.report(status, exc)
                        raise
                    slot.report(result.status)
                if not use_stream:
                    await self._publish_result_deltas(result, index, attempt, digests)
                return result, attempt
            except (ApiError, TransportError) as exc:
                exc.attempts = attempt
                delay = retry_delay(attempt, exc, policy) if should_retry(exc, policy) else None
                if delay is None or attempt >= policy.max_attempts:
                    raise
                self._log.info(
                    "turn.retrying", turn=index, attempt=attempt, delay_s=delay, error=str(exc)
                )
                await self._publish(
                    TurnRetrying(
                        session_id=self.id,
                        turn=index,
                        attempt=attempt,
                        delay_s=delay,
                        error=f"{type(exc).__name__}: {exc}",
                        status=status,
                    )
                )
                await asyncio.sleep(delay)

    def _delta_publisher(self, index: int, attempt: int, digests: dict[int, str]) -> Any:
        async def on_delta(delta: TextDelta | ImageDelta) -> None:
            if isinstance(delta, TextDelta):
                await self._publish(
                    TurnTextDelta(
                        session_id=self.id,
                        turn=index,
                        text=delta.text,
                        thought=delta.thought,
                        attempt=attempt,
                    )
                )
            elif delta.part.inline_data is not None:
                image = Image.from_blob(delta.part.inline_data)
                digests[id(image.data)] = image.sha256
                await self._publish(
                    TurnImage(
                        session_id=self.id,
                        turn=index,
                        image=image.ref(),
                        thought=bool(delta.part.thought),
                        attempt=attempt,
                    )
                )

        return on_delta

    async def _publish_result_deltas(
        self, result: ProviderResult, index: int, attempt: int, digests: dict[int, str]
    ) -> None:
        """A non-streamed answer still tells subscribers about its text and images."""
        on_delta = self._delta_publisher(index, attempt, digests)
        for part in result.content.parts:
            if part.inline_data is not None:
                await on_delta(ImageDelta(part))
            elif part.text:
                await on_delta(TextDelta(part.text, bool(part.thought)))


def _turn_metadata(result: ProviderResult) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if result.grounding_metadata:
        meta["groundingMetadata"] = result.grounding_metadata
    if result.finish_message:
        meta["finishMessage"] = result.finish_message
    if result.model_version:
        meta["modelVersion"] = result.model_version
    if result.response_id:
        meta["responseId"] = result.response_id
    return meta


@asynccontextmanager
async def open_engine(config: EngineConfig | None = None, **kw: Any) -> AsyncIterator[Engine]:
    """`async with open_engine(...) as engine` — the same as `async with Engine(...)`."""
    async with Engine(config, **kw) as engine:
        yield engine
