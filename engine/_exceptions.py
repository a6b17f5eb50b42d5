"""Every error nanoedit raises, in one tree. aiohttp and msgspec errors never escape: they are
mapped at the transport boundary with ``raise ... from exc``.

NanoeditError
├── ConfigError                     bad EngineConfig / ImageConfig / model; nothing was sent
├── TransportError                  the request never got a usable HTTP answer
│   ├── ConnectError
│   ├── Timeout
│   │   ├── ConnectTimeout
│   │   ├── FirstByteTimeout        no response headers / first chunk in time
│   │   ├── IdleTimeout             silence between stream chunks longer than `idle`
│   │   └── TotalTimeout
│   └── StreamBroken                stream ended or broke before a finish reason
├── ApiError(status, code, message, retry_after, attempts)
│   ├── InvalidRequest              400 (INVALID_ARGUMENT, FAILED_PRECONDITION)
│   ├── Unauthorized                401 / 403
│   ├── NotFound                    404
│   ├── RateLimited                 429 RESOURCE_EXHAUSTED
│   ├── ServerError                 5xx, HTML gateway pages
│   ├── MalformedResponse           a body that is not the JSON it should be
│   └── InteractionIncomplete       an interaction ended incomplete / budget_exceeded / cancelled
├── ContentBlocked(reason)          promptFeedback.blockReason, IMAGE_SAFETY, NO_IMAGE, ...
├── BudgetExceeded(limit, needed, allowed)
├── SSEError                        an event stream that cannot be decoded
│   └── EventTooLarge               an SSE event over the decoder's maximum
├── Closed                          the engine or session is closed
├── SubscriberDisconnected          a bus subscriber overflowed with policy "disconnect"
├── WireError                       Content/Part JSON that cannot be decoded
└── SessionError
    ├── SessionNotFound
    ├── TurnNotFound
    ├── SessionBusy
    └── StoreError
"""

from __future__ import annotations

from sessions import (
    ConfigError,
    EventTooLarge,
    NanoeditError,
    SessionBusy,
    SessionError,
    SessionNotFound,
    SSEError,
    StoreError,
    TurnNotFound,
    WireError,
)

__all__ = [
    "ApiError",
    "BudgetExceeded",
    "Closed",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ContentBlocked",
    "EventTooLarge",
    "FirstByteTimeout",
    "IdleTimeout",
    "InteractionIncomplete",
    "InvalidRequest",
    "MalformedResponse",
    "NanoeditError",
    "NotFound",
    "RateLimited",
    "SSEError",
    "ServerError",
    "SessionBusy",
    "SessionError",
    "SessionNotFound",
    "StoreError",
    "StreamBroken",
    "SubscriberDisconnected",
    "Timeout",
    "TotalTimeout",
    "TransportError",
    "TurnNotFound",
    "Unauthorized",
    "WireError",
    "api_error",
]


class TransportError(NanoeditError):
    """The request did not get a usable HTTP answer."""

    attempts: int = 1

    @property
    def retried(self) -> bool:
        """Whether the engine tried more than once before giving up."""
        return self.attempts > 1


class ConnectError(TransportError):
    """The connection could not be made or was reset before the response headers."""


class Timeout(TransportError):
    """A deadline passed."""


class ConnectTimeout(Timeout):
    """Connecting took longer than `Timeouts.connect`."""


class FirstByteTimeout(Timeout):
    """No response headers within `Timeouts.first_byte`."""


class IdleTimeout(Timeout):
    """The stream was silent for longer than `Timeouts.idle`."""


class TotalTimeout(Timeout):
    """The whole attempt took longer than `Timeouts.total`."""


class StreamBroken(TransportError):
    """The response stream ended or broke before it carried a finish reason."""


class ApiError(NanoeditError):
    """The server answered with an error: HTTP status, Google status string, message."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str = "",
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.attempts = attempts

    @property
    def retried(self) -> bool:
        """Whether the engine tried more than once before giving up."""
        return self.attempts > 1

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}: {self.message}"


class InvalidRequest(ApiError):
    """400: the server rejected the request as it stands."""


class Unauthorized(ApiError):
    """401/403: missing, wrong or insufficient key."""


class NotFound(ApiError):
    """404: unknown model or path."""


class RateLimited(ApiError):
    """429: quota or rate exhausted; `retry_after` says when the server suggests trying again."""


class ServerError(ApiError):
    """5xx, or a gateway's HTML error page."""


class MalformedResponse(ApiError):
    """The body is not the JSON it should be (truncated, HTML with a 200, wrong shape)."""


class InteractionIncomplete(ApiError):
    """The interaction ended `incomplete`, `budget_exceeded` or `cancelled` (its `code`): the
    answer is not whole and is not committed. Not retried: the same request ends the same way."""


class ContentBlocked(NanoeditError):
    """The prompt was blocked or the model finished without the image for a safety reason."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


class BudgetExceeded(NanoeditError):
    """The next request would not fit the session's budget; nothing was sent."""

    def __init__(self, message: str, *, limit: str, needed: float, allowed: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.needed = needed
        self.allowed = allowed


class Closed(NanoeditError):
    """The engine or session is closed and takes no more turns."""


class SubscriberDisconnected(NanoeditError):
    """A bus subscriber fell too far behind with overflow policy "disconnect"."""

    def __init__(self, message: str, *, missed: int) -> None:
        super().__init__(message)
        self.missed = missed


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    429: RateLimited,
}


def api_error(
    status: int, message: str, *, code: str = "", retry_after: float | None = None
) -> ApiError:
    """The ApiError subclass that means what `status` means."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(message, status=status, code=code, retry_after=retry_after)
