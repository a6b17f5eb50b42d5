"""The gateway's handlers: each checks everything a request asks for before anything changes,
and goes through the engine for every change (turns, head moves, deletes take the lease)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from importlib import resources

import structlog
from aiohttp import web

from engine.policy import Budget
from engine.runtime import Reference, Region, Session, Turn, sniff_mime
from engine.serve._api import (
    CheckoutIn,
    ForkIn,
    Health,
    RenameIn,
    SessionCreate,
    SessionList,
    SessionSummaryOut,
    TurnCreate,
)
from engine.serve._gateway import GATEWAY, OPENAPI, Gateway
from engine.serve._http import (
    JSON,
    HttpError,
    decode_body,
    json_response,
    read_body,
    read_form,
    sse_response,
    write_event,
)
from sessions import Blob, ImageConfig, StoreError
from sessions import export_session as export_state

__all__ = [
    "STUDIO_FILES",
    "cancel",
    "checkout",
    "create_session",
    "create_turn",
    "delete_session",
    "export_session",
    "fork",
    "get_image",
    "get_session",
    "healthz",
    "list_sessions",
    "metrics",
    "openapi",
    "redo",
    "regenerate",
    "session_events",
    "studio",
    "undo",
]

log = structlog.get_logger("nanoedit.serve")

_TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
_SHA256_HEX = frozenset("0123456789abcdef")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
STUDIO_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/studio.js": ("studio.js", "text/javascript; charset=utf-8"),
    "/studio.css": ("studio.css", "text/css; charset=utf-8"),
}


def _gateway(request: web.Request) -> tuple[Gateway, str]:
    """The gateway and the request's tenant; 401 without a known key."""
    gateway = request.app[GATEWAY]
    tenant = gateway.tenants.identify(request.headers.get("Authorization"))
    if tenant is None:
        raise HttpError(401, "Unauthorized", "a valid key is needed: Authorization: Bearer KEY")
    return gateway, tenant


async def _body(request: web.Request) -> bytes:
    return await read_body(request, request.app[GATEWAY].options.max_body_bytes)


# --- sessions --------------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    """POST /v1/sessions."""
    gateway, tenant = _gateway(request)
    spec = decode_body(await _body(request), SessionCreate)
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
        thinking_level=spec.thinking_level,
    )
    return json_response(gateway.session_out(session), status=201)


async def list_sessions(request: web.Request) -> web.Response:
    """GET /v1/sessions."""
    gateway, tenant = _gateway(request)
    summaries = await gateway.engine.store.list(owner=tenant)
    return json_response(
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
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        if gateway.in_flight(session.id) is None:
            await session.refresh()  # another engine (process, node) may have moved it
        tree = request.query.get("tree", "") in ("1", "true", "yes")
        return json_response(gateway.session_out(session, tree=tree))


async def delete_session(request: web.Request) -> web.Response:
    """DELETE /v1/sessions/{id}: under the session's lease, like every other change."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        if gateway.in_flight(session.id) is not None:
            raise HttpError(
                409, "SessionBusy", "a turn is running: cancel it first", retry_after=1.0
            )
        await gateway.engine.delete_session(session.id)
    gateway.forget(session.id)
    return web.Response(status=204)


async def rename_session(request: web.Request) -> web.Response:
    """PATCH /v1/sessions/{id} {"title"}: the session with its new title."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        title = decode_body(await _body(request), RenameIn).title
        if gateway.in_flight(session.id) is not None:
            raise HttpError(409, "SessionBusy", "a turn is running", retry_after=1.0)
        await session.rename(title)
        return json_response(gateway.session_out(session))


async def export_session(request: web.Request) -> web.Response:
    """GET /v1/sessions/{id}/export: the Gemini REST request JSON with nanoedit's metadata."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        data = export_state(session.state)
    return web.Response(
        body=data,
        content_type=JSON,
        headers={"Content-Disposition": f'attachment; filename="{session.id}.json"'},
    )


async def _move(request: web.Request, op: str) -> web.Response:
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        body = await _body(request)
        if gateway.in_flight(session.id) is not None:
            raise HttpError(409, "SessionBusy", "a turn is running", retry_after=1.0)
        if op == "undo":
            await session.undo()
        elif op == "redo":
            await session.redo()
        else:
            target = decode_body(body, CheckoutIn).turn
            turn_id = session.state.at_index(target).id if isinstance(target, int) else target
            await session.checkout(turn_id)
        return json_response(gateway.session_out(session))


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
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        at = decode_body(await _body(request), ForkIn).at
        if at is not None:
            session.state.at_index(at)  # 400 for a turn the branch does not have
        child = await session.fork(at)
    return json_response(gateway.session_out(child), status=201)


async def cancel(request: web.Request) -> web.Response:
    """POST /v1/sessions/{id}/cancel: stop the running turn (nothing is committed)."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        task = gateway.in_flight(session.id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return json_response({"cancelled": task is not None})


# --- turns -----------------------------------------------------------------------------------


async def _turn_input(
    request: web.Request, gateway: Gateway, tenant: str
) -> tuple[TurnCreate, list[Blob | Reference]]:
    """The turn's JSON (or multipart) body and its images, all checked before anything runs."""
    images: list[Blob | Reference] = []
    if request.content_type.startswith("multipart/"):
        spec, blobs = await _multipart(request, gateway.options.max_body_bytes)
        images.extend(blobs)
    else:
        spec = decode_body(await _body(request), TurnCreate)
    for n, item in enumerate(spec.images):
        if item.sha256 is not None:
            if item.data is not None:
                raise HttpError(400, "InvalidRequest", f"images[{n}]: give data or sha256")
            found = await gateway.tenant_image(tenant, item.sha256)
            if found is None:
                digest = item.sha256.lower()
                raise HttpError(400, "InvalidRequest", f"images[{n}]: no image {digest[:16]}")
            data = found
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
        blob = Blob(mime_type=mime, data=data)
        images.append(blob if item.role is None else Reference(blob, item.role, item.note))
    return spec, images


async def _multipart(request: web.Request, limit: int) -> tuple[TurnCreate, list[Blob]]:
    text, stream, images = "", False, []
    for part in await read_form(request, limit):
        if part.name == "text":
            try:
                text = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise HttpError(400, "InvalidRequest", "the text field is not UTF-8") from None
        elif part.name == "stream":
            stream = part.data.strip().lower() in (b"1", b"true", b"yes")
        elif part.name in ("image", "images", "image[]"):
            mime = sniff_mime(part.data, "")
            if not mime:
                raise HttpError(400, "InvalidRequest", f"{part.filename or 'an image'} is not one")
            images.append(Blob(mime_type=mime, data=part.data))
        else:
            raise HttpError(400, "InvalidRequest", f"unknown form field {part.name!r}")
    return TurnCreate(text=text, stream=stream), images


async def create_turn(request: web.Request) -> web.StreamResponse:
    """POST /v1/sessions/{id}/turns: the committed turn, or its events as SSE."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        spec, images = await _turn_input(request, gateway, tenant)
        if not spec.text and not images:
            raise HttpError(400, "InvalidRequest", "a turn needs text or at least one image")
        # Checked now, not by the upstream API after an upload: white-space prompts, damaged
        # or bomb images, more images than the model takes (ConfigError: 400).
        session.check_input(spec.text, images)
        region = _region_of(spec)
        await gateway.check_tenant_limits(tenant)
        return await _run_turn(
            request,
            gateway,
            tenant,
            session,
            lambda: session.send(spec.text, images, region=region, variants=spec.variants),
            spec.stream,
        )


def _region_of(spec: TurnCreate) -> Region | None:
    """The turn's region: a box, or a mask (400 for both, a box that is not 4 numbers, or a
    mask that is not base64)."""
    if spec.region is not None and spec.mask is not None:
        raise HttpError(400, "InvalidRequest", "give region or mask, not both")
    if spec.region is not None:
        if len(spec.region) != 4:
            raise HttpError(400, "InvalidRequest", "region is [x0, y0, x1, y1] in pixels")
        return Region.from_box(*spec.region)
    if spec.mask is not None:
        try:
            data = base64.b64decode(spec.mask.data, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, "InvalidRequest", "mask.data is not base64") from None
        return Region.from_mask(data, feather=spec.mask.feather)
    return None


async def regenerate(request: web.Request) -> web.StreamResponse:
    """POST /v1/sessions/{id}/regenerate {"stream"?}: the head turn's prompt again."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
        body = await _body(request)
        options = decode_body(body, dict[str, bool | int]) if body.strip() else {}
        stream = bool(options.get("stream", False))
        variants = options.get("variants", 1)
        if isinstance(variants, bool) or not isinstance(variants, int):
            raise HttpError(400, "InvalidRequest", "variants must be an integer from 1 to 8")
        if session.state.record.head is None:
            raise HttpError(
                400, "InvalidRequest", "nothing to regenerate: the session has no turns"
            )
        await gateway.check_tenant_limits(tenant)
        return await _run_turn(
            request,
            gateway,
            tenant,
            session,
            lambda: session.regenerate(variants=variants),
            stream,
        )


async def _run_turn(
    request: web.Request,
    gateway: Gateway,
    tenant: str,
    session: Session,
    run: Callable[[], Awaitable[Turn]],
    stream: bool,
) -> web.StreamResponse:
    bus = gateway.engine.bus
    if not stream:
        task = await gateway.start_turn(tenant, session, run)
        try:
            turn = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise HttpError(
                    409, "TurnCancelled", "the turn was cancelled; nothing was committed"
                ) from None
            raise
        return json_response(gateway.turn_out(turn.record))
    # Subscribed before the turn starts: its first event is not missed.
    subscription = bus.subscribe(
        session_id=session.id,
        since_seq=bus.last_seq(session.id),
        maxsize=4096,
        overflow="drop_oldest",
    )
    async with subscription:
        task = await gateway.start_turn(tenant, session, run)
        response = sse_response(request)
        await response.prepare(request)
        try:
            async for event in subscription:
                if event.type in _TERMINAL:
                    # The turn is over for the client when its terminal event arrives: the
                    # session's lease is let go first, so a next request never finds it busy.
                    await asyncio.wait((task,))
                    await write_event(response, event)
                    while subscription.pending:  # the other takes of a variants turn
                        await write_event(response, await anext(subscription))
                    break
                await write_event(response, event)
        except (ConnectionError, asyncio.CancelledError):
            # The client went away: the turn goes on (POST .../cancel stops it).
            if not task.done():
                log.info("serve.stream_left", session_id=session.id)
            raise
        await response.write_eof()
    return response


async def session_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/sessions/{id}/events: replay after Last-Event-ID (or ?since=N), then live."""
    gateway, tenant = _gateway(request)
    async with gateway.using(tenant, request.match_info["id"]) as session:
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
        # Opened before the 200: where events come from (Redis in a cluster) must answer first.
        fanout = await gateway.fanout(session.id)
        response = sse_response(request)
        await response.prepare(request)
        await response.write(b": connected\n\n")
        await fanout.serve(request, response, since, gateway.options.heartbeat_s)
        return response


# --- images, health, metrics, docs, studio ---------------------------------------------------


def _etag_matches(header: str, digest: str) -> bool:
    """If-None-Match: `*`, or a list of (weak or strong) entity tags naming the image."""
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/").strip('"') == digest:
            return True
    return False


async def get_image(request: web.Request) -> web.Response:
    """GET (and HEAD) /v1/images/{sha256}: 404 unless one of the tenant's sessions holds it."""
    gateway, tenant = _gateway(request)
    digest = request.match_info["sha256"].lower()
    if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
        raise HttpError(404, "NotFound", "no such image")
    if not await gateway.holds(tenant, digest):
        raise HttpError(404, "NotFound", "no such image")
    etag = {"ETag": f'"{digest}"'}
    if _etag_matches(request.headers.get("If-None-Match", ""), digest):
        return web.Response(status=304, headers=etag)
    try:
        data = await gateway.engine.store.load_blob(digest)
    except StoreError:
        raise HttpError(404, "NotFound", "no such image") from None
    return web.Response(
        body=data,
        headers={
            **etag,
            "Content-Type": sniff_mime(data),
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz (no key needed): 503 while draining or while the store or Redis is down."""
    gateway = request.app[GATEWAY]
    store_ok, redis_ok = await gateway.probe()
    ok = store_ok and redis_ok is not False and not gateway.draining
    health = Health(
        status="ok" if ok else ("draining" if gateway.draining else "unavailable"),
        turns_in_flight=gateway.turns_in_flight,
        store="ok" if store_ok else "down",
        redis="none" if redis_ok is None else ("ok" if redis_ok else "down"),
    )
    return json_response(health, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format (no key needed)."""
    gateway = request.app[GATEWAY]
    body, content_type = gateway.metrics.render(in_flight=gateway.turns_in_flight)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


async def studio(request: web.Request) -> web.Response:
    """The studio page and its script and style, with a strict Content-Security-Policy."""
    name, content_type = STUDIO_FILES[request.path]
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
