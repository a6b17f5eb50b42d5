"""A turn as the SQL stores keep it (SQLite and PostgreSQL alike): its Contents as wire JSON
with inline payloads emptied, its other fields as JSON, and the payloads apart, by sha256."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import msgspec

from sessions._records import TurnRecord
from sessions._store import MemoryBlobStore
from sessions._wire import Content, decode_content, wire_contents

__all__ = ["TurnRow", "stored_turn", "turn_row"]

_encoder = msgspec.json.Encoder()
_turn_dec = msgspec.json.Decoder(TurnRecord)
_EMPTY = Content()


class TurnRow(NamedTuple):
    """One turn ready for the database."""

    turn: TurnRecord
    user: bytes  # wire JSON, payloads emptied
    model: bytes
    meta: bytes
    payloads: list[tuple[str, bytes]]  # (sha256, canonical bytes), user parts then model parts


def _strip(content: Content, blobs: MemoryBlobStore, out: list[tuple[str, bytes]]) -> bytes:
    """The Content's wire JSON with inline payloads emptied; (sha256, bytes) appended to `out`."""
    if not any(p.inline_data is not None for p in content.parts):
        return _encoder.encode(wire_contents([content])[0])
    parts = []
    for p in content.parts:
        if p.inline_data is not None:
            out.append(blobs.intern(p.inline_data.data))
            p = msgspec.structs.replace(
                p, inline_data=msgspec.structs.replace(p.inline_data, data=b"")
            )
        parts.append(p)
    return _encoder.encode(wire_contents([Content(role=content.role, parts=parts)])[0])


def _fill(content: Content, shas: Iterator[str], blobs: dict[str, bytes]) -> Content:
    """The stored Content with each emptied payload replaced by its canonical bytes."""
    if not any(p.inline_data is not None for p in content.parts):
        return content
    parts = []
    for p in content.parts:
        if p.inline_data is not None:
            data = blobs[next(shas)]
            p = msgspec.structs.replace(
                p, inline_data=msgspec.structs.replace(p.inline_data, data=data)
            )
        parts.append(p)
    return Content(role=content.role, parts=parts)


def turn_row(turn: TurnRecord, blobs: MemoryBlobStore) -> TurnRow:
    """A turn as stored: Contents with payloads emptied, the rest as JSON, the payloads."""
    payloads: list[tuple[str, bytes]] = []
    user = _strip(turn.user, blobs, payloads)
    model = _strip(turn.model, blobs, payloads)
    meta = _encoder.encode(msgspec.structs.replace(turn, user=_EMPTY, model=_EMPTY))
    return TurnRow(turn, user, model, meta, payloads)


def stored_turn(
    user: bytes, model: bytes, meta: bytes, shas: list[str], held: dict[str, bytes]
) -> TurnRecord:
    """The TurnRecord of a stored row, its payloads filled from `held` (sha256 -> bytes)."""
    it = iter(shas)
    return msgspec.structs.replace(
        _turn_dec.decode(meta),
        user=_fill(decode_content(user), it, held),
        model=_fill(decode_content(model), it, held),
    )
