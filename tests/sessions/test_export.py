"""Export and import (sessions/_export.py): Gemini REST JSON, lossless, with or without metadata."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sessions import (
    Blob,
    Content,
    MemoryStore,
    Part,
    SessionRecord,
    SessionSettings,
    SessionState,
    SessionStore,
    SqliteStore,
    TurnRecord,
    Usage,
    WireError,
    encode_contents,
    export_session,
    import_session,
    new_id,
    undo,
)

# Bytes whose standard base64 holds '+' and '/', so the alphabet is visible in the output.
IMAGE = bytes(range(256)) * 8
REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
}


class GenerateContentRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """The generateContent body as a strict server reads it."""

    contents: list[dict[str, Any]]
    system_instruction: dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_config: dict[str, Any] | None = None
    safety_settings: list[dict[str, Any]] | None = None


SETTINGS = SessionSettings(
    image_config={"aspectRatio": "16:9", "imageSize": "2K"},
    response_modalities=["TEXT", "IMAGE"],
    system_instruction=Content(
        parts=[Part(text="Keep the style.", extra={"cacheHint": msgspec.Raw(b'"x"')})]
    ),
    tools=[{"googleSearch": {}}],
    generation_config={"temperature": 0.4},
    safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
)


def make_turn(parent: TurnRecord | None, text: str) -> TurnRecord:
    """A turn with a thought signature, an inline image and an unmodelled part field."""
    user = Content(
        role="user",
        parts=[Part(text=text), Part(inline_data=Blob(mime_type="image/png", data=IMAGE))],
    )
    model = Content(
        role="model",
        parts=[
            Part(text="hmm", thought=True, thought_signature=b"\x01\x02sig-" + text.encode()),
            Part(
                inline_data=Blob(mime_type="image/jpeg", data=text.encode() * 50),
                thought_signature=b"\xfa\xfb\xfc",
            ),
            Part(text="Done.", extra={"partMetadata": msgspec.Raw(b'{"k": [1, true]}')}),
        ],
    )
    return TurnRecord(
        id=new_id(),
        parent=parent.id if parent else None,
        index=parent.index + 1 if parent else 1,
        user=user,
        model=model,
        model_id="gemini-3.1-flash-image",
        usage=Usage(prompt_tokens=560, output_tokens=1290, total_tokens=1850),
        cost_usd=0.0671,
        finish_reason="STOP",
        attempts=2,
        latency_s=8.25,
        timings={"first_byte": 3.5},
        carried=[1, 2],
        rebased=True,
        metadata={"finishMessage": "ok"},
        image_config={"aspectRatio": "1:1"},
    )


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store implementation, closed afterwards."""
    s: SessionStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    async with s:
        yield s


async def branched(store: SessionStore) -> SessionState:
    """Three turns, undo, and a fourth: two branches, the head on the new one."""
    sid = new_id()
    await store.create(SessionRecord(id=sid, model="nano-banana-2", settings=SETTINGS, title="mug"))
    parent: TurnRecord | None = None
    for i in range(3):
        turn = make_turn(parent, f"edit {i}")
        state = await store.load(sid)
        await store.commit_turn(sid, turn, expected_version=state.record.version)
        parent = turn
    await undo(store, sid)
    state = await store.load(sid)
    alt = make_turn(state.turn(state.record.head or ""), "alternative")
    await store.commit_turn(sid, alt, expected_version=state.record.version)
    return await store.load(sid)


async def test_round_trip_is_byte_identical(store: SessionStore) -> None:
    """export -> import: the next request's encoded contents are byte-identical."""
    state = await branched(store)
    rec = await import_session(store, export_session(state))
    imported = await store.load(rec.id)
    assert encode_contents(imported.contents()) == encode_contents(state.contents())
    assert imported.contents() == state.contents()
    assert imported.record.settings == state.record.settings
    assert [t.id for t in imported.path()] == [t.id for t in state.path()]
    assert imported.path() == state.path()  # usage, cost, timings... all kept


async def test_signatures_and_unknown_fields_survive(store: SessionStore) -> None:
    """Thought signatures and an unmodelled part field come back in the wire JSON."""
    state = await branched(store)
    rec = await import_session(store, export_session(state))
    wire = encode_contents((await store.load(rec.id)).contents())
    assert b'"partMetadata":{"k": [1, true]}' in wire
    assert base64.b64encode(b"\xfa\xfb\xfc") in wire
    sig = (await store.load(rec.id)).path()[-1].model.parts[0].thought_signature
    assert sig == b"\x01\x02sig-alternative"


async def test_export_is_a_request_plus_metadata(store: SessionStore) -> None:
    """Top-level keys are request fields plus `nanoedit`; bytes are standard base64."""
    state = await branched(store)
    body = json.loads(export_session(state))
    assert set(body) == REQUEST_FIELDS - {"toolConfig"} | {"nanoedit"}
    assert body["generationConfig"] == {
        "temperature": 0.4,
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
    }
    assert body["systemInstruction"] == {"parts": [{"text": "Keep the style.", "cacheHint": "x"}]}
    data = body["contents"][0]["parts"][1]["inlineData"]["data"]
    assert data == base64.b64encode(IMAGE).decode() and "+" in data and "/" in data
    meta = body["nanoedit"]
    assert meta["version"] == 1 and meta["session"]["id"] == state.id
    assert meta["session"]["title"] == "mug" and meta["session"]["model"] == "nano-banana-2"
    assert [t["id"] for t in meta["turns"]] == [t.id for t in state.path()]
    first: dict[str, Any] = meta["turns"][0]
    assert first["usage"]["prompt_tokens"] == 560 and first["cost_usd"] == 0.0671
    assert first["attempts"] == 2 and first["carried"] == [1, 2] and "user" not in first


async def test_request_only_is_a_plain_request(store: SessionStore) -> None:
    """request_only output holds request fields only and decodes as the same request."""
    state = await branched(store)
    data = export_session(state, request_only=True)
    body = json.loads(data)
    assert set(body) <= REQUEST_FIELDS and "nanoedit" not in body
    request = msgspec.json.decode(data, type=GenerateContentRequest)  # no unknown fields
    assert len(request.contents) == 6
    assert b'"contents":' + encode_contents(state.contents()) in data
    rec = await import_session(store, data, model="nano-banana-2")
    imported = await store.load(rec.id)
    assert encode_contents(imported.contents()) == encode_contents(state.contents())
    assert imported.record.settings == state.record.settings  # rebuilt from the request fields


async def test_all_branches_round_trip(store: SessionStore) -> None:
    """With all branches the whole tree, head and tip come back."""
    state = await branched(store)
    data = export_session(state, include_all_branches=True)
    assert len(json.loads(data)["nanoedit"]["turns"]) == 4
    rec = await import_session(store, data, new_id="copy")
    imported = await store.load("copy")
    assert rec.id == "copy" and rec.version == 1
    assert imported.turns == state.turns
    assert (imported.record.head, imported.record.tip) == (state.record.head, state.record.tip)
    assert len(imported.branches()) == 2


async def test_plain_contents_import(store: SessionStore) -> None:
    """A bare {"contents": [...]} file imports as user/model turn pairs."""
    state = await branched(store)
    plain = b'{"contents": ' + encode_contents(state.contents()) + b"}"
    rec = await import_session(store, plain, model="nano-banana-2")
    imported = await store.load(rec.id)
    assert [t.index for t in imported.path()] == [1, 2, 3]
    assert encode_contents(imported.contents()) == encode_contents(state.contents())
    assert imported.record.model == "nano-banana-2"


async def test_plain_import_accepts_sdk_spelling(store: SessionStore) -> None:
    """snake_case fields and URL-safe base64, as the Python SDK writes them, import too."""
    plain = json.dumps(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {
                    "role": "model",
                    "parts": [
                        {
                            "inline_data": {
                                "mime_type": "image/png",
                                "data": base64.urlsafe_b64encode(IMAGE).decode(),
                            },
                            "thought_signature": base64.urlsafe_b64encode(b"\xfb\xff").decode(),
                        }
                    ],
                },
            ],
            "system_instruction": {"parts": [{"text": "sys"}]},
            "generation_config": {"image_config": {"aspectRatio": "4:3"}},
        }
    ).encode()
    rec = await import_session(store, plain, model="gemini-3.1-flash-image")
    state = await store.load(rec.id)
    part = state.path()[0].model.parts[0]
    assert part.inline_data is not None and part.inline_data.data == IMAGE
    assert part.thought_signature == b"\xfb\xff"
    assert state.record.settings.image_config == {"aspectRatio": "4:3"}
    assert state.record.settings.system_instruction == Content(parts=[Part(text="sys")])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json", "not a session export"),
        (b'{"contents": [{"role": "user", "parts": [{"text": "x"}]}]}', "alternate"),
        (b'{"contents": [{"role": "model", "parts": []}, {"role": "user"}]}', "turn 1"),
        (b'{"contents": []}', "names no model"),
    ],
)
async def test_bad_imports_are_wire_errors(store: SessionStore, data: bytes, match: str) -> None:
    """Malformed files raise WireError and store nothing."""
    with pytest.raises(WireError, match=match):
        await import_session(store, data)
    assert await store.list() == []


async def test_inconsistent_tree_refused(store: SessionStore) -> None:
    """An all-branches file whose parents form a cycle or dangle is refused."""
    state = await branched(store)
    body = json.loads(export_session(state, include_all_branches=True))
    turns = body["nanoedit"]["turns"]
    turns[0]["parent"] = turns[1]["id"]  # 1 -> 2 -> 1
    with pytest.raises(WireError, match="inconsistent"):
        await import_session(store, json.dumps(body).encode())
    turns[0]["parent"] = "nowhere"
    with pytest.raises(WireError, match="inconsistent"):
        await import_session(store, json.dumps(body).encode())


def test_request_only_excludes_all_branches() -> None:
    """Asking for both is a programming error."""
    state = SessionState(SessionRecord(id="x", model="m"))
    with pytest.raises(ValueError):
        export_session(state, request_only=True, include_all_branches=True)


def test_empty_session_exports() -> None:
    """A session without turns exports empty contents and imports back empty."""
    state = SessionState(SessionRecord(id="x", model="m"))
    assert json.loads(export_session(state))["contents"] == []


def _exported(state: SessionState, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(export_session(state, include_all_branches=True))
    body["nanoedit"]["session"].update(changes)
    return body


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"forked_at": 2**63}, "out of range"),
        ({"model": "no-such-model"}, "unknown model"),
        ({"settings": {"budget": {"max_cost_usd": -1.0}}}, "invalid budget"),
        ({"settings": {"budget": {"policy": "spend_it_all"}}}, "invalid budget"),
    ],
)
async def test_imports_that_could_not_be_opened_are_refused(
    store: SessionStore, change: dict[str, Any], match: str
) -> None:
    """A session that every later open would refuse is refused at import, with WireError, and
    nothing is stored: counts past int64, a model the catalog does not know, a bad budget."""
    state = await branched(store)
    before = await store.list()
    with pytest.raises(WireError, match=match):
        await import_session(store, json.dumps(_exported(state, **change)).encode())
    assert await store.list() == before


async def test_a_turn_index_past_int64_is_refused(store: SessionStore) -> None:
    """A turn index of 2**63 is a WireError, not an OverflowError from the database."""
    state = await branched(store)
    body = _exported(state)
    body["nanoedit"]["turns"][0]["index"] = 2**63
    before = await store.list()
    with pytest.raises(WireError):
        await import_session(store, json.dumps(body).encode())
    assert await store.list() == before
