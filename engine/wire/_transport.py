"""HTTP over one aiohttp `ClientSession` per engine, with nanoedit's timeouts and typed errors.

aiohttp and msgspec exceptions stop here: everything is mapped to the tree in
`engine._exceptions` with ``raise ... from exc``. Cancellation passes through untouched and drops
the connection it interrupted. Error messages never carry the API key (every credential header's
value is scrubbed from them) nor long base64 runs, and are capped at `MAX_MESSAGE` characters.

Timeouts (`Timeouts`), per attempt:

- connect: aiohttp's `sock_connect`, the TCP (and TLS) handshake only, so waiting for a free
  pooled connection is not mistaken for an unreachable server;
- first_byte: from sending until the response headers (pool wait and connect included);
- idle: the longest silence between two body reads;
- total: the whole attempt, headers and body; whichever of these deadlines is nearer decides
  which error is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp

from engine._config import Timeouts
from engine._exceptions import (
    ApiError,
    Closed,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    MalformedResponse,
    StreamBroken,
    Timeout,
    TotalTimeout,
    TransportError,
    api_error,
)
from engine._logs import Logger
from engine.wire._retry_after import parse_retry_after

__all__ = [
    "MAX_MESSAGE",
    "SNIPPET",
    "ErrorMapper",
    "Headers",
    "LazyBody",
    "RequestBody",
    "Response",
    "StreamResponse",
    "Transport",
    "body_size",
    "clean_message",
    "html_title",
    "http_error",
    "looks_like_html",
    "malformed",
    "secrets_of",
]

_log = Logger("nanoedit.transport")

MAX_MESSAGE = 500
"""Longest error message kept, in characters; the rest is cut (bodies can echo megabytes)."""
_DEFAULT_TIMEOUTS = Timeouts()
_MAX_ERROR_BODY = 1 << 20
SNIPPET = 200
_CREDENTIAL_HEADERS = frozenset(
    {"x-goog-api-key", "authorization", "proxy-authorization", "api-key", "x-api-key"}
)
# Long unbroken runs of base64 alphabet are image data or keys echoed back, never prose.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{120,}={0,2}")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HEADING = re.compile(r"<h[1-3][^>]*>(.*?)</h[1-3]\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def _content_type(headers: Mapping[str, str] | None) -> str:
    for key, value in (headers or {}).items():
        if key.lower() == "content-type":
            return value
    return "application/octet-stream"


@dataclass(frozen=True, slots=True)
class LazyBody:
    """A request body encoded piece by piece while it is written.

    An image history is megabytes of base64; held as one bytes object it lives until the
    response is read, server time included. Encoded as it goes out, each piece is dropped once
    written. `size` (the Content-Length) must equal the total length of `pieces()`, which may be
    called again for a retry.
    """

    size: int
    pieces: Callable[[], Iterable[bytes]]

    def join(self) -> bytes:
        """The whole body at once (for debugging and tests)."""
        return b"".join(self.pieces())


RequestBody = bytes | LazyBody


def body_size(body: RequestBody | None) -> int:
    """Bytes a body puts on the wire."""
    if body is None:
        return 0
    return body.size if isinstance(body, LazyBody) else len(body)


# Pieces are joined into writes of up to _JOINED bytes: each write is an aiohttp write and a
# send() system call, and a request whose history holds small images was one per piece (six
# for a 3-turn flat-image session). Joining copies, so a piece of _JOINED bytes or more (a real
# image's base64) goes out as it is.
_JOINED = 256 * 1024


def _coalesced(pieces: Iterable[bytes]) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        n = len(piece)
        if size + n > _JOINED and pending:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, size = [], 0
        if n >= _JOINED:
            yield piece
            continue
        pending.append(piece)
        size += n
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


class _Body(aiohttp.payload.Payload):
    """A request body written as the bytes it is, or piece by piece for a LazyBody.

    aiohttp's BytesPayload warns (ResourceWarning) for every body over 1 MiB, which is every
    request that carries an image history; io.BytesIO would copy the whole body to avoid it.
    Writing bytes to the transport does not block the loop, so neither is needed.
    """

    _value: RequestBody
    _autoclose = True

    def __init__(self, value: RequestBody, *, content_type: str) -> None:
        super().__init__(value, content_type=content_type)
        self._size = body_size(value)

    def _pieces(self) -> Iterable[bytes]:
        value = self._value
        return value.pieces() if isinstance(value, LazyBody) else (value,)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The body as text (aiohttp uses it for debugging only)."""
        return b"".join(self._pieces()).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """The body's bytes."""
        return b"".join(self._pieces())

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        """Write the whole body."""
        for piece in _coalesced(self._pieces()):
            await writer.write(piece)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        """Write the body, cut at `content_length` if given."""
        left = content_length
        for piece in _coalesced(self._pieces()):
            if left is not None:
                if left <= 0:
                    return
                piece = piece[:left]
                left -= len(piece)
            await writer.write(piece)


# --- error messages and bodies -----------------------------------------------------------------


class Headers(dict[str, str]):
    """Request headers whose repr never shows a credential's value.

    A traceback rendered with locals (structlog's `dict_tracebacks`, rich, sentry) shows every
    frame's variables by repr; the headers a request travels with are in several frames.
    """

    def __repr__(self) -> str:
        shown = {k: "***" if k.lower() in _CREDENTIAL_HEADERS else v for k, v in self.items()}
        return f"Headers({shown!r})"

    __str__ = __repr__


def _bare(exc: BaseException) -> BaseException:
    """`exc` without its traceback: a dependency's frames hold what we sent (the key among it);
    the chained cause keeps its type and message only."""
    exc.__traceback__ = None
    exc.__context__ = None
    return exc


def secrets_of(headers: Mapping[str, str] | None) -> tuple[str, ...]:
    """The credential values in request headers (the strings no message may contain)."""
    if not headers:
        return ()
    out: list[str] = []
    for name, value in headers.items():
        if name.lower() not in _CREDENTIAL_HEADERS or not value:
            continue
        out.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() in ("bearer", "basic", "token"):
            out.append(token.strip())
    # Longest first, so a key is scrubbed whole before any shorter secret inside it.
    return tuple(sorted(set(out), key=len, reverse=True))


def clean_message(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without secrets and base64 runs, whitespace collapsed, at most MAX_MESSAGE chars."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _BASE64_RUN.sub(lambda m: f"[{len(m.group(0))} chars elided]", text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return text


def _html_text(fragment: str) -> str:
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", fragment))).strip()


def html_title(text: str) -> str | None:
    """The `<title>` (else first heading) of an HTML page as plain text; None if it has neither."""
    for pattern in (_TITLE, _HEADING):
        match = pattern.search(text)
        if match:
            found = _html_text(match.group(1))
            if found:
                return found
    return None


def looks_like_html(content_type: str, text: str) -> bool:
    if "html" in content_type:
        return True
    head = text.lstrip()[:100].lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body"))


ErrorMapper = Callable[[int, bytes, Mapping[str, str], str, tuple[str, ...]], ApiError]
"""(status, body, headers, reason, secrets) of a non-2xx answer -> its typed error. Each provider
brings the one for its API's error bodies; the transport's own knows HTTP only."""


def http_error(
    status: int, body: bytes, headers: Mapping[str, str], reason: str, secrets: tuple[str, ...]
) -> ApiError:
    """The typed ApiError of a non-2xx answer read as plain HTTP: the status, an HTML page's
    title or a text snippet, and the `Retry-After` wait."""
    text = body.decode("utf-8", "replace").strip() if body else ""
    content_type = _content_type(headers).lower()
    if not text:
        message = reason or "empty error body"
    elif looks_like_html(content_type, text):
        message = html_title(text) or f"HTML error page ({reason or status})"
    else:
        message = text[:SNIPPET]
    return api_error(
        status, clean_message(message, secrets), retry_after=parse_retry_after(headers)
    )


# --- responses ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    method: str
    path: str
    started: float
    deadline: float
    secrets: tuple[str, ...] = field(repr=False)
    request_bytes: int = 0
    headers_at: float = 0.0
    # The attempt's one timer (see Transport._watch): when the wait for the headers runs out,
    # the task waiting for them until the response is in, whether the wait ran out, when the
    # current read began (None between reads).
    watchdog: asyncio.TimerHandle | None = None
    headers_due: float = 0.0
    waiting: asyncio.Task[Any] | None = field(default=None, repr=False)
    resp: aiohttp.ClientResponse | None = field(default=None, repr=False)
    expired: bool = False
    reading_since: float | None = None

    @property
    def where(self) -> str:
        """`POST /path`, for messages (built only when one is)."""
        return f"{self.method} {self.path}"

    def end(self) -> None:
        """Stop the watchdog: the attempt is over."""
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None


class _ReadExpired(Exception):
    """Set on a response's stream by the watchdog to end a read that waited too long."""


@dataclass(frozen=True, slots=True)
class Response:
    """A whole 2xx answer. Times are `loop.time()` values, comparable with the caller's."""

    status: int
    headers: Mapping[str, str]
    content_type: str
    body: bytes
    request_bytes: int
    started_at: float
    headers_at: float
    done_at: float

    @property
    def response_bytes(self) -> int:
        """Body bytes received (after content decoding)."""
        return len(self.body)


class StreamResponse:
    """A 2xx answer whose body is read chunk by chunk; iterate it (or `chunks()`) for bytes.

    Each read waits at most `Timeouts.idle` and never past the attempt's total deadline.
    """

    __slots__ = (
        "_attempt",
        "_eof",
        "_resp",
        "_transport",
        "content_type",
        "headers",
        "response_bytes",
        "status",
    )

    def __init__(
        self, transport: Transport, resp: aiohttp.ClientResponse, attempt: _Attempt
    ) -> None:
        self._transport = transport
        self._resp = resp
        self._attempt = attempt
        self._eof = False
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self.content_type: str = resp.content_type
        self.response_bytes = 0

    @property
    def request_bytes(self) -> int:
        """Bytes of the request body sent."""
        return self._attempt.request_bytes

    @property
    def started_at(self) -> float:
        """`loop.time()` when the request was sent."""
        return self._attempt.started

    @property
    def headers_at(self) -> float:
        """`loop.time()` when the response headers arrived."""
        return self._attempt.headers_at

    @property
    def secrets(self) -> tuple[str, ...]:
        """Credential values of the request, for scrubbing messages built from this body."""
        return self._attempt.secrets

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of whatever size the network delivers."""
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._eof:
            raise StopAsyncIteration
        data = await self._transport._read_chunk(self._resp, self._attempt)
        if not data:
            self._eof = True
            raise StopAsyncIteration
        self.response_bytes += len(data)
        self._transport.bytes_received += len(data)
        return data

    async def read(self) -> bytes:
        """The rest of the body, joined."""
        return b"".join([chunk async for chunk in self])


class _Streaming:
    """The context of `Transport.stream`: opens on entry, releases or drops on exit.

    A class rather than a generator-based context manager: that cost a generator and two more
    frames per request (1.5% of a small turn's CPU, py-spy).
    """

    __slots__ = ("_args", "_response", "_transport")

    def __init__(
        self,
        transport: Transport,
        args: tuple[str, str, RequestBody | None, Mapping[str, str] | None, ErrorMapper],
    ) -> None:
        self._transport = transport
        self._args = args
        self._response: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        resp, attempt = await self._transport._open(*self._args)
        self._response = StreamResponse(self._transport, resp, attempt)
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        response = self._response
        assert response is not None
        resp, attempt = response._resp, response._attempt
        if exc is not None:
            resp.close()
            self._transport._log_failure(attempt, exc, resp.status)
            return
        if response._eof:
            resp.release()
        else:
            resp.close()
        self._transport._log_done(
            attempt, resp.status, response.response_bytes, asyncio.get_running_loop().time()
        )


# --- the transport -----------------------------------------------------------------------------


def _path(url: str) -> str:
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return "<invalid url>"


class Transport:
    """One pooled aiohttp session for all of an engine's requests; use `async with` or `aclose()`.

    The session is created on first use inside the running loop, with at most `max_connections`
    open connections.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        max_connections: int = 100,
        user_agent: str = "nanoedit/0.1",
    ) -> None:
        if max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.user_agent = user_agent
        self.bytes_sent = 0
        self.bytes_received = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once `aclose()` has been called."""
        return self._closed

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The connection pool, once the session exists (for diagnostics and tests)."""
        return self._session.connector if self._session is not None else None

    async def aclose(self) -> None:
        """Close every pooled connection; later requests raise `Closed`. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Let the closed sockets' connection_lost callbacks run before the loop may end.
            await asyncio.sleep(0)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise Closed("transport is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Only the handshake is aiohttp's; the other deadlines are ours (see module doc).
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_read=None, sock_connect=self.timeouts.connect
                ),
                headers={"user-agent": self.user_agent},
                trust_env=False,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: RequestBody | None = None,
        headers: Mapping[str, str] | None = None,
        errors: ErrorMapper = http_error,
    ) -> Response:
        """Send a request and read the whole 2xx body.

        Raises ApiError subclasses for non-2xx answers (as `errors` reads them),
        `ConnectError`, `ConnectTimeout`, `FirstByteTimeout`, `IdleTimeout`, `TotalTimeout`,
        `StreamBroken`, `Closed`, `ConfigError`.
        """
        resp, attempt = await self._open(method, url, body, headers, errors)
        try:
            chunks = []
            while data := await self._read_chunk(resp, attempt):
                chunks.append(data)
        except BaseException as exc:
            resp.close()
            self._log_failure(attempt, exc, resp.status)
            raise
        resp.release()
        payload = b"".join(chunks)
        self.bytes_received += len(payload)
        done = asyncio.get_running_loop().time()
        self._log_done(attempt, resp.status, len(payload), done)
        return Response(
            status=resp.status,
            headers=resp.headers,
            content_type=resp.content_type,
            body=payload,
            request_bytes=attempt.request_bytes,
            started_at=attempt.started,
            headers_at=attempt.headers_at,
            done_at=done,
        )

    def stream(
        self,
        method: str,
        url: str,
        *,
        body: RequestBody | None = None,
        headers: Mapping[str, str] | None = None,
        errors: ErrorMapper = http_error,
    ) -> _Streaming:
        """Send a request and yield the 2xx response once its headers arrive; read it inside.

        `async with transport.stream(...) as response:`. Raises like `request()`, while opening
        or while reading chunks. Leaving the block before the body ended (an error,
        cancellation, or early exit) drops the connection.
        """
        return _Streaming(self, (method, url, body, headers, errors))

    async def _open(
        self,
        method: str,
        url: str,
        body: RequestBody | None,
        headers: Mapping[str, str] | None,
        errors: ErrorMapper,
    ) -> tuple[aiohttp.ClientResponse, _Attempt]:
        session = self._ensure_session()
        timeouts = self.timeouts
        now = asyncio.get_running_loop().time()
        attempt = _Attempt(
            method=method,
            path=_path(url),
            started=now,
            deadline=now + timeouts.total,
            secrets=secrets_of(headers),
            request_bytes=body_size(body),
        )
        self.bytes_sent += attempt.request_bytes
        try:
            resp = await self._send(session, attempt, url, body, headers)
        except BaseException as exc:
            self._log_failure(attempt, exc, None)
            raise
        attempt.headers_at = asyncio.get_running_loop().time()
        attempt.resp = resp  # from now on the watchdog watches reads
        if 200 <= resp.status < 300:
            return resp, attempt
        # Built in a frame of its own: the body may echo the key, and _open's frame is in the
        # traceback of the error it raises.
        error = await self._error_for(resp, attempt, errors)
        self._log_failure(attempt, error, resp.status)
        raise error

    async def _send(
        self,
        session: aiohttp.ClientSession,
        attempt: _Attempt,
        url: str,
        body: RequestBody | None,
        headers: Mapping[str, str] | None,
    ) -> aiohttp.ClientResponse:
        first_byte, total = self.timeouts.first_byte, self.timeouts.total
        wait = min(first_byte, total)
        kind: type[Timeout] = FirstByteTimeout if first_byte < total else TotalTimeout
        where = attempt.where
        # The wait for the headers is timed by the attempt's watchdog, which cancels this task
        # when it runs out (what asyncio.timeout does, without a Timeout object and a second
        # timer per request: 2% of a small turn's CPU, py-spy).
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        attempt.waiting = task
        attempt.headers_due = attempt.started + wait
        loop = asyncio.get_running_loop()
        attempt.watchdog = loop.call_at(
            attempt.started + min(wait, self.timeouts.idle), self._watch, attempt
        )
        done = False
        try:
            data = None if body is None else _Body(body, content_type=_content_type(headers))
            resp = await session.request(attempt.method, url, data=data, headers=headers)
            done = True
            return resp
        except asyncio.CancelledError:
            if attempt.expired and task.uncancel() <= cancelling:
                raise kind(f"{where}: no response headers within {wait:g}s") from None
            raise
        except aiohttp.ConnectionTimeoutError as exc:
            message = f"{where}: no connection within {self.timeouts.connect:g}s"
            raise ConnectTimeout(message) from _bare(exc)
        except TimeoutError as exc:
            raise FirstByteTimeout(f"{where}: {self._describe(exc, attempt)}") from _bare(exc)
        except aiohttp.InvalidURL as exc:
            raise ConfigError(f"invalid URL for {attempt.method} request") from _bare(exc)
        except aiohttp.ClientResponseError as exc:
            # The bytes before the headers were not HTTP (a proxy or a port speaking something
            # else); nothing usable arrived, like a refused connection.
            raise ConnectError(f"{where}: invalid HTTP response: {exc.message}") from _bare(exc)
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectError(f"{where}: {self._describe(exc, attempt)}") from _bare(exc)
        except ValueError as exc:
            # aiohttp rejects header values it cannot send (say a key with a newline); the
            # message could quote the key, so it is scrubbed and the chain cut.
            reason = clean_message(str(exc), attempt.secrets)
            raise ConfigError(f"{where}: request rejected before sending: {reason}") from None
        finally:
            attempt.waiting = None
            if not done:
                attempt.end()

    async def _read_chunk(self, resp: aiohttp.ClientResponse, attempt: _Attempt) -> bytes:
        # One watchdog timer per attempt rather than a timeout per chunk (a timeout object per
        # read was 3% of a small turn's CPU): a read notes when it began, and the timer, when it
        # fires, ends a read older than the idle limit or past the attempt's deadline by
        # setting an exception on the stream, or checks again later.
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= attempt.deadline:
            raise TotalTimeout(f"{attempt.where}: attempt exceeded {self.timeouts.total:g}s")
        content = resp.content
        try:
            data = content.read_nowait()
            if data or content.at_eof():
                return data  # already here: no wait, nothing to time
            attempt.reading_since = now
            if attempt.watchdog is None:
                attempt.watchdog = loop.call_at(
                    min(now + self.timeouts.idle, attempt.deadline), self._watch, attempt
                )
            try:
                return await content.readany()
            finally:
                attempt.reading_since = None
        except _ReadExpired as exc:
            where = attempt.where
            if loop.time() >= attempt.deadline:
                raise TotalTimeout(
                    f"{where}: attempt exceeded {self.timeouts.total:g}s"
                ) from _bare(exc)
            raise IdleTimeout(f"{where}: no data for {self.timeouts.idle:g}s") from _bare(exc)
        except TimeoutError as exc:
            raise StreamBroken(f"{attempt.where}: {self._describe(exc, attempt)}") from _bare(exc)
        except aiohttp.ClientPayloadError as exc:
            raise StreamBroken(
                f"{attempt.where}: body incomplete: {self._describe(exc, attempt)}"
            ) from _bare(exc)
        except (aiohttp.ClientError, OSError) as exc:
            raise StreamBroken(
                f"{attempt.where}: connection lost: {self._describe(exc, attempt)}"
            ) from _bare(exc)

    def _watch(self, attempt: _Attempt) -> None:
        # The attempt's one timer. Until the headers are in, it ends the wait for them once it
        # ran out (by cancelling the waiting task, see _send). Then it ends a read older than
        # the idle limit or past the attempt's deadline by setting an exception on the stream,
        # or looks again when one could be over. Its first check comes at most `idle` after
        # the start, so a read that began before it is never checked late.
        loop = asyncio.get_running_loop()
        now, since, idle = loop.time(), attempt.reading_since, self.timeouts.idle
        resp = attempt.resp
        if resp is None:
            due = attempt.headers_due
            task = attempt.waiting
            if now >= due:
                attempt.watchdog = None
                if task is not None and not task.done():
                    attempt.expired = True
                    task.cancel()
                return
            # Every `idle` at most, so the first check after the headers come is never late.
            attempt.watchdog = loop.call_at(min(due, now + idle), self._watch, attempt)
            return
        if since is not None and (now >= attempt.deadline or now - since >= idle):
            attempt.watchdog = None
            resp.content.set_exception(_ReadExpired())
            return
        # Not reading, or reading for less than the limit: look again when it could be over.
        due = min((now if since is None else since) + idle, attempt.deadline)
        attempt.watchdog = loop.call_at(max(due, now + 0.001), self._watch, attempt)

    async def _error_for(
        self, resp: aiohttp.ClientResponse, attempt: _Attempt, errors: ErrorMapper
    ) -> ApiError:
        try:
            body = await self._read_error_body(resp, attempt)
        finally:
            resp.close()
        return errors(resp.status, body, resp.headers, resp.reason or "", attempt.secrets)

    async def _read_error_body(self, resp: aiohttp.ClientResponse, attempt: _Attempt) -> bytes:
        # The status is the news; a body that cannot be read in full still leaves a typed error.
        chunks: list[bytes] = []
        size = 0
        with contextlib.suppress(TransportError):
            while size < _MAX_ERROR_BODY and (data := await self._read_chunk(resp, attempt)):
                chunks.append(data)
                size += len(data)
        self.bytes_received += size
        return b"".join(chunks)

    @staticmethod
    def _describe(exc: BaseException, attempt: _Attempt) -> str:
        text = str(exc)
        name = type(exc).__name__
        return clean_message(f"{name}: {text}" if text else name, attempt.secrets)

    @staticmethod
    def _log_done(attempt: _Attempt, status: int, received: int, done: float) -> None:
        attempt.end()
        _log.debug(
            "http.response",
            method=attempt.method,
            path=attempt.path,
            status=status,
            request_bytes=attempt.request_bytes,
            response_bytes=received,
            headers_s=round(attempt.headers_at - attempt.started, 6),
            duration_s=round(done - attempt.started, 6),
        )

    @staticmethod
    def _log_failure(attempt: _Attempt, exc: BaseException, status: int | None) -> None:
        attempt.end()
        _log.debug(
            "http.failed",
            method=attempt.method,
            path=attempt.path,
            status=status,
            error=type(exc).__name__,
            request_bytes=attempt.request_bytes,
            duration_s=round(asyncio.get_running_loop().time() - attempt.started, 6),
        )


def malformed(status: int, what: str, secrets: Iterable[str] = ()) -> MalformedResponse:
    """A MalformedResponse with a cleaned message."""
    return MalformedResponse(clean_message(what, secrets), status=status)
