"""The `Engine` and `Session` handles; the turn itself runs in `engine.runtime._pipeline`.

A session's turns run one at a time under its lock and its store lease (`_lease`); head moves
(undo, redo, checkout, regenerate) take both too. `stream()` hands out a turn's events as
they happen, and its consumer decides whether the turn may commit (see `TurnStream`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio.lowlevel
import msgspec

import sessions as tree
from engine._config import FILES_PRESETS, EngineConfig, HistoryImages
from engine._exceptions import Closed, ConfigError
from engine._logs import Logger
from engine.events import (
    Event,
    SessionClosed,
    SessionCreated,
    SessionForked,
    SessionResumed,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
)
from engine.policy import Budget, CostLedger, Limiter, SlotHandle
from engine.providers import (
    FilesAndBatches,
    GeminiProvider,
    OpenAIChatProvider,
    OpenAIImagesProvider,
    Provider,
)
from engine.runtime._batch import Batches, BatchItem, BatchResult, Progress
from engine.runtime._history_files import HistoryFiles
from engine.runtime._lease import Lease, new_owner
from engine.runtime._pipeline import Framing, TurnContext, TurnRun
from engine.runtime._shield import finish
from engine.runtime._turns import Image, ImageInput, Turn, build_user_content, sniff_mime
from engine.state import Cluster, ClusterBus, EventBus, Subscription
from engine.wire import Transport
from sessions import (
    BatchRecord,
    Catalog,
    Content,
    ImageConfig,
    MemoryStore,
    ModelSpec,
    Part,
    SessionRecord,
    SessionSettings,
    SessionState,
    SessionStore,
    check_available,
    new_id,
)

__all__ = [
    "Engine",
    "Image",
    "Session",
    "Turn",
    "TurnStream",
    "build_user_content",
    "sniff_mime",
]

log = Logger("nanoedit.engine")

DEFAULT_MODALITIES = ("TEXT", "IMAGE")
_TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")


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
        self.catalog = Catalog.load(self.config.catalog)
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
        self.lease_owner = new_owner()
        self._turn_tasks: set[asyncio.Task[Any]] = set()
        self._files: HistoryFiles | None = None
        self.cluster: Cluster | None = None
        self.batches = Batches(self)  # Batch API jobs (Gemini-native providers)
        self._warned_models: set[str] = set()
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
        # anyio imports its event-loop backend on first use (the SQLite store's threads, the
        # limiter's sleeps): ~30 ms that would otherwise land on the first turn.
        await anyio.lowlevel.checkpoint()
        if cfg.redis_url:
            cluster = Cluster(cfg.redis_url, prefix=cfg.redis_prefix)
            await cluster.start()
            self._stack.push_async_callback(cluster.aclose)
            self.cluster = cluster
            self.bus = ClusterBus(cluster)
            # Other nodes take this engine's leases over within seconds of its heartbeat
            # stopping (a dead machine), instead of waiting out the lease TTL.
            await cluster.register(self.lease_owner)
        if self._provider is None:
            base_url = cfg.resolved_base_url
            if cfg.provider == "local" and not base_url:
                from engine.emulator import Emulator, EmulatorSettings

                # The emulator enforces the same body limit the engine budgets for.
                options = cfg.emulator
                emu = Emulator(
                    EmulatorSettings(
                        latency=options.latency,
                        faults=options.faults,
                        flat=options.flat,
                        seed=options.seed,
                        max_request_bytes=cfg.request_byte_limit,
                        catalog=self.catalog,
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
            preset = cfg.preset
            if preset.api in ("openai-chat", "openai-images"):
                if self._emulator is not None:
                    base_url += "/v1"  # the emulator's OpenAI-compatible root
                kind = OpenAIChatProvider if preset.api == "openai-chat" else OpenAIImagesProvider
                self._provider = kind(
                    self._transport,
                    base_url=base_url,
                    api_key=cfg.api_key,
                    name=cfg.provider,
                    auth=preset.auth,
                    model_prefix=preset.model_prefix,
                )
            else:
                self._provider = GeminiProvider(
                    self._transport,
                    base_url=base_url,
                    api_key=cfg.api_key,
                    name=cfg.provider,
                    auth=preset.auth,
                )
        self._stack.push_async_callback(self.bus.aclose)
        if isinstance(self.provider, FilesAndBatches):
            files = HistoryFiles(self.provider, self.store, self.store.blobs)
            self._files = files
            self._stack.push_async_callback(files.aclose)
        elif cfg.history_images == "files":
            raise ConfigError(
                f"history_images='files': provider {self.provider.name!r} has no Files API"
            )
        log.debug("engine.started", provider=self.provider.name)

    @property
    def files(self) -> HistoryFiles | None:
        """The engine's uploads of history images (None: the provider has no Files API)."""
        return self._files

    def history_files(self, mode: str | None) -> HistoryFiles | None:
        """Where a session whose setting is `mode` (None: the engine's) sends history images:
        through the Files API (the uploads), or inline (None)."""
        mode = mode or self.config.history_images
        if mode == "inline" or self._files is None:
            return None
        if mode == "auto" and self.provider.name not in FILES_PRESETS:
            return None
        return self._files

    @property
    def provider(self) -> Provider:
        """The provider requests go through."""
        if self._provider is None:
            raise Closed("engine not started: use `async with Engine(...)`")
        return self._provider

    @property
    def bytes_received(self) -> int:
        """Response bytes received so far by this engine's transport (live, per chunk)."""
        return 0 if self._transport is None else self._transport.bytes_received

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

    async def batch(
        self,
        items: Iterable[BatchItem],
        *,
        model: str | None = None,
        image_config: ImageConfig | None = None,
        display_name: str = "",
        wait: bool = True,
        on_progress: Progress | None = None,
    ) -> list[BatchResult] | BatchRecord:
        """Run `items` through the Batch API at the batch price: the results in input order
        (per-item errors kept in them), or with `wait=False` the submitted job's record (follow
        it with `engine.batches`). BatchJobFailed if the job fails, is cancelled or expires."""
        record = await self.batches.submit(
            items, model=model, image_config=image_config, display_name=display_name
        )
        if not wait:
            return record
        op = await self.batches.wait(record.name, on_progress=on_progress)
        return await self.batches.results(record.name, op)

    def request_slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]:
        """The slot an upstream request holds: the engine's limiter's, and in a cluster also one
        of the cluster-wide `max_in_flight`."""
        if self.cluster is None:
            return self.limiter.slot(model)
        return self._cluster_slot(model)

    @asynccontextmanager
    async def _cluster_slot(self, model: str) -> AsyncIterator[SlotHandle]:
        cluster, cfg = self.cluster, self.config
        assert cluster is not None
        async with (
            cluster.slot(cfg.max_in_flight, model=model, per_minute=cfg.requests_per_minute),
            self.limiter.slot(model) as slot,
        ):
            yield slot
        if slot.status in (429, 503):
            # What one node learns, every node obeys: the allowance is shared.
            await cluster.halve(model, cfg.max_in_flight)

    def check_open(self) -> None:
        """Raise Closed unless the engine has started and is not closed."""
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
        history_images: HistoryImages | None = None,
        owner: str = "",
    ) -> Session:
        """A new session; the model and image config are validated before anything is sent.

        `history_images` ("inline", "files", "auto"; None: the engine's setting) is how later
        requests carry this session's earlier images (see `EngineConfig.history_images`);
        `owner` the tenant it belongs to (`nanoedit serve`)."""
        self.check_open()
        if history_images is not None and history_images not in ("inline", "files", "auto"):
            raise ConfigError(
                f"history_images must be inline, files or auto, not {history_images!r}"
            )
        if history_images == "files" and self._files is None:
            raise ConfigError(
                f"history_images='files': provider {self.provider.name!r} has no Files API"
            )
        spec = self.usable(model or self.config.model)
        if image_config is not None:
            spec.validate(image_config)
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigError(f"budget must be a Budget, not {type(budget).__name__}")
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
            history_images=history_images,
            owner=owner,
        )
        if not isinstance(title, str):
            raise ConfigError(f"title must be a str, not {type(title).__name__}")
        record = SessionRecord(
            id=session_id or new_id(), model=spec.id, settings=settings, title=title
        )
        # Everything is checked before the session exists: a refused session leaves nothing.
        try:
            msgspec.json.encode(record)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"session settings cannot be sent as JSON: {exc}") from None
        session = Session(self, SessionState(record, {}))
        await self.store.create(record)
        session._state = await self.store.load(record.id)
        await session._publish(SessionCreated(session_id=record.id, model=spec.id))
        return session

    async def open_session(self, session_id: str) -> Session:
        """Resume a stored session where it was left; the next request carries its history."""
        self.check_open()
        state = await self.store.load(session_id)
        self.usable(state.record.model)
        session = Session(self, state)
        head = state.record.head
        turns = state.turn(head).index if head else 0
        await session._publish(
            SessionResumed(session_id=state.id, model=state.record.model, turns=turns)
        )
        return session

    def usable(self, model: str) -> ModelSpec:
        """The model's spec; a shut-down model through Google is a ConfigError, through anything
        else one warning per model (a gateway may still route it)."""
        spec = self.catalog.resolve(model)
        warning = check_available(spec, self.provider.name)
        if warning is not None and spec.id not in self._warned_models:
            self._warned_models.add(spec.id)
            log.warning("model.shut_down", model=spec.id, message=warning)
        return spec

    def lease(self, session_id: str) -> Lease:
        """The store lease of a session, as this engine takes it."""
        cfg = self.config
        return Lease(
            self.store,
            session_id,
            self.lease_owner,
            ttl=cfg.lease_ttl,
            on_busy=cfg.on_busy,
            wait=cfg.lease_wait,
            gone=self.cluster.node_gone if self.cluster is not None else None,
        )

    def _track(self, task: asyncio.Task[Any]) -> None:
        # Turns in flight, for aclose() to wait for.
        self._turn_tasks.add(task)
        task.add_done_callback(self._turn_tasks.discard)

    def _forget(self, session_id: str) -> None:
        # A closed session's in-memory traces: its event window and its cost totals.
        self.bus.forget(session_id)
        self.ledger.forget(session_id)

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock


async def _settled(task: asyncio.Future[Any]) -> None:
    """Wait for `task` to end, whatever its outcome."""
    await asyncio.gather(task, return_exceptions=True)


def _image_config_dict(config: ImageConfig | None) -> dict[str, str] | None:
    if config is None:
        return None
    d: dict[str, str] = msgspec.to_builtins(config)
    return d or None


class _Demand:
    """Whether a stream consumer has taken every event so far and waits for the next one.

    Holds the subscription, not the TurnStream, so the turn's task never keeps its stream alive
    (a stream dropped by its consumer must be collected at once, by reference counting).
    """

    __slots__ = ("event", "sub")

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.event = asyncio.Event()

    def satisfied(self) -> bool:
        return self.sub.pending == 0 and self.sub.waiting

    async def __call__(self) -> None:
        while not self.satisfied():
            self.event.clear()
            await self.event.wait()


class TurnStream:
    """Events of one turn as they happen, ending with completed, failed or cancelled.

    The rule: the turn starts its commit only while the consumer waits for the next event having
    taken every earlier one. So a consumer that leaves (break then drop, `aclose()`, an exception
    in the loop or the `async with` block, or simply dropping the stream) before the terminal
    event cancels the turn at once and finds nothing committed behind its back; once the commit
    has begun it completes, and `turn` holds it. `error` holds the exception of a turn that
    ended with `turn.failed`.

    A consumer that breaks out but keeps the stream object alive keeps the turn (and the
    session) waiting: call `aclose()` or use `async with`.
    """

    def __init__(self, session: Session, draft: Content, stream: bool | None) -> None:
        self.turn: Turn | None = None
        self.error: BaseException | None = None
        self._session: Session | None = session
        self._draft = draft
        self._stream = stream
        self._sub: Subscription | None = None
        self._demand: _Demand | None = None
        self._task: asyncio.Task[Turn] | None = None
        self._ended = False

    def __aiter__(self) -> TurnStream:
        return self

    async def _start(self, session: Session) -> None:
        engine = session._engine
        engine.check_open()
        lock = engine._lock(session.id)
        await lock.acquire()
        try:
            engine.check_open()  # the engine may have closed while we waited for the lock
            sub = engine.bus.subscribe(
                session_id=session.id,
                types=("turn.*", "budget.*", "history.*"),
                since_seq=engine.bus.last_seq(session.id),
                overflow="block",
            )
            sub.open()
        except BaseException:
            lock.release()
            raise
        demand = _Demand(sub)
        task = asyncio.ensure_future(
            session._leased_turn(self._draft, stream=self._stream, gate=demand)
        )
        engine._track(task)
        # The lock is the task's now: released when the turn has fully ended (lease included),
        # however its stream was left.
        task.add_done_callback(lambda _: lock.release())
        self._sub, self._demand, self._task = sub, demand, task

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        if self._task is None:
            session = self._session
            if session is None:
                raise StopAsyncIteration
            await self._start(session)
        sub, demand, task = self._sub, self._demand, self._task
        assert sub is not None and demand is not None and task is not None
        if sub.pending == 0:
            demand.event.set()
        try:
            event = await sub.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        if event.type in _TERMINAL:
            self._ended = True
            await self._settle(task)
            if isinstance(event, TurnCompleted) and not task.cancelled():
                self.turn = task.result() if task.exception() is None else None
        return event

    async def _settle(self, task: asyncio.Task[Turn]) -> None:
        # The terminal event comes before the lease is released; wait for the whole end (the
        # task is the engine's: a cancelled wait here leaves it running to its end).
        if not task.done():
            await asyncio.wait((task,))
        if self._sub is not None:
            self._sub.close()
        if not task.cancelled() and task.exception() is not None:
            self.error = task.exception()

    async def aclose(self) -> None:
        """Stop: cancels the turn unless its commit has begun; waits until it has ended."""
        self._ended = True
        self._session = None
        task, sub = self._task, self._sub
        if sub is not None:
            sub.close()  # a publisher blocked on our buffer goes on
        if task is not None:
            if not task.done():
                task.cancel()
            await self._settle(task)

    def __del__(self) -> None:
        # Dropped without aclose(): cancel at once; the task releases the lock when it ends.
        task, sub = self._task, self._sub
        if task is not None and not task.done():
            if sub is not None:
                sub.close()
            task.cancel()

    async def __aenter__(self) -> TurnStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Session:
    """A handle on one editing session. Turns of a session run one at a time, in order."""

    def __init__(self, engine: Engine, state: SessionState) -> None:
        self._engine = engine
        self._state = state
        self.spec: ModelSpec = engine.catalog.resolve(state.record.model)
        self._budget = Budget.from_builtins(state.record.settings.budget)
        self._log = log.bind(session_id=state.id)
        self._framing = Framing()  # measured once per settings object

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

    async def _reload_if_changed(self) -> None:
        record = await self._engine.store.load_record(self.id)
        if record.version != self._state.record.version:
            await self._reload()

    async def _move(self, op: Callable[..., Awaitable[object]], *args: object) -> Turn | None:
        """Apply a head move (`sessions._ops`) under the lock and the lease; the new head."""
        engine = self._engine
        engine.check_open()
        async with engine._lock(self.id), engine.lease(self.id).held():
            await op(engine.store, self.id, *args)
            await self._reload()
        return self.head

    async def undo(self) -> Turn | None:
        """Move the head back one turn; returns the new head."""
        return await self._move(tree.undo)

    async def redo(self) -> Turn | None:
        """Move the head forward one turn along the branch; returns the new head."""
        return await self._move(tree.redo)

    async def checkout(self, turn: Turn | str | None) -> Turn | None:
        """Move the head to any turn (None: before the first)."""
        return await self._move(tree.checkout, turn.id if isinstance(turn, Turn) else turn)

    async def fork(self, at: Turn | int | None = None) -> Session:
        """A new session holding this branch's turns up to `at` (a Turn or 1-based index)."""
        index = at.index if isinstance(at, Turn) else at
        record = await tree.fork(self._engine.store, self.id, at_index=index)
        child = Session(self._engine, await self._engine.store.load(record.id))
        await child._publish(
            SessionForked(session_id=record.id, parent_id=self.id, at_turn=record.forked_at or 0)
        )
        return child

    async def regenerate(self, *, stream: bool | None = None) -> Turn:
        """Send the head turn's user Content again as a sibling turn."""
        if self._state.record.head is None:
            raise ConfigError("nothing to regenerate: the session has no turns")
        engine = self._engine
        engine.check_open()
        async with engine._lock(self.id):
            return await self._tracked(self._leased_turn(None, stream=stream))

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
        """Publish `session.closed`; the engine forgets the session's in-memory traces (its
        event window and cost totals). The stored session stays."""
        await self._publish(SessionClosed(session_id=self.id))
        self._engine._forget(self.id)

    # --- turns -------------------------------------------------------------------------------

    async def send(
        self, text: str = "", images: Iterable[ImageInput] = (), *, stream: bool | None = None
    ) -> Turn:
        """Run one turn and return it once committed."""
        draft = build_user_content(text, images)
        engine = self._engine
        engine.check_open()
        async with engine._lock(self.id):
            engine.check_open()  # it may have closed while we waited for the lock
            return await self._tracked(self._leased_turn(draft, stream=stream))

    def stream(
        self, text: str = "", images: Iterable[ImageInput] = (), *, stream: bool | None = None
    ) -> TurnStream:
        """Run one turn, yielding its events as they happen (see `TurnStream` for the rule)."""
        return TurnStream(self, build_user_content(text, images), stream)

    async def _tracked(self, coro: Any) -> Turn:
        """Run a turn in a task of its own; a caller cancelled while it commits gets the turn.

        Awaiting the task hands a cancellation of the caller on to it (asyncio cancels the
        future a task waits for), and a commit under way finishes and returns its turn. Through
        `asyncio.shield` the same took a future and two more loop callbacks per turn.
        """
        engine = self._engine
        task: asyncio.Task[Turn] = asyncio.ensure_future(coro)
        # Untracked when this returns, by which time the task has ended (a done callback would
        # be one more loop callback per turn).
        tracked = engine._turn_tasks
        tracked.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # The engine cancelled the turn (aclose past its deadline), not our caller: a
                # CancelledError here would read as the caller's own cancellation.
                raise Closed(
                    "the engine closed before the turn finished; nothing was committed"
                ) from None
            if not task.done():
                task.cancel()
            await finish(_settled(task), reraise=False)
            if not task.cancelled() and task.exception() is None:
                # The commit had begun and finished: the turn exists, so say so.
                return task.result()
            raise
        finally:
            tracked.discard(task)

    async def _publish(self, event: Event) -> Event:
        return await self._engine.bus.publish(event)

    def _turn_context(self) -> TurnContext:
        """What the next turn may read of this session, and the door its commit comes back by."""
        return TurnContext(
            host=self._engine,
            id=self.id,
            spec=self.spec,
            budget=self._budget,
            state=self._state,
            log=self._log,
            framing=self._framing,
            commit=self._committed,
        )

    def _committed(self, state: SessionState) -> None:
        self._state = state

    async def _leased_turn(
        self, draft: Content | None, *, stream: bool | None, gate: Any = None
    ) -> Turn:
        """Run a turn under the store lease; `draft=None` regenerates the head turn.

        The caller holds the session lock. Not getting the lease publishes `turn.failed`
        (`SessionBusy`, attempts 0: nothing was sent), so a stream() consumer always sees an end.
        """
        engine = self._engine
        before = self._state
        run: TurnRun | None = None
        try:
            async with engine.lease(self.id).held():
                await self._reload_if_changed()
                before = self._state
                if draft is None:
                    draft = self._regenerate_draft()
                run = TurnRun(self._turn_context(), draft, stream=stream, gate=gate)
                try:
                    return await run.run()
                except BaseException:
                    if self._state.record.version == before.record.version:
                        # Nothing was committed: drop a regenerate's moved view.
                        self._state = before
                    raise
        except BaseException as exc:
            if (
                run is not None
                and run.committed is not None
                and not isinstance(exc, KeyboardInterrupt | SystemExit)
            ):
                # Stored and announced: a cancellation that lands on the way out (the lease's
                # release, a cluster reservation's) does not take the turn from the caller.
                return run.committed
            if run is not None:
                raise  # the turn published how it ended
            turn = len(self._state.path()) + 1
            if isinstance(exc, asyncio.CancelledError):
                await finish(self._publish(TurnCancelled(session_id=self.id, turn=turn)))
            elif isinstance(exc, Exception):
                await finish(
                    self._publish(
                        TurnFailed(
                            session_id=self.id,
                            turn=turn,
                            error=str(exc),
                            error_type=type(exc).__name__,
                            attempts=0,
                        )
                    )
                )
            raise
        raise AssertionError("unreachable")  # pragma: no cover
