"""Tree operations on any `SessionStore`: undo, redo, checkout, fork, delete.

Each one loads the session, computes the new pointers with `SessionState`, and writes them with
the version it read, so a writer that raced it gets `SessionBusy` instead of a lost update. The
runtime's Session handle and the `nanoedit sessions` CLI both call these.
"""

from __future__ import annotations

import time

import msgspec

from sessions._records import SessionRecord, TurnRecord
from sessions._records import new_id as _new_id
from sessions._store import SessionStore

__all__ = ["checkout", "delete", "fork", "redo", "undo"]


async def undo(store: SessionStore, session_id: str) -> SessionRecord:
    """Move the head back one turn (the tip stays, so `redo` can return); SessionError at root."""
    state = await store.load(session_id)
    head, tip = state.after_undo()
    return await store.move_head(session_id, head, tip, expected_version=state.record.version)


async def redo(store: SessionStore, session_id: str) -> SessionRecord:
    """Move the head forward one turn towards the tip; SessionError when it is at the tip."""
    state = await store.load(session_id)
    head, tip = state.after_redo()
    return await store.move_head(session_id, head, tip, expected_version=state.record.version)


async def checkout(store: SessionStore, session_id: str, turn_id: str | None) -> SessionRecord:
    """Put the head on any turn of the tree (None: before the first turn)."""
    state = await store.load(session_id)
    head, tip = state.after_checkout(turn_id)
    return await store.move_head(session_id, head, tip, expected_version=state.record.version)


async def fork(
    store: SessionStore,
    session_id: str,
    *,
    at_index: int | None = None,
    new_id: str | None = None,
) -> SessionRecord:
    """A new session holding turns 1..`at_index` of the current branch (default: to the head).

    The turns keep their ids and share the source's blobs: no image bytes are copied, in the
    store or in memory. The new record names its source in `parent_id` and `forked_at`.
    """
    state = await store.load(session_id)
    path: list[TurnRecord]
    if at_index is None:
        path = state.path()
    elif at_index == 0:
        path = []
    else:
        path = state.path_to(state.at_index(at_index).id)
    last = path[-1].id if path else None
    now = time.time()
    record = SessionRecord(
        id=new_id if new_id is not None else _new_id(),
        model=state.record.model,
        settings=state.record.settings,
        head=last,
        tip=last,
        created_at=now,
        updated_at=now,
        parent_id=session_id,
        forked_at=len(path),
        title=state.record.title,
    )
    await store.create(record, path)
    return msgspec.structs.replace(record, version=1)


async def delete(store: SessionStore, session_id: str) -> None:
    """Remove the session and its turns; SessionNotFound if there is none."""
    await store.delete(session_id)
