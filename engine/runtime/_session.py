"""`Session`, the owner of a session's turn state, and `TurnStream`, a turn's events as they
happen; the turn itself runs in `_pipeline`, under the session's lock and store lease (`_lease`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

import sessions as tree
from engine._exceptions import Closed, ConfigError
from engine._logs import Logger
from engine.events import (
    Event,
    SessionClosed,
    SessionForked,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
)
from engine.policy import Budget
from engine.runtime._pipeline import Framing, TurnContext, TurnRun
from engine.runtime._regions import Region, RegionPlan, plan_region
from engine.runtime._shield import finish
from engine.runtime._turns import ImageInput, Turn, build_user_content
from engine.state import Subscription
from sessions import (
    Blob,
    Content,
    ModelSpec,
    Part,
    SessionState,
)

if TYPE_CHECKING:
    from engine.runtime._engine import Engine

__all__ = ["Session", "TurnStream"]

log = Logger("nanoedit.engine")

_TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")


async def _settled(task: asyncio.Future[Any]) -> None:
    """Wait for `task` to end, whatever its outcome."""
    await asyncio.gather(task, return_exceptions=True)


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


def _abandon(task: asyncio.Task[Turn], sub: Subscription) -> None:
    """What a stream dropped by its consumer leaves behind: its turn is cancelled (unless it
    has ended) and its subscription closed."""
    if not task.done():
        sub.close()  # a publisher blocked on the stream's buffer goes on
        task.cancel()


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
        # Dropped without aclose(): cancelled at once when the stream is collected (reference
        # counting, no collector pass); the task releases the lock when it ends.
        weakref.finalize(self, _abandon, task, sub).atexit = False

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

    async def refresh(self) -> None:
        """Read the session again if another engine (another process or node) changed it."""
        await self._reload_if_changed()

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

    async def rename(self, title: str) -> None:
        """Set the session's title (under the lock and the lease, like every change)."""
        if not isinstance(title, str) or len(title) > 200:
            raise ConfigError("a title is text of at most 200 characters")
        engine = self._engine
        engine.check_open()
        async with engine._lock(self.id), engine.lease(self.id).held():
            await self._reload_if_changed()
            await engine.store.rename(
                self.id, title.strip(), expected_version=self._state.record.version
            )
            await self._reload()

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

    async def regenerate(self, *, variants: int = 1, stream: bool | None = None) -> Turn:
        """Send the head turn's user Content again as a sibling turn (`variants` takes)."""
        if self._state.record.head is None:
            raise ConfigError("nothing to regenerate: the session has no turns")
        _check_variants(variants)
        engine = self._engine
        engine.check_open()
        async with engine._lock(self.id):
            return await self._tracked(self._leased_turn(None, stream=stream, variants=variants))

    async def promote(self, turn: Turn | str) -> Turn | None:
        """Make `turn` (one of a variants turn's takes, or any turn) the head."""
        return await self.checkout(turn)

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
        self,
        text: str = "",
        images: Iterable[ImageInput] = (),
        *,
        region: Region | None = None,
        variants: int = 1,
        stream: bool | None = None,
    ) -> Turn:
        """Run one turn and return it once committed.

        `variants=N` (up to 8) generates N takes at once, under one reservation of money for
        all of them (refused as a whole when they would not fit the budget), and commits them
        as N sibling turns; the head is the first to finish (returned), `promote` picks
        another.

        With `region` (a box or a mask on the head image) only that part may change: the
        engine sends the model a crop around it and composites the answer back, so every pixel
        beyond the region's feather is the head image's own (see `engine.runtime._regions`)."""
        draft = self._draft(text, images)
        _check_variants(variants)
        if region is not None:
            if not isinstance(region, Region):
                raise ConfigError(f"region must be a Region, not {type(region).__name__}")
            self.spec.check_input_images(len(draft.images()) + 1)  # the crop is one more
        engine = self._engine
        engine.check_open()
        async with engine._lock(self.id):
            engine.check_open()  # it may have closed while we waited for the lock
            return await self._tracked(
                self._leased_turn(
                    draft,
                    stream=stream,
                    region=(region, text) if region else None,
                    variants=variants,
                )
            )

    def _region_draft(
        self, draft: Content, region: Region, text: str
    ) -> tuple[Content, tuple[Region, RegionPlan, str]]:
        """The draft of a region edit: the instruction, the crop, then the turn's own images."""
        head = self._state.record.head
        base = None
        if head is not None:
            found = self._state.turn(head).model.images()
            base = found[-1] if found else None
        if base is None:
            raise ConfigError("a region edit needs an image to edit: the head turn has none")
        fixed = (self._state.record.settings.image_config or {}).get("aspectRatio")
        plan = plan_region(region, base, self.spec, fixed)
        if self._engine.provider.native_masks:
            # The API takes the whole image (the head's, which the provider sends first) and
            # the mask: the draft is the user's own words and images.
            return draft, (region, plan, text)
        parts = [
            Part(text=plan.instruction(text)),
            Part(inline_data=Blob(mime_type="image/png", data=plan.crop_png)),
            *(p for p in draft.parts if p.inline_data is not None),
        ]
        return Content(role="user", parts=parts), (region, plan, text)

    def stream(
        self, text: str = "", images: Iterable[ImageInput] = (), *, stream: bool | None = None
    ) -> TurnStream:
        """Run one turn, yielding its events as they happen (see `TurnStream` for the rule)."""
        return TurnStream(self, self._draft(text, images), stream)

    def check_input(self, text: str, images: Iterable[ImageInput] = ()) -> None:
        """Raise ConfigError for input a turn would refuse (what `send` checks before anything
        is sent), without running one."""
        self._draft(text, images)

    def _draft(self, text: str, images: Iterable[ImageInput]) -> Content:
        """The user Content of the next turn, checked against the model before anything is
        sent: no more input images than it takes."""
        draft = build_user_content(text, images)
        self.spec.check_input_images(sum(1 for p in draft.parts if p.inline_data is not None))
        return draft

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
        self,
        draft: Content | None,
        *,
        stream: bool | None,
        gate: Any = None,
        region: tuple[Region, str] | None = None,
        variants: int = 1,
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
                planned = None
                if region is not None:
                    draft, planned = self._region_draft(draft, *region)
                run = TurnRun(
                    self._turn_context(),
                    draft,
                    stream=stream,
                    gate=gate,
                    region=planned,
                    variants=variants,
                )
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


MAX_VARIANTS = 8


def _check_variants(variants: int) -> None:
    if isinstance(variants, bool) or not isinstance(variants, int) or not 1 <= variants <= 8:
        raise ConfigError(f"variants must be an integer from 1 to {MAX_VARIANTS}, not {variants!r}")
