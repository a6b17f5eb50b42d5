"""The SessionStore contract, run unchanged over MemoryStore, SqliteStore and PostgresStore."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sessions import (
    BatchRecord,
    Blob,
    Content,
    FileRef,
    Part,
    PostgresStore,
    SessionBusy,
    SessionNotFound,
    SessionRecord,
    SessionSettings,
    SessionStore,
    StoreError,
    TenantUsage,
    TurnNotFound,
    TurnRecord,
    encode_contents,
    fork,
    new_id,
)
from sessions._postgres import PG_SCHEMA_VERSION
from tests.conftest import STORE_KINDS, open_store_kind


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store implementation on a fresh database, closed afterwards."""
    async with open_store_kind(request.param, tmp_path) as s:
        yield s


def make_turn(parent: TurnRecord | None, text: str, image: bytes | None = None) -> TurnRecord:
    rng = random.Random(text)
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=parent.index + 1 if parent else 1,
        user=Content(role="user", parts=[Part(text=text)]),
        model=Content(
            role="model",
            parts=[
                Part(text="plan", thought=True, thought_signature=rng.randbytes(32)),
                Part(inline_data=Blob(mime_type="image/png", data=image or rng.randbytes(5000))),
                Part(text=f"done: {text}"),
            ],
        ),
        model_id="m",
        cost_usd=0.01,
    )


async def seed(store: SessionStore, n: int, *, owner: str = "") -> tuple[str, list[TurnRecord]]:
    sid = new_id()
    await store.create(SessionRecord(id=sid, model="m", settings=SessionSettings(owner=owner)))
    turns: list[TurnRecord] = []
    for i in range(n):
        turns.append(make_turn(turns[-1] if turns else None, f"turn {i} of {sid}"))
        await store.commit_turn(sid, turns[-1], expected_version=i + 1)
    return sid, turns


async def test_load_equals_what_was_committed(store: SessionStore) -> None:
    """Load equals what was committed."""
    sid, turns = await seed(store, 3)
    state = await store.load(sid)
    assert state.record.version == 4 and state.record.head == turns[-1].id
    assert encode_contents(state.contents()) == encode_contents(
        [c for t in turns for c in (t.user, t.model)]
    )
    assert [t.id for t in state.path()] == [t.id for t in turns]
    assert (await store.load_record(sid)).version == 4


async def test_a_stale_version_is_busy_and_changes_nothing(store: SessionStore) -> None:
    """A stale version is busy and changes nothing."""
    sid, turns = await seed(store, 1)
    with pytest.raises(SessionBusy):
        await store.commit_turn(sid, make_turn(turns[0], "late"), expected_version=1)
    with pytest.raises(SessionBusy):
        await store.move_head(sid, None, turns[0].id, expected_version=1)
    assert len((await store.load(sid)).turns) == 1


async def test_moves_and_dangling_pointers(store: SessionStore) -> None:
    """Head moves are stored, and a head or tip naming no turn is refused."""
    sid, turns = await seed(store, 2)
    rec = await store.move_head(sid, turns[0].id, turns[1].id, expected_version=3)
    assert rec.head == turns[0].id and rec.tip == turns[1].id and rec.version == 4
    with pytest.raises(TurnNotFound):
        await store.move_head(sid, "nope", None, expected_version=4)
    orphan = make_turn(None, "orphan")
    orphan.parent = "missing-parent"
    with pytest.raises(TurnNotFound):
        await store.commit_turn(sid, orphan, expected_version=4)
    assert (await store.load_record(sid)).version == 4


async def test_unknown_sessions_and_double_create(store: SessionStore) -> None:
    """An unknown session is SessionNotFound; creating the same id twice is refused."""
    for call in (
        store.load("nope"),
        store.load_record("nope"),
        store.delete("nope"),
        store.lease_holder("nope"),
    ):
        with pytest.raises(SessionNotFound):
            await call
    sid, _ = await seed(store, 0)
    with pytest.raises(SessionBusy):
        await store.create(SessionRecord(id=sid, model="m"))


async def test_listing_order_counts_and_owner(store: SessionStore) -> None:
    """Listings come newest first, with turn counts, filtered by owner."""
    a, _ = await seed(store, 2, owner="alice")
    b, _ = await seed(store, 1, owner="bob")
    listing = await store.list()
    assert [s.id for s in listing] == [b, a]  # most recently updated first
    assert [(s.turns, s.total_turns) for s in listing] == [(1, 1), (2, 2)]
    assert [s.id for s in await store.list(owner="alice")] == [a]
    assert (await store.list(owner="alice"))[0].owner == "alice"
    assert await store.list(owner="carol") == []


async def test_tenant_usage_and_images_by_owner(store: SessionStore) -> None:
    """tenant_usage counts an owner's sessions, turns and spend; holds_image answers for the
    owner's sessions only, and stops holding once the session is deleted."""
    a, turns = await seed(store, 2, owner="alice")
    await seed(store, 1, owner="alice")
    await seed(store, 3, owner="bob")
    usage = await store.tenant_usage("alice")
    assert (usage.sessions, usage.turns) == (2, 3)
    assert usage.spent_usd == pytest.approx(0.03)
    assert await store.tenant_usage("carol") == TenantUsage()
    digest = hashlib.sha256(turns[1].model.images()[0].data).hexdigest()
    assert await store.holds_image("alice", digest)
    assert not await store.holds_image("bob", digest)
    assert not await store.holds_image("alice", "0" * 64)
    await store.delete(a)
    assert not await store.holds_image("alice", digest)


async def test_rename_sets_the_title_and_checks_the_version(store: SessionStore) -> None:
    """rename changes the title and the version; a stale version is SessionBusy; an unknown
    session SessionNotFound."""
    sid, _ = await seed(store, 1)
    version = (await store.load_record(sid)).version
    record = await store.rename(sid, "teapots", expected_version=version)
    assert record.title == "teapots" and record.version == version + 1
    assert (await store.load_record(sid)).title == "teapots"
    with pytest.raises(SessionBusy):
        await store.rename(sid, "again", expected_version=version)
    with pytest.raises(SessionNotFound):
        await store.rename("nope", "x", expected_version=1)


async def test_event_epochs_count_up(store: SessionStore) -> None:
    """Each call counts one more epoch of event numbering, from 1."""
    assert [await store.next_event_epoch() for _ in range(3)] == [1, 2, 3]


async def test_fork_shares_blobs_and_delete_keeps_what_others_use(store: SessionStore) -> None:
    """Fork shares blobs and delete keeps what others use."""
    sid, turns = await seed(store, 3)
    child = await fork(store, sid, at_index=2)
    assert [t.id for t in (await store.load(child.id)).path()] == [t.id for t in turns[:2]]
    await store.delete(sid)
    state = await store.load(child.id)  # its blobs survived the parent's deletion
    assert state.path()[1].model.images()[0].data == turns[1].model.images()[0].data
    digest_of_3 = hashlib.sha256(turns[2].model.images()[0].data).hexdigest()
    with pytest.raises(StoreError):
        await store.load_blob(digest_of_3)  # only the deleted session held it
    assert await store.check_blobs() == []


async def test_blobs_are_stored_once_and_load_as_one_object(store: SessionStore) -> None:
    """Blobs are stored once and load as one object."""
    sid = new_id()
    await store.create(SessionRecord(id=sid, model="m"))
    shared = random.Random(1).randbytes(20_000)
    parent = None
    for i in range(4):
        parent = make_turn(parent, f"t{i}", image=bytes(bytearray(shared)))
        await store.commit_turn(sid, parent, expected_version=i + 1)
    state = await store.load(sid)
    images = [t.model.images()[0].data for t in state.path()]
    assert all(img is images[0] for img in images)
    digest = hashlib.sha256(shared).hexdigest()
    assert await store.load_blob(digest) == shared


async def test_leases(store: SessionStore) -> None:
    """A lease is taken, renewed, refused to another owner while live, and released."""
    sid, _ = await seed(store, 0)
    assert await store.acquire_lease(sid, "a", 30)
    assert await store.acquire_lease(sid, "a", 30)  # renewal
    assert not await store.acquire_lease(sid, "b", 30)
    assert await store.acquire_lease(sid, "b", 30, take_from="a")  # a is known dead
    holder = await store.lease_holder(sid)
    assert holder is not None and holder.owner == "b" and holder.until > time.time()
    await store.release_lease(sid, "a")  # not a's: nothing happens
    assert (await store.lease_holder(sid)) is not None
    await store.release_lease(sid, "b")
    assert await store.lease_holder(sid) is None
    assert await store.acquire_lease(sid, "c", 0.05)
    await asyncio.sleep(0.1)
    assert await store.lease_holder(sid) is None
    assert await store.acquire_lease(sid, "d", 30)  # an expired lease is free


async def test_file_refs_and_batches(store: SessionStore) -> None:
    """File references and batch records are saved, listed and loaded back as written."""
    live = FileRef(
        scope="s1",
        sha256="aa",
        name="files/1",
        uri="u1",
        mime_type="image/png",
        size=3,
        expires_at=time.time() + 3600,
    )
    other_scope = FileRef(
        scope="s2",
        sha256="aa",
        name="files/2",
        uri="u2",
        mime_type="image/png",
        size=3,
        expires_at=time.time() + 3600,
    )
    await store.save_file_ref(live)
    await store.save_file_ref(other_scope)
    assert await store.file_refs("s1", ["aa", "bb"]) == {"aa": live}
    assert (await store.file_refs("s2", ["aa"]))["aa"].name == "files/2"
    await store.drop_file_refs("s1", ["aa"])
    assert await store.file_refs("s1", ["aa"]) == {}
    job = BatchRecord(name="batches/1", scope="s1", model="m", keys=["a", "b"])
    await store.save_batch(job)
    job.state = "BATCH_STATE_SUCCEEDED"
    await store.save_batch(job)
    assert (await store.load_batch("batches/1")).state == "BATCH_STATE_SUCCEEDED"
    assert [j.name for j in await store.list_batches()] == ["batches/1"]
    with pytest.raises(StoreError):
        await store.load_batch("batches/none")


@pytest.mark.postgres
async def test_postgres_migrates_once_and_refuses_a_newer_schema(pg_dsn: str) -> None:
    """Postgres migrates once (a version-1 database gains version 2's counters) and refuses a
    newer schema."""
    import asyncpg

    async with PostgresStore(pg_dsn) as first, PostgresStore(pg_dsn) as second:
        sid, _ = await seed(first, 1)
        assert len((await second.load(sid)).turns) == 1  # the second start found the schema
    db = await asyncpg.connect(pg_dsn)
    try:
        assert await db.fetchval("SELECT max(version) FROM nanoedit_schema") == PG_SCHEMA_VERSION
        await db.execute("DROP TABLE counters")  # what a version-1 database lacks
        await db.execute("DELETE FROM nanoedit_schema WHERE version > 1")
    finally:
        await db.close()
    async with PostgresStore(pg_dsn) as store:
        assert len((await store.load(sid)).turns) == 1
        assert await store.next_event_epoch() == 1
    db = await asyncpg.connect(pg_dsn)
    try:
        assert await db.fetchval("SELECT max(version) FROM nanoedit_schema") == PG_SCHEMA_VERSION
        await db.execute("INSERT INTO nanoedit_schema (version) VALUES (99)")
    finally:
        await db.close()
    async with PostgresStore(pg_dsn) as store:
        with pytest.raises(StoreError, match="schema version 99"):
            await store.list()


@pytest.mark.postgres
async def test_postgres_errors_are_store_errors_without_the_password() -> None:
    """Postgres errors are store errors without the password."""
    store = PostgresStore("postgresql://postgres:s3cret-pw@127.0.0.1:1/none")
    with pytest.raises(StoreError) as failed:
        await store.list()
    assert "s3cret-pw" not in str(failed.value) and "***" in str(failed.value)
    assert "s3cret-pw" not in repr(store)
    await store.aclose()


@pytest.mark.postgres
async def test_postgres_opens_one_pool_for_many_first_callers(pg_dsn: str) -> None:
    """A server starting under load: a hundred first calls at once share one pool (each had
    opened its own and PostgreSQL ran out of connections)."""
    import asyncpg

    async with PostgresStore(pg_dsn, max_size=4) as store:
        await asyncio.gather(*(store.list() for _ in range(100)))
        db = await asyncpg.connect(pg_dsn)
        try:
            count = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            )
        finally:
            await db.close()
        assert count <= 4 + 1  # the pool's connections and this one


async def test_commits_are_fenced_by_the_lease(store: SessionStore) -> None:
    """With `lease_owner`, a commit lands only while that owner holds the unexpired lease."""
    sid, turns = await seed(store, 1)
    assert await store.acquire_lease(sid, "node-a", 30)
    landed = await store.commit_turn(
        sid, make_turn(turns[0], "a's turn"), expected_version=2, lease_owner="node-a"
    )
    assert landed.version == 3
    # Another node takes the lease over (a paused node's lease, say): a can no longer commit,
    # although the version it read is still current.
    assert await store.acquire_lease(sid, "node-b", 30, take_from="node-a")
    late = make_turn(turns[0], "a, after losing the lease")
    with pytest.raises(SessionBusy, match="lease"):
        await store.commit_turn(sid, late, expected_version=3, lease_owner="node-a")
    # An expired lease fences too, even when nobody took it.
    assert await store.acquire_lease(sid, "node-b", 0.05)
    await asyncio.sleep(0.1)
    with pytest.raises(SessionBusy, match="lease"):
        await store.commit_turn(sid, late, expected_version=3, lease_owner="node-b")
    state = await store.load(sid)
    assert state.record.version == 3 and len(state.turns) == 2


async def test_a_turn_whose_lease_was_taken_mid_turn_does_not_commit(
    store: SessionStore, make_emulator: Any
) -> None:
    """The engine fences its commit with its lease: another writer that took the lease while
    the model was answering (this engine looked dead: paused, partitioned) wins, and this turn
    fails with SessionBusy, nothing committed."""
    from engine import Engine
    from tests.conftest import config_for

    emu = await make_emulator(latency=0.5)
    async with Engine(config_for(emu.base_url), store=store) as engine:
        session = await engine.create_session()
        turn = asyncio.ensure_future(session.send("a mug"))
        for _ in range(200):
            holder = await store.lease_holder(session.id)
            if holder is not None:
                break
            await asyncio.sleep(0.01)
        assert await store.acquire_lease(session.id, "thief", 30, take_from=engine.lease_owner)
        with pytest.raises(SessionBusy, match="lease"):
            await turn
        assert (await store.load(session.id)).turns == {}
