"""The turn pipeline, one stage after another: plan -> reserve -> send -> merge -> commit.

The caller (`Session`) holds the session's lock and its store lease. Until the commit begins, any
failure or cancellation leaves the session exactly as it was and publishes `turn.failed` or
`turn.cancelled`; once the commit has begun it runs to its end whatever is cancelled meanwhile
(`_shield.finish`), publishes `turn.completed`, and the caller gets the committed turn. Every
exit releases the cost reservation (a `finally`), and exceptions from outside the hierarchy are
reported as `NanoeditError`, so a turn always ends with exactly one terminal event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from engine._exceptions import (
    ApiError,
    BudgetExceeded,
    ContentBlocked,
    NanoeditError,
    TransportError,
)
from engine.events import (
    BudgetExceededEvent,
    BudgetWarning,
    Event,
    HistoryCompacted,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
    TurnImage,
    TurnPartialImage,
    TurnRetrying,
    TurnStarted,
    TurnTextDelta,
)
from engine.policy import (
    COST_USD,
    Compaction,
    CostBreakdown,
    Decision,
    Overflow,
    overflow_of,
    plan_request,
    request_framing,
    retry_delay,
    settle_cost,
    should_retry,
)
from engine.policy import RequestPlan as Plan
from engine.providers import GenerateRequest, OnDelta, ProviderResult, chain_broken
from engine.runtime._history_files import missing_file_names
from engine.runtime._regions import (
    Region,
    RegionPlan,
    composite,
    drift,
    openai_mask,
    region_model_content,
)
from engine.runtime._shield import finish
from engine.runtime._turns import Image, Turn
from engine.wire import ImageDelta, PartialImageDelta, RequestBody, TextDelta
from sessions import Content, SessionSettings, SessionState, TurnRecord, intern_turn, new_id

if TYPE_CHECKING:
    from engine._config import EngineConfig
    from engine.policy import Budget, CostLedger, SlotHandle
    from engine.providers import Provider
    from engine.runtime._history_files import HistoryFiles
    from engine.runtime._shared import Hold, Shared
    from engine.state import EventBus
    from sessions import ModelSpec, SessionStore

__all__ = ["Framing", "Gate", "TurnContext", "TurnHost", "TurnRun"]

Gate = Callable[[], Awaitable[None]]
"""Awaited just before the commit begins (a stream consumer's demand, see `TurnStream`)."""


class TurnHost(Protocol):
    """What a turn uses of its engine (the `Engine` is one)."""

    @property
    def provider(self) -> Provider: ...
    @property
    def config(self) -> EngineConfig: ...
    @property
    def bus(self) -> EventBus: ...
    @property
    def ledger(self) -> CostLedger: ...
    @property
    def shared(self) -> Shared: ...
    @property
    def store(self) -> SessionStore: ...
    @property
    def lease_owner(self) -> str: ...
    def history_files(self, mode: str | None) -> HistoryFiles | None: ...
    def request_slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]: ...


class Framing:
    """The request framing the budget planner measures, kept for the settings object it was
    measured with (settings are replaced, never changed in place): three framing requests
    encoded per turn were a tenth of planning a small turn."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: tuple[object, tuple[int, int]] | None = None

    def get(self, settings: object, measure: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        """The framing for `settings`, measured once."""
        kept = self._kept
        if kept is None or kept[0] is not settings:
            kept = self._kept = (settings, measure())
        return kept[1]


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What a turn may read of its session, and the door its commit goes through: the pipeline
    never writes the Session; `commit` hands the committed state to it."""

    host: TurnHost
    id: str
    spec: ModelSpec
    budget: Budget
    state: SessionState
    log: Any
    framing: Framing
    commit: Callable[[SessionState], None]


class TurnRun:
    """One turn of one session, from its draft to its commit."""

    def __init__(
        self,
        ctx: TurnContext,
        draft: Content,
        *,
        stream: bool | None,
        gate: Gate | None,
        region: tuple[Region, RegionPlan, str] | None = None,
        variants: int = 1,
    ) -> None:
        engine = ctx.host
        self.ctx = ctx
        self.engine = engine
        self.provider = engine.provider
        self.draft = draft
        self.state: SessionState = ctx.state
        self.history = self.state.path()
        self.index = len(self.history) + 1
        self.settings = self.state.record.settings
        use_stream = engine.config.stream if stream is None else stream
        self.stream = use_stream and self.provider.supports_streaming
        self.gate = gate
        self.started = time.monotonic()
        self.attempts = 0
        # The turn once it is stored: from then on nothing (no cancellation) can undo it.
        self.committed: Turn | None = None
        self._uploaded_again = False
        self.hold: Hold | None = None  # the money set aside for the call
        self.image_size: str | None = (self.settings.image_config or {}).get("imageSize")
        self._log = ctx.log
        # Set when the session's history images go by reference (the Files API).
        self.files = engine.history_files(self.settings.history_images)
        # The interaction the request continues (Interactions API): the head turn's, when it
        # recorded one for this provider; None sends the whole history.
        self.chain = self._chain_of_head()
        # A region edit: what was asked, where, and the user's own words (see `_regions`).
        self.region = region
        # A provider that confines edits itself takes the region's mask, made once.
        self._mask = (
            openai_mask(region[1]) if region is not None and self.provider.native_masks else None
        )
        # Takes of one prompt, generated together and committed as sibling turns.
        self.variants = variants
        self._variant_tries: dict[int, int] = {}

    async def _publish(self, event: Event) -> None:
        await self.engine.bus.publish(event)

    # --- the stages --------------------------------------------------------------------------

    async def run(self) -> Turn:
        """Run the turn; the committed Turn, or the reason it was not committed."""
        sid, index = self.ctx.id, self.index
        try:
            await self._publish(
                TurnStarted(
                    session_id=sid,
                    turn=index,
                    model=self.ctx.spec.id,
                    stream=self.stream,
                    history_turns=len(self.history),
                )
            )
            plan = await self._plan()
            if self.variants > 1:
                return await self._run_variants(plan)
            body = self._encode(plan)
            # Set aside once, where every engine that shares this session's budget sees it (it
            # lapses if this node dies).
            self.hold = await self.engine.shared.reserve(
                sid, self.settings.owner, plan.reserved_usd, self.reservation_ttl
            )
            if plan.carried is not None or plan.rebased:
                self.chain = None  # a compacted history is not the stored conversation
            try:
                result, images = await self._send(body)
            except ApiError as exc:
                # A previous interaction gone: the full history once. A referenced file
                # expired or was deleted: upload again. Either retried once.
                body = await self._recover(plan, exc)
                result, images = await self._send(body)
            region_meta = None
            if self.region is not None:
                result, region_meta = self._composited(result)
            if self.gate is not None:
                await self.gate()
            # From here on the turn lands, whatever is cancelled meanwhile.
            return await finish(self._commit(plan, result, images, region_meta), reraise=False)
        except asyncio.CancelledError:
            await finish(self._publish(TurnCancelled(session_id=sid, turn=index)))
            raise
        except NanoeditError as exc:
            await finish(self._failed(exc))
            raise
        except Exception as exc:
            # Nothing foreign leaves a turn: report it in the hierarchy, with its cause.
            error = NanoeditError(f"unexpected {type(exc).__name__} in turn {index}: {exc}")
            await finish(self._failed(error))
            raise error from exc
        finally:
            hold, self.hold = self.hold, None
            if hold is not None and hold.open:
                await finish(self.engine.shared.release(hold))

    @property
    def reservation_ttl(self) -> float:
        """How long a reservation outlives a node that died holding it: the longest the call
        could take with every retry."""
        cfg = self.engine.config
        return cfg.timeouts.total * cfg.retry.max_attempts + cfg.retry.max_delay + 60.0

    def _encode(self, plan: Plan, take: int = 1) -> RequestBody:
        contents = plan.contents
        if self.files is not None:
            contents = [self.files.view(c) for c in contents]
        return self.provider.encode_body(
            GenerateRequest(
                self.ctx.spec.id,
                contents,
                self._take_settings(take),
                signatures=self.ctx.spec.thinking,
                foreign=self._foreign(plan),
                previous_interaction=self.chain,
                mask=self._mask,
            )
        )

    def _take_settings(self, take: int) -> SessionSettings:
        """The settings of one take: a regenerate or a variant asks for its own `seed` (the
        siblings before it and its number), so each is a different take -- reproducibly -- unless
        the session fixed a seed itself. A first, single turn is sent as the session says."""
        settings = self.settings
        head = self.state.record.head
        siblings = sum(1 for t in self.state.turns.values() if t.parent == head)
        config = settings.generation_config or {}
        if (siblings == 0 and self.variants == 1) or "seed" in config:
            return settings
        seed = siblings * 8 + take
        return msgspec.structs.replace(settings, generation_config={**config, "seed": seed})

    def _chain_of_head(self) -> str | None:
        provider = self.provider
        head = self.state.record.head
        if not provider.keeps_conversations or head is None:
            return None
        chains = self.state.turns[head].metadata.get("interactions")
        chain = chains.get(provider.scope) if isinstance(chains, dict) else None
        return chain if isinstance(chain, str) else None

    def _chained_sizes(self) -> tuple[Callable[[Content], int], tuple[int, int]]:
        """Sizes for the budget when the request continues an interaction: the history is on
        the server (0 bytes here), the draft is the whole input."""
        request = GenerateRequest(
            self.ctx.spec.id, [Content(role="user")], self.settings, previous_interaction=self.chain
        )
        empty = len(self.provider.encode(request))
        draft = self.draft
        with_draft = GenerateRequest(
            self.ctx.spec.id, [draft], self.settings, previous_interaction=self.chain
        )
        draft_size = len(self.provider.encode(with_draft)) - empty
        return (lambda content: draft_size if content is draft else 0), (empty, 0)

    async def _recover(self, plan: Plan, exc: ApiError) -> RequestBody:
        """The body to retry with after `exc`, when one retry can fix it; else re-raise."""
        if self.chain is None or not chain_broken(exc):
            return await self._upload_again(plan, exc)
        gone, self.chain = self.chain, None
        self._log.info("turn.chain_broken", turn=self.index, interaction=gone)
        await self._publish(
            TurnRetrying(
                session_id=self.ctx.id,
                turn=self.index,
                attempt=self.attempts,
                delay_s=0.0,
                error=f"the previous interaction is not available ({exc.status} "
                f"{exc.code or 'not_found'}): sending the whole history once",
                status=exc.status,
            )
        )
        return self._encode(plan)

    def _foreign(self, plan: Plan) -> frozenset[int]:
        """Where in the request the model Contents of turns that came through another API
        stand (each carried turn is a user and a model Content, in order)."""
        history = self.history
        carried = history if plan.carried is None else [history[i - 1] for i in plan.carried]
        return frozenset(
            2 * n + 1
            for n, turn in enumerate(carried)
            if turn.metadata.get("api", "gemini") != "gemini"
        )

    async def _upload_again(self, plan: Plan, exc: ApiError) -> RequestBody:
        """The body to retry with after `exc` said a referenced file is gone; re-raises `exc`
        when it is about something else (or the files were already uploaded again once)."""
        files = self.files
        names = missing_file_names(exc)
        used = files.referenced(plan.contents) if files is not None else []
        if files is None or names is None or not used or self._uploaded_again:
            raise exc
        self._uploaded_again = True
        gone = await files.forget(used, names)
        self._log.info("turn.files_missing", turn=self.index, files=len(gone))
        await self._publish(
            TurnRetrying(
                session_id=self.ctx.id,
                turn=self.index,
                attempt=self.attempts,
                delay_s=0.0,
                error=f"{len(gone)} history image file(s) expired or missing "
                f"({type(exc).__name__} {exc.status}): uploading them again",
                status=exc.status,
            )
        )
        await files.prepare(plan.contents)
        return self._encode(plan)

    async def _failed(self, exc: NanoeditError) -> None:
        # _send() stamps the attempt count on the error it gives up with.
        attempts = max(getattr(exc, "attempts", 0) or 0, self.attempts)
        await self._publish(
            TurnFailed(
                session_id=self.ctx.id,
                turn=self.index,
                error=str(exc),
                error_type=type(exc).__name__,
                status=getattr(exc, "status", None),
                attempts=max(attempts, 1),
            )
        )

    async def _plan(self) -> Plan:
        """Price history + draft against the budget; apply its policy; publish its decisions."""
        ctx, provider, settings = self.ctx, self.provider, self.settings
        # Money already spent on this session, by any engine (persisted turn costs), plus what
        # is reserved for calls in flight.
        spent = sum(t.cost_usd for t in self.state.turns.values())
        files = self.files
        if files is not None and self.history:
            await files.prepare([c for t in self.history for c in (t.user, t.model)])

        def encode_size(contents: list[Content]) -> int:
            request = GenerateRequest(ctx.spec.id, contents, settings, signatures=ctx.spec.thinking)
            return len(provider.encode(request))

        content_size = provider.content_sizer(signatures=ctx.spec.thinking)
        if self.chain is not None:
            content_size, framing = self._chained_sizes()
        else:
            framing = ctx.framing.get(settings, lambda: request_framing(encode_size))
        try:
            plan = plan_request(
                spec=ctx.spec,
                budget=ctx.budget,
                engine_max_request_bytes=self.engine.config.request_byte_limit,
                turns=self.history,
                draft=self.draft,
                encode_size=encode_size,
                content_size=content_size,
                request_form=files.view if files is not None else None,
                framing=framing,
                provider=provider.name,
                image_size=self.image_size,
                spent_usd=spent + await self._reserved_elsewhere(),
            )
        except BudgetExceeded as exc:
            await self._publish(self._decided(overflow_of(exc, ctx.budget.policy)))
            raise
        for decision in plan.decisions:
            await self._publish(self._decided(decision))
        return plan

    def _decided(self, decision: Decision) -> Event:
        """A budget decision as the event this session's subscribers get for this turn."""
        sid, turn = self.ctx.id, self.index
        if isinstance(decision, Overflow):
            return BudgetExceededEvent(
                session_id=sid,
                turn=turn,
                limit=decision.limit,
                needed=decision.needed,
                allowed=decision.allowed,
                policy=decision.policy,
            )
        if isinstance(decision, Compaction):
            return HistoryCompacted(
                session_id=sid,
                turn=turn,
                policy=decision.policy,
                dropped_turns=decision.dropped_turns,
                kept_turns=decision.kept_turns,
            )
        return BudgetWarning(
            session_id=sid,
            turn=turn,
            limit=decision.limit,
            used=decision.used,
            allowed=decision.allowed,
        )

    async def _reserved_elsewhere(self) -> float:
        """Money set aside for this session's calls in flight: this engine's, or in a cluster
        every node's."""
        return await self.engine.shared.reserved_for(self.ctx.id)

    async def _send(
        self, body: RequestBody, variant: int = 0
    ) -> tuple[ProviderResult, list[Image]]:
        """Send `body`, retrying what the policy says may be retried; the answer and its images
        as their events described them (hashed once), in the order of its inline parts."""
        engine, ctx = self.engine, self.ctx
        policy = engine.config.retry
        images_only = self.settings.response_modalities == ["IMAGE"]
        model = ctx.spec.id
        while True:
            self.attempts += 1
            attempt = self.attempts if not variant else self._variant_attempt(variant)
            # Fresh per attempt: a failed attempt's images must not lend their digests to the
            # next attempt's bytes.
            images: list[Image] = []
            on_delta = self._delta_publisher(attempt, images, variant)
            status: int | None = None
            try:
                async with engine.request_slot(model) as slot:
                    try:
                        result = await self.provider.generate(
                            model,
                            body,
                            stream=self.stream,
                            on_delta=on_delta if self.stream else None,
                            images_only=images_only,
                        )
                    except (ApiError, TransportError) as exc:
                        status = getattr(exc, "status", None)
                        slot.report(status, exc)
                        raise
                    slot.report(result.status)
                if not self.stream:
                    await self._publish_result_deltas(result, on_delta)
                return result, images
            except (ApiError, TransportError) as exc:
                exc.attempts = attempt
                delay = retry_delay(attempt, exc, policy) if should_retry(exc, policy) else None
                if delay is None or attempt >= policy.max_attempts:
                    raise
                self._log.info(
                    "turn.retrying", turn=self.index, attempt=attempt, delay_s=delay, error=str(exc)
                )
                await self._publish(
                    TurnRetrying(
                        session_id=ctx.id,
                        turn=self.index,
                        attempt=attempt,
                        delay_s=delay,
                        error=f"{type(exc).__name__}: {exc}",
                        status=status,
                        variant=variant,
                    )
                )
                await asyncio.sleep(delay)

    def _variant_attempt(self, variant: int) -> int:
        """Attempts are counted per take of a `variants` turn."""
        tries = self._variant_tries
        tries[variant] = tries.get(variant, 0) + 1
        return tries[variant]

    def _delta_publisher(self, attempt: int, images: list[Image], variant: int = 0) -> OnDelta:
        sid, index = self.ctx.id, self.index

        async def on_delta(delta: TextDelta | ImageDelta | PartialImageDelta) -> None:
            if isinstance(delta, PartialImageDelta):
                preview = Image.from_blob(delta.blob)
                await self._publish(
                    TurnPartialImage(
                        session_id=sid,
                        turn=index,
                        image=preview.ref(),
                        index=delta.index,
                        attempt=attempt,
                        variant=variant,
                    )
                )
            elif isinstance(delta, TextDelta):
                await self._publish(
                    TurnTextDelta(
                        session_id=sid,
                        turn=index,
                        text=delta.text,
                        thought=delta.thought,
                        attempt=attempt,
                        variant=variant,
                    )
                )
            elif delta.part.inline_data is not None:
                image = Image.from_blob(delta.part.inline_data)
                images.append(image)  # the answer's inline parts come in this order
                await self._publish(
                    TurnImage(
                        session_id=sid,
                        turn=index,
                        image=image.ref(),
                        thought=bool(delta.part.thought),
                        attempt=attempt,
                        variant=variant,
                    )
                )

        return on_delta

    @staticmethod
    async def _publish_result_deltas(result: ProviderResult, on_delta: OnDelta) -> None:
        """A non-streamed answer still tells subscribers about its text and images."""
        for part in result.content.parts:
            if part.inline_data is not None:
                await on_delta(ImageDelta(part))
            elif part.text:
                await on_delta(TextDelta(part.text, bool(part.thought)))

    async def _run_variants(self, plan: Plan) -> Turn:
        """`variants` takes of the same request at once, under one reservation for all of them
        (refused as a whole when they would not fit the session's money budget), committed as
        sibling turns in the order they finished; the head is the first to finish."""
        ctx, n = self.ctx, self.variants
        total = plan.reserved_usd * n
        limit = ctx.budget.max_cost_usd
        if limit:
            spent = sum(t.cost_usd for t in self.state.turns.values())
            spent += await self._reserved_elsewhere()
            if spent + total > limit + 1e-12:
                exc = BudgetExceeded(
                    f"{n} variants need ${total:.4f} more, ${spent + total:.4f} in total; the "
                    f"budget is ${limit:.4f}; nothing was sent",
                    limit=COST_USD,
                    needed=spent + total,
                    allowed=limit,
                )
                await self._publish(self._decided(overflow_of(exc, ctx.budget.policy)))
                raise exc
        self.hold = await self.engine.shared.reserve(
            ctx.id, self.settings.owner, total, self.reservation_ttl
        )
        if plan.carried is not None or plan.rebased:
            self.chain = None  # a compacted history is not the stored conversation
        loop = asyncio.get_running_loop()

        async def take(k: int) -> tuple[float, int, ProviderResult, list[Image], dict[str, Any]]:
            result, images = await self._send(self._encode(plan, k), variant=k)
            meta: dict[str, Any] = {}
            if self.region is not None:
                result, meta = self._composited(result)
            return loop.time(), k, result, images, meta

        outcomes = await asyncio.gather(*(take(k) for k in range(1, n + 1)), return_exceptions=True)
        done = sorted(
            (o for o in outcomes if not isinstance(o, BaseException)), key=lambda o: (o[0], o[1])
        )
        if not done:
            first = next(o for o in outcomes if isinstance(o, BaseException))
            raise first
        if self.gate is not None:
            await self.gate()
        return await finish(self._commit_variants(done), reraise=False)

    async def _commit_variants(
        self, done: list[tuple[float, int, ProviderResult, list[Image], dict[str, Any]]]
    ) -> Turn:
        engine, ctx, state = self.engine, self.ctx, self.state
        costs = [self._cost(r) for _, _, r, _, _ in done]
        hold, self.hold = self.hold, None
        assert hold is not None
        await engine.shared.settle(
            hold,
            CostBreakdown(
                text_usd=sum(c.text_usd for c in costs),
                image_usd=sum(c.image_usd for c in costs),
                thinking_usd=sum(c.thinking_usd for c in costs),
                total_usd=sum(c.total_usd for c in costs),
            ),
        )
        parent, version = state.record.head, state.record.version
        turns = dict(state.turns)
        committed: list[Turn] = []
        for (_, k, result, images, region_meta), cost in zip(done, costs, strict=True):
            meta = self._metadata(result, region_meta)
            meta["variant"], meta["variants"] = k, self.variants
            record = self._record(
                result,
                images,
                parent=parent,
                cost_usd=cost.total_usd,
                attempts=self._variant_tries.get(k, 1),
                metadata=meta,
            )
            rec = await engine.store.commit_turn(
                ctx.id, record, expected_version=version, lease_owner=engine.lease_owner
            )
            version = rec.version
            turns[record.id] = record
            ctx.commit(SessionState.adopt(rec, turns))
            if self.files is not None:
                self.files.schedule((record.user, record.model))
            turn = Turn.from_record(record, engine.store.blobs, images)
            committed.append(turn)
            if self.committed is None:
                self.committed = turn
            await self._completed(turn, turn.attempts, variant=k)
        first = committed[0]
        rec = await engine.store.move_head(ctx.id, first.id, first.id, expected_version=version)
        ctx.commit(SessionState.adopt(rec, turns))
        self._log.info("turn.committed", turn=self.index, variants=len(committed))
        return first

    def _metadata(
        self, result: ProviderResult, region_meta: dict[str, Any] | None
    ) -> dict[str, Any]:
        meta = _api_metadata(_turn_metadata(result), self.provider.api)
        _chain_metadata(meta, self.provider, result)
        if region_meta:
            meta["region"] = region_meta
        return meta

    def _record(
        self,
        result: ProviderResult,
        images: list[Image],
        *,
        parent: str | None,
        cost_usd: float,
        attempts: int,
        metadata: dict[str, Any],
        plan: Plan | None = None,
    ) -> TurnRecord:
        """The turn as it is stored, its blobs interned (the answer's images by the digests
        their events already computed)."""
        return intern_turn(
            TurnRecord(
                id=new_id(),
                parent=parent,
                index=self.index,
                user=self.draft,
                model=result.content,
                model_id=self.ctx.spec.id,
                image_config=self.settings.image_config,
                usage=result.usage,
                cost_usd=cost_usd,
                finish_reason=result.finish_reason,
                attempts=attempts,
                latency_s=time.monotonic() - self.started,
                timings=result.timings,
                request_bytes=result.request_bytes,
                response_bytes=result.response_bytes,
                carried=plan.carried if plan is not None else None,
                rebased=plan.rebased if plan is not None else False,
                metadata=metadata,
            ),
            self.engine.store.blobs,
            [(image.data, image.sha256) for image in images],
        )

    async def _completed(self, turn: Turn, attempts: int, *, variant: int = 0) -> None:
        await self._publish(
            TurnCompleted(
                session_id=self.ctx.id,
                turn=self.index,
                finish_reason=turn.finish_reason,
                attempts=attempts,
                latency_s=turn.latency_s,
                images=[i.ref() for i in turn.images],
                text=turn.text,
                usage=turn.usage,
                cost_usd=turn.cost_usd,
                variant=variant,
                turn_id=turn.id if variant else "",
            )
        )

    def _composited(self, result: ProviderResult) -> tuple[ProviderResult, dict[str, Any]]:
        """The answer for the crop composited into the head image (see `_regions`), and what
        the turn records of the region."""
        assert self.region is not None
        region, plan, prompt = self.region
        answers = [p for p in result.content.parts if p.is_image and not p.thought]
        if not answers:
            raise ContentBlocked("the model answered the region edit without an image",
                                 reason="NO_IMAGE")  # fmt: skip
        blob = answers[-1].inline_data
        assert blob is not None
        meta: dict[str, Any] = {
            "prompt": prompt,
            "box": list(plan.bbox),
            "feather": region.feather,
            "mask": region.mask is not None,
        }
        if self.provider.native_masks:
            # The provider confined the edit itself: its frame is the turn's image, and what
            # it changed outside the region is counted and reported, not hidden.
            drifted = drift(plan, blob.data, region.feather)
            meta.update(crop=None, ratio=None, native=True, region_drift_px=drifted)
            return result, meta
        image, drifted = composite(plan, blob.data, region.feather)
        meta.update(crop=list(plan.crop), ratio=plan.ratio, region_drift_px=drifted)
        content = region_model_content(result.content, image)
        return dataclasses.replace(result, content=content), meta

    def _cost(self, result: ProviderResult) -> CostBreakdown:
        return settle_cost(
            self.ctx.spec,
            self.provider.name,
            result.usage,
            self.image_size,
            len(result.content.images()),
        )

    async def _commit(
        self,
        plan: Plan,
        result: ProviderResult,
        images: list[Image],
        region_meta: dict[str, Any] | None,
    ) -> Turn:
        """Settle the cost, store the turn, publish `turn.completed`: all or nothing."""
        engine, ctx, state = self.engine, self.ctx, self.state
        breakdown = self._cost(result)
        hold, self.hold = self.hold, None
        assert hold is not None
        await engine.shared.settle(hold, breakdown)
        record = self._record(
            result,
            images,
            parent=state.record.head,
            cost_usd=breakdown.total_usd,
            attempts=self.attempts,
            metadata=self._metadata(result, region_meta),
            plan=plan,
        )
        # Fenced: only while this engine still holds the session's lease.
        rec = await engine.store.commit_turn(
            ctx.id,
            record,
            expected_version=state.record.version,
            lease_owner=engine.lease_owner,
        )
        ctx.commit(SessionState.adopt(rec, {**state.turns, record.id: record}))
        if self.files is not None:
            # Upload this turn's images now, so the next turn finds them uploaded.
            self.files.schedule((record.user, record.model))
        turn = Turn.from_record(record, engine.store.blobs, images)
        self.committed = turn
        await self._completed(turn, self.attempts)
        self._log.info("turn.committed", turn=self.index, attempts=self.attempts)
        return turn


def _chain_metadata(meta: dict[str, Any], provider: Provider, result: ProviderResult) -> None:
    # The interaction that produced the turn, by provider scope (endpoint + key fingerprint):
    # the next turn from this one continues it.
    if provider.keeps_conversations and result.response_id:
        meta["interactions"] = {provider.scope: result.response_id}


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


def _api_metadata(meta: dict[str, Any], api: str) -> dict[str, Any]:
    # Gemini answers are recorded as they came; another API's are marked, so a later Gemini
    # request knows they carry no signatures of their own.
    if api != "gemini":
        meta["api"] = api
    return meta
