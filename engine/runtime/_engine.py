"""The `Engine` and `Session` handles; the turn itself runs in `engine.runtime._pipeline`.

A session's turns run one at a time under its lock and its store lease (`_lease`); head moves
(undo, redo, checkout, regenerate) take both too. `stream()` hands out a turn's events as
they happen, and its consumer decides whether the turn may commit (see `TurnStream`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio.lowlevel
import msgspec

from engine._config import FILES_PRESETS, EngineConfig, HistoryImages
from engine._exceptions import Closed, ConfigError, SessionBusy
from engine._logs import Logger
from engine.events import (
    ENGINE_WIDE,
    LimitsChanged,
    SessionCreated,
    SessionResumed,
)
from engine.policy import AllowanceChange, Budget, CostLedger, Limiter, SlotHandle
from engine.providers import (
    FilesAndBatches,
    GeminiProvider,
    HttpProvider,
    InteractionsProvider,
    OpenAIChatProvider,
    OpenAIImagesProvider,
    Provider,
    list_models,
)
from engine.runtime._batch import Batches, BatchItem, BatchResult, Progress
from engine.runtime._history_files import HistoryFiles
from engine.runtime._lease import Lease, new_owner
from engine.runtime._session import Session, TurnStream
from engine.runtime._shared import ClusterShared, LocalShared, Shared
from engine.runtime._turns import Image, Turn, build_user_content, sniff_mime
from engine.state import Cluster, ClusterBus, EventBus
from engine.wire import Transport
from sessions import (
    BatchRecord,
    Catalog,
    CatalogDrift,
    Content,
    ImageConfig,
    MemoryStore,
    ModelSpec,
    Part,
    SessionRecord,
    SessionSettings,
    SessionState,
    SessionStore,
    TurnRecord,
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
            on_change=self._publish_limits,
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
        # Picked once, at start: this process alone, or every node through Redis.
        self.shared: Shared = LocalShared(self.limiter, self.ledger)
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
            cluster = Cluster(
                cfg.redis_url, prefix=cfg.redis_prefix, epochs=self.store.next_event_epoch
            )
            await cluster.start()
            self._stack.push_async_callback(cluster.aclose)
            self.cluster = cluster
            self.bus = ClusterBus(cluster)
            self.shared = ClusterShared(self.limiter, self.ledger, cluster, cfg)
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
            elif preset.api == "interactions":
                self._provider = InteractionsProvider(
                    self._transport,
                    base_url=base_url,
                    api_key=cfg.api_key,
                    name=cfg.provider,
                    auth=preset.auth,
                    delivery=cfg.image_delivery,
                    store=cfg.interactions_store,
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

    async def refresh_catalog(self) -> CatalogDrift:
        """Read the provider's model list (Gemini-native endpoints) and compare it with the
        catalog: image models it lacks, ids no longer listed, limits that differ."""
        self.check_open()
        provider = self.provider
        if provider.api not in ("gemini", "interactions") or not isinstance(provider, HttpProvider):
            raise ConfigError(
                f"provider {provider.name!r} speaks {provider.api}: only Google's endpoints "
                "list models in Google's shape"
            )
        return self.catalog.refresh(await list_models(provider))

    def request_slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]:
        """The slot an upstream request holds: the engine's limiter's, and in a cluster also one
        of the cluster-wide `max_in_flight` (see `shared`)."""
        return self.shared.slot(model)

    def check_open(self) -> None:
        """Raise Closed unless the engine has started and is not closed."""
        if self._closed:
            raise Closed("engine is closed")
        if not self._started:
            raise Closed("engine not started: use `async with Engine(...)`")

    async def _publish_limits(self, change: AllowanceChange) -> None:
        await self.bus.publish(
            LimitsChanged(
                session_id=ENGINE_WIDE,
                model=change.model,
                allowed_in_flight=change.allowed_in_flight,
                reason=change.reason,
            )
        )

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
        thinking_level: str | None = None,
        budget: Budget | None = None,
        title: str = "",
        session_id: str | None = None,
        history_images: HistoryImages | None = None,
        owner: str = "",
        history: Sequence[tuple[Content, Content]] = (),
        history_api: str = "openai-chat",
    ) -> Session:
        """A new session; the model, image config, thinking level and tools are validated
        against the model's catalog entry before anything is sent.

        `thinking_level` ("minimal", "medium", "high": what the model accepts; None: its
        default) goes out as `generationConfig.thinkingConfig.thinkingLevel` (Interactions:
        `generation_config.thinking_level`).

        `history_images` ("inline", "files", "auto"; None: the engine's setting) is how later
        requests carry this session's earlier images (see `EngineConfig.history_images`);
        `owner` the tenant it belongs to (`nanoedit serve`). `history` (user, model) Content
        pairs become the session's first turns, recorded as having come through `history_api`
        (a chat product's conversation imported by `nanoedit serve`)."""
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
        generation_config = with_thinking_level(spec, generation_config, thinking_level)
        spec.check_tools(tools)
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
        turns: list[TurnRecord] = []
        for user, model_content in history:
            spec.check_input_images(len(user.images()))
            turns.append(
                TurnRecord(
                    id=new_id(),
                    parent=turns[-1].id if turns else None,
                    index=len(turns) + 1,
                    user=Content(role="user", parts=list(user.parts)),
                    model=Content(role="model", parts=list(model_content.parts)),
                    model_id=spec.id,
                    metadata={"api": history_api, "imported": True},
                )
            )
        head = turns[-1].id if turns else None
        record = SessionRecord(
            id=session_id or new_id(),
            model=spec.id,
            settings=settings,
            title=title,
            head=head,
            tip=head,
        )
        # Everything is checked before the session exists: a refused session leaves nothing.
        try:
            msgspec.json.encode(record)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"session settings cannot be sent as JSON: {exc}") from None
        session = Session(self, SessionState(record, {}))
        await self.store.create(record, turns)
        session._state = await self.store.load(record.id)
        await session._publish(SessionCreated(session_id=record.id, model=spec.id))
        return session

    async def open_session(self, session_id: str, *, announce: bool = True) -> Session:
        """Resume a stored session where it was left; the next request carries its history.

        `announce=False` publishes no `session.resumed` (the HTTP gateway opens a handle for
        each request that uses a session: that is no news to the session's subscribers)."""
        self.check_open()
        state = await self.store.load(session_id)
        self.usable(state.record.model)
        session = Session(self, state)
        if announce:
            head = state.record.head
            turns = state.turn(head).index if head else 0
            await session._publish(
                SessionResumed(session_id=state.id, model=state.record.model, turns=turns)
            )
        return session

    def usable(self, model: str) -> ModelSpec:
        """The model's spec; a shut-down model through Google is a ConfigError, through anything
        else one warning per model (a gateway may still route it); a deprecated model is one
        `model.deprecated` warning per engine and model."""
        spec = self.catalog.resolve(model)
        warning = check_available(spec, self.provider.name)
        if warning is not None and spec.id not in self._warned_models:
            self._warned_models.add(spec.id)
            kind = "model.deprecated" if spec.status == "deprecated" else "model.shut_down"
            log.warning(kind, model=spec.id, replacement=spec.replacement, message=warning)
        return spec

    async def delete_session(self, session_id: str) -> None:
        """Delete a stored session, under its lock and store lease like every mutation:
        SessionBusy while a turn of it runs here or on another node. Its images go with it
        (those no other session holds)."""
        self.check_open()
        lock = self._lock(session_id)
        if lock.locked():
            raise SessionBusy(f"session {session_id} has a turn running")
        async with lock, self.lease(session_id).held():
            await self.store.delete(session_id)
        self._forget(session_id)

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
            gone=self.shared.node_gone,
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


def with_thinking_level(
    spec: ModelSpec, generation_config: dict[str, Any] | None, level: str | None
) -> dict[str, Any] | None:
    """`generation_config` with `level` as its thinking level, checked against the model (a
    level already in `generation_config` is checked too)."""
    config = dict(generation_config or {})
    thinking = config.get("thinkingConfig")
    if level is not None:
        if not isinstance(level, str):
            raise ConfigError(f"thinking_level must be a str, not {type(level).__name__}")
        thinking = {**(thinking if isinstance(thinking, dict) else {}), "thinkingLevel": level}
        config["thinkingConfig"] = thinking
    if isinstance(thinking, dict) and "thinkingLevel" in thinking:
        spec.check_thinking(str(thinking["thinkingLevel"]))
    return config or None


def _image_config_dict(config: ImageConfig | None) -> dict[str, str] | None:
    if config is None:
        return None
    d: dict[str, str] = msgspec.to_builtins(config)
    return d or None
