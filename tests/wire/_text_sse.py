"""The event-stream decoder with text data, exactly as the spec defines it: the reference the
engine's byte decoder (`RawSSEDecoder`, the one providers use) is checked against."""

from __future__ import annotations

import msgspec

from engine.wire._sse import _EventStreamDecoder

__all__ = ["SSEDecoder", "ServerSentEvent"]


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event.

    ``id`` and ``retry`` are the values set inside this event's block (None when the
    block set none); ``last_event_id`` is the decoder's last-event-ID buffer at dispatch,
    which persists across events as the spec requires.
    """

    # gc=False is safe because the fields are only str/int/None (no reference cycles),
    # and it keeps 100k-event streams from triggering collector passes.
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    last_event_id: str = ""


class SSEDecoder(_EventStreamDecoder[ServerSentEvent]):
    """The event stream as the spec defines it: every event's data is text."""

    __slots__ = ()

    def _value(self, line: bytes) -> str:
        return line.decode("utf-8", "replace")

    def _make(
        self, event_type: str, data: str, block_id: str | None, retry: int | None, last_id: str
    ) -> ServerSentEvent:
        return ServerSentEvent(event_type, data, block_id, retry, last_id)

    def _join(self, pieces: list[str]) -> str:
        return "\n".join(pieces)
