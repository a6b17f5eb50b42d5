"""SqliteStore (sessions/_sqlite.py): round trips, blob dedup, schema, errors, other processes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import platformdirs
import pytest

from sessions import (
    Blob,
    Content,
    FileData,
    Part,
    SessionBusy,
    SessionNotFound,
    SessionRecord,
    SessionSettings,
    SqliteStore,
    StoreError,
    TurnNotFound,
    TurnRecord,
    Usage,
    default_store_path,
    encode_contents,
    fork,
    new_id,
)
from sessions._sqlite import SCHEMA_VERSION

CHILD = Path(__file__).parent.parent / "_proc" / "store_child.py"
REF = random.Random("ref").randbytes(200 * 1024)


def rich_turn(parent: TurnRecord | None, n: int, *, ref: bytes = REF) -> TurnRecord:
    """A turn with every kind of part the store must keep verbatim."""
    user = Content(
        role="user",
        parts=[
            Part(text=f"edit {n}"),
            Part(inline_data=Blob(mime_type="image/png", data=ref, display_name="ref.png")),
            Part(file_data=FileData(file_uri="gs://b/x.png", mime_type="image/png")),
        ],
    )
    model = Content(
        role="model",
        parts=[
            Part(text="thinking", thought=True, thought_signature=b"\x00\xffsig" * 10),
            Part(
                inline_data=Blob(mime_type="image/png", data=random.Random(n).randbytes(3000)),
                thought_signature=b"img-sig",
            ),
            Part(text="done", extra={"futureField": msgspec.Raw(b'{"a":[1,2]}')}),
            Part(function_call={"name": "f", "args": {"x": 1}}),
        ],
    )
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=n,
        user=user,
        model=model,
        model_id="m",
        usage=Usage(prompt_tokens=10 * n, output_tokens=1290),
        cost_usd=0.039,
        finish_reason="STOP",
        timings={"ttfb": 0.5},
        carried=[1],
        metadata={"grounding": {"q": ["x"]}},
        image_config={"aspectRatio": "16:9"},
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SqliteStore in a temporary directory."""
    async with SqliteStore(tmp_path / "s.db") as s:
        yield s


async def fill(store: SqliteStore, n: int, **kw: bytes) -> tuple[str, list[TurnRecord]]:
    """A session with `n` rich turns."""
    sid = new_id()
    settings = SessionSettings(
        image_config={"imageSize": "1K"},
        system_instruction=Content(parts=[Part(text="be precise")]),
    )
    await store.create(SessionRecord(id=sid, model="m", settings=settings))
    turns: list[TurnRecord] = []
    version = 1
    for i in range(1, n + 1):
        t = rich_turn(turns[-1] if turns else None, i, **kw)
        version = (await store.commit_turn(sid, t, expected_version=version)).version
        turns.append(t)
    return sid, turns


def query(path: str | Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of one query on a separate connection, closed at once."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_load_equals_committed(store: SqliteStore) -> None:
    """Loaded turns are equal to the committed ones: signatures, extras, metadata."""
    sid, turns = await fill(store, 3)
    state = await store.load(sid)
    assert list(state.turns.values()) == turns
    assert state.record.settings.system_instruction == Content(parts=[Part(text="be precise")])
    assert state.record.version == 4


async def test_load_in_fresh_store_is_byte_identical(store: SqliteStore) -> None:
    """A second store on the file encodes the loaded contents to the very same bytes."""
    sid, turns = await fill(store, 3)
    async with SqliteStore(store.path) as other:
        state = await other.load(sid)
    assert encode_contents(state.contents()) == encode_contents(
        [c for t in turns for c in (t.user, t.model)]
    )


async def test_reference_image_in_20_turns_stored_once(store: SqliteStore) -> None:
    """One reference image attached to 20 turns is one blob row and ~one image on disk."""
    await fill(store, 1)
    query(store.path, "PRAGMA wal_checkpoint(TRUNCATE)")
    size_1 = file_size(store.path)
    await fill(store, 20)
    query(store.path, "PRAGMA wal_checkpoint(TRUNCATE)")
    rows = query(store.path, f"SELECT count(*) FROM turn_blobs WHERE sha256 = '{_sha(REF)}'")
    assert rows == [(21,)]
    assert query(store.path, f"SELECT count(*) FROM blobs WHERE sha256 = '{_sha(REF)}'") == [(1,)]
    # 20 more turns each carrying the 200 KB reference: far less than 20 copies of it.
    assert file_size(store.path) - size_1 < 2 * len(REF)


async def test_loaded_images_are_one_object(store: SqliteStore) -> None:
    """Every loaded Content carrying the reference shares one bytes object, across loads."""
    sid, _ = await fill(store, 20)
    async with SqliteStore(store.path) as other:
        a = await other.load(sid)
        b = await other.load(sid)
        refs = [c.images()[0].data for c in a.contents() + b.contents() if c.role == "user"]
        assert len(refs) == 40
        assert all(r is refs[0] for r in refs)
        assert other.blobs.get(_sha(REF)) is refs[0]


async def test_committed_bytes_become_canonical(store: SqliteStore) -> None:
    """The bytes object a turn was committed with is the one later loads return."""
    sid, turns = await fill(store, 2)
    state = await store.load(sid)
    assert state.turns[turns[1].id].user.images()[0].data is turns[1].user.images()[0].data


async def test_fork_adds_no_blob_rows(store: SqliteStore) -> None:
    """A fork reuses blob rows and turn rows' payloads; only link rows are added."""
    sid, _ = await fill(store, 4)
    before = query(store.path, "SELECT count(*), sum(size) FROM blobs")
    rec = await fork(store, sid, at_index=3)
    assert query(store.path, "SELECT count(*), sum(size) FROM blobs") == before
    assert len((await store.load(rec.id)).path()) == 3


async def test_delete_keeps_shared_blobs_and_drops_orphans(store: SqliteStore) -> None:
    """Deleting a session removes blobs only it used; blobs a fork shares stay."""
    sid, turns = await fill(store, 3)
    rec = await fork(store, sid, at_index=1)
    await store.delete(sid)
    shas = {r[0] for r in query(store.path, "SELECT sha256 FROM blobs")}
    assert shas == {_sha(b.data) for c in (turns[0].user, turns[0].model) for b in c.images()}
    await store.delete(rec.id)
    assert query(store.path, "SELECT count(*) FROM blobs") == [(0,)]
    assert query(store.path, "SELECT count(*) FROM turn_blobs") == [(0,)]
    assert query(store.path, "SELECT count(*) FROM turns") == [(0,)]


async def test_schema_and_pragmas(store: SqliteStore) -> None:
    """A new file gets WAL mode, the schema version and the four tables."""
    await store.list()
    assert query(store.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(store.path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in query(store.path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "turns", "blobs", "turn_blobs"} <= tables


async def test_newer_schema_refused(tmp_path: Path) -> None:
    """A file from a newer nanoedit raises StoreError instead of being misread."""
    path = tmp_path / "new.db"
    query(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    async with SqliteStore(path) as s:
        with pytest.raises(StoreError, match="schema version"):
            await s.list()


async def test_garbage_file_is_store_error(tmp_path: Path) -> None:
    """A file that is not a database raises StoreError, chained to the sqlite3 error."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database at all" * 100)
    async with SqliteStore(path) as s:
        with pytest.raises(StoreError) as info:
            await s.list()
    assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_closed_store_refuses(tmp_path: Path) -> None:
    """After aclose every call raises StoreError; aclose twice is fine."""
    s = SqliteStore(tmp_path / "s.db")
    await s.list()
    await s.aclose()
    await s.aclose()
    with pytest.raises(StoreError, match="closed"):
        await s.list()


async def test_store_creates_parent_directory(tmp_path: Path) -> None:
    """The default location's directory need not exist yet."""
    async with SqliteStore(tmp_path / "a" / "b" / "s.db") as s:
        assert await s.list() == []
    assert (tmp_path / "a" / "b" / "s.db").exists()


async def test_unknown_session(store: SqliteStore) -> None:
    """load, commit, move and delete of an unknown id raise SessionNotFound."""
    with pytest.raises(SessionNotFound, match="no session 'nope'"):
        await store.load("nope")
    with pytest.raises(SessionNotFound):
        await store.commit_turn("nope", rich_turn(None, 1), expected_version=1)
    with pytest.raises(SessionNotFound):
        await store.move_head("nope", None, None, expected_version=1)
    with pytest.raises(SessionNotFound):
        await store.delete("nope")


async def test_create_twice_is_busy(store: SqliteStore) -> None:
    """Creating an id that exists raises SessionBusy and leaves the first session alone."""
    sid, _ = await fill(store, 1)
    with pytest.raises(SessionBusy):
        await store.create(SessionRecord(id=sid, model="other"))
    assert (await store.load(sid)).record.model == "m"


async def test_dangling_parent_or_head_refused(store: SqliteStore) -> None:
    """A turn whose parent is not in the session, or a head on no turn, is refused whole."""
    sid, _ = await fill(store, 1)
    orphan = msgspec.structs.replace(rich_turn(None, 2), parent="missing")
    with pytest.raises(TurnNotFound):
        await store.commit_turn(sid, orphan, expected_version=2)
    with pytest.raises(TurnNotFound):
        await store.move_head(sid, "missing", "missing", expected_version=2)
    state = await store.load(sid)
    assert len(state.turns) == 1 and state.record.version == 2


async def test_load_blob_reads_a_miss_from_disk(store: SqliteStore) -> None:
    """A store that never saw a blob reads it from the file and then holds it."""
    await fill(store, 1)
    async with SqliteStore(store.path) as other:
        assert other.blobs.get(_sha(REF)) is None
        data = await other.load_blob(_sha(REF))
        assert data == REF and other.blobs.get(_sha(REF)) is data
        with pytest.raises(StoreError):
            await other.load_blob("0" * 64)


async def test_list_summaries(store: SqliteStore) -> None:
    """list gives head index, turn count and most recent first."""
    a, _ = await fill(store, 3)
    b, _ = await fill(store, 1)
    state = await store.load(a)
    await store.move_head(
        a,
        state.turns[state.record.head or ""].parent,
        state.record.tip,
        expected_version=state.record.version,
    )
    rows = await store.list()
    assert [(r.id, r.turns, r.total_turns) for r in rows] == [(a, 2, 3), (b, 1, 1)]


async def test_two_stores_one_file(store: SqliteStore) -> None:
    """Two stores on one file see each other's commits and clash on versions."""
    sid, turns = await fill(store, 1)
    async with SqliteStore(store.path) as other:
        stale = await other.load(sid)
        await store.commit_turn(sid, rich_turn(turns[0], 2), expected_version=2)
        with pytest.raises(SessionBusy):
            await other.commit_turn(sid, rich_turn(turns[0], 2), expected_version=2)
        assert len((await other.load(sid)).turns) == 2
        assert stale.record.version == 2


async def test_sqlite_runs_off_the_event_loop(tmp_path: Path) -> None:
    """The database is opened and used in a worker thread, not the event loop's."""
    seen: list[int] = []

    class Spy(SqliteStore):
        def _connect(self) -> sqlite3.Connection:
            seen.append(threading.get_ident())
            return super()._connect()

    async with Spy(tmp_path / "s.db") as s:
        await s.create(SessionRecord(id="x", model="m"))
        await s.load("x")
    assert seen and threading.get_ident() not in seen


def test_default_store_path(tmp_path: Path) -> None:
    """The default file is home/sessions.db, else in the platform data dir."""
    assert default_store_path(tmp_path) == tmp_path / "sessions.db"
    assert default_store_path(None) == Path(platformdirs.user_data_dir("nanoedit")) / "sessions.db"


def test_synchronous_checked(tmp_path: Path) -> None:
    """Only NORMAL and FULL are accepted."""
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "s.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_resume_in_a_new_process(tmp_path: Path) -> None:
    """Turns a child process commits load in this process with identical contents."""
    path, sid = tmp_path / "s.db", new_id()
    done = await anyio.run_process([sys.executable, str(CHILD), "write", str(path), sid, "5"])
    out = done.stdout.decode()
    lines = [json.loads(line) for line in out.splitlines()]
    async with SqliteStore(path) as s:
        state = await s.load(sid)
    assert [t.id for t in state.path()] == [x["id"] for x in lines[:-1]]
    for t, line in zip(state.path(), lines, strict=False):
        assert hashlib.sha256(encode_contents([t.user, t.model])).hexdigest() == line["digest"]
    assert hashlib.sha256(encode_contents(state.contents())).hexdigest() == lines[-1]["contents"]
    assert state.record.title == "from a child"


def file_size(path: str | Path) -> int:
    """Bytes of the database file."""
    return os.path.getsize(path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
