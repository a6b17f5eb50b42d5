"""History images by reference (issue 11): uploads through the Files API, `fileData` in later
requests, expiry and re-upload, resumed sessions, budgets, exports, and the emulator's Files API."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from engine import Engine, EngineConfig
from engine._exceptions import BudgetExceeded, ConfigError, TransportError, Unauthorized
from engine.cli import main
from engine.emulator import EmulatorSettings
from engine.emulator._vault import FileVault, missing_file
from engine.events import Event, TurnRetrying
from engine.policy import Budget
from engine.providers import GeminiProvider
from engine.runtime import missing_file_names
from sessions import FileRef, MemoryStore, SqliteStore, export_session
from tests.conftest import EmulatorFactory, EmulatorThread, config_for

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

PROMPTS = ["a mug on an oak table", "add a sprig", "make it warm", "add a cat", "now blue"]


def _generate_bodies(emu: Any) -> list[dict[str, Any]]:
    return [
        json.loads(r.body)
        for r in emu.requests
        if r.endpoint in ("generateContent", "streamGenerateContent")
    ]


def _parts(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["role"], p) for c in body["contents"] for p in c["parts"]]


async def test_five_turns_upload_each_image_once_and_refer_to_it(
    make_emulator: EmulatorFactory,
) -> None:
    """Five turns upload each image once and refer to it."""
    emu = await make_emulator(record_requests=True, flat=False)
    async with Engine(config_for(emu.base_url, history_images="files")) as engine:
        session = await engine.create_session()
        turns = [await session.send(p) for p in PROMPTS]
        history = session.contents()
    # Each image of turns 1-4 uploaded exactly once (turn 5's own image goes up after it, in
    # the background, for a sixth turn: it may or may not have made it before the close).
    stored = [hashlib.sha256(f.data).hexdigest() for f in emu._state.files.files.values()]
    assert len(stored) == len(set(stored))
    assert {i.sha256 for t in turns[:4] for i in t.images} <= set(stored)
    assert set(stored) <= {i.sha256 for t in turns for i in t.images}
    bodies = _generate_bodies(emu)
    assert len(bodies) == 5
    for n, body in enumerate(bodies):
        parts = _parts(body)
        inline = [p for _, p in parts if "inlineData" in p]
        refs = [p for _, p in parts if "fileData" in p]
        assert inline == [], f"turn {n + 1} carried inline history images"
        assert len(refs) == n  # one model image per earlier turn
        for ref in refs:
            assert ref["fileData"]["mimeType"] == "image/png"
            assert ref["fileData"]["fileUri"].startswith(emu.base_url + "/v1beta/files/")
    # Signatures go back byte for byte: the model parts of turn 5's request against the
    # history as committed (the emulator also validates them, or turn 5 would have failed).
    sent_models = [c for c in bodies[-1]["contents"] if c["role"] == "model"]
    kept_models = [c for c in history if c.role == "model"][:4]
    for sent, kept in zip(sent_models, kept_models, strict=True):
        sent_sigs = [p.get("thoughtSignature") for p in sent["parts"]]
        kept_sigs = [
            base64.b64encode(p.thought_signature).decode() if p.thought_signature else None
            for p in kept.parts
        ]
        assert sent_sigs == kept_sigs
    # Requests stay the same size however long the session is.
    sizes = [t.record.request_bytes for t in turns]
    assert sizes[4] < 2_000 and sizes[4] <= 1.1 * sizes[1] + 1_500


async def test_inline_is_todays_behaviour(make_emulator: EmulatorFactory) -> None:
    """history_images='inline' sends every history image inline, as before the Files API."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url, history_images="inline")) as engine:
        session = await engine.create_session()
        for prompt in PROMPTS[:3]:
            await session.send(prompt)
    assert emu.stats()["files"]["uploaded"] == 0
    last = _parts(_generate_bodies(emu)[-1])
    assert [p for _, p in last if "fileData" in p] == []
    assert len([p for _, p in last if "inlineData" in p]) == 2


async def test_auto_uses_files_on_gemini_presets_only(make_emulator: EmulatorFactory) -> None:
    """Auto uses files on gemini presets only."""
    async with Engine(EngineConfig()) as engine:  # the embedded emulator: the local preset
        session = await engine.create_session()
        await session.send("a mug")
        await session.send("add a sprig")
        assert engine.files is not None and engine.files.uploaded >= 1
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as engine:  # custom: auto means inline
        session = await engine.create_session()
        await session.send("a mug")
        await session.send("add a sprig")
    assert emu.stats()["files"]["uploaded"] == 0
    # A session can ask for files itself.
    async with Engine(config_for(emu.base_url)) as engine:
        session = await engine.create_session(history_images="files")
        await session.send("a mug")
        await session.send("add a sprig")
    assert emu.stats()["files"]["uploaded"] >= 1


async def test_files_without_a_files_api_is_refused(make_emulator: EmulatorFactory) -> None:
    """Files without a files api is refused."""
    emu = await make_emulator()
    cfg = config_for(emu.base_url, api="openai-chat")
    async with Engine(cfg) as engine:
        with pytest.raises(ConfigError, match="no Files API"):
            await engine.create_session(history_images="files")
        with pytest.raises(ConfigError, match="inline, files or auto"):
            await engine.create_session(history_images="sometimes")  # type: ignore[arg-type]
        assert await engine.store.list() == []
    with pytest.raises(ConfigError, match="no Files API"):
        async with Engine(config_for(emu.base_url, api="openai-chat", history_images="files")):
            pass
    with pytest.raises(ConfigError, match="inline, files or auto"):
        EngineConfig(history_images="never")  # type: ignore[arg-type]


async def test_an_expired_file_is_uploaded_again_and_the_turn_succeeds(
    make_emulator: EmulatorFactory,
) -> None:
    """An expired file is uploaded again and the turn succeeds."""
    emu = await make_emulator(record_requests=True)
    events: list[Event] = []
    async with Engine(config_for(emu.base_url, history_images="files")) as engine:
        engine.bus.on("turn.*", events.append)
        session = await engine.create_session()
        for prompt in PROMPTS[:3]:
            await session.send(prompt)
        before = emu.stats()["files"]["uploaded"]
        emu.expire_files()
        turn = await session.send("now blue")
        assert turn.attempts == 2
        assert len(session.turns()) == 4
    retrying = [e for e in events if isinstance(e, TurnRetrying)]
    assert len(retrying) == 1 and retrying[0].turn == 4 and retrying[0].status == 403
    assert "expired or missing" in retrying[0].error
    # Both history images went up again (the error names only the first one missing).
    assert emu.stats()["files"]["uploaded"] >= before + 2
    last = _parts(_generate_bodies(emu)[-1])
    assert len([p for _, p in last if "fileData" in p]) == 3


async def test_a_file_that_stays_missing_fails_the_turn_cleanly(
    make_emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that stays missing fails the turn cleanly."""

    def never_there(self: FileVault, uri: str) -> Any:
        raise missing_file(uri.rpartition("/")[2])

    monkeypatch.setattr(FileVault, "by_uri", never_there)
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url, history_images="files")) as engine:
        session = await engine.create_session()
        await session.send("a mug")
        with pytest.raises(Unauthorized, match="may not exist") as failed:
            await session.send("add a sprig")
        assert failed.value.attempts == 2  # uploaded again once, then it gives up
        # Nothing partial: the session holds its one turn.
        assert [t.index for t in session.turns()] == [1]
        assert [t.index for t in (await engine.open_session(session.id)).turns()] == [1]


async def test_files_that_expire_soon_are_uploaded_again_before_use(
    make_emulator: EmulatorFactory,
) -> None:
    """Files that expire soon are uploaded again before use."""
    emu = await make_emulator(record_requests=True, file_ttl=1800)  # under the 1 h margin
    async with Engine(config_for(emu.base_url, history_images="files")) as engine:
        session = await engine.create_session()
        await session.send("a mug")
        await session.send("add a sprig")
    # Never referred to (it would expire too soon): the history went inline.
    last = _parts(_generate_bodies(emu)[-1])
    assert [p for _, p in last if "fileData" in p] == []
    assert len([p for _, p in last if "inlineData" in p]) == 1


async def test_a_resumed_session_in_a_new_engine_uploads_nothing_again(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A resumed session in a new engine uploads nothing again."""
    emu = await make_emulator()
    path = tmp_path / "s.db"
    cfg = config_for(emu.base_url, history_images="files", api_key=_secret("k-123"))
    async with SqliteStore(path) as store, Engine(cfg, store=store) as engine:
        session = await engine.create_session()
        for prompt in PROMPTS[:3]:
            await session.send(prompt)
        await engine.files.prepare(session.contents()) if engine.files else None
        sid = session.id
    uploaded = emu.stats()["files"]["uploaded"]
    async with SqliteStore(path) as store, Engine(cfg, store=store) as engine:
        session = await engine.open_session(sid)
        assert engine.files is not None
        await engine.files.prepare(session.contents())  # what the next turn does first
        assert engine.files.uploaded == 0
        await session.send("make it blue")
    # Only the new turn's image may have gone up (in the background, after it committed).
    assert emu.stats()["files"]["uploaded"] <= uploaded + 1
    # The store keeps a fingerprint of endpoint and key, never the key.
    assert b"k-123" not in path.read_bytes()


def _secret(value: str) -> Any:
    from engine._config import Secret

    return Secret(value)


async def test_an_upload_that_fails_leaves_the_image_inline(
    make_emulator: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload that fails leaves the image inline."""
    emu = await make_emulator(record_requests=True)

    async def broken(self: GeminiProvider, data: bytes, mime: str, name: str = "") -> Any:
        raise TransportError("upload refused")

    monkeypatch.setattr(GeminiProvider, "upload_file", broken)
    async with Engine(config_for(emu.base_url, history_images="files")) as engine:
        session = await engine.create_session()
        await session.send("a mug")
        await session.send("add a sprig")
    last = _parts(_generate_bodies(emu)[-1])
    assert len([p for _, p in last if "inlineData" in p]) == 1
    assert [p for _, p in last if "fileData" in p] == []


async def test_the_byte_budget_counts_references_and_tokens_count_images(
    make_emulator: EmulatorFactory,
) -> None:
    """The byte budget counts references and tokens count images."""
    emu = await make_emulator(flat=False)
    # 1K images are ~1.3 MB each: inline, the third turn's request passes 2.5 MB.
    budget = Budget(max_request_bytes=2_500_000)
    async with Engine(config_for(emu.base_url, history_images="inline")) as engine:
        session = await engine.create_session(budget=budget)
        await session.send("a mug")
        await session.send("add a sprig")
        with pytest.raises(BudgetExceeded, match="request bytes"):
            await session.send("make it warm")
    async with Engine(config_for(emu.base_url, history_images="files")) as engine:
        session = await engine.create_session(budget=budget)
        for prompt in PROMPTS:
            await session.send(prompt)
        # Tokens still count each image: a window too small for the images is refused
        # although the request itself is small.
        tight = await engine.create_session(
            budget=Budget(max_context_tokens=1_000), history_images="files"
        )
        await tight.send("a mug")
        with pytest.raises(BudgetExceeded, match="tokens"):
            await tight.send("add a sprig")


async def test_exports_are_self_contained_unless_refs_are_kept(
    make_emulator: EmulatorFactory,
) -> None:
    """Exports are self contained unless refs are kept."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url, history_images="files"), store=store) as engine:
        session = await engine.create_session()
        await session.send("a mug")
        await session.send("add a sprig")
        state = await store.load(session.id)
        assert engine.files is not None
        await engine.files.prepare(session.contents())
        digests = [hashlib.sha256(b.data).hexdigest() for c in state.contents() for b in c.images()]
        refs = await store.file_refs(engine.provider.scope, digests)
    plain = json.loads(export_session(state))
    assert "fileData" not in json.dumps(plain)
    assert json.dumps(plain).count("inlineData") == 2
    kept = json.loads(export_session(state, file_refs=refs))
    assert json.dumps(kept).count("fileData") == 2
    assert json.dumps(kept).count("inlineData") == 0


def test_missing_file_names_reads_googles_403() -> None:
    """Missing file names reads Google's 403."""
    gone = Unauthorized(
        "403 PERMISSION_DENIED: You do not have permission to access the File abc123 or it "
        "may not exist.",
        status=403,
    )
    assert missing_file_names(gone) == ["files/abc123"]
    key = Unauthorized("API key not valid. Please pass a valid API key.", status=403)
    assert missing_file_names(key) is None


# --- the emulator's Files API ---------------------------------------------------------------


async def _upload(
    http: aiohttp.ClientSession, base: str, data: bytes, chunks: int = 1
) -> dict[str, Any]:
    async with http.post(
        f"{base}/upload/v1beta/files",
        json={"file": {"display_name": "x"}},
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "image/png",
        },
    ) as resp:
        assert resp.status == 200
        url = resp.headers["X-Goog-Upload-URL"]
    size = -(-len(data) // chunks)
    offset = 0
    doc: dict[str, Any] = {}
    while offset < len(data):
        piece = data[offset : offset + size]
        last = offset + len(piece) >= len(data)
        headers = {
            "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
            "X-Goog-Upload-Offset": str(offset),
        }
        async with http.post(url, data=piece, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            if last:
                doc = await resp.json()
        offset += len(piece)
    return doc


async def test_emulator_files_api(make_emulator: EmulatorFactory) -> None:
    """The emulator's Files API uploads, lists, gets, downloads and deletes files."""
    emu = await make_emulator(file_ttl=60)
    data = bytes(range(256)) * 4000
    async with aiohttp.ClientSession() as http:
        doc = (await _upload(http, emu.base_url, data, chunks=3))["file"]
        assert doc["sizeBytes"] == str(len(data)) and doc["state"] == "ACTIVE"
        name = doc["name"]
        async with http.get(f"{emu.base_url}/v1beta/{name}") as resp:
            assert (await resp.json())["uri"] == doc["uri"]
        async with http.get(f"{emu.base_url}/v1beta/files") as resp:
            assert [f["name"] for f in (await resp.json())["files"]] == [name]
        async with http.get(f"{emu.base_url}/download/v1beta/{name}:download?alt=media") as r:
            assert await r.read() == data
        # A chunk at the wrong offset is refused.
        async with http.post(
            f"{emu.base_url}/upload/v1beta/files",
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
        ) as resp:
            url = resp.headers["X-Goog-Upload-URL"]
        async with http.post(
            url,
            data=b"abc",
            headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "5"},
        ) as resp:
            assert resp.status == 400
        async with http.delete(f"{emu.base_url}/v1beta/{name}") as resp:
            assert resp.status == 200
        async with http.get(f"{emu.base_url}/v1beta/{name}") as resp:
            error = (await resp.json())["error"]
            assert resp.status == 403 and error["status"] == "PERMISSION_DENIED"
            assert "may not exist" in error["message"]


async def test_emulator_expires_files_after_their_ttl(make_emulator: EmulatorFactory) -> None:
    """Emulator expires files after their ttl."""
    emu = await make_emulator(file_ttl=0.2)
    async with aiohttp.ClientSession() as http:
        name = (await _upload(http, emu.base_url, b"\x89PNG....."))["file"]["name"]
        async with http.get(f"{emu.base_url}/v1beta/{name}") as resp:
            assert resp.status == 200
        deadline = time.monotonic() + 5
        status = 200
        while status == 200 and time.monotonic() < deadline:
            async with http.get(f"{emu.base_url}/v1beta/{name}") as resp:
                status = resp.status
        assert status == 403


async def test_provider_uploads_in_chunks(make_emulator: EmulatorFactory) -> None:
    """The provider uploads a large image to the Files API in resumable chunks."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as engine:
        provider = engine.provider
        assert isinstance(provider, GeminiProvider)
        data = b"\x89PNG" + bytes(1_000_000)
        uploaded = await provider.upload_file(data, "image/png", "big", chunk_bytes=256 * 1024)
        assert uploaded.size == len(data) and uploaded.expires_at > time.time() + 3600
        assert await provider.download_file(uploaded.name) == data
        assert await provider.file_exists(uploaded.name)
        await provider.delete_file(uploaded.name)
        assert not await provider.file_exists(uploaded.name)


def test_file_ref_round_trips_and_knows_when_it_is_live() -> None:
    """File ref round trips and knows when it is live."""
    ref = FileRef(
        scope="s",
        sha256="a",
        name="files/x",
        uri="u",
        mime_type="image/png",
        size=1,
        expires_at=time.time() + 100,
    )
    assert msgspec.json.decode(msgspec.json.encode(ref), type=FileRef) == ref
    assert ref.live() and not ref.live(margin=200)


# --- the command line --------------------------------------------------------------------------


def test_edit_history_images_flag_and_export_keep_file_refs(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Edit history images flag and export keep file refs."""
    emu = EmulatorThread(EmulatorSettings(flat=True, record_requests=True))
    url = emu.start()
    capsys.readouterr()  # the emulator's start-up log line
    try:
        store = str(tmp_path / "s.db")
        prompts = ["a mug", "add a sprig", "make it warm"]
        out = str(tmp_path / "out")
        argv = ["edit", *prompts, "--base-url", url, "--out", out, "--store", store, "--json"]
        assert main([*argv, "--history-images", "files"]) == 0
        sid = json.loads(capsys.readouterr().out)["session_id"]
        bodies = (
            [r.body for r in emu.emulator.requests if r.endpoint == "streamGenerateContent"]
            if emu.emulator
            else []
        )
        assert b"fileData" in bodies[-1] and b"inlineData" not in bodies[-1]
        # Self-contained by default; --keep-file-refs keeps the references (for the
        # configured endpoint and key).
        monkeypatch.setenv("NANOEDIT_BASE_URL", url)
        assert main(["sessions", "export", sid, "--store", store]) == 0
        plain = capsys.readouterr().out
        assert "fileData" not in plain and plain.count("inlineData") == 3
        assert main(["sessions", "export", sid, "--store", store, "--keep-file-refs"]) == 0
        kept = capsys.readouterr().out
        assert kept.count("fileData") >= 2  # turns 1 and 2 (turn 3's may still be uploading)
        assert kept.count("fileData") + kept.count("inlineData") == 3
    finally:
        emu.stop()
