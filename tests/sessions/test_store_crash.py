"""SqliteStore and PostgresStore under `kill -9`: a child commits turns until SIGKILLed at random
moments; after every kill the database is intact and holds every turn the child reported as
committed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

from sessions import (
    PostgresStore,
    SessionRecord,
    SessionStore,
    SqliteStore,
    encode_contents,
    new_id,
)
from tests.conftest import pg_database

CHILD = Path(__file__).parent.parent / "_proc" / "store_child.py"
KILLS = 12  # each round starts a Python process; benchmarks/soak.py kills far more


def _open(db: str) -> SessionStore:
    return PostgresStore(db) if db.startswith("postgresql://") else SqliteStore(db)


async def _create(db: str, sid: str) -> None:
    async with _open(db) as store:
        await store.create(SessionRecord(id=sid, model="child-model"))


async def _load_digests(db: str, sid: str, ids: list[str]) -> tuple[dict[str, str], int]:
    """Digests of some turns' wire Contents as the store loads them; the head's path length."""
    async with _open(db) as store:
        state = await store.load(sid)
    digests = {
        i: hashlib.sha256(encode_contents([state.turn(i).user, state.turn(i).model])).hexdigest()
        for i in ids
    }
    return digests, len(state.path())


async def _check_postgres(dsn: str, sid: str, printed: dict[str, dict[str, Any]]) -> int:
    """The same invariants, read with plain queries."""
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        for row in await db.fetch("SELECT sha256, size, data FROM blobs"):
            assert hashlib.sha256(row["data"]).hexdigest() == row["sha256"]
            assert row["size"] == len(row["data"])
        blobs = {r["sha256"] for r in await db.fetch("SELECT sha256 FROM blobs")}
        turns = {r["id"]: list(r["blobs"]) for r in await db.fetch("SELECT id, blobs FROM turns")}
        for refs in turns.values():
            assert set(refs) <= blobs
        for tid, line in printed.items():
            assert turns[tid] == line["blobs"]
        row = await db.fetchrow("SELECT head, version FROM sessions WHERE id = $1", sid)
        assert row["head"] is None or row["head"] in turns
        assert row["version"] == 1 + len(turns)
        return len(turns)
    finally:
        await db.close()


def _check(db: str, sid: str, printed: dict[str, dict[str, Any]]) -> int:
    if db.startswith("postgresql://"):
        return anyio.run(_check_postgres, db, sid, printed)
    return _check_file(Path(db), sid, printed)


def _check_file(path: Path, sid: str, printed: dict[str, dict[str, Any]]) -> int:
    """Assert the invariants on a raw connection; return the number of turns."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        for sha, size, data in db.execute("SELECT sha256, size, data FROM blobs"):
            assert hashlib.sha256(data).hexdigest() == sha and size == len(data)
        blobs = {r[0] for r in db.execute("SELECT sha256 FROM blobs")}
        turns = {r[0]: json.loads(r[1]) for r in db.execute("SELECT id, blobs FROM turns")}
        for refs in turns.values():
            assert set(refs) <= blobs  # no turn row without its blobs
        for tid, line in printed.items():
            assert turns[tid] == line["blobs"]
        head, version = db.execute(
            "SELECT head, version FROM sessions WHERE id = ?", (sid,)
        ).fetchone()
        assert head is None or head in turns
        # The child only commits turns: each bumped the version by one, in the same transaction.
        assert version == 1 + len(turns)
        return len(turns)
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_9_loses_no_committed_turn(tmp_path: Path, kind: str) -> None:
    """After each SIGKILL: integrity ok, every reported turn intact, head and version sound."""
    if kind == "postgres":
        with _postgres_database() as dsn:
            _kill_rounds(dsn)
    else:
        _kill_rounds(str(tmp_path / "crash.db"))


@contextlib.contextmanager
def _postgres_database() -> Iterator[str]:
    # The test is synchronous (it runs child processes): the async context manager is driven
    # through a portal of its own.
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(pg_database()) as dsn,
    ):
        yield dsn


def _kill_rounds(path: str) -> None:
    sid = new_id()
    anyio.run(_create, path, sid)
    rng = random.Random(20240611)
    printed: dict[str, dict[str, Any]] = {}
    for round_ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), "crash", str(path), sid, str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            assert first == b"ready\n", child.communicate()[1].decode()
            time.sleep(rng.uniform(0.01, 0.3))
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=60)
        finally:
            if child.returncode is None:
                child.kill()
                child.communicate()
        assert child.returncode == -signal.SIGKILL, err.decode()
        fresh = [json.loads(line) for line in out.decode().splitlines()]
        earlier = rng.sample(sorted(printed), min(len(printed), 20))
        printed.update((entry["id"], entry) for entry in fresh)
        n_turns = _check(path, sid, printed)
        # At most one commit per kill can have landed without being reported.
        assert len(printed) <= n_turns <= len(printed) + round_ + 1
        # Every turn of this run, and a sample of earlier ones, loads with the same wire bytes.
        ids = [entry["id"] for entry in fresh] + earlier
        digests, depth = anyio.run(_load_digests, path, sid, ids)
        for tid in ids:
            assert digests[tid] == printed[tid]["digest"]
        assert depth >= 1 or not printed
    assert len(printed) > KILLS  # the kills did land between commits, not only before them
