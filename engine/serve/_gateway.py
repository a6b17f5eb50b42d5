"""The gateway's state: the engine, the tenants, the session handles requests are using, the turn
running on each session, the SSE fan-outs, and how sessions and turns are shown.

A session handle lives while a request, a stream or a turn uses it; after that, only the most
recently used `idle_sessions` are kept (reopening a session reads it from the store again), so
a server that touched any number of sessions holds a bounded number (memory stays flat).
Ownership is read from the session's record before the session is opened, so another tenant's
id costs what an unknown one does and leaves no trace (no `session.resumed`).
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.events import Event
from engine.policy import Budget
from engine.runtime import Engine, Image, Session, Turn
from engine.serve._api import ImageOut, SessionOut, TurnOut
from engine.serve._chat import Conversations
from engine.serve._fanout import ClusterFanout, LocalFanout, SessionFanout
from engine.serve._http import HttpError
from engine.serve._metrics import Metrics
from engine.serve._tenants import RateWindow, Tenants
from engine.state import Cluster, Subscription
from sessions import NanoeditError, SessionNotFound, TurnRecord

__all__ = ["GATEWAY", "OPENAPI", "Gateway", "ServeOptions", "not_found"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What `nanoedit serve` adds to the engine's settings."""

    keys: dict[str, list[str]] | None = None  # tenant -> keys; None: one tenant, no keys
    max_body_bytes: int = 50 * MiB
    cors_origins: tuple[str, ...] = ()
    tenant_max_cost_usd: float = 0.0  # per tenant, over all its sessions; 0: no limit
    tenant_turns_per_minute: float = 0.0  # per tenant; 0: no limit
    heartbeat_s: float = 15.0
    drain_s: float = 30.0
    default_budget: Budget | None = None  # for sessions created without one
    # Handles kept after their last use, most recent first: a session that takes turn after
    # turn is not read from the store again for each (the rest are let go).
    idle_sessions: int = 64
    # How chat completions return images: data URLs ("data") or this server's image URLs.
    chat_images: str = "data"


def not_found(session_id: str) -> HttpError:
    """404 for a session that is unknown -- or another tenant's: the two answer alike."""
    return HttpError(404, "SessionNotFound", f"no session {session_id!r}")


class _Handle:
    __slots__ = ("session", "users")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.users = 0


class Gateway:
    """The engine behind the HTTP API, and what the HTTP side keeps while requests run."""

    def __init__(self, engine: Engine, options: ServeOptions) -> None:
        self.engine = engine
        self.options = options
        self.tenants = Tenants(options.keys)
        self.metrics = Metrics(engine.bus)
        self.draining = False
        self._handles: dict[str, _Handle] = {}  # in use
        self._idle: OrderedDict[str, _Handle] = OrderedDict()  # kept, least recent first
        self._turns: dict[str, asyncio.Task[Turn]] = {}
        self._rates: dict[str, RateWindow] = {}
        self._fanouts: dict[str, SessionFanout] = {}
        # Which session and turn each answer image came from: chat products resend whole
        # conversations, matched to the session they continue (`_chat`).
        self.conversations = Conversations(engine)
        # Where a session's events come from, picked once: this node's bus, or the session's
        # Redis stream (every node's).
        cluster = engine.cluster
        self._new_fanout: Callable[[str], SessionFanout] = (
            self._local_fanout
            if cluster is None
            else functools.partial(self._cluster_fanout, cluster)
        )

    # --- sessions in use ---------------------------------------------------------------------

    @asynccontextmanager
    async def using(self, tenant: str, session_id: str) -> AsyncIterator[Session]:
        """The tenant's session for the block (404 for an unknown id and another tenant's
        alike); its handle is let go when nothing uses it any more."""
        handle = await self._acquire(tenant, session_id)
        try:
            yield handle.session
        finally:
            self._release(session_id, handle)

    async def _acquire(self, tenant: str, session_id: str) -> _Handle:
        handle = self._handles.get(session_id) or self._idle.get(session_id)
        if handle is None:
            try:
                record = await self.engine.store.load_record(session_id)
            except SessionNotFound:
                raise not_found(session_id) from None
            if record.settings.owner != tenant:
                raise not_found(session_id)
            handle = self._handles.get(session_id)  # opened by another request meanwhile?
            if handle is None:
                try:
                    session = await self.engine.open_session(session_id, announce=False)
                except SessionNotFound:
                    raise not_found(session_id) from None
                handle = self._handles.setdefault(session_id, _Handle(session))
        elif handle.session.state.record.settings.owner != tenant:
            raise not_found(session_id)
        if self._idle.pop(session_id, None) is not None:
            self._handles[session_id] = handle
        handle.users += 1
        return handle

    def _release(self, session_id: str, handle: _Handle) -> None:
        handle.users -= 1
        if handle.users == 0 and self._handles.get(session_id) is handle:
            del self._handles[session_id]
            if self.options.idle_sessions > 0:
                self._idle[session_id] = handle
                if len(self._idle) > self.options.idle_sessions:
                    self._idle.popitem(last=False)

    def forget(self, session_id: str) -> None:
        """Drop a deleted session's kept handle."""
        self._idle.pop(session_id, None)

    @property
    def sessions_held(self) -> int:
        """Session handles held now: those in use and the idle ones kept."""
        return len(self._handles) + len(self._idle)

    # --- health --------------------------------------------------------------------------------

    async def probe(self) -> tuple[bool, bool | None]:
        """Whether the store answers, and Redis (None: no cluster), each within 2 seconds."""
        store_ok = True
        try:
            async with asyncio.timeout(2.0):
                await self.engine.store.load_record("healthz-probe")
        except SessionNotFound:
            pass
        except (NanoeditError, OSError, TimeoutError):
            store_ok = False
        return store_ok, await self.engine.shared.ping()

    # --- tenants -------------------------------------------------------------------------------

    async def holds(self, tenant: str, digest: str) -> bool:
        """Whether one of the tenant's sessions holds the image: one indexed store query, so
        a miss costs the same however many sessions the tenant has (and sees every node's)."""
        return await self.engine.store.holds_image(tenant, digest)

    async def tenant_image(self, tenant: str, digest: str) -> bytes | None:
        """The bytes of an image one of the tenant's sessions holds; None for any other digest
        (another tenant's included)."""
        digest = digest.lower()
        if not await self.holds(tenant, digest):
            return None
        return await self.engine.store.load_blob(digest)

    async def check_tenant_limits(self, tenant: str) -> None:
        """429 past the tenant's turn rate, 402 past its spending limit."""
        options = self.options
        if options.tenant_turns_per_minute > 0:
            window = self._rates.setdefault(tenant, RateWindow(options.tenant_turns_per_minute))
            wait = window.admit()
            if wait > 0:
                raise HttpError(
                    429, "RateLimited", "this key's turn rate is used up", retry_after=wait
                )
        if options.tenant_max_cost_usd > 0:
            # Settled money from the store, and what calls in flight set aside (every node's).
            spent = (await self.engine.store.tenant_usage(tenant)).spent_usd
            spent += await self.engine.shared.reserved_for_tenant(tenant)
            if spent >= options.tenant_max_cost_usd:
                raise HttpError(
                    402,
                    "BudgetExceeded",
                    f"this key has spent ${spent:.4f} of its ${options.tenant_max_cost_usd:g}",
                )

    # --- turns ---------------------------------------------------------------------------------

    def in_flight(self, session_id: str) -> asyncio.Task[Turn] | None:
        """The turn running on a session, if any."""
        task = self._turns.get(session_id)
        return task if task is not None and not task.done() else None

    @property
    def turns_in_flight(self) -> int:
        """Turns running now."""
        return sum(1 for t in self._turns.values() if not t.done())

    async def start_turn(
        self, tenant: str, session: Session, run: Callable[[], Awaitable[Turn]]
    ) -> asyncio.Task[Turn]:
        """Run a turn in a task of its own (a client going away does not cancel it); the task
        uses the session's handle until it ends."""
        if self.draining:
            raise HttpError(503, "Closed", "the server is shutting down", retry_after=5.0)
        if self.in_flight(session.id) is not None:
            raise HttpError(
                409, "SessionBusy", f"session {session.id} has a turn running", retry_after=1.0
            )
        handle = await self._acquire(tenant, session.id)
        task = asyncio.ensure_future(run())
        self._turns[session.id] = task
        task.add_done_callback(functools.partial(self._turn_done, session.id, handle))
        return task

    @asynccontextmanager
    async def watched_turn(
        self,
        tenant: str,
        session: Session,
        run: Callable[[], Awaitable[Turn]],
        types: tuple[str, ...],
    ) -> AsyncIterator[tuple[asyncio.Task[Turn], AsyncIterator[Event]]]:
        """Start a turn with a subscription to its events (of `types`) already open: the task,
        and the events as they come until the turn ends (then those still buffered)."""
        bus = self.engine.bus
        subscription = bus.subscribe(
            session_id=session.id,
            types=types,
            since_seq=bus.last_seq(session.id),
            maxsize=4096,
            overflow="drop_oldest",
        )
        async with subscription:
            task = await self.start_turn(tenant, session, run)
            done = asyncio.ensure_future(asyncio.wait((task,)))
            try:
                yield task, _until(subscription, done)
            finally:
                done.cancel()

    def _turn_done(self, session_id: str, handle: _Handle, task: asyncio.Task[Turn]) -> None:
        if self._turns.get(session_id) is task:
            del self._turns[session_id]
        self._release(session_id, handle)
        if not task.cancelled():
            task.exception()  # retrieved: a failed turn is reported by its events

    async def drain(self) -> None:
        """Stop taking turns; wait for the running ones up to `drain_s`, then cancel them."""
        self.draining = True
        pending = [t for t in self._turns.values() if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.options.drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # --- event streams -------------------------------------------------------------------------

    async def fanout(self, session_id: str) -> SessionFanout:
        """The SSE fan-out of a session's events (one per session, while it has clients): from
        this node's bus, or in a cluster from the session's Redis stream (every node's)."""
        fanout = self._fanouts.get(session_id)
        if fanout is None:
            fanout = self._new_fanout(session_id)
            self._fanouts[session_id] = fanout  # before any await: one per session
            try:
                await fanout.begin()
            except BaseException:
                self._fanouts.pop(session_id, None)
                raise
        await fanout.ready.wait()
        return fanout

    def _local_fanout(self, session_id: str) -> SessionFanout:
        on_empty = functools.partial(self._fanout_empty, session_id)
        return LocalFanout(self.engine.bus, session_id, on_empty)

    def _cluster_fanout(self, cluster: Cluster, session_id: str) -> SessionFanout:
        on_empty = functools.partial(self._fanout_empty, session_id)
        return ClusterFanout(cluster, session_id, on_empty)

    def _fanout_empty(self, session_id: str) -> None:
        fanout = self._fanouts.get(session_id)
        if fanout is not None and not len(fanout):
            del self._fanouts[session_id]
            fanout.close()

    def close_streams(self) -> None:
        """End every `/events` stream (shutdown)."""
        fanouts, self._fanouts = list(self._fanouts.values()), {}
        for fanout in fanouts:
            fanout.close()

    # --- output shapes -------------------------------------------------------------------------

    def _image_out(self, image: Image) -> ImageOut:
        return ImageOut(
            url=f"/v1/images/{image.sha256}",
            sha256=image.sha256,
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            bytes=len(image.data),
        )

    def turn_out(self, record: TurnRecord) -> TurnOut:
        """A turn as the API shows it."""
        blobs = self.engine.store.blobs
        turn = Turn.from_record(record, blobs)
        region = record.metadata.get("region")
        inputs = [Image.from_blob(b, blobs.digest(b.data)) for b in record.user.images()]
        return TurnOut(
            id=record.id,
            index=record.index,
            parent=record.parent,
            # A region edit's own words (what was sent adds where to change, in the crop).
            prompt=(region or {}).get("prompt") or record.user.text(),
            input_images=[self._image_out(i) for i in inputs],
            text=turn.text,
            images=[self._image_out(i) for i in turn.images],
            usage=record.usage,
            cost_usd=record.cost_usd,
            finish_reason=record.finish_reason,
            latency_s=record.latency_s,
            attempts=record.attempts,
            created_at=record.created_at,
            region=region.get("box") if region else None,
            region_drift_px=region.get("region_drift_px") if region else None,
            variant=record.metadata.get("variant"),
        )

    def session_out(self, session: Session, *, tree: bool = False) -> SessionOut:
        """A session with its current branch (and every branch with `tree`)."""
        state = session.state
        rec = state.record
        return SessionOut(
            id=rec.id,
            model=rec.model,
            title=rec.title,
            head=rec.head,
            turns=[self.turn_out(t) for t in state.path()],
            cost_usd=sum(t.cost_usd for t in state.turns.values()),
            created_at=rec.created_at,
            updated_at=rec.updated_at,
            parent_id=rec.parent_id,
            branches=[[self.turn_out(t) for t in b] for b in state.branches()] if tree else None,
        )


GATEWAY = web.AppKey("nanoedit_gateway", Gateway)
OPENAPI = web.AppKey("nanoedit_openapi", bytes)  # the document, built from the route table


async def _until(subscription: Subscription, done: asyncio.Future[Any]) -> AsyncIterator[Event]:
    """The subscription's events until `done` (then what is still buffered)."""
    while True:
        getter = asyncio.ensure_future(anext(subscription))
        finished, _ = await asyncio.wait((getter, done), return_when=asyncio.FIRST_COMPLETED)
        if getter in finished:
            yield getter.result()
            continue
        getter.cancel()
        while subscription.pending:
            yield await anext(subscription)
        return
