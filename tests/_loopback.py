"""A scriptable aiohttp server on 127.0.0.1 for transport and provider tests.

Each request takes the next scripted `Reply` (or handler) in order; the last one repeats. Every
request is recorded (method, path, query, headers, body). Pauses end early when the server
stops, so a test that gives up on a slow reply does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web
from multidict import CIMultiDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer.

    `body` is sent whole; `chunks`, if given, is streamed instead: bytes are written and
    flushed, floats are pauses in seconds. `cut` drops the connection after the chunks (no end
    of body); `close_before_headers` drops it before any byte of the answer. `content_length`
    advertises a length (even a wrong one).
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: Sequence[bytes | float] | None = None
    delay: float = 0.0
    cut: bool = False
    close_before_headers: bool = False
    content_length: int | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes


def sse_body(*events: bytes | str) -> bytes:
    """An event stream with one `data:` event per argument."""
    out = bytearray()
    for event in events:
        out += b"data: " + (event.encode() if isinstance(event, str) else event) + b"\r\n\r\n"
    return bytes(out)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class LoopbackServer:
    """An aiohttp server on an ephemeral loopback port; `async with` starts and stops it."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: list[Reply | Handler] = [Reply()]
        self._next = 0
        self._stopping = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections the server currently holds open."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    def script(self, *replies: Reply | Handler) -> None:
        """Answer the next requests with `replies`, in order; the last one repeats."""
        self._script = list(replies)
        self._next = 0

    async def wait_for_requests(self, count: int) -> None:
        """Return once at least `count` requests have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a handler whose client went away stops instead of lingering.
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if the server is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=CIMultiDict(request.headers),
                body=body,
            )
        )
        async with self._arrived:
            self._arrived.notify_all()
        reply = self._script[min(self._next, len(self._script) - 1)]
        self._next += 1
        if not isinstance(reply, Reply):
            return await reply(request)
        if reply.delay:
            await self.pause(reply.delay)
        if reply.close_before_headers:
            return await self._drop(request)
        resp = web.StreamResponse(status=reply.status, headers=dict(reply.headers))
        if reply.content_length is not None:
            resp.content_length = reply.content_length
        elif reply.chunks is None:
            resp.content_length = len(reply.body)
        await resp.prepare(request)
        for item in reply.chunks if reply.chunks is not None else (reply.body,):
            if isinstance(item, float):
                await self.pause(item)
            elif item:
                await resp.write(item)
        if reply.cut:
            return await self._drop(request)
        await resp.write_eof()
        return resp

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.abort()
        # The peer is gone; give the protocol a turn to notice before the handler returns.
        await asyncio.sleep(0)
        raise asyncio.CancelledError
