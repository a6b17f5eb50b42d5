"""The openai-images provider: generations, then edits of the latest image, with previews."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine import Engine, EngineConfig
from engine.cli import main
from engine.events import Event
from engine.providers import openai_size
from tests.conftest import ENV_VARS, EmulatorThread

PROMPTS = ("A ceramic mug on an oak table", "Add a red circle on the left", "Make it grayscale")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No key variables; structlog's config restored after main() configured it."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_three_turns_chain_generation_and_edits(
    emulator_thread: EmulatorThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stream: bool,
) -> None:
    """Turn 1 is a generation; turns 2 and 3 edit the previous turn's image, byte for byte."""
    out = tmp_path / "out"
    argv = ["edit", *PROMPTS, "--api", "openai-images"]
    argv += ["--base-url", emulator_thread.base_url + "/v1", "--json", "--out", str(out)]
    argv += ["--store", "memory", *([] if stream else ["--no-stream"])]
    assert main(argv) == 0, capsys.readouterr().err
    turns = json.loads(capsys.readouterr().out)["turns"]
    assert [len(t["images"]) for t in turns] == [1, 1, 1]
    images = [(out / f"turn-{n:02d}.png").read_bytes() for n in (1, 2, 3)]
    assert emulator_thread.emulator is not None
    recorded = emulator_thread.emulator.requests
    generations = [r for r in recorded if r.endpoint == "images.generations"]
    edits = [r for r in recorded if r.endpoint == "images.edits"]
    assert b"ceramic" in generations[-1].body
    second, third = edits[-2], edits[-1]  # this test's: the shared emulator records in order
    assert b"red circle" in second.body and b"Make it grayscale" in third.body
    assert images[0] in second.body and images[1] in third.body
    assert images[0] not in third.body  # only the head's latest image goes with an edit


async def test_streaming_publishes_previews_before_the_image(
    emulator_thread: EmulatorThread,
) -> None:
    """turn.partial_image events (index 0, 1) come before turn.image."""
    config = EngineConfig(
        provider="custom", base_url=emulator_thread.base_url + "/v1", api="openai-images"
    )
    seen: list[Event] = []
    async with Engine(config) as engine:
        engine.bus.on("turn.*", seen.append)
        await (await engine.create_session()).send("a lighthouse at dusk")
    kinds = [e.type for e in seen]
    assert kinds.count("turn.partial_image") == 2
    assert kinds.index("turn.partial_image") < kinds.index("turn.image")
    assert [getattr(e, "index", None) for e in seen if e.type == "turn.partial_image"] == [0, 1]


@pytest.mark.parametrize(
    ("config", "size"),
    [
        (None, "auto"),
        ({"aspectRatio": "1:1"}, "1024x1024"),
        ({"aspectRatio": "16:9"}, "1536x1024"),
        ({"aspectRatio": "9:16"}, "1024x1536"),
        ({"aspectRatio": "16:9", "imageSize": "2K"}, "2752x1536"),
        ({"imageSize": "512"}, "512x512"),
    ],
)
def test_image_config_maps_to_size(config: dict[str, str] | None, size: str) -> None:
    """The documented table from imageConfig to the images API's size."""
    assert openai_size("gemini-3.1-flash-image", config) == size
