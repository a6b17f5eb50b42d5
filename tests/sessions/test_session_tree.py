"""Tree operations (sessions/_ops.py) against every store: undo, redo, checkout, fork, races."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from sessions import (
    Blob,
    Content,
    MemoryStore,
    Part,
    SessionBusy,
    SessionError,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    SqliteStore,
    TurnNotFound,
    TurnRecord,
    checkout,
    delete,
    fork,
    new_id,
    redo,
    undo,
)

REFERENCE = random.Random(7).randbytes(4096)


def _image(seed: str) -> bytes:
    return random.Random(seed).randbytes(1024)


def make_turn(parent: TurnRecord | None, text: str, *, refs: Sequence[bytes] = ()) -> TurnRecord:
    """A turn whose model Content carries a thought signature and a fresh image."""
    user = Content(
        role="user",
        parts=[
            Part(text=text),
            *(Part(inline_data=Blob(mime_type="image/png", data=r)) for r in refs),
        ],
    )
    model = Content(
        role="model",
        parts=[
            Part(text="thinking", thought=True, thought_signature=b"sig-" + text.encode()),
            Part(inline_data=Blob(mime_type="image/png", data=_image(text))),
        ],
    )
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=parent.index + 1 if parent else 1,
        user=user,
        model=model,
        model_id="m",
    )


async def send(store: SessionStore, sid: str, text: str, **kw: Sequence[bytes]) -> TurnRecord:
    """Commit a new turn after the head, as the runtime does."""
    state = await store.load(sid)
    head = state.turn(state.record.head) if state.record.head else None
    turn = make_turn(head, text, **kw)
    await store.commit_turn(sid, turn, expected_version=state.record.version)
    return turn


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store implementation, closed afterwards."""
    s: SessionStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    async with s:
        yield s


async def new_session(store: SessionStore, n: int = 0) -> tuple[str, list[TurnRecord]]:
    """A session with `n` turns on one branch."""
    sid = new_id()
    await store.create(SessionRecord(id=sid, model="m"))
    return sid, [await send(store, sid, f"t{i}", refs=[REFERENCE]) for i in range(1, n + 1)]


async def test_undo_moves_head_back_and_keeps_tip(store: SessionStore) -> None:
    """undo moves the head to the parent; the tip stays at the far end."""
    sid, turns = await new_session(store, 3)
    rec = await undo(store, sid)
    assert (rec.head, rec.tip) == (turns[1].id, turns[2].id)
    state = await store.load(sid)
    assert [t.id for t in state.path()] == [turns[0].id, turns[1].id]


async def test_redo_walks_back_to_tip(store: SessionStore) -> None:
    """redo retraces undone turns one by one, then errors at the tip."""
    sid, turns = await new_session(store, 3)
    await undo(store, sid)
    await undo(store, sid)
    assert (await redo(store, sid)).head == turns[1].id
    assert (await redo(store, sid)).head == turns[2].id
    with pytest.raises(SessionError, match="nothing to redo"):
        await redo(store, sid)


async def test_undo_to_empty_then_redo(store: SessionStore) -> None:
    """Undoing every turn leaves an empty head; redo brings back the first turn."""
    sid, turns = await new_session(store, 1)
    assert (await undo(store, sid)).head is None
    assert (await store.load(sid)).contents() == []
    assert (await redo(store, sid)).head == turns[0].id


async def test_undo_at_root_errors_and_changes_nothing(store: SessionStore) -> None:
    """undo with nothing before the head raises and leaves the version alone."""
    sid, _ = await new_session(store, 0)
    before = (await store.load(sid)).record
    with pytest.raises(SessionError, match="nothing to undo"):
        await undo(store, sid)
    assert (await store.load(sid)).record.version == before.version


async def test_new_turn_after_undo_branches_and_keeps_old_branch(store: SessionStore) -> None:
    """A turn sent after undo starts a branch; the undone turns stay reachable."""
    sid, turns = await new_session(store, 3)
    await undo(store, sid)
    new = await send(store, sid, "alt")
    state = await store.load(sid)
    branches = [[t.id for t in b] for b in state.branches()]
    assert [turns[0].id, turns[1].id, turns[2].id] in branches
    assert [turns[0].id, turns[1].id, new.id] in branches
    assert state.record.head == state.record.tip == new.id
    assert new.index == 3


async def test_contents_is_exactly_the_path(store: SessionStore) -> None:
    """contents() is each path turn's user then model Content, equal to what was committed."""
    sid, turns = await new_session(store, 3)
    await undo(store, sid)
    alt = await send(store, sid, "alt")
    state = await store.load(sid)
    expected = [c for t in (turns[0], turns[1], alt) for c in (t.user, t.model)]
    assert state.contents() == expected


async def test_redo_after_new_branch_follows_new_branch(store: SessionStore) -> None:
    """After a new branch, redo has nothing to do; undo then redo returns to the new turn."""
    sid, _ = await new_session(store, 2)
    await undo(store, sid)
    alt = await send(store, sid, "alt")
    with pytest.raises(SessionError):
        await redo(store, sid)
    await undo(store, sid)
    assert (await redo(store, sid)).head == alt.id


async def test_checkout_other_branch(store: SessionStore) -> None:
    """checkout puts the head on a turn of another branch, which becomes the current one."""
    sid, turns = await new_session(store, 3)
    await undo(store, sid)
    await send(store, sid, "alt")
    rec = await checkout(store, sid, turns[2].id)
    assert rec.head == rec.tip == turns[2].id
    await undo(store, sid)
    assert (await redo(store, sid)).head == turns[2].id


async def test_checkout_on_branch_keeps_tip(store: SessionStore) -> None:
    """checkout of an earlier turn on the current branch keeps the tip for redo."""
    sid, turns = await new_session(store, 3)
    rec = await checkout(store, sid, turns[0].id)
    assert (rec.head, rec.tip) == (turns[0].id, turns[2].id)
    assert (await store.load(sid)).at_index(3).id == turns[2].id


async def test_checkout_unknown_turn(store: SessionStore) -> None:
    """checkout of a turn the session lacks raises TurnNotFound."""
    sid, _ = await new_session(store, 1)
    with pytest.raises(TurnNotFound):
        await checkout(store, sid, "nope")


async def test_ops_on_unknown_session(store: SessionStore) -> None:
    """Every op on an unknown id raises SessionNotFound."""
    for op in (undo, redo, delete):
        with pytest.raises(SessionNotFound, match="no session 'zz'"):
            await op(store, "zz")
    with pytest.raises(SessionNotFound):
        await fork(store, "zz")


async def test_fork_holds_prefix(store: SessionStore) -> None:
    """fork(at_index=2) holds turns 1..2 of the current branch and records its source."""
    sid, turns = await new_session(store, 3)
    rec = await fork(store, sid, at_index=2)
    assert (rec.parent_id, rec.forked_at, rec.version) == (sid, 2, 1)
    state = await store.load(rec.id)
    assert [t.id for t in state.path()] == [turns[0].id, turns[1].id]
    assert state.contents() == (await store.load(sid)).contents()[:4]
    assert state.record == rec


async def test_fork_default_is_head_and_index_counts_redo_tail(store: SessionStore) -> None:
    """fork without at_index stops at the head; at_index may reach past it to the tip."""
    sid, turns = await new_session(store, 3)
    await undo(store, sid)
    at_head = await fork(store, sid)
    assert at_head.head == turns[1].id and at_head.forked_at == 2
    at_tip = await fork(store, sid, at_index=3, new_id="forked")
    assert at_tip.id == "forked" and at_tip.head == turns[2].id


async def test_fork_bad_index(store: SessionStore) -> None:
    """fork past the end of the branch raises TurnNotFound and creates nothing."""
    sid, _ = await new_session(store, 2)
    with pytest.raises(TurnNotFound):
        await fork(store, sid, at_index=3)
    assert len(await store.list()) == 1


async def test_fork_shares_blobs(store: SessionStore) -> None:
    """A fork's images are the very bytes objects of its source; no blob is added."""
    sid, _ = await new_session(store, 3)
    source = await store.load(sid)
    n_blobs = await _count_blobs(store)
    rec = await fork(store, sid, at_index=3)
    forked = await store.load(rec.id)
    for a, b in zip(source.contents(), forked.contents(), strict=True):
        for x, y in zip(a.images(), b.images(), strict=True):
            assert x.data is y.data
    assert await _count_blobs(store) == n_blobs


async def _count_blobs(store: SessionStore) -> int:
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        try:
            count: int = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
            return count
        finally:
            db.close()
    assert isinstance(store, MemoryStore)
    return len(store.blobs)


async def test_version_clash_is_busy_and_changes_nothing(store: SessionStore) -> None:
    """Writing with a stale version raises SessionBusy; head, tip, turns and version stay."""
    sid, turns = await new_session(store, 2)
    stale = await store.load(sid)
    await undo(store, sid)
    before = await store.load(sid)
    with pytest.raises(SessionBusy):
        await store.commit_turn(
            sid, make_turn(turns[1], "late"), expected_version=stale.record.version
        )
    with pytest.raises(SessionBusy):
        await store.move_head(sid, None, None, expected_version=stale.record.version)
    after = await store.load(sid)
    assert after.record == before.record
    assert after.turns.keys() == before.turns.keys()


async def test_delete_removes_session(store: SessionStore) -> None:
    """delete removes the session; a fork of it survives with its images."""
    sid, _ = await new_session(store, 2)
    rec = await fork(store, sid)
    await delete(store, sid)
    with pytest.raises(SessionNotFound):
        await store.load(sid)
    assert [s.id for s in await store.list()] == [rec.id]
    forked = await store.load(rec.id)
    assert all(img.data for c in forked.contents() for img in c.images())
