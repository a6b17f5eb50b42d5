"""HTTP plumbing of the gateway: the error shape and the one map from exception class to status,
JSON bodies in and out, bounded body reads, and the SSE response both event routes write to."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeVar

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from engine._exceptions import (
    ApiError,
    BudgetExceeded,
    Closed,
    ConfigError,
    ContentBlocked,
    RateLimited,
    SessionBusy,
    SessionError,
    SessionNotFound,
    StoreError,
    StreamBroken,
    Timeout,
    TransportError,
    TurnNotFound,
    WireError,
)
from engine.events import Event
from engine.serve._api import ErrorBody, ErrorOut
from engine.serve._fanout import sse_bytes
from engine.state import ClusterError

__all__ = [
    "JSON",
    "STATUS",
    "FormPart",
    "HttpError",
    "decode_body",
    "error_response",
    "json_response",
    "read_body",
    "read_form",
    "sse_response",
    "status_of",
    "write_event",
]

T = TypeVar("T")
JSON = "application/json"
_encoder = msgspec.json.Encoder()

STATUS: dict[type[BaseException], tuple[int, float | None]] = {
    ConfigError: (400, None),
    WireError: (400, None),
    TurnNotFound: (400, None),
    SessionNotFound: (404, None),
    BudgetExceeded: (402, None),
    SessionBusy: (409, 1.0),
    ContentBlocked: (422, None),
    RateLimited: (429, 1.0),
    Timeout: (504, None),
    StreamBroken: (502, None),
    ApiError: (502, None),
    TransportError: (502, None),
    # The store or Redis is unreachable: the request may work again shortly.
    StoreError: (503, 5.0),
    ClusterError: (503, 5.0),
    Closed: (503, 5.0),
    SessionError: (409, None),
}
"""The HTTP status (and Retry-After seconds) each exception class means; a subclass takes its
nearest listed ancestor's."""


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


def status_of(exc: BaseException) -> tuple[int, float | None]:
    """The HTTP status an error means, and a Retry-After when there is one (500: unknown)."""
    if isinstance(exc, HttpError):
        return exc.status, exc.retry_after
    for cls in type(exc).__mro__:
        found = STATUS.get(cls)
        if found is not None:
            status, retry_after = found
            if isinstance(exc, RateLimited) and exc.retry_after:
                retry_after = exc.retry_after
            return status, retry_after
    return 500, None


def error_response(
    status: int,
    kind: str,
    message: str,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """`{"error": {"type", "message", "status"}}` with the status (and Retry-After)."""
    body = _encoder.encode(ErrorOut(error=ErrorBody(type=kind, message=message, status=status)))
    out = {**(headers or {}), "Content-Type": JSON}
    if retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(status=status, body=body, headers=out)


def json_response(value: Any, status: int = 200) -> web.Response:
    """`value` as a JSON answer."""
    return web.Response(status=status, body=_encoder.encode(value), content_type=JSON)


def decode_body(body: bytes, kind: type[T]) -> T:
    """The body as `kind` (an empty body as `{}`); 400 for anything else."""
    if not body.strip():
        body = b"{}"
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise HttpError(400, "InvalidRequest", f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HttpError(400, "InvalidRequest", f"the body is not JSON: {exc}") from None


def too_large(limit: int) -> HttpError:
    """413 for a body over `limit` bytes."""
    return HttpError(413, "PayloadTooLarge", f"the body is over {limit:,} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` (at once when Content-Length says so)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.readany():
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class FormPart(NamedTuple):
    """One field of a multipart form, read whole."""

    name: str
    filename: str | None
    data: bytes


async def read_form(request: web.Request, limit: int) -> list[FormPart]:
    """Every field of a multipart body, refused with 413 past `limit` bytes in all and with 400
    for a malformed body (aiohttp's reader raises ValueError, AssertionError, KeyError or an
    HTTP processing error for a missing or wrong boundary, broken framing, bad part headers)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    parts: list[FormPart] = []
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):  # pragma: no cover - nested multipart
                raise HttpError(400, "InvalidRequest", "nested multipart bodies are not accepted")
            data = bytearray()
            while chunk := await part.read_chunk():
                total += len(chunk)
                if total > limit:
                    raise too_large(limit)
                data += chunk
            parts.append(FormPart(part.name or "", part.filename, bytes(data)))
    except HttpError:
        raise
    except (ValueError, AssertionError, KeyError, LookupError, HttpProcessingError) as exc:
        raise HttpError(400, "InvalidRequest", f"malformed multipart body: {exc}") from None
    return parts


def sse_response(request: web.Request) -> web.StreamResponse:
    """An event-stream response (not yet prepared): streamed turns and `/events` alike."""
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
    return response


async def write_event(response: web.StreamResponse, event: Event) -> None:
    """One event as SSE (`id: seq`, `event: type`, `data: JSON`)."""
    await response.write(sse_bytes(event))
