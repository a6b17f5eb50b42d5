"""Child process for the engine durability tests (tests/runtime/test_engine_durable.py): an
Engine on a SqliteStore, talking to an emulator whose base URL the parent passes.

    engine_child.py turns DB URL SID N         create SID, send N turns, print one JSON line per
                                               turn ({"id", "index"}), then a last line
                                               {"contents": [...]}: the wire JSON the next
                                               request will carry
    engine_child.py loop DB URL SID TTL        open SID with lease_ttl=TTL, print "ready", then
                                               send turns until killed, printing
                                               {"id", "index", "digest"} after each send returns
    engine_child.py race DB URL SID ON_BUSY    open SID, print "ready", wait for a line on stdin,
                                               send one turn, print {"ok": id, "index": n} or
                                               {"busy": message}

`digest` is the sha256 of `encode_contents([user, model])` as committed, so the parent can check
what it loads against what the child held in memory. Logs go to stderr, warnings and up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any

import anyio
import anyio.to_thread
import structlog

from engine import Engine, EngineConfig, RetryPolicy, SessionBusy
from sessions import SqliteStore, encode_contents


def emit(obj: object) -> None:
    """One line on stdout, flushed at once so a SIGKILL cannot swallow it."""
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


def config(url: str, **kw: Any) -> EngineConfig:
    """An engine config for the parent's emulator."""
    retry = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)
    return EngineConfig(provider="custom", base_url=url, retry=retry, **kw)


async def turns(db: str, url: str, sid: str, n: int) -> None:
    """Create `sid`, send `n` turns, print them and the history they leave."""
    async with SqliteStore(db) as store, Engine(config(url), store=store) as engine:
        session = await engine.create_session("nano-banana-2", session_id=sid, title="child")
        for i in range(n):
            turn = await session.send(f"child edit {i + 1} of {sid}")
            emit({"id": turn.id, "index": turn.index})
        emit({"contents": json.loads(encode_contents(session.contents()))})


async def loop(db: str, url: str, sid: str, ttl: float) -> None:
    """Send turns on `sid` until killed, printing each one once `send` has returned."""
    cfg = config(url, lease_ttl=ttl, on_busy="wait", lease_wait=60.0)
    async with SqliteStore(db) as store, Engine(cfg, store=store) as engine:
        session = await engine.open_session(sid)
        emit("ready")
        n = 0
        while True:
            n += 1
            turn = await session.send(f"loop edit {n}")
            wire = encode_contents([turn.record.user, turn.record.model])
            emit({"id": turn.id, "index": turn.index, "digest": hashlib.sha256(wire).hexdigest()})


async def race(db: str, url: str, sid: str, on_busy: str) -> None:
    """Open `sid`, wait for the parent's go, send one turn."""
    cfg = config(url, on_busy=on_busy)
    async with SqliteStore(db) as store, Engine(cfg, store=store) as engine:
        session = await engine.open_session(sid)
        emit("ready")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        try:
            turn = await session.send(f"race edit from {engine.lease_owner}")
        except SessionBusy as exc:
            emit({"busy": str(exc)})
        else:
            emit({"ok": turn.id, "index": turn.index})


def main(argv: list[str]) -> None:
    """Dispatch on the mode named in argv[1]."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    mode, db, url, sid, arg = argv[1:]
    if mode == "turns":
        anyio.run(turns, db, url, sid, int(arg))
    elif mode == "loop":
        anyio.run(loop, db, url, sid, float(arg))
    elif mode == "race":
        anyio.run(race, db, url, sid, arg)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
