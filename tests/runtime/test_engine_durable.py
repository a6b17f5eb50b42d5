"""Durable sessions at the engine level: store leases, resume in a new process, export and
import, `kill -9` mid-turn, processes and engines racing on one session, `nanoedit edit`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from engine import (
    Budget,
    BudgetExceeded,
    ConfigError,
    Engine,
    EngineConfig,
    ImageConfig,
    ServerError,
    SessionBusy,
)
from engine.emulator import Emulator
from engine.events import Event, TurnFailed
from sessions import (
    BatchRecord,
    Blob,
    Content,
    FileRef,
    MemoryStore,
    Part,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    SqliteStore,
    TurnRecord,
    check_store,
    encode_contents,
    export_session,
    import_session,
    new_id,
)
from sessions._sqlite import _SCHEMA, _SESSION_COLS, SCHEMA_VERSION
from tests.conftest import (
    EmulatorFactory,
    EmulatorThread,
    FakeProvider,
    config_for,
    dead_owner,
    live_owner,
)

CHILD = Path(__file__).parent.parent / "_proc" / "engine_child.py"
GENERATE = ("generateContent", "streamGenerateContent")
JSON = dict[str, Any]


def generate_count(emu: Emulator) -> int:
    """generateContent + streamGenerateContent requests the emulator has answered."""
    counts: dict[str, int] = emu.stats()["requests"]
    return sum(counts[name] for name in GENERATE)


def generate_bodies(emu: Emulator) -> list[JSON]:
    """Decoded bodies of the generate requests the emulator recorded, in arrival order."""
    return [msgspec.json.decode(r.body) for r in emu.requests if r.endpoint in GENERATE]


def wire(*contents: Content) -> list[JSON]:
    """Contents as the decoded wire JSON a request carries."""
    decoded: list[JSON] = msgspec.json.decode(encode_contents(list(contents)))
    return decoded


async def _line(stream: BufferedByteReceiveStream) -> str:
    with anyio.fail_after(60):
        return (await stream.receive_until(b"\n", 1 << 20)).decode()


async def _drain(stream: ByteReceiveStream) -> bytes:
    chunks = []
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks)


def _spawn_args(mode: str, *args: object) -> list[str]:
    return [sys.executable, str(CHILD), mode, *(str(a) for a in args)]


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"on_busy": "later"}, {"lease_ttl": 0.0}, {"lease_wait": -1.0}])
def test_lease_settings_are_validated(bad: dict[str, Any]) -> None:
    """An unknown on_busy, a non-positive lease_ttl or a negative lease_wait is a ConfigError."""
    with pytest.raises(ConfigError):
        EngineConfig(**bad)


# --- the lease in the store contract ------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """A MemoryStore or a SqliteStore, empty."""
    s: SessionStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "l.db")
    async with s:
        yield s


async def _new_session(store: SessionStore) -> str:
    sid = new_id()
    await store.create(SessionRecord(id=sid, model="nano-banana-2"))
    return sid


async def test_lease_is_exclusive_until_released(store: SessionStore) -> None:
    """One owner at a time: the holder renews, others are refused, release frees it."""
    sid = await _new_session(store)
    assert await store.acquire_lease(sid, "a", 60)
    assert not await store.acquire_lease(sid, "b", 60)
    assert await store.acquire_lease(sid, "a", 60)  # the holder again: a renewal
    await store.release_lease(sid, "b")  # not the holder: no effect
    assert not await store.acquire_lease(sid, "b", 60)
    await store.release_lease(sid, "a")
    assert await store.acquire_lease(sid, "b", 60)


async def test_expired_lease_is_taken_over(store: SessionStore) -> None:
    """A lease whose TTL has run out (a dead holder's) goes to the next owner who asks."""
    sid = await _new_session(store)
    assert await store.acquire_lease(sid, "dead", 0)
    assert await store.acquire_lease(sid, "alive", 60)
    assert not await store.acquire_lease(sid, "dead", 60)


async def test_lease_on_missing_session(store: SessionStore) -> None:
    """Taking a lease on no session raises SessionNotFound; releasing one does nothing."""
    with pytest.raises(SessionNotFound):
        await store.acquire_lease("nope", "a", 60)
    await store.release_lease("nope", "a")


async def test_lease_changes_no_session_state(store: SessionStore) -> None:
    """Taking and releasing a lease leaves version, head and updated time as they were."""
    sid = await _new_session(store)
    before = await store.load_record(sid)
    assert await store.acquire_lease(sid, "a", 60)
    await store.release_lease(sid, "a")
    assert await store.load_record(sid) == before == (await store.load(sid)).record


def _turn(parent: TurnRecord | None, text: str) -> TurnRecord:
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=parent.index + 1 if parent else 1,
        user=Content(role="user", parts=[Part(text=text)]),
        model=Content(
            role="model",
            parts=[
                Part(inline_data=Blob(mime_type="image/png", data=text.encode() * 100)),
                Part(text="done", thought_signature=b"sig-" + text.encode()),
            ],
        ),
        model_id="nano-banana-2",
    )


def _write_v1_copy(src: Path, dst: Path) -> list[str]:
    """Copy every row of `src` into a new file with the version-1 schema; its session columns."""
    db = sqlite3.connect(dst)
    try:
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute("ATTACH DATABASE ? AS src", (str(src),))
        db.execute(f"INSERT INTO sessions SELECT {_SESSION_COLS} FROM src.sessions")
        for table in ("turns", "blobs", "turn_blobs"):
            db.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
        db.commit()
        db.execute("DETACH DATABASE src")
        return [r[1] for r in db.execute("PRAGMA table_info(sessions)")]
    finally:
        db.close()


def _schema_of(path: Path) -> tuple[int, list[str]]:
    db = sqlite3.connect(path)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version, [r[1] for r in db.execute("PRAGMA table_info(sessions)")]
    finally:
        db.close()


async def test_version_1_file_migrates_to_leases(tmp_path: Path) -> None:
    """A schema-1 file opens at the current version: its sessions and turns intact, leases,
    file references, batch jobs and counters working."""
    assert SCHEMA_VERSION == 5
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    sid = new_id()
    async with SqliteStore(new) as s:
        await s.create(SessionRecord(id=sid, model="nano-banana-2", title="from v1"))
        t1 = _turn(None, "a mug")
        t2 = _turn(t1, "add a sprig")
        await s.commit_turn(sid, t1, expected_version=1)
        await s.commit_turn(sid, t2, expected_version=2)
        expected = await s.load(sid)
    v1_columns = await anyio.to_thread.run_sync(_write_v1_copy, new, old)
    assert "lease_owner" not in v1_columns and "version" in v1_columns
    async with SqliteStore(old) as s:
        state = await s.load(sid)
        assert state.record == expected.record
        assert wire(*state.contents()) == wire(*expected.contents())
        assert await s.acquire_lease(sid, "a", 60)
        assert not await s.acquire_lease(sid, "b", 60)
        t3 = _turn(t2, "make it gray")
        assert (await s.commit_turn(sid, t3, expected_version=3)).head == t3.id
        ref = FileRef(
            scope="s",
            sha256="ab",
            name="files/x",
            uri="u",
            mime_type="image/png",
            size=1,
            expires_at=time.time() + 60,
        )
        await s.save_file_ref(ref)
        assert await s.file_refs("s", ["ab", "cd"]) == {"ab": ref}
        await s.save_batch(BatchRecord(name="batches/1", scope="s", model="m", keys=["k"]))
        assert (await s.load_batch("batches/1")).keys == ["k"]
        assert await s.next_event_epoch() == 1  # version 5's counters
    version, columns = await anyio.to_thread.run_sync(_schema_of, old)
    assert version == 5 and {"lease_owner", "lease_until", "owner"} <= set(columns)


# --- the lease in the turn pipeline -------------------------------------------------------


class PollCountingStore(MemoryStore):
    """A MemoryStore that signals once a lease has been refused `n` times."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.refused = 0
        self.polled = asyncio.Event()
        self._n = n

    async def acquire_lease(
        self, session_id: str, owner: str, ttl: float, *, take_from: str | None = None
    ) -> bool:
        """Count refusals."""
        ok = await super().acquire_lease(session_id, owner, ttl, take_from=take_from)
        if not ok:
            self.refused += 1
            if self.refused >= self._n:
                self.polled.set()
        return ok


async def test_busy_session_raises_before_sending(make_emulator: EmulatorFactory) -> None:
    """on_busy="raise": another owner's lease fails the turn at once and sends nothing."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        await s.send("A ceramic mug")
        assert await store.acquire_lease(s.id, "another process", 60)
        events: list[Event] = []
        engine.bus.on("turn.*", events.append)
        before = generate_count(emu)
        with pytest.raises(SessionBusy):
            await s.send("Add a sprig")
        assert generate_count(emu) == before
        assert [e.type for e in events] == ["turn.failed"]
        failed = events[0]
        assert isinstance(failed, TurnFailed)
        assert (failed.error_type, failed.attempts, failed.turn) == ("SessionBusy", 0, 2)
        assert len(s.turns()) == 1 and (await store.load(s.id)).record.version == 2


async def test_stream_on_busy_session_ends_with_turn_failed(make_emulator: EmulatorFactory) -> None:
    """stream() on a session leased elsewhere yields one turn.failed (SessionBusy) and ends."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        assert await store.acquire_lease(s.id, "another process", 60)
        async with s.stream("A ceramic mug") as st:
            events = [e async for e in st]
        assert [(e.type, getattr(e, "error_type", None)) for e in events] == [
            ("turn.failed", "SessionBusy")
        ]
        assert st.turn is None and generate_count(emu) == 0


async def test_wait_gives_up_after_lease_wait(make_emulator: EmulatorFactory) -> None:
    """on_busy="wait" raises SessionBusy once lease_wait passes without the lease; no request."""
    emu = await make_emulator()
    store = PollCountingStore(2)
    cfg = config_for(emu.base_url, on_busy="wait", lease_wait=0.05)
    async with Engine(cfg, store=store) as engine:
        s = await engine.create_session()
        assert await store.acquire_lease(s.id, "another process", 60)
        with pytest.raises(SessionBusy, match="busy after waiting"):
            await s.send("A ceramic mug")
    assert store.refused >= 2 and generate_count(emu) == 0


async def test_wait_sends_once_the_lease_is_released(make_emulator: EmulatorFactory) -> None:
    """on_busy="wait" polls while another owner holds the lease, then sends as soon as it can."""
    emu = await make_emulator()
    store = PollCountingStore(3)
    cfg = config_for(emu.base_url, on_busy="wait", lease_wait=60.0)
    async with Engine(cfg, store=store) as engine:
        s = await engine.create_session()
        assert await store.acquire_lease(s.id, "another process", 60)
        task = asyncio.ensure_future(s.send("A ceramic mug"))
        await store.polled.wait()
        assert not task.done() and generate_count(emu) == 0
        await store.release_lease(s.id, "another process")
        turn = await task
    assert turn.index == 1 and generate_count(emu) == 1


async def test_expired_lease_of_a_dead_engine_does_not_block(
    make_emulator: EmulatorFactory,
) -> None:
    """A lease left by a dead process, once expired, is taken over even with on_busy="raise"."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        assert await store.acquire_lease(s.id, "killed process", 0)
        turn = await s.send("A ceramic mug")
    assert turn.index == 1


async def test_lease_is_held_and_renewed_while_a_turn_runs(make_emulator: EmulatorFactory) -> None:
    """Mid-turn, three TTLs in, another owner still cannot take the lease; after commit it can."""
    emu = await make_emulator(latency=1.5)
    store = MemoryStore()
    async with Engine(config_for(emu.base_url, lease_ttl=0.3), store=store) as engine:
        s = await engine.create_session()
        started = asyncio.Event()
        engine.bus.on("turn.started", lambda _: started.set())
        task = asyncio.ensure_future(s.send("A ceramic mug"))
        await started.wait()
        await asyncio.sleep(0.9)  # without renewal the lease would have run out twice over
        assert not task.done()
        assert not await store.acquire_lease(s.id, "another process", 60)
        await task
        assert await store.acquire_lease(s.id, "another process", 60)


async def test_failed_and_cancelled_turns_release_the_lease(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A turn that fails and a turn that is cancelled mid-request both give the lease back."""
    emu = await make_emulator(faults="500")
    async with (
        SqliteStore(tmp_path / "s.db") as store,
        Engine(config_for(emu.base_url), store=store) as engine,
    ):
        s = await engine.create_session()
        with pytest.raises(ServerError):
            await s.send("A ceramic mug")
        assert await store.acquire_lease(s.id, "another process", 60)
        await store.release_lease(s.id, "another process")
        emu.set_faults("latency:30")
        started = asyncio.Event()
        engine.bus.on("turn.started", lambda _: started.set())
        task = asyncio.ensure_future(s.send("A ceramic mug"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.acquire_lease(s.id, "another process", 60)
        assert s.turns() == []


async def test_tree_operations_respect_the_lease(make_emulator: EmulatorFactory) -> None:
    """undo() and regenerate() on a session leased elsewhere raise SessionBusy, change nothing."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        await s.send("A ceramic mug")
        t2 = await s.send("Add a sprig")
        assert await store.acquire_lease(s.id, "another process", 60)
        before = generate_count(emu)
        with pytest.raises(SessionBusy):
            await s.undo()
        with pytest.raises(SessionBusy):
            await s.regenerate()
        record = (await store.load(s.id)).record
        assert record.head == t2.id and record.version == 3 and generate_count(emu) == before


async def test_regenerate_sends_the_head_again_as_a_sibling(make_emulator: EmulatorFactory) -> None:
    """regenerate() re-sends the head's user Content as its sibling and releases the lease."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        t1 = await s.send("A ceramic mug")
        t2 = await s.send("Add a sprig")
        again = await s.regenerate()
        assert (again.index, again.record.parent) == (2, t1.id) and again.id != t2.id
        assert again.record.user == t2.record.user
        assert s.head == again and len(s.branches()) == 2
        assert await store.acquire_lease(s.id, "another process", 60)


async def test_stale_handle_sends_on_what_another_engine_committed(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A handle opened before another engine committed a turn sends on top of that turn."""
    emu = await make_emulator(record_requests=True)
    path = tmp_path / "s.db"
    async with (
        SqliteStore(path) as store_a,
        SqliteStore(path) as store_b,
        Engine(config_for(emu.base_url), store=store_a) as a,
        Engine(config_for(emu.base_url), store=store_b) as b,
    ):
        sa = await a.create_session("nano-banana-2")
        await sa.send("A ceramic mug")
        sb = await b.open_session(sa.id)
        t2 = await sa.send("Add a sprig")
        t3 = await sb.send("Make it grayscale")
        assert t3.index == 3 and t3.record.parent == t2.id
        assert generate_bodies(emu)[-1]["contents"][2:4] == wire(t2.record.user, t2.record.model)


@pytest.mark.parametrize("on_busy", ["raise", "wait"])
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_two_engines_race_on_one_session(
    make_emulator: EmulatorFactory, tmp_path: Path, kind: str, on_busy: str
) -> None:
    """Two engines send at once: "raise" commits one and sends one request, the other gets
    SessionBusy; "wait" commits both in turn, the second request carrying the first turn."""
    emu = await make_emulator(record_requests=True)
    shared = MemoryStore()

    def open_store() -> SessionStore:
        return shared if kind == "memory" else SqliteStore(tmp_path / "race.db")

    cfg = config_for(emu.base_url, on_busy=on_busy)
    async with (
        open_store() as store_a,
        open_store() as store_b,
        Engine(cfg, store=store_a) as a,
        Engine(cfg, store=store_b) as b,
    ):
        assert a.lease_owner != b.lease_owner
        sa = await a.create_session("nano-banana-2")
        await sa.send("A ceramic mug")
        sb = await b.open_session(sa.id)
        failures: list[Event] = []
        for e in (a, b):
            e.bus.on("turn.failed", failures.append)
        emu.set_faults("latency:0.3")  # both sends overlap the winner's request
        before = generate_count(emu)
        results = await asyncio.gather(
            sa.send("Add a sprig"), sb.send("Add a sprig"), return_exceptions=True
        )
        state = await store_a.load(sa.id)
    turns = [r for r in results if not isinstance(r, BaseException)]
    if on_busy == "raise":
        assert len(turns) == 1 and sum(isinstance(r, SessionBusy) for r in results) == 1
        assert generate_count(emu) - before == 1
        assert [getattr(f, "error_type", None) for f in failures] == ["SessionBusy"]
        assert state.record.head == turns[0].id and len(state.turns) == 2
    else:
        assert sorted(t.index for t in turns) == [2, 3] and not failures
        assert generate_count(emu) - before == 2
        first = next(t for t in turns if t.index == 2)
        second = next(t for t in turns if t.index == 3)
        assert second.record.parent == first.id and state.record.head == second.id
        assert generate_bodies(emu)[-1]["contents"][2:4] == wire(
            first.record.user, first.record.model
        )


# --- other processes ----------------------------------------------------------------------


async def test_resume_in_a_new_process_carries_the_history(
    tmp_path: Path, emulator_thread: EmulatorThread, emulator_url: str
) -> None:
    """Turn 3, sent here on a session a child process wrote, carries the child's 4 Contents."""
    db, sid = tmp_path / "s.db", new_id()
    done = await anyio.run_process(_spawn_args("turns", db, emulator_url, sid, 2), check=False)
    assert done.returncode == 0, done.stderr.decode()
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [line["index"] for line in lines[:2]] == [1, 2]
    committed: list[JSON] = lines[2]["contents"]
    assert len(committed) == 4 and any("thoughtSignature" in p for p in committed[1]["parts"])
    marker = f"resume {sid}"
    async with (
        SqliteStore(db) as store,
        Engine(config_for(emulator_url), store=store) as engine,
    ):
        session = await engine.open_session(sid)
        assert [t.id for t in session.turns()] == [line["id"] for line in lines[:2]]
        turn = await session.send(marker)
    assert turn.index == 3
    assert emulator_thread.emulator is not None
    sent = [
        b
        for b in generate_bodies(emulator_thread.emulator)
        if b["contents"][-1]["parts"][0].get("text") == marker
    ]
    assert len(sent) == 1 and len(sent[0]["contents"]) == 5
    assert sent[0]["contents"][:4] == committed


async def test_export_import_gives_an_identical_next_request(
    tmp_path: Path, make_emulator: EmulatorFactory
) -> None:
    """A two-turn session exported and imported into a fresh store sends the same next request,
    byte for byte, as the original."""
    emu = await make_emulator(record_requests=True)
    cfg = config_for(emu.base_url)
    async with (
        SqliteStore(tmp_path / "a.db") as store_a,
        SqliteStore(tmp_path / "b.db") as store_b,
        Engine(cfg, store=store_a) as engine_a,
        Engine(cfg, store=store_b) as engine_b,
    ):
        original = await engine_a.create_session(
            "nano-banana-2",
            image_config=ImageConfig(aspect_ratio="16:9", image_size="1K"),
            system_instruction="You retouch product photos.",
            title="mug",
        )
        await original.send("A ceramic mug on an oak table")
        await original.send("Add a eucalyptus sprig to the left")
        record = await import_session(store_b, export_session(await store_a.load(original.id)))
        copy = await engine_b.open_session(record.id)
        assert copy.id != original.id and copy.contents() == original.contents()
        start = len(emu.requests)
        t_original = await original.send("Make it grayscale")
        t_copy = await copy.send("Make it grayscale")
    sent = [r for r in emu.requests[start:] if r.endpoint in GENERATE]
    assert len(sent) == 2 and sent[0].path == sent[1].path
    assert sent[0].body == sent[1].body
    assert t_original.model_content == t_copy.model_content


@pytest.mark.parametrize("on_busy", ["raise", "wait"])
async def test_two_processes_race_on_one_session(
    tmp_path: Path, make_emulator: EmulatorFactory, on_busy: str
) -> None:
    """Two processes send on one session at the same moment: "raise" commits exactly one and the
    loser sends no request; "wait" commits both, the second request carrying the first turn."""
    emu = await make_emulator(record_requests=True)
    db = tmp_path / "race.db"
    async with (
        SqliteStore(db) as store,
        Engine(config_for(emu.base_url), store=store) as engine,
    ):
        session = await engine.create_session("nano-banana-2")
        first = await session.send("A ceramic mug")
    emu.set_faults("latency:1")  # the winner's request is in flight when the loser tries
    cmd = _spawn_args("race", db, emu.base_url, session.id, on_busy)
    with anyio.fail_after(90):
        async with await anyio.open_process(cmd) as p1, await anyio.open_process(cmd) as p2:
            procs: list[Process] = [p1, p2]
            outs = [BufferedByteReceiveStream(p.stdout) for p in procs if p.stdout]
            assert [await _line(o) for o in outs] == ["ready", "ready"]
            before = generate_count(emu)
            for p in procs:  # the barrier: both are blocked on stdin until now
                assert p.stdin is not None
                await p.stdin.send(b"go\n")
            results = [json.loads(await _line(o)) for o in outs]
            codes = [await p.wait() for p in procs]
            errors = [await _drain(p.stderr) for p in procs if p.stderr]
    assert codes == [0, 0], errors
    sent = generate_count(emu) - before
    async with SqliteStore(db) as store:
        state = await store.load(session.id)
    if on_busy == "raise":
        assert sorted(next(iter(r)) for r in results) == ["busy", "ok"]
        winner = next(r for r in results if "ok" in r)
        assert sent == 1 and winner["index"] == 2
        assert len(state.turns) == 2 and state.record.head == winner["ok"]
    else:
        assert sorted(r["index"] for r in results) == [2, 3]
        assert sent == 2 and len(state.turns) == 3
        t2, t3 = (state.at_index(i) for i in (2, 3))
        assert t2.parent == first.id and t3.parent == t2.id and state.record.head == t3.id
        bodies = generate_bodies(emu)[-2:]
        assert [len(b["contents"]) for b in bodies] == [3, 5]
        assert bodies[1]["contents"][2:4] == wire(t2.user, t2.model)


KILLS = 10  # each round starts a Python process; benchmarks/soak.py kills far more
CHILD_LEASE_TTL = 0.3


def _check_file(path: Path, sid: str) -> tuple[int, str | None]:
    """Invariants on a raw connection; returns the number of turns and the lease owner left."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        blobs = {r[0] for r in db.execute("SELECT sha256 FROM blobs")}
        turns = {r[0]: json.loads(r[1]) for r in db.execute("SELECT id, blobs FROM turns")}
        for refs in turns.values():
            assert set(refs) <= blobs  # no turn row without its blobs
        head, version, owner = db.execute(
            "SELECT head, version, lease_owner FROM sessions WHERE id = ?", (sid,)
        ).fetchone()
        assert head in turns
        assert version == 1 + len(turns)  # only commits happen here, one version each
        return len(turns), owner
    finally:
        db.close()


async def _run_child_until_killed(
    db: Path, url: str, sid: str, delay: float
) -> tuple[list[JSON], bytes]:
    """Start a looping child, SIGKILL it `delay` s after it is ready; its turns and stderr."""
    async with await anyio.open_process(
        _spawn_args("loop", db, url, sid, CHILD_LEASE_TTL)
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        out = BufferedByteReceiveStream(child.stdout)
        ready = await _line(out)
        if ready != "ready":
            pytest.fail(f"child did not start: {ready!r} {(await _drain(child.stderr)).decode()}")
        await anyio.sleep(delay)
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
        rest, err = await _drain(out), await _drain(child.stderr)
    return [json.loads(line) for line in rest.decode().splitlines()], err


@pytest.mark.slow
async def test_kill_9_mid_turn_keeps_every_committed_turn(
    tmp_path: Path, make_emulator: EmulatorFactory
) -> None:
    """SIGKILLed mid-turn at random moments, a child leaves a sound file holding every turn it
    reported, whole, and a fresh engine continues the session at once (the dead holder's
    lease is taken over)."""
    # Latency plus a dripped body keep a turn in flight most of the time.
    emu = await make_emulator(latency=0.05, faults="drip:0.01:8192")
    db, sid = tmp_path / "crash.db", new_id()
    cfg = config_for(emu.base_url, on_busy="wait", lease_ttl=CHILD_LEASE_TTL, lease_wait=30.0)
    async with SqliteStore(db) as store, Engine(cfg, store=store) as engine:
        # Requests stay under 1 MiB, the size past which aiohttp warns about raw bytes bodies.
        await engine.create_session(
            "nano-banana-2",
            session_id=sid,
            image_config=ImageConfig(image_size="512"),
            budget=Budget(max_request_bytes=800_000, policy="drop_oldest"),
        )
    rng = random.Random(20250611)
    printed: dict[str, JSON] = {}
    ours: set[str] = set()
    killed_holding_lease = 0
    for round_ in range(KILLS):
        fresh, err = await _run_child_until_killed(db, emu.base_url, sid, rng.uniform(0.05, 0.8))
        printed.update((line["id"], line) for line in fresh)
        n_turns, owner = await anyio.to_thread.run_sync(_check_file, db, sid)
        killed_holding_lease += owner is not None
        async with SqliteStore(db) as store, Engine(cfg, store=store) as engine:
            assert await check_store(store) == []  # what `nanoedit sessions check` reports
            session = await engine.open_session(sid)
            state = session.state
            assert len(state.turns) == n_turns
            for tid, line in printed.items():
                t = state.turn(tid)
                digest = hashlib.sha256(encode_contents([t.user, t.model])).hexdigest()
                assert (digest, t.index) == (line["digest"], line["index"]), err.decode()
            # No partial turn: each is complete and hangs off a stored parent at the right depth;
            # no two share a parent, so no two writers ever appended to one head.
            parents = [t.parent for t in state.turns.values()]
            assert len(set(parents)) == len(parents)
            for t in state.turns.values():
                depth = state.turn(t.parent).index + 1 if t.parent else 1
                assert t.index == depth and t.finish_reason == "STOP" and t.model.images()
            assert len(session.turns()) == n_turns  # the head is the newest turn
            # A kill can land after a commit but before its line was printed: at most one a kill.
            assert len(set(state.turns) - set(printed) - ours) <= round_ + 1
            turn = await session.send(f"the parent continues after kill {round_ + 1}")
            assert turn.index == n_turns + 1
            ours.add(turn.id)
    assert printed and killed_holding_lease  # kills did land between and during turns
    print(
        f"\nkill -9: {KILLS} kills, {killed_holding_lease} mid-turn (lease held), "
        f"{len(printed)} child turns verified, {len(ours)} parent turns"
    )


# --- the command line ---------------------------------------------------------------------


async def test_edit_cli_continues_a_stored_session(tmp_path: Path, emulator_url: str) -> None:
    """`nanoedit edit --store` prints the session id; `--session ID` continues it at turn 3."""
    db, out = tmp_path / "cli.db", tmp_path / "out"
    edit = [sys.executable, "-m", "engine", "edit", "--store", str(db), "--out", str(out)]
    edit += ["--base-url", emulator_url]
    first = await anyio.run_process([*edit, "A ceramic mug", "Add a sprig"], check=False)
    assert first.returncode == 0, first.stderr.decode()
    sid = first.stdout.decode().splitlines()[-1]
    second = await anyio.run_process(
        [*edit, "--session", sid[:8], "--force", "--json", "Make it grayscale"], check=False
    )
    assert second.returncode == 0, second.stderr.decode()
    doc = json.loads(second.stdout)
    assert doc["session_id"] == sid and [t["index"] for t in doc["turns"]] == [3]
    show = await anyio.run_process(
        [sys.executable, "-m", "engine", "sessions", "--store", str(db), "show", sid, "--json"],
        check=False,
    )
    assert show.returncode == 0, show.stderr.decode()
    shown = json.loads(show.stdout)
    assert [t["index"] for t in shown["turns"]] == [1, 2, 3]
    assert [t["text"] for t in shown["turns"]] == [
        "A ceramic mug",
        "Add a sprig",
        "Make it grayscale",
    ]
    assert all(t["on_branch"] for t in shown["turns"]) and shown["turns"][-1]["head"]


# --- dead holders, SIGTERM, money across engines --------------------------------------------------


async def test_a_dead_processes_lease_is_taken_over_at_once(
    make_emulator: EmulatorFactory,
) -> None:
    """A lease whose process on this host is gone does not block the session for its TTL."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        assert await store.acquire_lease(s.id, dead_owner(), 3600)
        assert (await s.send("A ceramic mug")).index == 1
        assert await store.lease_holder(s.id) is None


async def test_busy_message_names_the_holder_and_the_way_to_wait(
    make_emulator: EmulatorFactory,
) -> None:
    """SessionBusy says which process holds the lease, until when, and that waiting exists."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        assert await store.acquire_lease(s.id, live_owner(), 60)
        with pytest.raises(SessionBusy) as info:
            await s.send("A ceramic mug")
    message = str(info.value)
    assert f"process {os.getpid()} on " in message
    assert "until " in message and "--on-busy wait" in message


async def test_sigterm_cancels_the_turn_and_releases_the_lease(
    tmp_path: Path, emulator_url: str
) -> None:
    """`nanoedit edit` stopped with SIGTERM mid-turn (as systemd or `timeout` do): it exits 130
    at once, releases the lease, commits nothing and still writes session.json."""
    db, out = tmp_path / "term.db", tmp_path / "out"
    async with SqliteStore(db) as store:
        await store.create(SessionRecord(id="term0001", model="nano-banana-2"))
    argv = [sys.executable, "-m", "engine", "edit", "--store", str(db), "--out", str(out)]
    argv += ["--session", "term0001", "--latency", "30", "a slow mug"]
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_KEY"))}
    proc = await anyio.open_process(argv, env=env)
    try:
        async with SqliteStore(db) as store:
            with anyio.fail_after(20):
                # Another process's progress shows only in the file: poll it.
                while await store.lease_holder("term0001") is None:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                code = await proc.wait()
            assert code == 130
            assert await store.lease_holder("term0001") is None
            assert (await store.load("term0001")).record.head is None
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.aclose()
    assert (out / "session.json").read_bytes() == b'{"contents":[]}\n'


async def test_max_cost_counts_what_every_engine_spent(tmp_path: Path) -> None:
    """A session reopened by one engine after another still has one spending limit: the
    persisted turn costs count, not only what the current engine spent."""
    db = tmp_path / "money.db"
    provider = FakeProvider()
    async with SqliteStore(db) as store, Engine(provider=provider, store=store) as engine:
        probe = await engine.create_session()
        cost = (await probe.send("A ceramic mug")).cost_usd
        s = await engine.create_session(budget=Budget(max_cost_usd=cost * 1.5))
    outcomes = []
    for n in range(3):
        async with SqliteStore(db) as store, Engine(provider=provider, store=store) as engine:
            reopened = await engine.open_session(s.id)
            try:
                await reopened.send(f"edit {n}")
                outcomes.append("sent")
            except BudgetExceeded:
                outcomes.append("refused")
    async with SqliteStore(db) as store:
        spent = sum(t.cost_usd for t in (await store.load(s.id)).turns.values())
    assert outcomes == ["sent", "refused", "refused"]
    assert spent <= cost * 1.5
