"""A TOML catalog adds or overrides models without upgrading nanoedit; `nanoedit models`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine import ConfigError, Engine, EngineConfig
from engine.cli import main
from engine.emulator import EmulatorSettings
from sessions import Catalog
from tests.conftest import EmulatorThread, FakeProvider

NB9 = """
[models."gemini-nano-banana-9"]
base = "gemini-3.1-flash-image"        # inherit sizes, ratios, token rules, limits, prices
image_price_usd = { "1K" = 0.033 }      # override only what differs
aliases = ["nb9"]

[models."gemini-3-pro-image"]
context_window = 200000
per_request_usd = { "my-gateway" = 0.05 }
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() configures structlog for the command line; put the test run's config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    """The catalog of the issue's example, plus an override of a built-in model."""
    path = tmp_path / "models.toml"
    path.write_text(NB9)
    return path


def test_an_entry_inherits_from_its_base_and_overrides_what_differs(catalog_file: Path) -> None:
    """nb9 resolves; its 1K price is the file's, everything else its base's."""
    catalog = Catalog.load(catalog_file)
    nb9 = catalog.resolve("nb9")
    base = catalog.resolve("gemini-3.1-flash-image")
    assert nb9.id == "gemini-nano-banana-9"
    assert nb9.image_price("1K") == 0.033 and nb9.image_price("2K") == base.image_price("2K")
    assert nb9.sizes == base.sizes and nb9.context_window == base.context_window
    assert base.aliases == ("nano-banana-2",)  # the base keeps its own aliases
    pro = catalog.resolve("nano-banana-pro")
    assert pro.context_window == 200_000 and pro.prices.per_request["my-gateway"] == 0.05


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."x"]\nbase = "nope"\n', "base"),
        ('[models."x"]\nbase = "nano-banana-2"\ncolour = 1\n', "unknown keys"),
        ('[models."x"]\nbase = "nano-banana-2"\nimage_price_usd = { "1K" = "cheap" }\n', "price"),
        ('[models."x"]\nbase = "nano-banana-2"\nsizes = ["8K"]\n', "8K"),
        ("not toml = = 1", "catalog"),
    ],
)
def test_a_bad_catalog_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is a ConfigError naming the file and what is wrong."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Catalog.load(path)


def test_an_unknown_model_names_the_catalog_setting() -> None:
    """Without an entry, an unknown id says how to add one."""
    with pytest.raises(ConfigError, match="NANOEDIT_CATALOG"):
        Catalog.load(None).resolve("gemini-nano-banana-9")


async def test_a_catalog_model_is_usable_with_its_price(catalog_file: Path) -> None:
    """An engine with the catalog runs a turn on nb9 and prices it at the file's price."""
    provider = FakeProvider()
    async with Engine(EngineConfig(catalog=catalog_file), provider=provider) as engine:
        s = await engine.create_session("nb9")
        turn = await s.send("a mug")
    assert s.model == "gemini-nano-banana-9"
    assert provider.calls[0].model == "gemini-nano-banana-9"
    assert turn.cost_usd > 0.033 and turn.cost_usd < 0.034  # the image plus a few tokens


async def test_the_embedded_emulator_serves_catalog_models(catalog_file: Path) -> None:
    """No provider given: the embedded emulator answers for a model only the file knows."""
    config = EngineConfig(catalog=catalog_file)
    async with Engine(config) as engine:
        s = await engine.create_session("nb9")
        turn = await s.send("a mug")
    assert turn.images and turn.record.metadata.get("modelVersion") == "gemini-nano-banana-9"


def test_models_lists_the_catalog(catalog_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nanoedit models --json --catalog FILE`: ids, aliases, status and prices."""
    assert main(["models", "--json", "--catalog", str(catalog_file)]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gemini-nano-banana-9"]["aliases"] == ["nb9"]
    assert rows["gemini-nano-banana-9"]["image_price_usd"]["1K"] == 0.033
    assert rows["gemini-3.1-flash-image-preview"]["status"] == "shut down"
    assert rows["gemini-3.1-flash-image-preview"]["replacement"] == "gemini-3.1-flash-image"
    assert main(["models"]) == 0
    assert "nano-banana-pro" in capsys.readouterr().out


def test_edit_json_reports_the_ga_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nanoedit edit "a mug" --json` on the embedded emulator reports the default model,
    gemini-nano-banana-2.1."""
    out = tmp_path / "out"
    assert main(["edit", "a mug", "--json", "--flat", "--store", "memory", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "gemini-nano-banana-2.1"


def test_models_refresh_reports_drift_and_writes_the_overlay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nanoedit models --refresh` against a provider whose list has a new image model, drops
    one of ours and changes a window: all three are reported, the overlay is written, and the
    next start reads it (the new model resolves, the dropped one is shut down)."""
    served = tmp_path / "served.toml"
    served.write_text(
        '[models."gemini-4-flash-image"]\nbase = "gemini-nano-banana-2.1"\n'
        "context_window = 262144\n"
        '[models."gemini-3.1-flash-lite-image"]\nstatus = "shut down"\n'
        '[models."gemini-3-pro-image"]\ncontext_window = 98304\n'
    )
    # More models than one page: the refresh follows nextPageToken.
    emu = EmulatorThread(EmulatorSettings(flat=True, catalog=Catalog.load(served)))
    url = emu.start()
    overlay = tmp_path / "overlay.toml"
    try:
        code = main(["models", "--refresh", "--json", "--base-url", url, "--catalog", str(overlay)])
    finally:
        emu.stop()
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])  # after the emulator thread's log line
    assert report["added"] == ["gemini-4-flash-image"]
    assert report["missing"] == ["gemini-3.1-flash-lite-image"]
    assert report["changed"] == [
        {"id": "gemini-3-pro-image", "field": "context_window", "catalog": 65536, "provider": 98304}
    ]
    learned = Catalog.load(overlay)
    assert learned.resolve("gemini-4-flash-image").context_window == 262144
    assert learned.resolve("gemini-4-flash-image").status == "preview"
    assert learned.resolve("nano-banana-2-lite").status == "shut down"
    assert learned.resolve("nano-banana-pro").context_window == 98304
    # A second refresh against the same list with the overlay loaded finds nothing new.
    emu = EmulatorThread(EmulatorSettings(flat=True, catalog=Catalog.load(served)))
    url = emu.start()
    try:
        assert main(["models", "--refresh", "--base-url", url, "--catalog", str(overlay)]) == 0
    finally:
        emu.stop()
    assert "matches" in capsys.readouterr().out


def test_the_emulator_pages_its_model_list() -> None:
    """GET /v1beta/models pages with pageSize/pageToken and leaves shut-down models out."""
    import urllib.request

    emu = EmulatorThread(EmulatorSettings(flat=True))
    url = emu.start()
    try:
        ids: list[str] = []
        token = ""
        pages = 0
        while True:
            query = "?pageSize=2" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(f"{url}/v1beta/models{query}") as resp:
                doc = json.loads(resp.read())
            pages += 1
            ids += [m["name"].removeprefix("models/") for m in doc["models"]]
            token = doc.get("nextPageToken", "")
            if not token:
                break
    finally:
        emu.stop()
    listed = [s.id for s in Catalog.load(None).models.values() if s.status != "shut down"]
    assert ids == listed and pages == -(-len(listed) // 2)
