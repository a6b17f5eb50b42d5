"""A long-lived engine stays small: the SQLite blob cache is bounded by bytes, idle sessions'
event windows are dropped past a count, closed sessions are forgotten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine import Engine, EngineConfig
from engine.events import SessionClosed, SessionCreated
from engine.state import EventBus
from sessions import (
    Blob,
    Content,
    Part,
    SessionRecord,
    SqliteStore,
    TurnRecord,
    new_id,
)
from tests.conftest import FakeProvider


def _turn(n: int, size: int) -> TurnRecord:
    data = b"\x89PNG\r\n\x1a\n" + n.to_bytes(4, "big") * (size // 4)
    image = Part(inline_data=Blob(mime_type="image/png", data=data))
    return TurnRecord(
        id=new_id(),
        parent=None,
        index=1,
        user=Content(role="user", parts=[Part(text=f"turn {n}")]),
        model=Content(role="model", parts=[image]),
        model_id="m",
    )


async def test_the_blob_cache_is_bounded_and_loads_still_work(tmp_path: Path) -> None:
    """Ten sessions of 100 KB images through a 300 KB cache: at most 300 KB held, and every
    session still loads whole (misses are read from the file)."""
    async with SqliteStore(tmp_path / "s.db", blob_cache_bytes=300_000) as store:
        ids = []
        for n in range(10):
            sid = new_id()
            await store.create(SessionRecord(id=sid, model="nano-banana-2"))
            await store.commit_turn(sid, _turn(n, 100_000), expected_version=1)
            ids.append(sid)
            assert store.blobs.total_bytes <= 300_000
        for n, sid in enumerate(ids):
            state = await store.load(sid)
            (image,) = state.contents()[1].images()
            assert image.data[8:12] == n.to_bytes(4, "big")
            assert store.blobs.total_bytes <= 300_000


async def test_idle_sessions_lose_their_window_but_keep_their_numbering() -> None:
    """Past max_windows, the least recently active session keeps only its seq: numbering
    continues, and replay from before says events were missed."""
    bus = EventBus(max_windows=2)
    for sid in ("a", "b", "a", "c"):
        await bus.publish(SessionCreated(session_id=sid, model="m"))
    assert bus.retained("b") == []  # "b" was the least recently active
    assert bus.last_seq("b") == 1
    assert [e.seq for e in bus.retained("a")] == [1, 2]
    async with bus.subscribe(session_id="b", since_seq=0) as sub:
        missed = await sub.__anext__()
        assert missed.type == "events.missed"
        await bus.publish(SessionClosed(session_id="b"))
        assert (await sub.__anext__()).seq == 2
    await bus.aclose()


async def test_closing_a_session_forgets_its_traces() -> None:
    """After Session.aclose(), the engine holds no event window or cost totals for it."""
    async with Engine(EngineConfig(), provider=FakeProvider()) as engine:
        s = await engine.create_session()
        await s.send("a mug")
        assert engine.bus.last_seq(s.id) > 0
        await s.aclose()
        assert engine.bus.last_seq(s.id) == 0
        assert engine.bus.retained(s.id) == []
        assert s.id not in engine.ledger._sessions


async def test_a_committed_turn_leaves_few_objects_for_the_collector(tmp_path: Path) -> None:
    """What a finished turn keeps (its record, events in the window, memo entries) is mostly
    invisible to the cyclic collector, whose passes over a long-lived engine's objects cost a
    tenth of a small turn's CPU: events, records and usage are untracked structs."""
    import gc

    provider = FakeProvider()
    async with Engine(EngineConfig(), provider=provider) as engine:
        sessions = [await engine.create_session("gemini-3.1-flash-image") for _ in range(20)]
        for s in sessions:
            await s.send("warm up")
        provider.calls.clear()  # the fake's own record of calls is not the engine's
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(3):
            for s in sessions:
                await s.send("one more")
        provider.calls.clear()
        gc.collect()
        per_turn = (len(gc.get_objects()) - before) / 60
    assert per_turn < 16, per_turn


def test_an_engine_on_another_store_does_not_load_sqlite() -> None:
    """SQLite's library (1.5 MiB of RSS) is loaded when a SQLite store opens its database,
    not by importing the engine; the store still works once it does."""
    code = (
        "import sys, asyncio\n"
        "import engine, engine.runtime._engine, engine.providers, sessions\n"
        "assert 'sqlite3' not in sys.modules, 'imported with the engine'\n"
        "store = sessions.SqliteStore(':memory:')\n"
        "assert 'sqlite3' not in sys.modules, 'imported by the constructor'\n"
        "asyncio.run(store.list())\n"
        "assert 'sqlite3' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
