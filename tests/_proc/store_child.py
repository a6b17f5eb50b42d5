"""Child process for the store process tests: writes turns, then reports on stdout. DB is a
SQLite path or a postgresql:// DSN.

    store_child.py write DB SID N      create SID, commit N turns, print one JSON line per turn
                                       ({"id", "digest"}) and a last line {"contents": digest}
    store_child.py crash DB SID SEED   print "ready", then commit turns forever, printing
                                       {"id", "digest", "blobs"} after each commit_turn returns
    store_child.py race DB SID         load SID, print "loaded V", wait for a line on stdin, then
                                       commit one turn and print "ok ID" or "busy"

`digest` is the sha256 of `encode_contents([user, model])` as committed, so the parent can check
what it loads against what the child held in memory.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

import anyio

from sessions import (
    Blob,
    Content,
    Part,
    PostgresStore,
    SessionBusy,
    SessionRecord,
    SessionStore,
    SqliteStore,
    TurnRecord,
    Usage,
    encode_contents,
    new_id,
)

BLOB_SIZE = 200 * 1024


def open_store(db: str) -> SessionStore:
    """A PostgresStore for a postgresql:// DSN, else a SqliteStore for the path."""
    if db.startswith("postgresql://"):
        return PostgresStore(db)
    return SqliteStore(db)


def make_turn(
    parent: TurnRecord | None, rng: random.Random, refs: list[bytes], out: bytes | None = None
) -> TurnRecord:
    """A turn with the given reference images and model image (default: fresh random bytes)."""
    n = parent.index + 1 if parent else 1
    user = Content(
        role="user",
        parts=[
            Part(text=f"edit {n}: {rng.random()}"),
            *(Part(inline_data=Blob(mime_type="image/png", data=r)) for r in refs),
        ],
    )
    model = Content(
        role="model",
        parts=[
            Part(text="plan", thought=True, thought_signature=rng.randbytes(64)),
            Part(inline_data=Blob(mime_type="image/png", data=out or rng.randbytes(BLOB_SIZE))),
            Part(text="done"),
        ],
    )
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=n,
        user=user,
        model=model,
        model_id="child-model",
        usage=Usage(prompt_tokens=n, output_tokens=1290),
        cost_usd=0.039,
    )


def digest(turn: TurnRecord) -> str:
    """sha256 of the turn's wire Contents."""
    return hashlib.sha256(encode_contents([turn.user, turn.model])).hexdigest()


def emit(obj: object) -> None:
    """One line on stdout, flushed at once so a SIGKILL cannot swallow it."""
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


async def write(db: str, sid: str, n: int) -> None:
    """Create `sid` and commit `n` turns on one branch."""
    rng = random.Random(sid)
    ref = rng.randbytes(BLOB_SIZE)
    async with open_store(db) as store:
        await store.create(SessionRecord(id=sid, model="child-model", title="from a child"))
        parent: TurnRecord | None = None
        version = 1
        turns = []
        for _ in range(n):
            turn = make_turn(parent, rng, [ref])
            version = (await store.commit_turn(sid, turn, expected_version=version)).version
            emit({"id": turn.id, "digest": digest(turn)})
            turns.append(turn)
            parent = turn
        contents = [c for t in turns for c in (t.user, t.model)]
        emit({"contents": hashlib.sha256(encode_contents(contents)).hexdigest()})


async def crash(db: str, sid: str, seed: int) -> None:
    """Commit turns until killed: images repeat across turns, one in five branches."""
    rng = random.Random(seed)
    shared = [random.Random(f"ref-{i}").randbytes(BLOB_SIZE) for i in range(3)]
    # Model images from a small pool, new in every run: first uses write a blob, later ones
    # hit INSERT OR IGNORE, and the file stays small enough to check after every kill.
    outputs = [rng.randbytes(BLOB_SIZE) for _ in range(6)]
    async with open_store(db) as store:
        state = await store.load(sid)
        emit("ready")
        while True:
            head = state.turn(state.record.head) if state.record.head else None
            parent = head
            if head is not None and rng.random() < 0.2 and head.parent is not None:
                parent = state.turn(head.parent)  # regenerate: a sibling of the head
            refs = rng.sample(shared, rng.randint(0, 2))
            turn = make_turn(parent, rng, refs, rng.choice(outputs))
            record = await store.commit_turn(sid, turn, expected_version=state.record.version)
            shas = [
                hashlib.sha256(b.data).hexdigest()
                for c in (turn.user, turn.model)
                for b in c.images()
            ]
            emit({"id": turn.id, "digest": digest(turn), "blobs": shas})
            state.turns[turn.id] = turn
            state.record = record


async def race(db: str, sid: str) -> None:
    """Load, wait for the parent's go, commit one turn on the loaded head."""
    async with open_store(db) as store:
        state = await store.load(sid)
        emit(f"loaded {state.record.version}")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        head = state.turn(state.record.head) if state.record.head else None
        turn = make_turn(head, random.Random(), [])
        try:
            await store.commit_turn(sid, turn, expected_version=state.record.version)
        except SessionBusy:
            emit("busy")
        else:
            emit(f"ok {turn.id}")


def main(argv: list[str]) -> None:
    """Dispatch on the mode named in argv[1]."""
    mode, db, sid, *rest = argv[1:]
    if mode == "write":
        anyio.run(write, db, sid, int(rest[0]))
    elif mode == "crash":
        anyio.run(crash, db, sid, int(rest[0]))
    elif mode == "race":
        anyio.run(race, db, sid)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
