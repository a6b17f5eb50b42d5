"""`SqliteStore`: sessions, turns and blobs in one SQLite file that survives `kill -9`.

Durability. The database runs in WAL mode. With `synchronous="NORMAL"` (the default) a commit is
in the WAL (in the OS page cache) before `commit_turn` returns, so it survives the process being
killed at any moment; only a power loss or kernel crash may lose the last commits (never corrupt
the file). `synchronous="FULL"` fsyncs the WAL on every commit and survives power loss too, at a
few milliseconds per turn.

Concurrency. Every SQLite call runs in a worker thread, one at a time per store (a
`CapacityLimiter(1)`), never on the event loop. Several processes may share the file: writes take
the write lock up front (`BEGIN IMMEDIATE`) and wait up to `busy_timeout` for it, and every change
to a session is guarded by its `version` (optimistic lock -> `SessionBusy`).

Leases. `acquire_lease` writes `lease_owner` and `lease_until` on the session's row in a write
transaction, so taking a lease is atomic across processes. `lease_until` is wall-clock time
(`time.time()`), the one clock every process on the machine shares; a clock step can shorten or
stretch a lease, which the version check still covers. An expired lease is simply overwritten.

Schema (``PRAGMA user_version`` = 4; an older file is migrated on first open)::

    sessions(id PK, model, settings JSON, head, tip, version, created_at, updated_at,
             parent_id, forked_at, title,
             lease_owner, lease_until,   -- since version 2; NULL: nobody holds the lease
             owner)                      -- since version 4: the tenant (settings.owner)
    turns(seq PK, session_id -> sessions ON DELETE CASCADE, id, parent, idx,
          user, model,            -- Gemini REST Content JSON with every inlineData.data emptied
          meta,                   -- the rest of the TurnRecord (msgspec JSON)
          blobs,                  -- JSON list: sha256 of each inlineData, user parts then model
          UNIQUE(session_id, id))
    blobs(sha256 PK, size, data)  -- each distinct payload once, shared by every session
    turn_blobs(session_id, turn_id, sha256 -> blobs)  -- which turns use a blob (for deletion)
    file_refs(scope, sha256, ref, expires_at)  -- since version 3: Files API uploads (FileRef)
    batches(name PK, created_at, job)          -- since version 3: Batch API jobs (BatchRecord)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.to_thread
import msgspec
import platformdirs

from sessions._errors import SessionBusy, SessionNotFound, StoreError, TurnNotFound
from sessions._files import BatchRecord, FileRef
from sessions._records import (
    SessionRecord,
    SessionSettings,
    SessionState,
    SessionSummary,
    TenantUsage,
    TurnRecord,
)
from sessions._rows import TurnRow, stored_turn, turn_row
from sessions._store import LeaseHolder, MemoryBlobStore, SessionStore, lease_lost
from sessions._wire import Content, WireError

if TYPE_CHECKING:
    # Imported where a database is opened: SQLite's library is 1.5 MiB of a process's RSS
    # that an engine on another store never needs (peak RSS, benchmarks/compare_clients.py).
    import sqlite3

__all__ = ["SCHEMA_VERSION", "SqliteBlobStore", "SqliteStore", "default_store_path"]

T = TypeVar("T")

# Version 1: the tables as first released. A new file is created at version 1 and then migrated
# like an old one, so every migration runs on every new file too.
_SCHEMA = (
    """CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        model       TEXT NOT NULL,
        settings    BLOB NOT NULL,
        head        TEXT,
        tip         TEXT,
        version     INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        parent_id   TEXT,
        forked_at   INTEGER,
        title       TEXT NOT NULL DEFAULT ''
    )""",
    # `seq` keeps insertion order, so children and branches list in the order they were made.
    """CREATE TABLE turns (
        seq         INTEGER PRIMARY KEY,
        session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        id          TEXT NOT NULL,
        parent      TEXT,
        idx         INTEGER NOT NULL,
        user        BLOB NOT NULL,
        model       BLOB NOT NULL,
        meta        BLOB NOT NULL,
        blobs       TEXT NOT NULL,
        UNIQUE (session_id, id)
    )""",
    """CREATE TABLE blobs (
        sha256  TEXT PRIMARY KEY,
        size    INTEGER NOT NULL,
        data    BLOB NOT NULL
    )""",
    """CREATE TABLE turn_blobs (
        session_id  TEXT NOT NULL,
        turn_id     TEXT NOT NULL,
        sha256      TEXT NOT NULL REFERENCES blobs(sha256),
        PRIMARY KEY (session_id, turn_id, sha256),
        FOREIGN KEY (session_id, turn_id) REFERENCES turns(session_id, id) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX turn_blobs_sha256 ON turn_blobs(sha256)",
)
# _MIGRATIONS[i] takes a file from version i + 1 to i + 2.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "ALTER TABLE sessions ADD COLUMN lease_owner TEXT",
        "ALTER TABLE sessions ADD COLUMN lease_until REAL",
    ),
    # Version 3: Files API uploads and Batch API jobs, so another process reuses and follows them.
    (
        """CREATE TABLE file_refs (
            scope       TEXT NOT NULL,
            sha256      TEXT NOT NULL,
            ref         BLOB NOT NULL,
            expires_at  REAL NOT NULL,
            PRIMARY KEY (scope, sha256)
        ) WITHOUT ROWID""",
        """CREATE TABLE batches (
            name        TEXT PRIMARY KEY,
            created_at  REAL NOT NULL,
            job         BLOB NOT NULL
        )""",
    ),
    # Version 4: the tenant a session belongs to (`nanoedit serve`), for listing by owner.
    (
        "ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX sessions_owner ON sessions(owner, updated_at)",
    ),
    # Version 5: named counters that must survive everything else (the cluster's event epoch).
    ("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",),
)
SCHEMA_VERSION = 1 + len(_MIGRATIONS)

_SESSION_COLS = (
    "id, model, settings, head, tip, version, created_at, updated_at, parent_id, forked_at, title"
)
# A WAL that once grew large (a big fork or import) is cut back to this size after checkpoints.
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

_encoder = msgspec.json.Encoder()
_settings_dec = msgspec.json.Decoder(SessionSettings)
_turn_dec = msgspec.json.Decoder(TurnRecord)
_shas_dec = msgspec.json.Decoder(list[str])
_file_ref_dec = msgspec.json.Decoder(FileRef)
_batch_dec = msgspec.json.Decoder(BatchRecord)
_EMPTY = Content()


def default_store_path(home: Path | None = None) -> Path:
    """`home / "sessions.db"`; without a home, the platform's user data dir for nanoedit."""
    base = home if home is not None else Path(platformdirs.user_data_dir("nanoedit"))
    return base / "sessions.db"


DEFAULT_BLOB_CACHE_BYTES = 256 * 1024 * 1024


class SqliteBlobStore(MemoryBlobStore):
    """The store's blob cache: each digest held once in memory, filled by commits and loads,
    the least recently used dropped past `max_bytes` (the file keeps them all).

    `get` answers from memory only (it is sync); `SqliteStore.load_blob` reads a miss from disk.
    A long-lived engine thus holds its recent images, not every image it ever saw.
    """

    def __init__(self, max_bytes: int = DEFAULT_BLOB_CACHE_BYTES) -> None:
        super().__init__()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self.max_bytes = max_bytes
        self._size = 0

    @property
    def total_bytes(self) -> int:
        """Bytes held in memory."""
        return self._size

    def intern(self, data: bytes, digest: str | None = None) -> tuple[str, bytes]:
        """Register `data` (most recently used now); the digest and the canonical bytes."""
        known = self.digest(data)
        if known is not None:
            self._blobs.move_to_end(known)
            return known, data
        digest = digest or hashlib.sha256(data).hexdigest()
        held = self._blobs.get(digest)
        if held is not None:
            self._blobs.move_to_end(digest)
            return digest, held
        canonical = bytes(data)
        self._blobs[digest] = canonical
        self._digests[id(canonical)] = digest
        self._size += len(canonical)
        while self._size > self.max_bytes and len(self._blobs) > 1:
            _, dropped = self._blobs.popitem(last=False)
            self._digests.pop(id(dropped), None)
            self._size -= len(dropped)
        return digest, canonical

    def _adopt(self, sha256: str, data: bytes) -> bytes:
        # Bytes read from disk become canonical unless the same digest is already held.
        return self.intern(data, sha256)[1]

    def _forget(self, digests: Sequence[str]) -> None:
        for d in digests:
            data = self._blobs.pop(d, None)
            if data is not None:
                self._digests.pop(id(data), None)
                self._size -= len(data)


def _record(row: Any) -> SessionRecord:
    sid, model, settings, head, tip, version, created, updated, parent_id, forked_at, title = row
    return SessionRecord(
        id=sid,
        model=model,
        settings=_settings_dec.decode(settings),
        head=head,
        tip=tip,
        version=version,
        created_at=created,
        updated_at=updated,
        parent_id=parent_id,
        forked_at=forked_at,
        title=title,
    )


class SqliteStore(SessionStore):
    """Sessions in one SQLite file (WAL): one transaction per turn, shared by processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 10.0,
        blob_cache_bytes: int = DEFAULT_BLOB_CACHE_BYTES,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = os.fspath(path)
        self.blobs: SqliteBlobStore = SqliteBlobStore(blob_cache_bytes)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._limiter = anyio.CapacityLimiter(1)
        self._db: sqlite3.Connection | None = None
        self._closed = False

    # --- plumbing ------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # The database is opened lazily in the worker thread, so constructing a store never
        # blocks the event loop. A cancelled caller waits for the thread: a commit that has
        # started finishes (or rolls back) before the cancellation is delivered.
        def call() -> T:
            import sqlite3

            try:
                return fn(self._connect())
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
            except (msgspec.DecodeError, RecursionError, WireError) as exc:
                raise StoreError(f"{self.path}: corrupt row: {exc}") from exc

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        if self._db is not None:
            return self._db
        uri = self.path.startswith("file:")
        if self.path != ":memory:" and not uri:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
        import sqlite3

        db = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=uri,
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        if self._user_version(db) == SCHEMA_VERSION:
            return
        with _transaction(db, write=True):
            # Re-read under the write lock: another process may have just created the schema.
            version = self._user_version(db)
            if not 0 <= version <= SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version}; this nanoedit reads {SCHEMA_VERSION}"
                )
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                version = 1
            for step in _MIGRATIONS[version - 1 :]:
                for statement in step:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _user_version(db: sqlite3.Connection) -> int:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version

    # --- SessionStore --------------------------------------------------------------------

    async def create(self, record: SessionRecord, turns: Sequence[TurnRecord] = ()) -> None:
        """Store a new session (with turns, for fork and import); its version becomes 1."""

        def work(db: sqlite3.Connection) -> None:
            rows = [self._turn_row(t) for t in turns]  # sha256 of payloads, off the event loop
            with _transaction(db, write=True):
                if db.execute("SELECT 1 FROM sessions WHERE id = ?", (record.id,)).fetchone():
                    raise SessionBusy(f"session {record.id} already exists")
                db.execute(
                    f"INSERT INTO sessions ({_SESSION_COLS}, owner) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.id,
                        record.model,
                        _encoder.encode(record.settings),
                        record.head,
                        record.tip,
                        1,
                        record.created_at,
                        record.updated_at,
                        record.parent_id,
                        record.forked_at,
                        record.title,
                        record.settings.owner,
                    ),
                )
                for row in rows:
                    _insert_turn(db, record.id, row)
                _require_turn(db, record.id, record.head, record.tip)

        await self._run(work)

    async def load(self, session_id: str) -> SessionState:
        """The session's record and whole turn tree; equal payloads share one bytes object."""

        def work(db: sqlite3.Connection) -> SessionState:
            with _transaction(db, write=False):  # one snapshot for the record and its turns
                row = db.execute(
                    f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)
                ).fetchone()
                if row is None:
                    raise SessionNotFound(f"no session {session_id!r}")
                rows = db.execute(
                    "SELECT user, model, meta, blobs FROM turns WHERE session_id = ? ORDER BY seq",
                    (session_id,),
                ).fetchall()
                refs = [_shas_dec.decode(r[3]) for r in rows]
                # This load's own map: the cache may drop what it adopts before the turns
                # are filled.
                held: dict[str, bytes] = {}
                for sha in {s for shas in refs for s in shas}:
                    cached = self.blobs.get(sha)
                    if cached is not None:
                        held[sha] = self.blobs.intern(cached, sha)[1]
                        continue
                    found = db.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha,)).fetchone()
                    if found is None:
                        raise StoreError(f"{self.path}: blob {sha} of session {session_id} missing")
                    held[sha] = self.blobs._adopt(sha, found[0])
            turns: dict[str, TurnRecord] = {}
            for (user, model, meta, _), shas in zip(rows, refs, strict=True):
                try:
                    t = stored_turn(user, model, meta, shas, held)
                except StopIteration:
                    raise StoreError(f"{self.path}: turn of {session_id} lacks blobs") from None
                turns[t.id] = t
            return SessionState(_record(row), turns)

        return await self._run(work)

    async def commit_turn(
        self,
        session_id: str,
        turn: TurnRecord,
        *,
        expected_version: int,
        lease_owner: str | None = None,
    ) -> SessionRecord:
        """Add `turn` and move head and tip to it in one transaction; SessionBusy on a clash
        (or, with `lease_owner`, when that owner does not hold the lease)."""

        def work(db: sqlite3.Connection) -> SessionRecord:
            row = self._turn_row(turn)  # sha256 of the payloads, in this worker thread
            with _transaction(db, write=True):
                if lease_owner is not None:
                    _require_lease(db, session_id, lease_owner)
                _bump(db, session_id, turn.id, turn.id, expected_version)
                _require_turn(db, session_id, turn.parent)
                _insert_turn(db, session_id, row)
                return _load_record(db, session_id)

        return await self._run(work)

    async def move_head(
        self, session_id: str, head: str | None, tip: str | None, *, expected_version: int
    ) -> SessionRecord:
        """Move the head and tip (undo, redo, checkout); SessionBusy on a version clash."""

        def work(db: sqlite3.Connection) -> SessionRecord:
            with _transaction(db, write=True):
                _bump(db, session_id, head, tip, expected_version)
                _require_turn(db, session_id, head, tip)
                return _load_record(db, session_id)

        return await self._run(work)

    async def rename(self, session_id: str, title: str, *, expected_version: int) -> SessionRecord:
        """Set the session's title; SessionBusy on a version clash."""

        def work(db: sqlite3.Connection) -> SessionRecord:
            with _transaction(db, write=True):
                _update(db, session_id, expected_version, title=title)
                return _load_record(db, session_id)

        return await self._run(work)

    async def load_record(self, session_id: str) -> SessionRecord:
        """The session's record alone: one row, no turns."""

        def work(db: sqlite3.Connection) -> SessionRecord:
            row = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            return _record(row)

        return await self._run(work)

    async def acquire_lease(
        self, session_id: str, owner: str, ttl: float, *, take_from: str | None = None
    ) -> bool:
        """Hold the lease for `ttl` seconds (one write transaction); False if another holds it."""

        def work(db: sqlite3.Connection) -> bool:
            with _transaction(db, write=True):
                now = time.time()  # read under the write lock: no writer can slip in after it
                taken = db.execute(
                    "UPDATE sessions SET lease_owner = ?, lease_until = ? WHERE id = ? "
                    "AND (lease_owner IS NULL OR lease_owner IN (?, ?) OR lease_until <= ?)",
                    (owner, now + ttl, session_id, owner, take_from or owner, now),
                ).rowcount
                if taken:
                    return True
                if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
                    return False
                raise SessionNotFound(f"no session {session_id!r}")

        return await self._run(work)

    async def lease_holder(self, session_id: str) -> LeaseHolder | None:
        """The running lease, if any."""

        def work(db: sqlite3.Connection) -> LeaseHolder | None:
            row = db.execute(
                "SELECT lease_owner, lease_until FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            owner, until = row
            if owner is None or until is None or until <= time.time():
                return None
            return LeaseHolder(owner, until)

        return await self._run(work)

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Give up the lease if `owner` holds it."""

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db, write=True):
                db.execute(
                    "UPDATE sessions SET lease_owner = NULL, lease_until = NULL "
                    "WHERE id = ? AND lease_owner = ?",
                    (session_id, owner),
                )

        await self._run(work)

    async def list(self, *, owner: str | None = None) -> list[SessionSummary]:
        """Every stored session (of `owner`, if given), most recently updated first."""

        def work(db: sqlite3.Connection) -> list[SessionSummary]:
            rows = db.execute(
                f"""SELECT s.id, s.model, s.title, s.created_at, s.updated_at,
                       COALESCE((SELECT idx FROM turns t
                                 WHERE t.session_id = s.id AND t.id = s.head), 0),
                       (SELECT count(*) FROM turns t WHERE t.session_id = s.id), s.owner
                   FROM sessions s {"WHERE s.owner = ?" if owner is not None else ""}
                   ORDER BY s.updated_at DESC, s.id""",
                (owner,) if owner is not None else (),
            ).fetchall()
            return [
                SessionSummary(
                    id=sid,
                    model=model,
                    title=title,
                    created=created,
                    updated=updated,
                    turns=turns,
                    total_turns=total,
                    owner=who,
                )
                for sid, model, title, created, updated, turns, total, who in rows
            ]

        return await self._run(work)

    async def tenant_usage(self, owner: str) -> TenantUsage:
        """The owner's sessions, turns and spend, summed in SQL over the owner index."""

        def work(db: sqlite3.Connection) -> TenantUsage:
            sessions, turns, spent = db.execute(
                """SELECT (SELECT count(*) FROM sessions WHERE owner = ?1),
                          count(t.seq),
                          COALESCE(sum(json_extract(CAST(t.meta AS TEXT), '$.cost_usd')), 0.0)
                   FROM sessions s JOIN turns t ON t.session_id = s.id
                   WHERE s.owner = ?1""",
                (owner,),
            ).fetchone()
            return TenantUsage(sessions=sessions, turns=turns, spent_usd=float(spent))

        return await self._run(work)

    async def holds_image(self, owner: str, sha256: str) -> bool:
        """One look-up through the blob's index: does a turn of the owner's hold it?"""

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                """SELECT 1 FROM turn_blobs b JOIN sessions s ON s.id = b.session_id
                   WHERE b.sha256 = ? AND s.owner = ? LIMIT 1""",
                (sha256, owner),
            ).fetchone()
            return row is not None

        return await self._run(work)

    async def delete(self, session_id: str) -> None:
        """Remove a session and its turns; blobs no other session uses go too."""

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db, write=True):
                shas = [
                    r[0]
                    for r in db.execute(
                        "SELECT DISTINCT sha256 FROM turn_blobs WHERE session_id = ?",
                        (session_id,),
                    )
                ]
                if db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount == 0:
                    raise SessionNotFound(f"no session {session_id!r}")
                gone = [
                    sha
                    for sha in shas
                    if db.execute(
                        "DELETE FROM blobs WHERE sha256 = ?1 AND NOT EXISTS "
                        "(SELECT 1 FROM turn_blobs WHERE sha256 = ?1)",
                        (sha,),
                    ).rowcount
                ]
            self.blobs._forget(gone)

        await self._run(work)

    async def next_event_epoch(self) -> int:
        """One more epoch of event numbering, counted in the file."""

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db, write=True):
                row = db.execute(
                    "INSERT INTO counters (name, value) VALUES ('event_epoch', 1) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
                ).fetchone()
            return int(row[0])

        return await self._run(work)

    async def check_blobs(self) -> Sequence[str]:
        """Blobs on disk whose bytes do not hash to their digest or size, and turns that refer
        to a blob that is not there."""

        def work(db: sqlite3.Connection) -> list[str]:
            problems = []
            with _transaction(db, write=False):
                for sha, size, data in db.execute("SELECT sha256, size, data FROM blobs"):
                    actual = hashlib.sha256(data).hexdigest()
                    if actual != sha or len(data) != size:
                        problems.append(f"blob {sha[:12]}: bytes hash to {actual[:12]}")
                for sid, tid, sha in db.execute(
                    "SELECT session_id, turn_id, sha256 FROM turn_blobs tb WHERE NOT EXISTS "
                    "(SELECT 1 FROM blobs b WHERE b.sha256 = tb.sha256)"
                ):
                    problems.append(f"session {sid} turn {tid}: blob {sha[:12]} is missing")
            return problems

        return await self._run(work)

    async def file_refs(self, scope: str, digests: Iterable[str]) -> dict[str, FileRef]:
        """The recorded uploads of these images at `scope`."""
        wanted = list(digests)

        def work(db: sqlite3.Connection) -> dict[str, FileRef]:
            found: dict[str, FileRef] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for (raw,) in db.execute(
                    f"SELECT ref FROM file_refs WHERE scope = ? AND sha256 IN ({marks})",
                    (scope, *chunk),
                ):
                    ref = _file_ref_dec.decode(raw)
                    found[ref.sha256] = ref
            return found

        return await self._run(work) if wanted else {}

    async def save_file_ref(self, ref: FileRef) -> None:
        """Record an upload."""

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db, write=True):
                db.execute(
                    "INSERT OR REPLACE INTO file_refs (scope, sha256, ref, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (ref.scope, ref.sha256, _encoder.encode(ref), ref.expires_at),
                )
                # Expired records are of no use to anyone: drop them as new ones come.
                db.execute("DELETE FROM file_refs WHERE expires_at < ?", (time.time(),))

        await self._run(work)

    async def drop_file_refs(self, scope: str, digests: Iterable[str]) -> None:
        """Forget uploads."""
        gone = [(scope, d) for d in digests]

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db, write=True):
                db.executemany("DELETE FROM file_refs WHERE scope = ? AND sha256 = ?", gone)

        if gone:
            await self._run(work)

    async def save_batch(self, job: BatchRecord) -> None:
        """Record a batch job (or its new state)."""

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db, write=True):
                db.execute(
                    "INSERT OR REPLACE INTO batches (name, created_at, job) VALUES (?, ?, ?)",
                    (job.name, job.created_at, _encoder.encode(job)),
                )

        await self._run(work)

    async def load_batch(self, name: str) -> BatchRecord:
        """A recorded batch job; StoreError if there is none."""

        def work(db: sqlite3.Connection) -> BatchRecord:
            row = db.execute("SELECT job FROM batches WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise StoreError(f"no batch job {name!r} in {self.path}")
            return _batch_dec.decode(row[0])

        return await self._run(work)

    async def list_batches(self) -> Sequence[BatchRecord]:
        """Every batch job, newest first."""

        def work(db: sqlite3.Connection) -> list[BatchRecord]:
            rows = db.execute("SELECT job FROM batches ORDER BY created_at DESC").fetchall()
            return [_batch_dec.decode(row[0]) for row in rows]

        return await self._run(work)

    async def load_blob(self, sha256: str) -> bytes:
        """The bytes for a digest: from memory, else from the file (then held in memory)."""
        held = self.blobs.get(sha256)
        if held is not None:
            return held

        def work(db: sqlite3.Connection) -> bytes:
            row = db.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
            if row is None:
                raise StoreError(f"{self.path}: no blob {sha256}")
            return self.blobs._adopt(sha256, row[0])

        return await self._run(work)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def aclose(self) -> None:
        """Close the database after the call in progress; later calls raise StoreError."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._db is not None:
                db, self._db = self._db, None
                db.close()  # the last connection checkpoints the WAL and removes it

        await anyio.to_thread.run_sync(close, limiter=self._limiter)

    # --- rows ----------------------------------------------------------------------------

    def _turn_row(self, turn: TurnRecord) -> TurnRow:
        return turn_row(turn, self.blobs)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, *, write: bool) -> Iterator[None]:
    # IMMEDIATE takes the write lock at BEGIN, where busy_timeout waits for it; a deferred
    # transaction upgrading later could fail at once with SQLITE_BUSY under WAL.
    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (disk full, I/O error); ROLLBACK would then fail.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _insert_turn(db: sqlite3.Connection, session_id: str, row: TurnRow) -> None:
    turn = row.turn
    for sha, data in row.payloads:
        db.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
            (sha, len(data), data),
        )
    db.execute(
        "INSERT INTO turns (session_id, id, parent, idx, user, model, meta, blobs) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            session_id,
            turn.id,
            turn.parent,
            turn.index,
            row.user,
            row.model,
            row.meta,
            _encoder.encode([sha for sha, _ in row.payloads]).decode(),
        ),
    )
    db.executemany(
        "INSERT OR IGNORE INTO turn_blobs (session_id, turn_id, sha256) VALUES (?, ?, ?)",
        [(session_id, turn.id, sha) for sha, _ in row.payloads],
    )


def _bump(
    db: sqlite3.Connection,
    session_id: str,
    head: str | None,
    tip: str | None,
    expected_version: int,
) -> None:
    """Move the pointers if the version is still `expected_version`, else raise."""
    _update(db, session_id, expected_version, head=head, tip=tip)


def _update(
    db: sqlite3.Connection, session_id: str, expected_version: int, **columns: object
) -> None:
    """Set `columns` (names from this module, never from input) and bump the version if it is
    still `expected_version`; SessionNotFound or SessionBusy otherwise."""
    sets = ", ".join(f"{name} = ?" for name in columns)
    cur = db.execute(
        f"UPDATE sessions SET {sets}, version = version + 1, updated_at = ? "
        "WHERE id = ? AND version = ?",
        (*columns.values(), time.time(), session_id, expected_version),
    )
    if cur.rowcount == 1:
        return
    found = db.execute("SELECT version FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if found is None:
        raise SessionNotFound(f"no session {session_id!r}")
    raise SessionBusy(
        f"session {session_id} changed (version {found[0]}, expected {expected_version})"
    )


def _require_lease(db: sqlite3.Connection, session_id: str, owner: str) -> None:
    """SessionBusy unless `owner` holds the session's unexpired lease (under the write lock)."""
    row = db.execute(
        "SELECT lease_owner, lease_until FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    if row is not None and (row[0] != owner or (row[1] or 0) <= time.time()):
        raise lease_lost(session_id)


def _require_turn(db: sqlite3.Connection, session_id: str, *turn_ids: str | None) -> None:
    # A dangling head or parent would make the session unloadable; refuse it up front.
    for turn_id in turn_ids:
        if (
            turn_id is not None
            and not db.execute(
                "SELECT 1 FROM turns WHERE session_id = ? AND id = ?", (session_id, turn_id)
            ).fetchone()
        ):
            raise TurnNotFound(f"no turn {turn_id!r} in session {session_id}")


def _load_record(db: sqlite3.Connection, session_id: str) -> SessionRecord:
    row = db.execute(f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return _record(row)
