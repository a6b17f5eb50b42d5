"""`check_session`: what must hold of every stored session, whatever the store.

Run after a crash (`nanoedit sessions check`) and by the fault tests: roles alternate, committed
model turns have parts and whole images, heads, tips and parents name turns of the session, and
indices follow their parents.
"""

from __future__ import annotations

import hashlib

from sessions._records import SessionState, TurnRecord
from sessions._store import SessionStore

__all__ = ["check_session", "check_store"]


def _turn_problems(state: SessionState, turn: TurnRecord) -> list[str]:
    where = f"session {state.id} turn {turn.index} ({turn.id[:8]})"
    out = []
    if turn.user.role != "user":
        out.append(f"{where}: user content has role {turn.user.role!r}")
    if turn.model.role != "model":
        out.append(f"{where}: model content has role {turn.model.role!r}")
    if not turn.user.parts:
        out.append(f"{where}: user content has no parts")
    if not turn.model.parts:
        out.append(f"{where}: committed model content has no parts")
    for content in (turn.user, turn.model):
        for blob in content.images():
            if not blob.data:
                out.append(f"{where}: an image of the {content.role} content has no bytes")
    if turn.parent is None:
        if turn.index != 1:
            out.append(f"{where}: a root turn with index {turn.index}")
    elif turn.parent not in state.turns:
        out.append(f"{where}: parent {turn.parent[:8]} is not in the session")
    elif state.turns[turn.parent].index + 1 != turn.index:
        out.append(f"{where}: index does not follow its parent's")
    return out


def check_session(state: SessionState) -> list[str]:
    """Problems of one loaded session (an empty list when it is sound)."""
    out = []
    record = state.record
    for name, pointer in (("head", record.head), ("tip", record.tip)):
        if pointer is not None and pointer not in state.turns:
            out.append(f"session {state.id}: {name} {pointer[:8]} is not a turn of it")
    for turn in state.turns.values():
        out.extend(_turn_problems(state, turn))
    return out


async def check_store(store: SessionStore, session_ids: list[str] | None = None) -> list[str]:
    """Problems of the given sessions (all when None) and of the store's blobs."""
    ids = session_ids if session_ids is not None else [s.id for s in await store.list()]
    out: list[str] = []
    for sid in ids:
        try:
            state = await store.load(sid)
        except Exception as exc:  # a session that cannot even load is the first problem
            out.append(f"session {sid}: cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        out.extend(check_session(state))
        # Images as loaded must be what their turn committed: hash them against the blob store.
        for turn in state.turns.values():
            for content in (turn.user, turn.model):
                for blob in content.images():
                    digest = store.blobs.digest(blob.data)
                    if digest is not None and hashlib.sha256(blob.data).hexdigest() != digest:
                        out.append(f"session {sid} turn {turn.index}: image bytes changed")
    out.extend(await store.check_blobs())
    return out
