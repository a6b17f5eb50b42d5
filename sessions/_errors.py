"""Errors of the state layer. The root `NanoeditError` lives here, the lowest layer, so that the
engine's hierarchy (engine/_exceptions.py, where the whole tree is drawn) has a single root."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EventTooLarge",
    "NanoeditError",
    "SSEError",
    "SessionBusy",
    "SessionError",
    "SessionNotFound",
    "StoreError",
    "TurnNotFound",
]


class NanoeditError(Exception):
    """Root of every error nanoedit raises."""


class SessionError(NanoeditError):
    """A session operation that cannot be carried out."""


class SessionNotFound(SessionError):
    """No session with that id in the store."""


class TurnNotFound(SessionError):
    """No turn with that id or index in the session."""


class SessionBusy(SessionError):
    """Another turn or process holds the session's head; nothing was changed."""


class StoreError(SessionError):
    """The store could not read or write; the operation had no effect."""


class ConfigError(NanoeditError, ValueError):
    """Configuration that cannot work; raised before anything is sent."""


class SSEError(NanoeditError):
    """An event stream that cannot be decoded."""


class EventTooLarge(SSEError):
    """One SSE event's buffered data exceeded the decoder's maximum size."""

    def __init__(self, limit: int, size: int) -> None:
        super().__init__(
            f"server-sent event exceeds max_event_bytes={limit} "
            f"({size} bytes buffered before the event was complete)"
        )
        self.limit = limit
        self.size = size

    def __reduce__(self) -> tuple[type[EventTooLarge], tuple[int, int]]:
        # Pickle by constructor arguments, since they differ from `args`.
        return (type(self), (self.limit, self.size))
