"""Typed events: a msgspec tagged union on `type`.

Every event carries `session_id`, `seq` (per session, strictly increasing, no gaps; assigned when
published), `turn` (the turn index from 1, or None) and `ts` (UNIX seconds). Images travel as an
`ImageRef`; bytes stay in the blob store. Nothing here may hold a key or image bytes.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from sessions import Usage, WireError

__all__ = [
    "ENGINE_WIDE",
    "BudgetExceededEvent",
    "BudgetWarning",
    "Event",
    "EventsMissed",
    "HistoryCompacted",
    "ImageRef",
    "LimitsChanged",
    "SessionClosed",
    "SessionCreated",
    "SessionForked",
    "SessionResumed",
    "TurnCancelled",
    "TurnCompleted",
    "TurnFailed",
    "TurnImage",
    "TurnPartialImage",
    "TurnRetrying",
    "TurnStarted",
    "TurnTextDelta",
    "Usage",
    "decode_event",
    "encode_event",
]


# `session_id` of events that belong to no session (limits.changed) and of the EventsMissed
# markers a bus subscriber to all sessions receives.
ENGINE_WIDE = "*"


class ImageRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An image by reference: its bytes live in the blob store under `sha256`."""

    sha256: str
    mime_type: str
    size: int
    width: int
    height: int


class Event(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    """Common fields of every event."""

    session_id: str
    seq: int = 0
    turn: int | None = None
    ts: float = msgspec.field(default_factory=time.time)

    @property
    def type(self) -> str:
        """The event's type tag as it appears in JSON ("turn.completed", ...)."""
        tag = type(self).__struct_config__.tag
        return tag if isinstance(tag, str) else ""


class SessionCreated(Event, tag="session.created"):
    """A new session exists."""

    model: str


class SessionResumed(Event, tag="session.resumed"):
    """A stored session was opened again."""

    model: str
    turns: int


class SessionForked(Event, tag="session.forked"):
    """This session was forked from another at a turn."""

    parent_id: str
    at_turn: int


class SessionClosed(Event, tag="session.closed"):
    """The session handle was closed."""


class TurnStarted(Event, tag="turn.started"):
    """A turn began: its request is being prepared."""

    model: str
    stream: bool
    history_turns: int


class TurnTextDelta(Event, tag="turn.text_delta"):
    """A piece of streamed text."""

    text: str
    thought: bool = False
    attempt: int = 1
    variant: int = 0  # which take of a `variants=N` turn (1..N); 0: a single turn


class TurnImage(Event, tag="turn.image"):
    """An image arrived (thought images are flagged)."""

    image: ImageRef
    thought: bool = False
    attempt: int = 1
    variant: int = 0


class TurnPartialImage(Event, tag="turn.partial_image"):
    """A preview of the image being generated (`index` from 0), before `turn.image`."""

    image: ImageRef
    index: int
    attempt: int = 1
    variant: int = 0


class TurnRetrying(Event, tag="turn.retrying"):
    """The attempt failed and will be retried after `delay_s`; discard its partial output."""

    attempt: int
    delay_s: float
    error: str
    status: int | None = None
    variant: int = 0


class TurnCompleted(Event, tag="turn.completed"):
    """The turn was committed."""

    finish_reason: str | None
    attempts: int
    latency_s: float
    images: list[ImageRef]
    text: str
    usage: Usage
    cost_usd: float = 0.0
    variant: int = 0
    turn_id: str = ""  # the committed turn (variants are siblings: they share `turn`)


class TurnFailed(Event, tag="turn.failed"):
    """The turn failed; the session is as it was before it."""

    error: str
    error_type: str
    status: int | None = None
    attempts: int = 1


class TurnCancelled(Event, tag="turn.cancelled"):
    """The turn was cancelled; the session is as it was before it."""

    reason: str = "cancelled"


class BudgetWarning(Event, tag="budget.warning"):
    """A limit is 80% used or more."""

    limit: str
    used: float
    allowed: float


class BudgetExceededEvent(Event, tag="budget.exceeded"):
    """The next request did not fit; `policy` says what was done."""

    limit: str
    needed: float
    allowed: float
    policy: str


class HistoryCompacted(Event, tag="history.compacted"):
    """The request carries fewer turns than the history holds (stored history is untouched)."""

    policy: str
    dropped_turns: list[int]
    kept_turns: list[int]


class LimitsChanged(Event, tag="limits.changed"):
    """The allowed in-flight count for a model changed (engine-wide: `session_id` is "*")."""

    model: str
    allowed_in_flight: int
    reason: str


class EventsMissed(Event, tag="events.missed"):
    """Marker for a subscriber: `missed` events were dropped from its buffer."""

    missed: int


AnyEvent = (
    SessionCreated
    | SessionResumed
    | SessionForked
    | SessionClosed
    | TurnStarted
    | TurnTextDelta
    | TurnImage
    | TurnPartialImage
    | TurnRetrying
    | TurnCompleted
    | TurnFailed
    | TurnCancelled
    | BudgetWarning
    | BudgetExceededEvent
    | HistoryCompacted
    | LimitsChanged
    | EventsMissed
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    """One event as a JSON object (with its `type`)."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Any:
    """Decode one JSON event into its typed struct; `WireError` for anything else."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise WireError(f"not an event: {exc}") from None
