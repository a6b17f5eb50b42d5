"""Bad input is refused locally with a typed error before anything is created or sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine import Budget, ConfigError, EmulatorOptions, Engine, EngineConfig, WireError
from sessions import (
    Content,
    MemoryStore,
    Part,
    SessionRecord,
    SessionState,
    TurnRecord,
    export_session,
    import_session,
)
from tests.conftest import FakeProvider, png


@pytest.fixture
async def engine() -> AsyncIterator[tuple[Engine, FakeProvider]]:
    """An engine on a FakeProvider with a memory store."""
    provider = FakeProvider()
    async with Engine(EngineConfig(), provider=provider) as e:
        yield e, provider


def _bad_images(tmp_path: Path) -> dict[str, tuple[str, Any]]:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    return {
        "lone-surrogate": ("a \ud800 mug", ()),
        "missing-path": ("a mug", [tmp_path / "nope.png"]),
        "directory": ("a mug", [tmp_path]),
        "int": ("a mug", [5]),
        "str-as-list": ("a mug", "a.png"),
        "not-an-image": ("a mug", [text_file]),
        "not-an-image-bytes": ("a mug", [b"plain bytes"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "lone-surrogate",
        "missing-path",
        "directory",
        "int",
        "str-as-list",
        "not-an-image",
        "not-an-image-bytes",
    ],
)
async def test_send_refuses_bad_input_before_sending(
    engine: tuple[Engine, FakeProvider], tmp_path: Path, case: str
) -> None:
    """Each bad input is a ConfigError naming the problem; nothing is sent or committed."""
    e, provider = engine
    s = await e.create_session()
    text, images = _bad_images(tmp_path)[case]
    with pytest.raises(ConfigError):
        await s.send(text, images)
    with pytest.raises(ConfigError):
        s.stream(text, images)
    assert provider.calls == []
    assert s.contents() == []


async def test_send_accepts_every_documented_image_form(
    engine: tuple[Engine, FakeProvider], tmp_path: Path
) -> None:
    """bytes, a path (str or Path), a Blob and an earlier turn's Image all go through."""
    e, _ = engine
    s = await e.create_session()
    path = tmp_path / "in.png"
    path.write_bytes(png())
    first = await s.send("a mug", [png(), str(path), path])
    await s.send("again", [first.images[0]])
    assert [len(c.images()) for c in s.contents()[::2]] == [3, 1]


@pytest.mark.parametrize(
    "kw",
    [
        {"max_cost_usd": float("nan")},
        {"max_cost_usd": "1"},
        {"max_context_tokens": 1.5},
        {"max_request_bytes": True},
        {"warn_at": float("inf")},
    ],
)
def test_budget_refuses_values_that_cannot_work(kw: dict[str, Any]) -> None:
    """NaN, strings, floats for counts, booleans, infinity: ConfigError, never a silent limit."""
    with pytest.raises(ConfigError):
        Budget(**kw)


async def test_a_refused_session_leaves_nothing_stored() -> None:
    """create_session with settings that cannot be sent stores no orphan session."""
    store = MemoryStore()
    async with Engine(EngineConfig(), provider=FakeProvider(), store=store) as e:
        with pytest.raises(ConfigError):
            await e.create_session(generation_config={"seed": object()})
        with pytest.raises(ConfigError):
            await e.create_session(budget={"max_cost_usd": 1})  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            await e.create_session(response_modalities=["AUDIO"])
    assert await store.list() == []


def _export(**generation: Any) -> bytes:
    return json.dumps(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "a mug"}]},
                {"role": "model", "parts": [{"text": "ok"}]},
            ],
            "generationConfig": generation,
        }
    ).encode()


def _with_index(index: int) -> bytes:
    """A real all-branches export of a one-turn session, its turn's index set to `index`."""
    record = SessionRecord(id="s1", model="gemini-3.1-flash-image", head="t1", tip="t1")
    turn = TurnRecord(
        id="t1",
        parent=None,
        index=1,
        user=Content(role="user", parts=[Part(text="a")]),
        model=Content(role="model", parts=[Part(text="b")]),
        model_id="gemini-3.1-flash-image",
    )
    doc = json.loads(export_session(SessionState(record, {"t1": turn}), include_all_branches=True))
    doc["nanoedit"]["turns"][0]["index"] = index
    return json.dumps(doc).encode()


async def test_a_sound_export_imports() -> None:
    """The files below differ from importable ones only in the value under test."""
    store = MemoryStore()
    await import_session(store, _with_index(1))
    await import_session(store, _export(responseModalities=["IMAGE"]), model="nano-banana-2")
    assert len(await store.list()) == 2


@pytest.mark.parametrize(
    "data",
    [
        _export(responseModalities="IMAGE"),
        _export(responseModalities=["AUDIO"]),
        _export(imageConfig={"aspectRatio": 5}),
        _with_index(2**63),
        _with_index(0),
    ],
    ids=["modalities-str", "modalities-audio", "ratio-int", "index-2**63", "index-0"],
)
async def test_import_refuses_files_that_would_make_a_session_unloadable(data: bytes) -> None:
    """Such files are a WireError and store nothing."""
    store = MemoryStore()
    with pytest.raises(WireError):
        await import_session(store, data, model="gemini-3.1-flash-image")
    assert await store.list() == []


async def test_a_prompt_of_white_space_only_is_refused() -> None:
    """A prompt of spaces, tabs or newlines only is a ConfigError; nothing is sent or stored."""
    async with Engine(EngineConfig(emulator=EmulatorOptions(flat=True))) as engine:
        s = await engine.create_session()
        for text in ("   ", "\t\n "):
            with pytest.raises(ConfigError, match="only white space"):
                await s.send(text)
        assert s.head is None
        turn = await s.send("  a mug  ")  # text around spaces is a prompt
        assert turn.index == 1
