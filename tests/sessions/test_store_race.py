"""Two writers, one head: exactly one commit wins, the other gets SessionBusy and changes
nothing — across processes, across connections, and within one event loop."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from sessions import (
    Content,
    Part,
    PostgresStore,
    SessionBusy,
    SessionRecord,
    SessionStore,
    SqliteStore,
    TurnRecord,
    new_id,
    undo,
)
from tests.conftest import STORE_KINDS, open_store_kind, pg_database

CHILD = Path(__file__).parent.parent / "_proc" / "store_child.py"


def make_turn(parent: TurnRecord | None, text: str) -> TurnRecord:
    """A small text-only turn after `parent`."""
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=parent.index + 1 if parent else 1,
        user=Content(role="user", parts=[Part(text=text)]),
        model=Content(role="model", parts=[Part(text="ok " + text)]),
        model_id="m",
    )


async def seed(store: SessionStore) -> tuple[str, TurnRecord]:
    """A session with one turn (version 2)."""
    sid, first = new_id(), make_turn(None, "first")
    await store.create(SessionRecord(id=sid, model="m"))
    await store.commit_turn(sid, first, expected_version=1)
    return sid, first


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store implementation on a fresh database, closed afterwards."""
    async with open_store_kind(request.param, tmp_path) as s:
        yield s


async def race(writers: list[tuple[SessionStore, TurnRecord]], sid: str) -> list[str]:
    """Release every writer at once; each commits at version 2. Returns 'ok'/'busy' each."""
    go = anyio.Event()
    results: list[str] = []

    async def write(store: SessionStore, turn: TurnRecord) -> None:
        await go.wait()
        try:
            await store.commit_turn(sid, turn, expected_version=2)
        except SessionBusy:
            results.append("busy")
        else:
            results.append("ok " + turn.id)

    async with anyio.create_task_group() as tg:
        for store, turn in writers:
            tg.start_soon(write, store, turn)
        await anyio.wait_all_tasks_blocked()
        go.set()
    return results


async def test_same_loop_race(store: SessionStore) -> None:
    """Two tasks committing on one head through one store: one wins, one is busy."""
    sid, first = await seed(store)
    a, b = make_turn(first, "a"), make_turn(first, "b")
    results = await race([(store, a), (store, b)], sid)
    assert sorted(r.split()[0] for r in results) == ["busy", "ok"]
    state = await store.load(sid)
    winner = next(r.split()[1] for r in results if r.startswith("ok"))
    assert len(state.turns) == 2 and state.record.head == winner and state.record.version == 3


async def test_two_connections_race(tmp_path: Path) -> None:
    """Two SqliteStores (two connections, two threads) on one file: one wins, one is busy."""
    async with SqliteStore(tmp_path / "s.db") as one, SqliteStore(tmp_path / "s.db") as two:
        sid, first = await seed(one)
        results = await race([(one, make_turn(first, "a")), (two, make_turn(first, "b"))], sid)
        assert sorted(r.split()[0] for r in results) == ["busy", "ok"]
        assert len((await two.load(sid)).turns) == 2


async def test_concurrent_undos_never_lose_an_update(store: SessionStore) -> None:
    """Concurrent undos each either move the head one step or get SessionBusy."""
    sid, first = await seed(store)
    second = make_turn(first, "second")
    await store.commit_turn(sid, second, expected_version=2)
    outcomes: list[str] = []

    async def one_undo() -> None:
        try:
            await undo(store, sid)
        except SessionBusy:
            outcomes.append("busy")
        else:
            outcomes.append("ok")

    async with anyio.create_task_group() as tg:
        tg.start_soon(one_undo)
        tg.start_soon(one_undo)
    state = await store.load(sid)
    moved = outcomes.count("ok")
    assert moved >= 1 and state.record.version == 3 + moved
    assert state.record.head == [second.id, first.id, None][moved]


async def _line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 4096)).decode()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_two_processes_race(tmp_path: Path, kind: str) -> None:
    """Two processes load the same version and commit: one ok, one SessionBusy, one new turn."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "postgres":
            path = await stack.enter_async_context(pg_database())
            opened: SessionStore = PostgresStore(path)
        else:
            path = str(tmp_path / "s.db")
            opened = SqliteStore(path)
        async with opened as store:
            sid, _ = await seed(store)
        await _race_processes(path, sid, kind)


async def _race_processes(path: str, sid: str, kind: str) -> None:
    cmd = [sys.executable, str(CHILD), "race", str(path), sid]
    with anyio.fail_after(60):
        async with await anyio.open_process(cmd) as p1, await anyio.open_process(cmd) as p2:
            procs = [p1, p2]
            outs = [BufferedByteReceiveStream(p.stdout) for p in procs if p.stdout]
            assert [await _line(o) for o in outs] == ["loaded 2", "loaded 2"]
            for p in procs:
                assert p.stdin is not None
                await p.stdin.send(b"go\n")
            results = [await _line(o) for o in outs]
            assert [await p.wait() for p in procs] == [0, 0]
    assert sorted(r.split()[0] for r in results) == ["busy", "ok"]
    winner = next(r.split()[1] for r in results if r.startswith("ok"))
    async with PostgresStore(path) if kind == "postgres" else SqliteStore(path) as store:
        state = await store.load(sid)
    assert len(state.turns) == 2 and state.record.head == winner and state.record.version == 3
