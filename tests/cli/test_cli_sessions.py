"""`nanoedit sessions` (engine/_cli_sessions.py), driven through `add_parser` and `run`."""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import struct
import zlib
from datetime import datetime
from pathlib import Path

import anyio
import pytest
from PIL import Image

from engine.cli._sessions import add_parser, run
from sessions import (
    Blob,
    Content,
    LeaseHolder,
    Part,
    SessionRecord,
    SessionState,
    SqliteStore,
    TurnRecord,
    Usage,
    encode_contents,
    new_id,
)
from sessions._images import image_dimensions as image_size
from tests.conftest import dead_owner, live_owner


def png(width: int, height: int) -> bytes:
    """A tiny valid PNG header with the given size (enough for the size parser)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + crc + b"\x00" * 64


def make_turn(parent: TurnRecord | None, text: str) -> TurnRecord:
    """A turn with one 1024x768 model image and some usage."""
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=parent.index + 1 if parent else 1,
        user=Content(role="user", parts=[Part(text=text)]),
        model=Content(
            role="model",
            parts=[Part(inline_data=Blob(mime_type="image/png", data=png(1024, 768) + b"x"))],
        ),
        model_id="m",
        usage=Usage(prompt_tokens=560, output_tokens=1290),
        cost_usd=0.039,
    )


async def _populate(path: Path, sid: str, n: int, branch: bool) -> None:
    async with SqliteStore(path) as store:
        await store.create(SessionRecord(id=sid, model="nano-banana-2", title="mug"))
        turns: list[TurnRecord] = []
        for i in range(n):
            turns.append(make_turn(turns[-1] if turns else None, f"edit number {i + 1}"))
            await store.commit_turn(sid, turns[-1], expected_version=i + 1)
        if branch:  # a sibling of the last turn: two branches, head on the new one
            alt = make_turn(turns[-2], "alternative edit")
            await store.commit_turn(sid, alt, expected_version=n + 1)


async def _load(path: Path, sid: str) -> SessionState:
    async with SqliteStore(path) as store:
        return await store.load(sid)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store with session 'aaaa1111' (3 turns, then a sibling of turn 3) and 'bbbb2222'."""
    path = tmp_path / "sessions.db"
    anyio.run(_populate, path, "aaaa1111", 3, True)
    anyio.run(_populate, path, "bbbb2222", 1, False)
    return path


def cli(*argv: str) -> int:
    """Parse argv as the `nanoedit` parser would and run the sessions command."""
    parser = argparse.ArgumentParser(prog="nanoedit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    code: int = run(parser.parse_args(["sessions", *argv]))
    return code


def test_ls_json_fields(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ls --json lists every session with id, model, turns and an ISO-8601 update time."""
    assert cli("--store", str(db), "ls", "--json") == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"aaaa1111", "bbbb2222"}
    a = rows["aaaa1111"]
    assert (a["model"], a["turns"], a["total_turns"], a["title"]) == ("nano-banana-2", 3, 4, "mug")
    assert datetime.fromisoformat(a["updated"]).tzinfo is not None


def test_ls_table(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ls prints an aligned table with a header; --store may follow the subcommand."""
    assert cli("ls", "--store", str(db)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "TURNS", "MODEL", "UPDATED", "TITLE"]
    assert {line.split()[0] for line in lines[1:]} == {"aaaa1111", "bbbb2222"}
    assert len({line.index("nano-banana-2") for line in lines[1:]}) == 1  # aligned column


def test_ls_missing_store_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Listing a store that does not exist yet prints nothing and creates no file."""
    assert cli("--store", str(tmp_path / "none.db"), "ls", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "none.db").exists()


def test_default_store_from_nanoedit_home(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --store the store is $NANOEDIT_HOME/sessions.db."""
    monkeypatch.setenv("NANOEDIT_HOME", str(db.parent))
    assert cli("ls", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_show_marks_branches_and_head(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show draws both branches, marks the head and gives image size, tokens and cost."""
    assert cli("--store", str(db), "show", "aaaa") == 0
    out = capsys.readouterr().out
    assert "2 branches" in out
    assert "├─" in out and "└─" in out
    head_lines = [line for line in out.splitlines() if "<- head" in line]
    assert len(head_lines) == 1 and "alternative edit" in head_lines[0]
    assert "1024x768" in out and "560/1290 tok" in out and "$0.0390" in out


def test_show_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show --json gives the turns with their images' pixel sizes."""
    assert cli("--store", str(db), "show", "aaaa1111", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["branches"] == 2 and len(doc["turns"]) == 4
    assert doc["turns"][0]["model_images"][0]["width"] == 1024
    assert sum(t["head"] for t in doc["turns"]) == 1


def test_fork_at_prints_id_of_two_turn_session(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fork --at 2 prints a new id whose session holds turns 1..2."""
    assert cli("--store", str(db), "fork", "aaaa1111", "--at", "2") == 0
    new = capsys.readouterr().out.strip()
    state = anyio.run(_load, db, new)
    assert [t.index for t in state.path()] == [1, 2]
    assert state.record.parent_id == "aaaa1111" and state.record.forked_at == 2


def test_undo_redo_move_head(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """undo moves the head to turn 2, redo back to turn 3."""
    assert cli("--store", str(db), "undo", "aaaa1111") == 0
    assert "head at turn 2" in capsys.readouterr().out
    assert anyio.run(_load, db, "aaaa1111").turn(_head(db)).index == 2
    assert cli("--store", str(db), "redo", "aaaa1111") == 0
    assert "head at turn 3" in capsys.readouterr().out
    assert anyio.run(_load, db, "aaaa1111").turn(_head(db)).index == 3


def _head(db: Path) -> str:
    head = anyio.run(_load, db, "aaaa1111").record.head
    assert head is not None
    return head


def test_checkout_by_number(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """checkout N puts the head on turn N of the current branch."""
    assert cli("--store", str(db), "checkout", "aaaa1111", "1") == 0
    assert "head at turn 1" in capsys.readouterr().out


def test_rm(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rm deletes the session; show then fails."""
    assert cli("--store", str(db), "rm", "bbbb2222") == 0
    assert cli("--store", str(db), "show", "bbbb2222") == 1
    assert "SessionNotFound" in capsys.readouterr().err


def test_unknown_id_is_one_line_exit_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown id prints one error line, no traceback, and exits 1."""
    assert cli("--store", str(db), "show", "zzz") == 1
    err = capsys.readouterr().err
    assert err == "error: SessionNotFound: no session 'zzz'\n"


def test_ambiguous_prefix(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A prefix shared by two sessions is refused."""
    anyio.run(_populate, db, "aaaa9999", 1, False)
    assert cli("--store", str(db), "undo", "aaaa") == 1
    assert "matches 2 sessions" in capsys.readouterr().err


def test_undo_at_root_errors(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """undo with nothing to undo is a one-line error."""
    assert cli("--store", str(db), "undo", "bbbb2222") == 0
    assert cli("--store", str(db), "undo", "bbbb2222") == 1
    assert capsys.readouterr().err.startswith("error: SessionError: ")


def test_export_import_round_trip(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export -o then import gives a new session with byte-identical contents."""
    out = tmp_path / "export.json"
    assert cli("--store", str(db), "export", "aaaa1111", "-o", str(out)) == 0
    assert "nanoedit" in json.loads(out.read_bytes())
    capsys.readouterr()
    assert cli("--store", str(db), "import", str(out)) == 0
    new = capsys.readouterr().out.strip()
    a, b = anyio.run(_load, db, "aaaa1111"), anyio.run(_load, db, new)
    assert encode_contents(a.contents()) == encode_contents(b.contents())


def test_export_request_only_to_stdout(
    db: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """export --request-only writes a bare request to stdout."""
    assert cli("--store", str(db), "export", "aaaa1111", "--request-only") == 0
    body = json.loads(capsysbinary.readouterr().out)
    assert set(body) == {"contents"} and len(body["contents"]) == 6


def test_import_missing_file(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing import file is a one-line error."""
    assert cli("--store", str(db), "import", str(db.parent / "nope.json")) == 1
    assert capsys.readouterr().err.startswith("error: FileNotFoundError")


def test_import_from_stdin(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """import - reads a plain {"contents": [...]} body from stdin."""
    state = anyio.run(_load, db, "bbbb2222")
    body = b'{"contents":' + encode_contents(state.contents()) + b"}"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(body)))
    assert cli("--store", str(db), "import", "-", "--model", "nano-banana-pro") == 0
    new = capsys.readouterr().out.strip()
    assert anyio.run(_load, db, new).record.model == "nano-banana-pro"


def pillow(fmt: str, width: int, height: int, **kw: object) -> bytes:
    """A real image file written by Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png(640, 480), (640, 480)),
        (pillow("PNG", 3, 2), (3, 2)),
        (pillow("JPEG", 640, 480), (640, 480)),
        (pillow("JPEG", 33, 17, progressive=True), (33, 17)),
        (pillow("WEBP", 640, 480), (640, 480)),
        (pillow("WEBP", 31, 7, lossless=True), (31, 7)),
        (pillow("GIF", 5, 5), (5, 5)),
        (b"\xff\xd8\xff", None),
        (b"", None),
    ],
)
def test_image_size(data: bytes, size: tuple[int, int] | None) -> None:
    """Pixel sizes come from PNG, JPEG and WebP headers; other data gives None."""
    assert image_size(data) == size


# --- leases and check ---------------------------------------------------------------------------


async def _hold(path: Path, sid: str, owner: str, ttl: float = 60) -> None:
    async with SqliteStore(path) as store:
        assert await store.acquire_lease(sid, owner, ttl)


async def _holder(path: Path, sid: str) -> LeaseHolder | None:
    async with SqliteStore(path) as store:
        return await store.lease_holder(sid)


@pytest.mark.parametrize("argv", [["undo"], ["redo"], ["checkout", "--", "1"], ["rm"]])
def test_head_moves_and_rm_take_the_lease(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """While another process holds the lease, undo/redo/checkout/rm are refused (one line,
    naming the holder and --on-busy wait) and change nothing."""
    anyio.run(_hold, db, "aaaa1111", live_owner())
    before = anyio.run(_load, db, "aaaa1111")
    command, *rest = argv
    assert cli("--store", str(db), command, "aaaa", *[r for r in rest if r != "--"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: SessionBusy:")
    assert f"process {os.getpid()}" in err and "--on-busy wait" in err
    after = anyio.run(_load, db, "aaaa1111")
    assert after.record.version == before.record.version


def test_on_busy_wait_waits_for_the_lease(db: Path) -> None:
    """--on-busy wait polls until a short lease runs out, then undoes."""
    anyio.run(_hold, db, "aaaa1111", live_owner(), 0.3)
    assert cli("--store", str(db), "undo", "aaaa", "--on-busy", "wait") == 0
    assert anyio.run(_load, db, "aaaa1111").record.version == 6


def test_a_dead_processes_lease_is_taken_over_at_once(db: Path) -> None:
    """A lease whose process on this host is gone does not block: undo proceeds at once."""
    anyio.run(_hold, db, "aaaa1111", dead_owner(), 3600)
    assert cli("--store", str(db), "undo", "aaaa") == 0
    assert anyio.run(_holder, db, "aaaa1111") is None


def test_check_a_sound_store(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check: exit 0 and no problem lines for a sound store."""
    assert cli("--store", str(db), "check") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2 session(s) checked, 0 problem(s)" in captured.err


def test_check_finds_corrupt_blobs_and_stale_leases(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob whose bytes changed on disk and a dead process's lease are reported; exit 1."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE blobs SET data = CAST('rotten' AS BLOB)")
    anyio.run(_hold, db, "bbbb2222", dead_owner(), 3600)
    assert cli("--store", str(db), "check") == 1
    out = capsys.readouterr().out
    assert "bytes hash to" in out
    assert "session bbbb2222: stale lease" in out
