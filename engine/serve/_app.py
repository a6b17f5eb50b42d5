"""`nanoedit serve`: sessions over REST, turn events over SSE, images by URL, tenants by key.

One `Gateway` holds the engine and what the HTTP side adds to it: tenants, the session handles
it has opened, the turn running on each session, a per-tenant index of images and spend, the
metrics. Turns run in tasks of their own: a client that goes away mid-turn does not cancel it
(`POST .../cancel` does), and a draining server lets them finish.

Errors are `{"error": {"type", "message", "status"}}` with the status the engine's exception
means (see `_STATUS`). Everything a request asks for is checked before anything changes: a bad
request never changes a session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import BodyPartReader, web

from engine._exceptions import (
    ApiError,
    BudgetExceeded,
    Closed,
    ConfigError,
    ContentBlocked,
    NanoeditError,
    RateLimited,
    SessionBusy,
    SessionNotFound,
    StreamBroken,
    Timeout,
    TransportError,
    TurnNotFound,
    WireError,
)
from engine.events import Event
from engine.policy import Budget
from engine.runtime import Engine, Image, Session, Turn, sniff_mime
from engine.serve._api import (
    CheckoutIn,
    ErrorBody,
    ErrorOut,
    ForkIn,
    Health,
    ImageOut,
    SessionCreate,
    SessionList,
    SessionOut,
    SessionSummaryOut,
    TurnCreate,
    TurnOut,
)
from engine.serve._fanout import ClusterFanout, LocalFanout, SessionFanout, sse_bytes
from engine.serve._metrics import Metrics
from engine.serve._openapi import openapi_document
from engine.serve._tenants import RateWindow, Tenants
from sessions import Blob, ImageConfig, SessionError, StoreError, TurnRecord
from sessions import delete as delete_stored
from sessions import export_session as export_state

__all__ = ["GATEWAY", "Gateway", "ServeOptions", "create_app"]

log = structlog.get_logger("nanoedit.serve")

T = TypeVar("T")
MiB = 1024 * 1024
_TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
_JSON = "application/json"
_SHA256_HEX = frozenset("0123456789abcdef")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_STUDIO = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
    "/studio.css": ("studio.css", "text/css; charset=utf-8"),
}
_encoder = msgspec.json.Encoder()


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


class HttpError(Exception):
    """An error answer raised by a handler."""

    def __init__(
        self, status: int, kind: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def _error_response(
    status: int, kind: str, message: str, retry_after: float | None = None
) -> web.Response:
    body = _encoder.encode(ErrorOut(error=ErrorBody(type=kind, message=message, status=status)))
    headers = {"Content-Type": _JSON}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(status=status, body=body, headers=headers)


def status_of(exc: BaseException) -> tuple[int, float | None]:
    """The HTTP status an engine error means, and a Retry-After when there is one."""
    if isinstance(exc, HttpError):
        return exc.status, exc.retry_after
    if isinstance(exc, (ConfigError, WireError, TurnNotFound)):
        return 400, None
    if isinstance(exc, SessionNotFound):
        return 404, None
    if isinstance(exc, BudgetExceeded):
        return 402, None
    if isinstance(exc, SessionBusy):
        return 409, 1.0
    if isinstance(exc, ContentBlocked):
        return 422, None
    if isinstance(exc, RateLimited):
        return 429, exc.retry_after or 1.0
    if isinstance(exc, Timeout):
        return 504, None
    if isinstance(exc, (ApiError, TransportError, StreamBroken)):
        return 502, None
    if isinstance(exc, Closed):
        return 503, 5.0
    if isinstance(exc, SessionError):
        return 409, None
    return 500, None


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encoder.encode(value), content_type=_JSON)


def _decode(body: bytes, kind: type[T]) -> T:
    if not body.strip():
        body = b"{}"
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise HttpError(400, "InvalidRequest", f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HttpError(400, "InvalidRequest", f"the body is not JSON: {exc}") from None


@dataclass(slots=True)
class _TenantIndex:
    """What one tenant has: its images (sha256 -> how many turns of its sessions hold it) and
    the money its sessions spent."""

    images: Counter[str] = field(default_factory=Counter)
    spent_usd: float = 0.0


class Gateway:
    """The engine behind the HTTP API, and what each tenant has."""

    def __init__(self, engine: Engine, options: ServeOptions) -> None:
        self.engine = engine
        self.options = options
        self.tenants = Tenants(options.keys)
        self.metrics = Metrics(engine.bus)
        self.draining = False
        self._handles: dict[str, Session] = {}
        self._turns: dict[str, asyncio.Task[Turn]] = {}
        self._indexes: dict[str, _TenantIndex] = {}
        self._index_locks: dict[str, asyncio.Lock] = {}
        self._rates: dict[str, RateWindow] = {}
        self._fanouts: dict[str, SessionFanout] = {}

    # --- tenants and sessions --------------------------------------------------------------

    async def index(self, tenant: str) -> _TenantIndex:
        """The tenant's images and spend, read from the store once, then kept up to date."""
        found = self._indexes.get(tenant)
        if found is not None:
            return found
        lock = self._index_locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            found = self._indexes.get(tenant)
            if found is not None:
                return found
            index = _TenantIndex()
            store = self.engine.store
            for summary in await store.list(owner=tenant):
                state = await store.load(summary.id)
                for turn in state.turns.values():
                    index.spent_usd += turn.cost_usd
                    index.images.update(self._digests(turn))
            self._indexes[tenant] = index
            return index

    async def holds(self, tenant: str, digest: str) -> bool:
        """Whether one of the tenant's sessions holds the image. In a cluster, other nodes
        commit turns too: a miss reads the tenant's sessions from the store again."""
        if digest in (await self.index(tenant)).images:
            return True
        if self.engine.cluster is None:
            return False
        self._indexes.pop(tenant, None)
        return digest in (await self.index(tenant)).images

    def _digests(self, turn: TurnRecord) -> list[str]:
        blobs = self.engine.store.blobs
        out = []
        for content in (turn.user, turn.model):
            for blob in content.images():
                digest = blobs.digest(blob.data) or hashlib.sha256(blob.data).hexdigest()
                out.append(digest)
        return out

    async def session(self, tenant: str, session_id: str) -> Session:
        """The tenant's session; 404 for an unknown id and for another tenant's alike."""
        handle = self._handles.get(session_id)
        if handle is None:
            try:
                handle = await self.engine.open_session(session_id)
            except SessionNotFound:
                raise _not_found(session_id) from None
            self._handles[session_id] = handle
        if handle.state.record.settings.owner != tenant:
            raise _not_found(session_id)
        return handle

    def in_flight(self, session_id: str) -> asyncio.Task[Turn] | None:
        """The turn running on a session, if any."""
        task = self._turns.get(session_id)
        return task if task is not None and not task.done() else None

    @property
    def turns_in_flight(self) -> int:
        """Turns running now."""
        return sum(1 for t in self._turns.values() if not t.done())

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
            spent = (await self.index(tenant)).spent_usd
            cluster = self.engine.cluster
            if cluster is not None:
                # Every node's settled money and what its calls in flight set aside.
                scope = f"tenant:{tenant}"
                spent = await cluster.spent(scope, start=spent) + await cluster.reserved(scope)
            if spent >= options.tenant_max_cost_usd:
                raise HttpError(
                    402,
                    "BudgetExceeded",
                    f"this key has spent ${spent:.4f} of its ${options.tenant_max_cost_usd:g}",
                )

    def start_turn(
        self, tenant: str, session: Session, run: Callable[[], Awaitable[Turn]]
    ) -> asyncio.Task[Turn]:
        """Run a turn in a task of its own (a client going away does not cancel it)."""
        if self.draining:
            raise HttpError(503, "Closed", "the server is shutting down", retry_after=5.0)
        if self.in_flight(session.id) is not None:
            raise HttpError(
                409, "SessionBusy", f"session {session.id} has a turn running", retry_after=1.0
            )

        async def turn() -> Turn:
            done = await run()
            index = self._indexes.get(tenant)
            if index is not None:  # (built before the turn started)
                index.spent_usd += done.cost_usd
                index.images.update(self._digests(done.record))
            return done

        task = asyncio.ensure_future(turn())
        self._turns[session.id] = task
        task.add_done_callback(functools.partial(self._turn_done, session.id))
        return task

    def _turn_done(self, session_id: str, task: asyncio.Task[Turn]) -> None:
        if self._turns.get(session_id) is task:
            del self._turns[session_id]
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

    async def fanout(self, session_id: str) -> SessionFanout:
        """The SSE fan-out of a session's events (one per session, while it has clients): from
        this node's bus, or in a cluster from the session's Redis stream (every node's)."""
        fanout = self._fanouts.get(session_id)
        if fanout is None:
            cluster = self.engine.cluster
            on_empty = functools.partial(self._fanout_empty, session_id)
            if cluster is None:
                fanout = LocalFanout(self.engine.bus, session_id, on_empty)
                self._fanouts[session_id] = fanout
            else:
                fanout = ClusterFanout(cluster, session_id, on_empty)
                self._fanouts[session_id] = fanout  # before the await: one per session
                try:
                    fanout.start(await cluster.last_seq(session_id))
                except BaseException:
                    self._fanouts.pop(session_id, None)
                    raise
        await fanout.ready.wait()
        return fanout

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

    def adopt(self, tenant: str, turns: Iterable[TurnRecord]) -> None:
        """Count the images of `turns` in the tenant's index, if it is built."""
        index = self._indexes.get(tenant)
        if index is not None:
            for turn in turns:
                index.images.update(self._digests(turn))

    def forget(self, session_id: str, tenant: str, digests: Iterable[str]) -> None:
        """Drop what is kept about a deleted session (its money stays spent): its handle, and
        its images (by digest) from the tenant's index."""
        self._handles.pop(session_id, None)
        index = self._indexes.get(tenant)
        if index is not None:
            gone = list(digests)
            index.images.subtract(gone)
            for digest in set(gone):
                if index.images[digest] <= 0:
                    del index.images[digest]

    # --- output shapes -----------------------------------------------------------------------

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
        inputs = [Image.from_blob(b, blobs.digest(b.data)) for b in record.user.images()]
        return TurnOut(
            id=record.id,
            index=record.index,
            parent=record.parent,
            prompt=record.user.text(),
            input_images=[self._image_out(i) for i in inputs],
            text=turn.text,
            images=[self._image_out(i) for i in turn.images],
            usage=record.usage,
            cost_usd=record.cost_usd,
            finish_reason=record.finish_reason,
            latency_s=record.latency_s,
            attempts=record.attempts,
            created_at=record.created_at,
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


def _not_found(session_id: str) -> HttpError:
    return HttpError(404, "SessionNotFound", f"no session {session_id!r}")


GATEWAY = web.AppKey("nanoedit_gateway", Gateway)


# --- middleware -------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cors_headers(request: web.Request, origins: tuple[str, ...]) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if not origin or not (origin in origins or "*" in origins):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
        "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
        "Access-Control-Expose-Headers": "Retry-After, ETag",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as the JSON error shape; never a traceback, a key or image bytes."""
    gateway = request.app[GATEWAY]
    cors = _cors_headers(request, gateway.options.cors_origins)
    if request.method == "OPTIONS" and cors:
        return web.Response(status=204, headers=cors)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_response(exc.status, type(exc).__name__, exc.reason)
    except HttpError as exc:
        response = _error_response(exc.status, exc.kind, exc.message, exc.retry_after)
    except (NanoeditError, StoreError) as exc:
        status, retry_after = status_of(exc)
        response = _error_response(status, type(exc).__name__, str(exc), retry_after)
    except Exception:
        log.exception("serve.internal_error", path=request.path)
        response = _error_response(500, "InternalError", "internal error in nanoedit serve")
    if cors and not response.prepared:
        response.headers.update(cors)
    return response


def tenant_of(request: web.Request) -> str:
    """The request's tenant; 401 without a known key."""
    tenant = request.app[GATEWAY].tenants.identify(request.headers.get("Authorization"))
    if tenant is None:
        raise HttpError(401, "Unauthorized", "a valid key is needed: Authorization: Bearer KEY")
    return tenant


async def read_body(request: web.Request) -> bytes:
    """The body, refused with 413 past `--max-body-mb` (at once when Content-Length says so)."""
    limit = request.app[GATEWAY].options.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, "PayloadTooLarge", f"the body is over {limit:,} bytes")
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.readany():
        total += len(chunk)
        if total > limit:
            raise HttpError(413, "PayloadTooLarge", f"the body is over {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- handlers: sessions ----------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    """POST /v1/sessions."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    spec = _decode(await read_body(request), SessionCreate)
    if gateway.draining:
        raise HttpError(503, "Closed", "the server is shutting down", retry_after=5.0)
    config = spec.image_config
    budget = spec.budget
    session = await gateway.engine.create_session(
        spec.model,
        image_config=ImageConfig(aspect_ratio=config.aspect_ratio, image_size=config.image_size)
        if config is not None
        else None,
        system_instruction=spec.system_instruction,
        budget=Budget(
            max_context_tokens=budget.max_context_tokens,
            max_request_bytes=budget.max_request_bytes,
            max_cost_usd=budget.max_cost_usd,
            policy=budget.policy,
        )
        if budget is not None
        else gateway.options.default_budget,
        title=spec.title,
        owner=tenant,
    )
    gateway._handles[session.id] = session
    return _json(gateway.session_out(session), status=201)


async def list_sessions(request: web.Request) -> web.Response:
    """GET /v1/sessions."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    summaries = await gateway.engine.store.list(owner=tenant)
    return _json(
        SessionList(
            sessions=[
                SessionSummaryOut(
                    id=s.id,
                    model=s.model,
                    title=s.title,
                    turns=s.turns,
                    total_turns=s.total_turns,
                    created_at=s.created,
                    updated_at=s.updated,
                )
                for s in summaries
            ]
        )
    )


async def get_session(request: web.Request) -> web.Response:
    """GET /v1/sessions/{id}[?tree=1]."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    if gateway.in_flight(session.id) is None:
        await session._reload_if_changed()  # another engine (process) may have moved it
    tree = request.query.get("tree", "") in ("1", "true", "yes")
    return _json(gateway.session_out(session, tree=tree))


async def delete_session(request: web.Request) -> web.Response:
    """DELETE /v1/sessions/{id}."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    if gateway.in_flight(session.id) is not None:
        raise HttpError(409, "SessionBusy", "a turn is running: cancel it first", retry_after=1.0)
    state = await gateway.engine.store.load(session.id)
    # Its images' digests are read while the store still holds them (after the delete, the
    # blobs nobody else uses are gone and each digest would cost a sha256 of the image).
    digests = [d for t in state.turns.values() for d in gateway._digests(t)]
    await delete_stored(gateway.engine.store, session.id)
    gateway.forget(session.id, tenant, digests)
    await session.aclose()  # the engine forgets its event window and cost totals
    return web.Response(status=204)


async def export_session(request: web.Request) -> web.Response:
    """GET /v1/sessions/{id}/export: the Gemini REST request JSON with nanoedit's metadata."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    data = export_state(session.state)
    return web.Response(
        body=data,
        content_type=_JSON,
        headers={"Content-Disposition": f'attachment; filename="{session.id}.json"'},
    )


async def _move(request: web.Request, op: str) -> web.Response:
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    body = await read_body(request)
    if gateway.in_flight(session.id) is not None:
        raise HttpError(409, "SessionBusy", "a turn is running", retry_after=1.0)
    if op == "undo":
        await session.undo()
    elif op == "redo":
        await session.redo()
    else:
        target = _decode(body, CheckoutIn).turn
        turn_id = session.state.at_index(target).id if isinstance(target, int) else target
        await session.checkout(turn_id)
    return _json(gateway.session_out(session))


async def undo(request: web.Request) -> web.Response:
    """POST /v1/sessions/{id}/undo."""
    return await _move(request, "undo")


async def redo(request: web.Request) -> web.Response:
    """POST /v1/sessions/{id}/redo."""
    return await _move(request, "redo")


async def checkout(request: web.Request) -> web.Response:
    """POST /v1/sessions/{id}/checkout {"turn": N | id | null}."""
    return await _move(request, "checkout")


async def fork(request: web.Request) -> web.Response:
    """POST /v1/sessions/{id}/fork {"at": N}: 201 with the new session."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    at = _decode(await read_body(request), ForkIn).at
    if at is not None:
        session.state.at_index(at)  # 400 for a turn the branch does not have
    child = await session.fork(at)
    gateway._handles[child.id] = child
    gateway.adopt(tenant, child.state.turns.values())
    return _json(gateway.session_out(child), status=201)


async def cancel(request: web.Request) -> web.Response:
    """POST /v1/sessions/{id}/cancel: stop the running turn (nothing is committed)."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    task = gateway.in_flight(session.id)
    cancelled = task is not None
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return _json({"cancelled": cancelled})


# --- handlers: turns ---------------------------------------------------------------------------


async def _turn_input(request: web.Request, tenant: str) -> tuple[TurnCreate, list[Blob]]:
    """The turn's JSON (or multipart) body and its images, all checked before anything runs."""
    gateway = request.app[GATEWAY]
    images: list[Blob] = []
    if request.content_type.startswith("multipart/"):
        spec, images = await _multipart(request)
    else:
        spec = _decode(await read_body(request), TurnCreate)
    for n, item in enumerate(spec.images):
        if item.sha256 is not None:
            if item.data is not None:
                raise HttpError(400, "InvalidRequest", f"images[{n}]: give data or sha256")
            digest = item.sha256.lower()
            if not await gateway.holds(tenant, digest):
                raise HttpError(400, "InvalidRequest", f"images[{n}]: no image {digest[:16]}")
            data = await gateway.engine.store.load_blob(digest)
        elif item.data is not None:
            try:
                data = base64.b64decode(item.data, validate=True)
            except (binascii.Error, ValueError):
                raise HttpError(400, "InvalidRequest", f"images[{n}]: invalid base64") from None
        else:
            raise HttpError(400, "InvalidRequest", f"images[{n}]: give data or sha256")
        mime = sniff_mime(data, "")
        if not mime:
            raise HttpError(400, "InvalidRequest", f"images[{n}] is not a PNG, JPEG, GIF or WebP")
        if item.mime_type is not None and item.mime_type != mime:
            raise HttpError(
                400, "InvalidRequest", f"images[{n}]: mime_type {item.mime_type} but it is {mime}"
            )
        images.append(Blob(mime_type=mime, data=data))
    return spec, images


async def _multipart(request: web.Request) -> tuple[TurnCreate, list[Blob]]:
    limit = request.app[GATEWAY].options.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, "PayloadTooLarge", f"the body is over {limit:,} bytes")
    reader = await request.multipart()
    text, stream, images, total = "", False, [], 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):  # pragma: no cover - nested multipart
            raise HttpError(400, "InvalidRequest", "nested multipart bodies are not accepted")
        data = bytearray()
        while chunk := await part.read_chunk():
            total += len(chunk)
            if total > limit:
                raise HttpError(413, "PayloadTooLarge", f"the body is over {limit:,} bytes")
            data += chunk
        if part.name == "text":
            text = data.decode("utf-8", "replace")
        elif part.name == "stream":
            stream = data.decode().strip().lower() in ("1", "true", "yes")
        elif part.name in ("image", "images", "image[]"):
            mime = sniff_mime(bytes(data), "")
            if not mime:
                raise HttpError(400, "InvalidRequest", f"{part.filename or 'an image'} is not one")
            images.append(Blob(mime_type=mime, data=bytes(data)))
        else:
            raise HttpError(400, "InvalidRequest", f"unknown form field {part.name!r}")
    return TurnCreate(text=text, stream=stream), images


async def create_turn(request: web.Request) -> web.StreamResponse:
    """POST /v1/sessions/{id}/turns: the committed turn, or its events as SSE."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    spec, images = await _turn_input(request, tenant)
    if not spec.text and not images:
        raise HttpError(400, "InvalidRequest", "a turn needs text or at least one image")
    await gateway.check_tenant_limits(tenant)
    return await _run_turn(
        request, gateway, tenant, session, lambda: session.send(spec.text, images), spec.stream
    )


async def regenerate(request: web.Request) -> web.StreamResponse:
    """POST /v1/sessions/{id}/regenerate {"stream"?}: the head turn's prompt again."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    body = await read_body(request)
    stream = bool(_decode(body, dict[str, bool]).get("stream", False)) if body.strip() else False
    if session.state.record.head is None:
        raise HttpError(400, "InvalidRequest", "nothing to regenerate: the session has no turns")
    await gateway.check_tenant_limits(tenant)
    return await _run_turn(request, gateway, tenant, session, session.regenerate, stream)


async def _run_turn(
    request: web.Request,
    gateway: Gateway,
    tenant: str,
    session: Session,
    run: Callable[[], Awaitable[Turn]],
    stream: bool,
) -> web.StreamResponse:
    bus = gateway.engine.bus
    await gateway.index(tenant)  # built before the turn, which then adds its own images
    if not stream:
        task = gateway.start_turn(tenant, session, run)
        try:
            turn = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise HttpError(
                    409, "TurnCancelled", "the turn was cancelled; nothing was committed"
                ) from None
            raise
        return _json(gateway.turn_out(turn.record))
    # Subscribed before the turn starts: its first event is not missed.
    subscription = bus.subscribe(
        session_id=session.id,
        since_seq=bus.last_seq(session.id),
        maxsize=4096,
        overflow="drop_oldest",
    )
    async with subscription:
        task = gateway.start_turn(tenant, session, run)
        response = _sse_response(request)
        await response.prepare(request)
        try:
            async for event in subscription:
                await _send_event(response, event)
                if event.type in _TERMINAL:
                    break
        except (ConnectionError, asyncio.CancelledError):
            # The client went away: the turn goes on (POST .../cancel stops it).
            if not task.done():
                log.info("serve.stream_left", session_id=session.id)
            raise
        await response.write_eof()
    return response


def _sse_response(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    if request.version >= (1, 1):
        # Said outright (aiohttp would choose it anyway): the fan-out frames chunks itself.
        response.enable_chunked_encoding()
    cors = _cors_headers(request, request.app[GATEWAY].options.cors_origins)
    response.headers.update(cors)
    return response


async def _send_event(response: web.StreamResponse, event: Event) -> None:
    await response.write(sse_bytes(event))


async def session_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/sessions/{id}/events: replay after Last-Event-ID (or ?since=N), then live."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    session = await gateway.session(tenant, request.match_info["id"])
    raw = request.headers.get("Last-Event-ID") or request.query.get("since")
    since: int | None = None
    if raw is not None:
        try:
            since = int(raw)
        except ValueError:
            message = f"Last-Event-ID must be a number: {raw!r}"
            raise HttpError(400, "InvalidRequest", message) from None
        if since < 0:
            raise HttpError(400, "InvalidRequest", "Last-Event-ID must be at least 0")
    response = _sse_response(request)
    await response.prepare(request)
    await response.write(b": connected\n\n")
    fanout = await gateway.fanout(session.id)
    await fanout.serve(request, response, since, gateway.options.heartbeat_s)
    return response


# --- handlers: images, health, metrics, docs, studio -------------------------------------------


async def get_image(request: web.Request) -> web.Response:
    """GET /v1/images/{sha256}: 404 unless one of the tenant's sessions holds it."""
    gateway, tenant = request.app[GATEWAY], tenant_of(request)
    digest = request.match_info["sha256"].lower()
    if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
        raise HttpError(404, "NotFound", "no such image")
    if not await gateway.holds(tenant, digest):
        raise HttpError(404, "NotFound", "no such image")
    if request.headers.get("If-None-Match", "").strip('"') == digest:
        return web.Response(status=304, headers={"ETag": f'"{digest}"'})
    try:
        data = await gateway.engine.store.load_blob(digest)
    except StoreError:
        raise HttpError(404, "NotFound", "no such image") from None
    return web.Response(
        body=data,
        headers={
            "Content-Type": sniff_mime(data),
            "ETag": f'"{digest}"',
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz (no key needed)."""
    gateway = request.app[GATEWAY]
    health = Health(
        status="draining" if gateway.draining else "ok", turns_in_flight=gateway.turns_in_flight
    )
    return _json(health)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format (no key needed)."""
    gateway = request.app[GATEWAY]
    body, content_type = gateway.metrics.render(in_flight=gateway.turns_in_flight)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.Response(body=openapi_document(), content_type=_JSON)


async def studio(request: web.Request) -> web.Response:
    """The studio page and its script and style, with a strict Content-Security-Policy."""
    name, content_type = _STUDIO[request.path]
    data = resources.files("engine.serve").joinpath("studio", name).read_bytes()
    return web.Response(
        body=data,
        headers={
            "Content-Type": content_type,
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/sessions", create_session),
    ("GET", "/v1/sessions", list_sessions),
    ("GET", "/v1/sessions/{id}", get_session),
    ("DELETE", "/v1/sessions/{id}", delete_session),
    ("POST", "/v1/sessions/{id}/turns", create_turn),
    ("GET", "/v1/sessions/{id}/events", session_events),
    ("POST", "/v1/sessions/{id}/undo", undo),
    ("POST", "/v1/sessions/{id}/redo", redo),
    ("POST", "/v1/sessions/{id}/checkout", checkout),
    ("POST", "/v1/sessions/{id}/regenerate", regenerate),
    ("POST", "/v1/sessions/{id}/fork", fork),
    ("POST", "/v1/sessions/{id}/cancel", cancel),
    ("GET", "/v1/sessions/{id}/export", export_session),
    ("GET", "/v1/images/{sha256}", get_image),
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
    *(("GET", path, studio) for path in _STUDIO),
]


def create_app(engine: Engine, options: ServeOptions | None = None) -> web.Application:
    """The gateway as an aiohttp application around a started engine."""
    options = options or ServeOptions()
    app = web.Application(
        middlewares=[_errors], client_max_size=options.max_body_bytes + 1024 * 1024
    )
    app[GATEWAY] = Gateway(engine, options)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    # CORS preflights (OPTIONS) from allowed origins are answered by the middleware.
    app.on_shutdown.append(_close_streams)
    return app


async def _close_streams(app: web.Application) -> None:
    app[GATEWAY].close_streams()
