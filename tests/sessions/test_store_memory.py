"""MemoryStore (sessions/_store.py): interning, snapshots, listing, errors."""

from __future__ import annotations

import random

import pytest

from sessions import (
    Blob,
    Content,
    MemoryStore,
    Part,
    SessionBusy,
    SessionNotFound,
    SessionRecord,
    TurnRecord,
    new_id,
)

REF = random.Random("ref").randbytes(50_000)


def make_turn(parent: TurnRecord | None, n: int) -> TurnRecord:
    """A turn carrying a fresh copy (equal, not identical) of the reference image."""
    ref_copy = bytes(bytearray(REF))
    user = Content(
        role="user",
        parts=[
            Part(text=f"edit {n}"),
            Part(inline_data=Blob(mime_type="image/png", data=ref_copy)),
        ],
    )
    model = Content(
        role="model",
        parts=[Part(inline_data=Blob(mime_type="image/png", data=random.Random(n).randbytes(999)))],
    )
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=n,
        user=user,
        model=model,
        model_id="m",
    )


async def fill(store: MemoryStore, n: int) -> tuple[str, list[TurnRecord]]:
    """A session with `n` turns on one branch."""
    sid = new_id()
    await store.create(SessionRecord(id=sid, model="m"))
    turns: list[TurnRecord] = []
    for i in range(1, n + 1):
        turns.append(make_turn(turns[-1] if turns else None, i))
        await store.commit_turn(sid, turns[-1], expected_version=i)
    return sid, turns


async def test_reference_in_20_turns_held_once() -> None:
    """Twenty equal copies of one image are held as one bytes object."""
    store = MemoryStore()
    sid, _ = await fill(store, 20)
    state = await store.load(sid)
    refs = [c.images()[0].data for c in state.contents() if c.role == "user"]
    assert len(refs) == 20 and all(r is refs[0] for r in refs)
    assert len(store.blobs) == 21  # the reference plus 20 distinct model images
    assert store.blobs.total_bytes == len(REF) + 20 * 999


async def test_load_is_a_snapshot() -> None:
    """A state loaded earlier does not change when the store moves on."""
    store = MemoryStore()
    sid, turns = await fill(store, 2)
    before = await store.load(sid)
    await store.commit_turn(sid, make_turn(turns[-1], 3), expected_version=3)
    assert len(before.turns) == 2 and before.record.version == 3
    assert len((await store.load(sid)).turns) == 3


async def test_create_twice_is_busy() -> None:
    """Creating an existing id raises SessionBusy."""
    store = MemoryStore()
    sid, _ = await fill(store, 1)
    with pytest.raises(SessionBusy):
        await store.create(SessionRecord(id=sid, model="x"))


async def test_list_most_recent_first() -> None:
    """list orders by last update and counts the head's turns."""
    store = MemoryStore()
    a, _ = await fill(store, 3)
    b, _ = await fill(store, 1)
    assert [(s.id, s.turns, s.total_turns) for s in await store.list()] == [(b, 1, 1), (a, 3, 3)]


async def test_unknown_session() -> None:
    """load and delete of an unknown id raise SessionNotFound."""
    store = MemoryStore()
    with pytest.raises(SessionNotFound):
        await store.load("x")
    with pytest.raises(SessionNotFound):
        await store.delete("x")


def test_canonical_bytes_are_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-interning the canonical object, or interning with a known digest, does not hash."""
    import hashlib

    from sessions import MemoryBlobStore

    blobs = MemoryBlobStore()
    digest, canonical = blobs.intern(b"x" * 1000)
    assert blobs.digest(canonical) == digest
    assert blobs.digest(b"x" * 1000) is None  # an equal but different object is not "held"
    calls: list[bytes] = []
    real = hashlib.sha256

    def counting(data: bytes = b"") -> hashlib._Hash:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    assert blobs.intern(canonical) == (digest, canonical)
    fresh = b"y" * 10
    d2, c2 = blobs.intern(fresh, real(fresh).hexdigest())
    assert c2 is fresh and blobs.digest(fresh) == d2
    assert calls == []


async def test_delete_lets_go_of_blobs_no_other_session_uses() -> None:
    """A deleted session's images go with it; ones another session (a fork) holds stay."""
    from sessions import fork

    store = MemoryStore()
    sid, _ = await fill(store, 3)
    assert len(store.blobs) == 4  # the shared reference and three model images
    child = await fork(store, sid, at_index=2)
    other, _ = await fill(store, 1)  # the same reference image, one more model image
    await store.delete(sid)
    # Turn 3's model image was only in the deleted session; the rest are still held.
    assert len(store.blobs) == 3
    assert (await store.load(child.id)).path()[-1].model.images()[0].data
    await store.delete(child.id)
    await store.delete(other)
    assert len(store.blobs) == 0 and store.blobs.total_bytes == 0
