"""Errors of the state layer. The root `NanoeditError` lives here, the lowest layer, so that the
engine's hierarchy (engine/_exceptions.py, where the whole tree is drawn) has a single root."""

from __future__ import annotations

__all__ = [
    "NanoeditError",
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
