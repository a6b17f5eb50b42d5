"""The Model Context Protocol face: nanoedit's sessions as MCP tools, on the official `mcp` SDK.

`nanoedit mcp` serves it over stdio (as MCP clients launch servers); `nanoedit serve` at
`/mcp` over Streamable HTTP, with the tenant's key as `Authorization: Bearer KEY` (401
otherwise). Tools: `create_session`, `edit` (progress notifications while the turn runs),
`undo`, `redo`, `fork`, `list_sessions`, `get_session`, `get_image`. Every result carries
`structuredContent` (the session or turn as the native API's JSON) and the same JSON as a text
item; `edit` and `get_image` add the image as an image item. Session images are resources too:
`nanoedit://images/{sha256}`.
"""

# No `from __future__ import annotations`: the SDK reads the tools' annotations (Context,
# CallToolResult) at registration. This module imports the SDK; `engine.serve` loads it lazily.
import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
from aiohttp import web
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent

from engine._exceptions import NanoeditError
from engine.events import TurnImage, TurnRetrying, TurnStarted, TurnTextDelta
from engine.runtime import Session, Turn, sniff_mime
from engine.serve._gateway import Gateway
from engine.serve._http import HttpError
from sessions import Blob, ImageConfig

__all__ = ["McpHttp", "build_mcp"]

_INSTRUCTIONS = (
    "nanoedit keeps multi-turn image editing sessions with Google's Gemini image models. "
    "create_session starts one; edit runs a turn (text and optional images) and returns the "
    "new image; undo, redo and fork move through the session's tree of turns; get_image "
    "returns any image of your sessions by its sha256."
)


def _tenant(gateway: Gateway, ctx: Context) -> str:
    """The caller's tenant: from the HTTP request's key, or the local user over stdio."""
    headers = ctx.headers
    if headers is None:
        return ""
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    tenant = gateway.tenants.identify(auth)
    if tenant is None:
        raise ValueError("a valid key is needed: Authorization: Bearer KEY")
    return tenant


def _result(doc: Any, *extra: Any) -> CallToolResult:
    data = json.loads(msgspec.json.encode(doc))
    text = TextContent(type="text", text=json.dumps(data))
    return CallToolResult(content=[*extra, text], structured_content=data)


def _image_item(data: bytes) -> ImageContent:
    return ImageContent(
        type="image", data=base64.b64encode(data).decode(), mime_type=sniff_mime(data)
    )


async def _guard(call: Awaitable[CallToolResult]) -> CallToolResult:
    """A refused call as an MCP tool error with nanoedit's message (never a traceback)."""
    try:
        return await call
    except HttpError as exc:
        raise ValueError(f"{exc.kind}: {exc.message}") from None
    except NanoeditError as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


async def _images(gateway: Gateway, tenant: str, items: list[dict[str, str]] | None) -> list[Blob]:
    out: list[Blob] = []
    for n, item in enumerate(items or []):
        if "sha256" in item:
            found = await gateway.tenant_image(tenant, str(item["sha256"]))
            if found is None:
                digest = str(item["sha256"]).lower()
                raise ValueError(f"images[{n}]: no image {digest[:16]} in your sessions")
            data = found
        else:
            try:
                data = base64.b64decode(str(item.get("data", "")), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"images[{n}]: data must be base64") from None
        mime = sniff_mime(data, "")
        if not mime:
            raise ValueError(f"images[{n}] is not a PNG, JPEG, GIF or WebP image")
        out.append(Blob(mime_type=mime, data=data))
    return out


def build_mcp(gateway: Gateway) -> MCPServer:
    """The MCP server over `gateway` (its engine, store and tenants)."""
    from mcp.server.mcpserver import MCPServer

    server: MCPServer = MCPServer(name="nanoedit", instructions=_INSTRUCTIONS, log_level="WARNING")
    engine = gateway.engine

    @server.tool(
        description="Start a new image editing session. Optional: model (id or alias, e.g. "
        "nano-banana-2.1), aspect_ratio (e.g. 16:9), image_size (1K, 2K, 4K), title. Returns "
        "the session as JSON; its `id` is what the other tools take."
    )
    async def create_session(
        ctx: Context,
        model: str | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        title: str = "",
    ) -> CallToolResult:
        async def run() -> CallToolResult:
            tenant = _tenant(gateway, ctx)
            config = None
            if aspect_ratio or image_size:
                config = ImageConfig(aspect_ratio=aspect_ratio, image_size=image_size)
            session = await engine.create_session(
                model, image_config=config, title=title, owner=tenant,
                budget=gateway.options.default_budget,
            )  # fmt: skip
            return _result(gateway.session_out(session))

        return await _guard(run())

    @server.tool(
        description="Run one editing turn in a session: `prompt` says what to draw or change; "
        "`images` (optional) adds input images, each {data: base64, mime_type} or {sha256} of "
        "an image of your sessions. Returns the turn's text (with the session id, turn index "
        "and cost) and the new image. Reports progress while the model works."
    )
    async def edit(
        ctx: Context,
        session_id: str,
        prompt: str,
        images: list[dict[str, str]] | None = None,
    ) -> CallToolResult:
        async def run() -> CallToolResult:
            tenant = _tenant(gateway, ctx)
            blobs = await _images(gateway, tenant, images)
            async with gateway.using(tenant, session_id) as session:
                session.check_input(prompt, blobs)
                await gateway.check_tenant_limits(tenant)
                turn = await _with_progress(
                    gateway, ctx, tenant, session, lambda: session.send(prompt, blobs)
                )
                doc = gateway.turn_out(turn.record)
                summary = (
                    f"{turn.text}\n\nsession {session.id}, turn {turn.index}, ${turn.cost_usd:.4f}"
                )
                items: list[Any] = [TextContent(type="text", text=summary)]
                items += [_image_item(image.data) for image in turn.images]
                return _result(doc, *items)

        return await _guard(run())

    async def _move(ctx: Context, session_id: str, op: str) -> CallToolResult:
        tenant = _tenant(gateway, ctx)
        async with gateway.using(tenant, session_id) as session:
            if gateway.in_flight(session.id) is not None:
                raise ValueError("a turn is running")
            await (session.undo() if op == "undo" else session.redo())
            return _result(gateway.session_out(session))

    @server.tool(description="Undo the session's last turn (its head moves back one turn).")
    async def undo(ctx: Context, session_id: str) -> CallToolResult:
        return await _guard(_move(ctx, session_id, "undo"))

    @server.tool(description="Redo the turn undo stepped back from.")
    async def redo(ctx: Context, session_id: str) -> CallToolResult:
        return await _guard(_move(ctx, session_id, "redo"))

    @server.tool(
        description="Copy the session's current branch up to turn `at` (1-based, as the native "
        "API counts; omitted: the head) into a new session; returns the new session."
    )
    async def fork(ctx: Context, session_id: str, at: int | None = None) -> CallToolResult:
        async def run() -> CallToolResult:
            tenant = _tenant(gateway, ctx)
            async with gateway.using(tenant, session_id) as session:
                if at is not None:
                    session.state.at_index(at)
                child = await session.fork(at)
            return _result(gateway.session_out(child))

        return await _guard(run())

    @server.tool(description="List your sessions, most recently used first.")
    async def list_sessions(ctx: Context) -> CallToolResult:
        async def run() -> CallToolResult:
            tenant = _tenant(gateway, ctx)
            summaries = await engine.store.list(owner=tenant)
            rows = [
                {"id": s.id, "model": s.model, "title": s.title, "turns": s.turns,
                 "updated_at": s.updated}
                for s in summaries
            ]  # fmt: skip
            return _result({"sessions": rows})

        return await _guard(run())

    @server.tool(description="A session with its current branch of turns, as JSON.")
    async def get_session(ctx: Context, session_id: str) -> CallToolResult:
        async def run() -> CallToolResult:
            tenant = _tenant(gateway, ctx)
            async with gateway.using(tenant, session_id) as session:
                return _result(gateway.session_out(session))

        return await _guard(run())

    @server.tool(description="An image of one of your sessions by its sha256, as an image item.")
    async def get_image(ctx: Context, sha256: str) -> CallToolResult:
        async def run() -> CallToolResult:
            tenant = _tenant(gateway, ctx)
            digest = sha256.lower()
            if not await gateway.holds(tenant, digest):
                raise ValueError(f"no image {digest[:16]} in your sessions")
            data = await engine.store.load_blob(digest)
            doc = {"sha256": digest, "mime_type": sniff_mime(data), "bytes": len(data)}
            return _result(doc, _image_item(data))

        return await _guard(run())

    @server.resource(
        "nanoedit://images/{sha256}",
        description="An image of one of your sessions (PNG, JPEG, GIF or WebP bytes).",
        mime_type="image/png",
    )
    async def image_resource(sha256: str, ctx: Context) -> bytes:
        tenant = _tenant(gateway, ctx)
        digest = sha256.lower()
        if not await gateway.holds(tenant, digest):
            raise ValueError(f"no image {digest[:16]} in your sessions")
        return await engine.store.load_blob(digest)

    del create_session, edit, undo, redo, fork, list_sessions, get_session, get_image
    del image_resource
    return server


async def _with_progress(
    gateway: Gateway,
    ctx: Context,
    tenant: str,
    session: Session,
    run: Callable[[], Awaitable[Turn]],
) -> Turn:
    """Run the turn, sending a progress notification for each step (started, text, retrying,
    image), so a long turn (Pro at 4K) keeps the client's timeout from running out."""
    labels: dict[type[Any], str] = {
        TurnStarted: "the model is working",
        TurnTextDelta: "writing",
        TurnRetrying: "retrying",
        TurnImage: "image ready",
    }
    types = ("turn.started", "turn.text_delta", "turn.retrying", "turn.image")
    async with gateway.watched_turn(tenant, session, run, types) as (task, events):
        step = 0
        async for event in events:
            step += 1
            await ctx.report_progress(step, None, labels.get(type(event), event.type))
        return await task


class McpHttp:
    """`/mcp` on `nanoedit serve`: the SDK's Streamable HTTP session manager behind aiohttp,
    reached through a small ASGI bridge, for the tenants' keys only."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        server = build_mcp(gateway)
        # Builds the SDK's session manager (its Starlette app is not used: aiohttp routes).
        server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
        self.manager = server.session_manager
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Run the session manager in a task of its own (its task group lives there)."""
        started = asyncio.Event()

        async def run() -> None:
            async with self.manager.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.ensure_future(run())
        await started.wait()

    async def stop(self) -> None:
        """Stop the session manager (open MCP sessions end)."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        # The SDK's SSE responses start a per-loop watcher (sse_starlette) that polls every
        # 0.5 s for a uvicorn shutdown; under aiohttp nothing would ever stop it.
        watchers = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "_shutdown_watcher"
        ]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET, POST and DELETE /mcp."""
        if self.gateway.tenants.identify(request.headers.get("Authorization")) is None:
            raise HttpError(401, "Unauthorized", "a valid key is needed: Authorization: Bearer KEY")
        body = await request.read()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.raw_path.encode("latin-1"),
            "query_string": request.query_string.encode("latin-1"),
            "root_path": "",
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in request.headers.items()
            ],
            "server": ("127.0.0.1", 0),
            "client": (request.remote or "", 0),
        }
        holder: dict[str, web.StreamResponse] = {}
        # In a task of its own: a handler cancelled once its answer is out (a client closing
        # the connection after an SSE answer) must not cancel the SDK's request mid-way, which
        # would end the whole MCP session.
        work = asyncio.ensure_future(
            self.manager.handle_request(scope, _receive(request, body), _send(request, holder))
        )
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                await asyncio.wait((work,), timeout=5.0)
            raise
        response = holder.get("response")
        if response is None:
            raise HttpError(502, "McpError", "the MCP session manager gave no answer")
        return response


def _receive(request: web.Request, body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The body was all; the SDK cancels this wait when its answer is done. (Telling it of a
        # closed connection would end the MCP session, not just the request.)
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}  # pragma: no cover - never reached

    return receive


def _send(
    request: web.Request, holder: MutableMapping[str, web.StreamResponse]
) -> Callable[[MutableMapping[str, Any]], Awaitable[None]]:
    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]]
            response = web.StreamResponse(status=message["status"])
            for name, value in headers:
                response.headers.add(name, value)
            holder["response"] = response
            await response.prepare(request)
        elif message["type"] == "http.response.body":
            response = holder["response"]
            chunk = message.get("body", b"")
            if chunk:
                await response.write(chunk)
            if not message.get("more_body", False):
                await response.write_eof()

    return send
