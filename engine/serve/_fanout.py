"""One session's events to many SSE clients: one bus subscription per session, each event
encoded once and written to every client in turn.

A subscription and a task per client cost a wake-up, a task switch and an encode per client per
event: with 1,000 clients on one session, the last client of a burst of five events heard of
them 150 ms late (benchmarks/gateway.py). Here a client is a response in a list; writing to it
does not wait unless its socket buffer is full, and a client whose buffer passes
`MAX_CLIENT_BUFFER` is dropped (it reconnects with Last-Event-ID and replays) rather than slow
everyone down.

The seam: the fan-out remembers the last seq it delivered. A new client replays the bus's
retained window up to that seq (after its Last-Event-ID) while later events wait in its
backlog, then goes live; nothing is lost or sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from engine._exceptions import NanoeditError
from engine.events import Event, EventsMissed, encode_event
from engine.state import Cluster, EventBus

__all__ = [
    "MAX_CLIENT_BUFFER",
    "ClusterFanout",
    "LocalFanout",
    "SessionFanout",
    "sse_bytes",
]

log = structlog.get_logger("nanoedit.serve")

MAX_CLIENT_BUFFER = 4 * 1024 * 1024
"""Bytes a client may leave unread in its socket buffer before it is dropped."""


def sse_bytes(event: Event) -> bytes:
    """One event as an SSE message: `id: <seq>` (when it has one), `event:`, `data:`."""
    head = f"id: {event.seq}\n" if event.seq else ""
    return f"{head}event: {event.type}\n".encode() + b"data: " + encode_event(event) + b"\n\n"


def chunk_frame(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (how a chunked response carries a write)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Client:
    __slots__ = ("backlog", "chunked", "done", "replaying", "request", "response")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.replaying = True
        self.chunked = response.chunked
        self.backlog: deque[bytes] = deque()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def buffered(self) -> int | None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return None
        return transport.get_write_buffer_size()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class SessionFanout:
    """The SSE clients of one session's `/events`; the events come from `_bursts` (the local
    bus here, the session's Redis stream in `ClusterFanout`)."""

    def __init__(self, session_id: str, on_empty: Callable[[], None]) -> None:
        self.session_id = session_id
        self._on_empty = on_empty
        self.delivered = 0
        self._clients: list[_Client] = []
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # set once `delivered` is known and delivery runs

    def __len__(self) -> int:
        return len(self._clients)

    async def begin(self) -> None:
        """Start delivering, from where the events' source stands now (a no-op for a fan-out
        that started when it was made)."""

    def start(self, delivered: int) -> None:
        """Begin delivering events after seq `delivered`."""
        self.delivered = delivered
        self._task = asyncio.ensure_future(self._run())
        self.ready.set()

    async def _bursts(self) -> AsyncIterator[list[Event]]:
        """Events in seq order, in bursts of those that arrived together."""
        raise NotImplementedError
        yield []  # pragma: no cover

    async def _replay(self, since: int, upto: int) -> tuple[int, list[Event]]:
        """Retained events with since < seq <= upto, and how many the window lost."""
        raise NotImplementedError

    async def _numbered(self) -> int:
        """The highest seq the events' source has numbered for the session."""
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            async for burst in self._bursts():
                if any(isinstance(e, EventsMissed) for e in burst):
                    # The fan-out itself fell behind: every client reconnects and replays.
                    for client in list(self._clients):
                        self._drop(client)
                    continue
                if not burst:
                    continue
                self.delivered = burst[-1].seq
                data = b"".join(sse_bytes(e) for e in burst)
                framed = chunk_frame(data)
                for client in list(self._clients):
                    self._deliver(client, data, framed)
        except NanoeditError:
            pass  # the bus or the cluster closed
        finally:
            for client in list(self._clients):
                self._drop(client)

    def _deliver(self, client: _Client, data: bytes, framed: bytes) -> None:
        if client.replaying:
            client.backlog.append(data)
            return
        transport = client.request.transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > MAX_CLIENT_BUFFER
        ):
            self._drop(client)
            return
        # Straight to the socket, framed once for every client: aiohttp's writer would frame
        # and account each write again (a tenth of the fan-out's time per client).
        transport.write(framed if client.chunked else data)

    def _drop(self, client: _Client) -> None:
        with contextlib.suppress(ValueError):
            self._clients.remove(client)
        client.finish()

    async def serve(
        self,
        request: web.Request,
        response: web.StreamResponse,
        since: int | None,
        heartbeat_s: float,
    ) -> None:
        """Replay after `since` (None: nothing), then stream live until the client goes."""
        client = _Client(request, response)
        # Registered first (its backlog collects what arrives meanwhile), then the replay up to
        # what had been delivered at that moment: the seam has no gap and no repeat.
        upto = self.delivered
        self._clients.append(client)
        replay: list[bytes] = []
        try:
            if since is not None and since > upto and since > await self._numbered():
                # The client saw a seq its source never numbered: the numbering was lost (a
                # process or Redis restarted without its state). What came after it is unknown.
                replay.append(sse_bytes(EventsMissed(session_id=self.session_id, missed=1)))
            elif since is not None:
                missed, events = await self._replay(since, upto)
                if missed:
                    marker = EventsMissed(session_id=self.session_id, missed=missed)
                    replay.append(sse_bytes(marker))
                replay.extend(sse_bytes(e) for e in events)
        except BaseException:
            self._drop(client)
            if not self._clients:
                self._on_empty()
            raise
        try:
            for data in replay:
                await response.write(data)
            while client.backlog:
                await response.write(client.backlog.popleft())
            client.replaying = False  # no await since the backlog was seen empty
            while not client.done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(client.done), heartbeat_s)
                except TimeoutError:
                    if client.buffered() is None:
                        break
                    await response.write(b": heartbeat\n\n")
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._drop(client)
            if not self._clients:
                self._on_empty()

    def close(self) -> None:
        """Stop and let every client go."""
        if self._task is not None:
            self._task.cancel()
        for client in list(self._clients):
            self._drop(client)


class LocalFanout(SessionFanout):
    """Events from this node's bus: one subscription for every client of the session."""

    def __init__(self, bus: EventBus, session_id: str, on_empty: Callable[[], None]) -> None:
        super().__init__(session_id, on_empty)
        self._bus = bus
        last = bus.last_seq(session_id)
        self._subscription = bus.subscribe(
            session_id=session_id, since_seq=last, maxsize=65536, overflow="drop_oldest"
        )
        self._subscription.open()
        self.start(last)

    async def _bursts(self) -> AsyncIterator[list[Event]]:
        subscription = self._subscription
        async for first in subscription:
            # Events published together (a stream chunk's text, image and finish) go out
            # together: one write per client for the burst (buffered reads do not wait).
            burst = [first]
            while subscription.pending:
                burst.append(await anext(subscription))
            yield burst

    async def _replay(self, since: int, upto: int) -> tuple[int, list[Event]]:
        window = [e for e in self._bus.retained(self.session_id) if e.seq <= upto]
        first = window[0].seq if window else upto + 1
        return max(0, first - 1 - since), [e for e in window if e.seq > since]

    async def _numbered(self) -> int:
        return self._bus.last_seq(self.session_id)

    def close(self) -> None:
        """Unsubscribe, stop, let every client go."""
        self._subscription.close()
        super().close()


class ClusterFanout(SessionFanout):
    """Events from the session's Redis stream: every node's, read once for this node."""

    def __init__(self, cluster: Cluster, session_id: str, on_empty: Callable[[], None]) -> None:
        super().__init__(session_id, on_empty)
        self._cluster = cluster

    async def begin(self) -> None:
        """Start after the session's last seq across the cluster (Redis answers first)."""
        self.start(await self._cluster.last_seq(self.session_id))

    async def _bursts(self) -> AsyncIterator[list[Event]]:
        while True:
            yield await self._cluster.read(self.session_id, self.delivered, block_ms=2000)

    async def _replay(self, since: int, upto: int) -> tuple[int, list[Event]]:
        return await self._cluster.events_after(self.session_id, since, upto)

    async def _numbered(self) -> int:
        return await self._cluster.last_seq(self.session_id)
