"""Sessions in PostgreSQL (asyncpg): the system of record when several nodes share sessions.

The same rows as the SQLite store: sessions (with the lease and the owner), turns (Contents with
their inline payloads emptied, the rest of the TurnRecord as JSON), content-addressed blobs
stored once as bytea and shared by every session, turn_blobs (which turns use a blob, so a
delete drops the blobs nobody uses). One transaction per committed turn with the version check
(`UPDATE ... WHERE version = $expected`), so two nodes can never both append to one head.

Migrations are numbered steps in `_MIGRATIONS`, applied in order at start under an advisory
lock (nodes starting together take turns); `nanoedit_schema` records the version reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

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
from sessions._rows import stored_turn, turn_row
from sessions._sqlite import DEFAULT_BLOB_CACHE_BYTES, SqliteBlobStore
from sessions._store import LeaseHolder, SessionStore, lease_lost
from sessions._wire import WireError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PG_SCHEMA_VERSION", "PostgresStore"]

_encoder = msgspec.json.Encoder()
_settings_dec = msgspec.json.Decoder(SessionSettings)
_file_ref_dec = msgspec.json.Decoder(FileRef)
_batch_dec = msgspec.json.Decoder(BatchRecord)
_LOCK_KEY = 0x6E616E6F65646974  # "nanoedit": the advisory lock migrations run under

# _MIGRATIONS[i] takes the schema from version i to i + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id          text PRIMARY KEY,
            model       text NOT NULL,
            settings    bytea NOT NULL,
            head        text,
            tip         text,
            version     integer NOT NULL,
            created_at  double precision NOT NULL,
            updated_at  double precision NOT NULL,
            parent_id   text,
            forked_at   integer,
            title       text NOT NULL DEFAULT '',
            owner       text NOT NULL DEFAULT '',
            lease_owner text,
            lease_until double precision
        )""",
        "CREATE INDEX sessions_owner ON sessions (owner, updated_at DESC)",
        """CREATE TABLE turns (
            seq         bigserial PRIMARY KEY,
            session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            id          text NOT NULL,
            parent      text,
            idx         integer NOT NULL,
            user_json   bytea NOT NULL,
            model_json  bytea NOT NULL,
            meta        bytea NOT NULL,
            blobs       text[] NOT NULL,
            UNIQUE (session_id, id)
        )""",
        """CREATE TABLE blobs (
            sha256  text PRIMARY KEY,
            size    integer NOT NULL,
            data    bytea NOT NULL
        )""",
        """CREATE TABLE turn_blobs (
            session_id  text NOT NULL,
            turn_id     text NOT NULL,
            sha256      text NOT NULL REFERENCES blobs (sha256),
            PRIMARY KEY (session_id, turn_id, sha256),
            FOREIGN KEY (session_id, turn_id) REFERENCES turns (session_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX turn_blobs_sha256 ON turn_blobs (sha256)",
        """CREATE TABLE file_refs (
            scope       text NOT NULL,
            sha256      text NOT NULL,
            ref         bytea NOT NULL,
            expires_at  double precision NOT NULL,
            PRIMARY KEY (scope, sha256)
        )""",
        """CREATE TABLE batches (
            name        text PRIMARY KEY,
            created_at  double precision NOT NULL,
            job         bytea NOT NULL
        )""",
    ),
    # Version 2: named counters that must survive everything else (the cluster's event epoch).
    ("CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL)",),
)
PG_SCHEMA_VERSION = len(_MIGRATIONS)

_SESSION_COLS = (
    "id, model, settings, head, tip, version, created_at, updated_at, parent_id, forked_at, title"
)


def _record(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        model=row["model"],
        settings=_settings_dec.decode(row["settings"]),
        head=row["head"],
        tip=row["tip"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        parent_id=row["parent_id"],
        forked_at=row["forked_at"],
        title=row["title"],
    )


class PostgresStore(SessionStore):
    """Sessions in a PostgreSQL database, shared by every node that opens the same DSN."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        blob_cache_bytes: int = DEFAULT_BLOB_CACHE_BYTES,
    ) -> None:
        self.dsn = dsn
        self.blobs: SqliteBlobStore = SqliteBlobStore(blob_cache_bytes)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.dsn)!r})"

    # --- plumbing ----------------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Pool:
        if self._closed:
            raise StoreError(f"store {_redact(self.dsn)} is closed")
        if self._pool is not None:
            return self._pool
        # One pool, whatever the number of first callers at once (a server starting under load
        # opened a pool per request and ran PostgreSQL out of connections).
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._pool is None:
                self._pool = await self._open_pool()
            return self._pool

    async def _open_pool(self) -> asyncpg.Pool:
        try:
            import asyncpg
        except ImportError:  # pragma: no cover - the extra is not installed
            raise StoreError(
                "PostgreSQL stores need asyncpg: pip install 'nanoedit[postgres]'"
            ) from None
        try:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=self._min_size, max_size=self._max_size
            )
        except (OSError, asyncpg.PostgresError, ValueError) as exc:
            raise StoreError(f"{_redact(self.dsn)}: cannot connect: {exc}") from None
        try:
            async with pool.acquire() as db:
                await self._migrate(db)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _migrate(self, db: asyncpg.Connection) -> None:
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await db.execute(
                "CREATE TABLE IF NOT EXISTS nanoedit_schema (version integer NOT NULL)"
            )
            version = await db.fetchval("SELECT max(version) FROM nanoedit_schema") or 0
            if version > PG_SCHEMA_VERSION:
                raise StoreError(
                    f"{_redact(self.dsn)}: schema version {version}; this nanoedit reads "
                    f"{PG_SCHEMA_VERSION}"
                )
            for number, step in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in step:
                    await db.execute(statement)
                await db.execute("INSERT INTO nanoedit_schema (version) VALUES ($1)", number)

    async def _run(self, work: Any, *, write: bool = True) -> Any:
        """`await work(connection)` in a transaction; database errors become StoreError."""
        import asyncpg

        pool = await self._connect()
        try:
            async with pool.acquire() as db, db.transaction(readonly=not write):
                return await work(db)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"{_redact(self.dsn)}: {exc}") from exc
        except (msgspec.DecodeError, RecursionError, WireError) as exc:
            raise StoreError(f"{_redact(self.dsn)}: corrupt row: {exc}") from exc

    # --- SessionStore --------------------------------------------------------------------------

    async def create(self, record: SessionRecord, turns: Sequence[TurnRecord] = ()) -> None:
        """Store a new session (with turns, for fork and import); its version becomes 1."""
        rows = [turn_row(t, self.blobs) for t in turns]

        async def work(db: asyncpg.Connection) -> None:
            inserted = await db.execute(
                f"INSERT INTO sessions ({_SESSION_COLS}, owner) "
                "VALUES ($1,$2,$3,$4,$5,1,$6,$7,$8,$9,$10,$11) ON CONFLICT (id) DO NOTHING",
                record.id,
                record.model,
                _encoder.encode(record.settings),
                record.head,
                record.tip,
                record.created_at,
                record.updated_at,
                record.parent_id,
                record.forked_at,
                record.title,
                record.settings.owner,
            )
            if inserted.endswith(" 0"):
                raise SessionBusy(f"session {record.id} already exists")
            for row in rows:
                await _insert_turn(db, record.id, row)
            await _require_turn(db, record.id, record.head, record.tip)

        await self._run(work)

    async def load(self, session_id: str) -> SessionState:
        """The session's record and whole turn tree, in one snapshot."""

        async def work(db: asyncpg.Connection) -> SessionState:
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            row = await db.fetchrow(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = $1", session_id
            )
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            rows = await db.fetch(
                "SELECT user_json, model_json, meta, blobs FROM turns WHERE session_id = $1 "
                "ORDER BY seq",
                session_id,
            )
            held: dict[str, bytes] = {}
            missing = []
            for sha in {s for r in rows for s in r["blobs"]}:
                cached = self.blobs.get(sha)
                if cached is not None:
                    held[sha] = self.blobs.intern(cached, sha)[1]
                else:
                    missing.append(sha)
            if missing:
                for found in await db.fetch(
                    "SELECT sha256, data FROM blobs WHERE sha256 = ANY($1::text[])", missing
                ):
                    held[found["sha256"]] = self.blobs._adopt(found["sha256"], found["data"])
            lost = sorted(set(missing) - held.keys())
            if lost:
                raise StoreError(f"blob {lost[0]} of session {session_id} missing")
            turns: dict[str, TurnRecord] = {}
            for r in rows:
                try:
                    t = stored_turn(
                        r["user_json"], r["model_json"], r["meta"], list(r["blobs"]), held
                    )
                except StopIteration:
                    raise StoreError(f"turn of {session_id} lacks blobs") from None
                turns[t.id] = t
            return SessionState(_record(row), turns)

        state: SessionState = await self._run(work, write=False)
        return state

    async def commit_turn(
        self,
        session_id: str,
        turn: TurnRecord,
        *,
        expected_version: int,
        lease_owner: str | None = None,
    ) -> SessionRecord:
        """Add `turn` and move head and tip to it in one transaction; SessionBusy on a clash
        (or, with `lease_owner`, when that owner does not hold the lease: fencing)."""
        row = turn_row(turn, self.blobs)

        async def work(db: asyncpg.Connection) -> SessionRecord:
            if lease_owner is not None:
                # FOR UPDATE: the lease cannot change hands between this check and the commit.
                holder = await db.fetchrow(
                    "SELECT lease_owner, lease_until FROM sessions WHERE id = $1 FOR UPDATE",
                    session_id,
                )
                if holder is not None and (
                    holder["lease_owner"] != lease_owner
                    or (holder["lease_until"] or 0) <= time.time()
                ):
                    raise lease_lost(session_id)
            record = await _bump(db, session_id, turn.id, turn.id, expected_version)
            await _require_turn(db, session_id, turn.parent)
            await _insert_turn(db, session_id, row)
            return record

        result: SessionRecord = await self._run(work)
        return result

    async def move_head(
        self, session_id: str, head: str | None, tip: str | None, *, expected_version: int
    ) -> SessionRecord:
        """Move the head and tip (undo, redo, checkout); SessionBusy on a version clash."""

        async def work(db: asyncpg.Connection) -> SessionRecord:
            record = await _bump(db, session_id, head, tip, expected_version)
            await _require_turn(db, session_id, head, tip)
            return record

        result: SessionRecord = await self._run(work)
        return result

    async def rename(self, session_id: str, title: str, *, expected_version: int) -> SessionRecord:
        """Set the session's title; SessionBusy on a version clash."""

        async def work(db: asyncpg.Connection) -> SessionRecord:
            return await _update(db, session_id, expected_version, title=title)

        result: SessionRecord = await self._run(work)
        return result

    async def load_record(self, session_id: str) -> SessionRecord:
        """The session's record alone."""

        async def work(db: asyncpg.Connection) -> SessionRecord:
            row = await db.fetchrow(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = $1", session_id
            )
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            return _record(row)

        result: SessionRecord = await self._run(work, write=False)
        return result

    async def acquire_lease(
        self, session_id: str, owner: str, ttl: float, *, take_from: str | None = None
    ) -> bool:
        """Hold the lease for `ttl` seconds; False while another owner's lease runs."""

        async def work(db: asyncpg.Connection) -> bool:
            now = time.time()
            taken = await db.execute(
                "UPDATE sessions SET lease_owner = $1, lease_until = $2 WHERE id = $3 "
                "AND (lease_owner IS NULL OR lease_owner = $1 OR lease_owner = $4 "
                "OR lease_until <= $5)",
                owner,
                now + ttl,
                session_id,
                take_from or owner,
                now,
            )
            if not taken.endswith(" 0"):
                return True
            if await db.fetchval("SELECT 1 FROM sessions WHERE id = $1", session_id):
                return False
            raise SessionNotFound(f"no session {session_id!r}")

        result: bool = await self._run(work)
        return result

    async def lease_holder(self, session_id: str) -> LeaseHolder | None:
        """The running lease, if any."""

        async def work(db: asyncpg.Connection) -> LeaseHolder | None:
            row = await db.fetchrow(
                "SELECT lease_owner, lease_until FROM sessions WHERE id = $1", session_id
            )
            if row is None:
                raise SessionNotFound(f"no session {session_id!r}")
            owner, until = row["lease_owner"], row["lease_until"]
            if owner is None or until is None or until <= time.time():
                return None
            return LeaseHolder(owner, until)

        result: LeaseHolder | None = await self._run(work, write=False)
        return result

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Give up the lease if `owner` holds it."""

        async def work(db: asyncpg.Connection) -> None:
            await db.execute(
                "UPDATE sessions SET lease_owner = NULL, lease_until = NULL "
                "WHERE id = $1 AND lease_owner = $2",
                session_id,
                owner,
            )

        await self._run(work)

    async def list(self, *, owner: str | None = None) -> list[SessionSummary]:
        """Every stored session (of `owner`, if given), most recently updated first."""

        async def work(db: asyncpg.Connection) -> list[SessionSummary]:
            rows = await db.fetch(
                """SELECT s.id, s.model, s.title, s.created_at, s.updated_at, s.owner,
                       COALESCE((SELECT idx FROM turns t
                                 WHERE t.session_id = s.id AND t.id = s.head), 0) AS turns,
                       (SELECT count(*) FROM turns t WHERE t.session_id = s.id) AS total
                   FROM sessions s WHERE ($1::text IS NULL OR s.owner = $1)
                   ORDER BY s.updated_at DESC, s.id""",
                owner,
            )
            return [
                SessionSummary(
                    id=r["id"],
                    model=r["model"],
                    title=r["title"],
                    created=r["created_at"],
                    updated=r["updated_at"],
                    turns=r["turns"],
                    total_turns=r["total"],
                    owner=r["owner"],
                )
                for r in rows
            ]

        result: list[SessionSummary] = await self._run(work, write=False)
        return result

    async def tenant_usage(self, owner: str) -> TenantUsage:
        """The owner's sessions, turns and spend, summed in SQL over the owner index."""

        async def work(db: asyncpg.Connection) -> TenantUsage:
            row = await db.fetchrow(
                """SELECT (SELECT count(*) FROM sessions WHERE owner = $1) AS sessions,
                          count(t.seq) AS turns,
                          COALESCE(sum((convert_from(t.meta, 'UTF8')::jsonb ->> 'cost_usd')
                                       ::double precision), 0.0) AS spent
                   FROM sessions s JOIN turns t ON t.session_id = s.id
                   WHERE s.owner = $1""",
                owner,
            )
            return TenantUsage(
                sessions=row["sessions"], turns=row["turns"], spent_usd=float(row["spent"])
            )

        usage: TenantUsage = await self._run(work, write=False)
        return usage

    async def holds_image(self, owner: str, sha256: str) -> bool:
        """One look-up through the blob's index: does a turn of the owner's hold it?"""

        async def work(db: asyncpg.Connection) -> bool:
            found = await db.fetchval(
                """SELECT 1 FROM turn_blobs b JOIN sessions s ON s.id = b.session_id
                   WHERE b.sha256 = $1 AND s.owner = $2 LIMIT 1""",
                sha256,
                owner,
            )
            return found is not None

        held: bool = await self._run(work, write=False)
        return held

    async def delete(self, session_id: str) -> None:
        """Remove a session and its turns; blobs no other session uses go too."""

        async def work(db: asyncpg.Connection) -> list[str]:
            shas = [
                r["sha256"]
                for r in await db.fetch(
                    "SELECT DISTINCT sha256 FROM turn_blobs WHERE session_id = $1", session_id
                )
            ]
            deleted = await db.execute("DELETE FROM sessions WHERE id = $1", session_id)
            if deleted.endswith(" 0"):
                raise SessionNotFound(f"no session {session_id!r}")
            gone = await db.fetch(
                "DELETE FROM blobs b WHERE b.sha256 = ANY($1::text[]) AND NOT EXISTS "
                "(SELECT 1 FROM turn_blobs tb WHERE tb.sha256 = b.sha256) RETURNING b.sha256",
                shas,
            )
            return [r["sha256"] for r in gone]

        self.blobs._forget(await self._run(work))

    async def next_event_epoch(self) -> int:
        """One more epoch of event numbering, counted in the database (one atomic upsert)."""

        async def work(db: asyncpg.Connection) -> int:
            value = await db.fetchval(
                "INSERT INTO counters (name, value) VALUES ('event_epoch', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value"
            )
            return int(value)

        epoch: int = await self._run(work)
        return epoch

    async def check_blobs(self) -> Sequence[str]:
        """Blobs whose bytes do not hash to their digest or size, and missing blobs."""

        async def work(db: asyncpg.Connection) -> list[str]:
            problems = []
            for r in await db.fetch("SELECT sha256, size, data FROM blobs"):
                actual = hashlib.sha256(r["data"]).hexdigest()
                if actual != r["sha256"] or len(r["data"]) != r["size"]:
                    problems.append(f"blob {r['sha256'][:12]}: bytes hash to {actual[:12]}")
            for r in await db.fetch(
                "SELECT session_id, turn_id, sha256 FROM turn_blobs tb WHERE NOT EXISTS "
                "(SELECT 1 FROM blobs b WHERE b.sha256 = tb.sha256)"
            ):
                problems.append(
                    f"session {r['session_id']} turn {r['turn_id']}: blob "
                    f"{r['sha256'][:12]} is missing"
                )
            return problems

        result: list[str] = await self._run(work, write=False)
        return result

    async def load_blob(self, sha256: str) -> bytes:
        """The bytes for a digest: from memory, else from the database."""
        held = self.blobs.get(sha256)
        if held is not None:
            return held

        async def work(db: asyncpg.Connection) -> bytes:
            data = await db.fetchval("SELECT data FROM blobs WHERE sha256 = $1", sha256)
            if data is None:
                raise StoreError(f"no blob {sha256}")
            return self.blobs._adopt(sha256, bytes(data))

        result: bytes = await self._run(work, write=False)
        return result

    # --- uploads and batch jobs ---------------------------------------------------------------

    async def file_refs(self, scope: str, digests: Iterable[str]) -> dict[str, FileRef]:
        """The recorded uploads of these images at `scope`."""
        wanted = list(digests)
        if not wanted:
            return {}

        async def work(db: asyncpg.Connection) -> dict[str, FileRef]:
            rows = await db.fetch(
                "SELECT ref FROM file_refs WHERE scope = $1 AND sha256 = ANY($2::text[])",
                scope,
                wanted,
            )
            refs = [_file_ref_dec.decode(r["ref"]) for r in rows]
            return {ref.sha256: ref for ref in refs}

        result: dict[str, FileRef] = await self._run(work, write=False)
        return result

    async def save_file_ref(self, ref: FileRef) -> None:
        """Record an upload."""

        async def work(db: asyncpg.Connection) -> None:
            await db.execute(
                "INSERT INTO file_refs (scope, sha256, ref, expires_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (scope, sha256) DO UPDATE SET ref = $3, expires_at = $4",
                ref.scope,
                ref.sha256,
                _encoder.encode(ref),
                ref.expires_at,
            )
            await db.execute("DELETE FROM file_refs WHERE expires_at < $1", time.time())

        await self._run(work)

    async def drop_file_refs(self, scope: str, digests: Iterable[str]) -> None:
        """Forget uploads."""
        gone = list(digests)
        if not gone:
            return

        async def work(db: asyncpg.Connection) -> None:
            await db.execute(
                "DELETE FROM file_refs WHERE scope = $1 AND sha256 = ANY($2::text[])", scope, gone
            )

        await self._run(work)

    async def save_batch(self, job: BatchRecord) -> None:
        """Record a batch job (or its new state)."""

        async def work(db: asyncpg.Connection) -> None:
            await db.execute(
                "INSERT INTO batches (name, created_at, job) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET job = $3",
                job.name,
                job.created_at,
                _encoder.encode(job),
            )

        await self._run(work)

    async def load_batch(self, name: str) -> BatchRecord:
        """A recorded batch job; StoreError if there is none."""

        async def work(db: asyncpg.Connection) -> BatchRecord:
            data = await db.fetchval("SELECT job FROM batches WHERE name = $1", name)
            if data is None:
                raise StoreError(f"no batch job {name!r} in this store")
            return _batch_dec.decode(data)

        result: BatchRecord = await self._run(work, write=False)
        return result

    async def list_batches(self) -> Sequence[BatchRecord]:
        """Every batch job, newest first."""

        async def work(db: asyncpg.Connection) -> list[BatchRecord]:
            rows = await db.fetch("SELECT job FROM batches ORDER BY created_at DESC")
            return [_batch_dec.decode(r["job"]) for r in rows]

        result: list[BatchRecord] = await self._run(work, write=False)
        return result

    async def aclose(self) -> None:
        """Close the pool; later calls raise StoreError."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _insert_turn(db: asyncpg.Connection, session_id: str, row: Any) -> None:
    turn = row.turn
    if row.payloads:
        await db.executemany(
            "INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) "
            "ON CONFLICT (sha256) DO NOTHING",
            [(sha, len(data), data) for sha, data in row.payloads],
        )
    await db.execute(
        "INSERT INTO turns (session_id, id, parent, idx, user_json, model_json, meta, blobs) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        session_id,
        turn.id,
        turn.parent,
        turn.index,
        row.user,
        row.model,
        row.meta,
        [sha for sha, _ in row.payloads],
    )
    if row.payloads:
        await db.executemany(
            "INSERT INTO turn_blobs (session_id, turn_id, sha256) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            [(session_id, turn.id, sha) for sha in dict.fromkeys(s for s, _ in row.payloads)],
        )


async def _bump(
    db: asyncpg.Connection,
    session_id: str,
    head: str | None,
    tip: str | None,
    expected_version: int,
) -> SessionRecord:
    """Move the pointers if the version is still `expected_version`, else raise."""
    return await _update(db, session_id, expected_version, head=head, tip=tip)


async def _update(
    db: asyncpg.Connection, session_id: str, expected_version: int, **columns: object
) -> SessionRecord:
    """Set `columns` (names from this module, never from input) and bump the version if it is
    still `expected_version`; SessionNotFound or SessionBusy otherwise."""
    sets = ", ".join(f"{name} = ${n}" for n, name in enumerate(columns, start=1))
    k = len(columns)
    row = await db.fetchrow(
        f"UPDATE sessions SET {sets}, version = version + 1, updated_at = ${k + 1} "
        f"WHERE id = ${k + 2} AND version = ${k + 3} RETURNING {_SESSION_COLS}",
        *columns.values(),
        time.time(),
        session_id,
        expected_version,
    )
    if row is not None:
        return _record(row)
    found = await db.fetchval("SELECT version FROM sessions WHERE id = $1", session_id)
    if found is None:
        raise SessionNotFound(f"no session {session_id!r}")
    raise SessionBusy(
        f"session {session_id} changed (version {found}, expected {expected_version})"
    )


async def _require_turn(db: asyncpg.Connection, session_id: str, *turn_ids: str | None) -> None:
    for turn_id in turn_ids:
        if turn_id is not None and not await db.fetchval(
            "SELECT 1 FROM turns WHERE session_id = $1 AND id = $2", session_id, turn_id
        ):
            raise TurnNotFound(f"no turn {turn_id!r} in session {session_id}")


def _redact(dsn: str) -> str:
    """The DSN without its password (it goes into messages)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else dsn
