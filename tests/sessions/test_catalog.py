"""sessions._catalog: model specs, pixel tables, validation."""

from __future__ import annotations

import pytest
import structlog

from engine import ConfigError, Engine, EngineConfig
from sessions import ImageConfig, MemoryStore, check_available, estimate_text_tokens, resolve_model
from tests.conftest import FakeProvider


@pytest.mark.parametrize(
    ("alias", "model_id"),
    [
        ("nano-banana-2", "gemini-3.1-flash-image"),
        ("nano-banana-pro", "gemini-3-pro-image"),
        ("nano-banana", "gemini-2.5-flash-image"),
        ("models/gemini-2.5-flash-image", "gemini-2.5-flash-image"),
        ("google/gemini-3.1-flash-image", "gemini-3.1-flash-image"),
        ("gemini-3-pro-image-preview", "gemini-3-pro-image-preview"),
    ],
)
def test_aliases_resolve(alias: str, model_id: str) -> None:
    """Aliases, `models/` prefixes and gateway spellings resolve to the model id."""
    assert resolve_model(alias).id == model_id


def test_unknown_model_is_config_error() -> None:
    """An unknown model names the known ones."""
    with pytest.raises(ConfigError, match="nano-banana-2"):
        resolve_model("gpt-image-9")


@pytest.mark.parametrize(
    ("model", "ratio", "size", "pixels"),
    [
        ("nano-banana-2", "16:9", "2K", (2752, 1536)),
        ("nano-banana-2", "21:9", "512", (792, 336)),
        ("nano-banana-2", "8:1", "4K", (12288, 1536)),
        ("nano-banana-pro", "2:3", "1K", (848, 1264)),
        ("nano-banana-pro", "4:5", "4K", (3712, 4608)),
        ("nano-banana", "21:9", None, (1536, 672)),
        ("nano-banana", "3:4", None, (864, 1184)),
    ],
)
def test_output_pixels_follow_the_table(
    model: str, ratio: str, size: str | None, pixels: tuple[int, int]
) -> None:
    """Output sizes are the published table's."""
    assert resolve_model(model).output_pixels(ratio, size) == pixels


@pytest.mark.parametrize(
    ("model", "config", "message"),
    [
        ("nano-banana-2", ImageConfig(image_size="1k"), "uppercase"),
        ("nano-banana-pro", ImageConfig(image_size="512"), "not supported"),
        ("nano-banana-pro", ImageConfig(aspect_ratio="4:1"), "not supported"),
        ("nano-banana", ImageConfig(image_size="1K"), "does not accept image_size"),
        ("nano-banana", ImageConfig(aspect_ratio="3:7"), "not supported"),
    ],
)
def test_invalid_image_config_rejected(model: str, config: ImageConfig, message: str) -> None:
    """Configs a model rejects raise ConfigError with a clear message."""
    with pytest.raises(ConfigError, match=message):
        resolve_model(model).validate(config)


def test_valid_image_configs_pass() -> None:
    """4:1 and 512 are fine on 3.1 Flash; ratios alone are fine on 2.5."""
    resolve_model("nano-banana-2").validate(ImageConfig(aspect_ratio="4:1", image_size="512"))
    resolve_model("nano-banana").validate(ImageConfig(aspect_ratio="16:9"))


def test_token_costs() -> None:
    """Image token costs follow the published rules, including 2.5 Flash tiles."""
    flash2, pro, flash = (
        resolve_model(m) for m in ("nano-banana-2", "nano-banana-pro", "nano-banana")
    )
    assert flash2.output_tokens("512") == 747 and flash2.output_tokens(None) == 1120
    assert pro.output_tokens("4K") == 2000
    assert flash.image_input_tokens(300, 300) == 258
    assert flash.image_input_tokens(1024, 1024) == 258 * 4
    assert pro.image_input_tokens(4096, 4096) == 560


def test_text_estimate_rounds_up_utf8_bytes() -> None:
    """Text tokens are ceil(UTF-8 bytes / 4)."""
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcde") == 2
    assert estimate_text_tokens("é") == 1


@pytest.mark.parametrize(
    ("model", "replacement"),
    [
        ("gemini-3.1-flash-image-preview", "gemini-3.1-flash-image"),
        ("gemini-3-pro-image-preview", "gemini-3-pro-image"),
        ("gemini-2.5-flash-image", "gemini-nano-banana-2.1"),
    ],
)
def test_shut_down_models_name_their_replacement(model: str, replacement: str) -> None:
    """Through Google a shut-down id is a ConfigError naming its replacement; through a
    gateway it is a warning, and the id is sent as written."""
    spec = resolve_model(model)
    assert spec.status == "shut down" and spec.replacement == replacement
    with pytest.raises(ConfigError, match=replacement):
        check_available(spec, "google")
    warning = check_available(spec, "wisdom-gate")
    assert warning is not None and replacement in warning


def test_ga_models_are_available_everywhere() -> None:
    """The GA ids pass on every provider."""
    for model in ("gemini-nano-banana-2.1", "gemini-3.1-flash-lite-image", "gemini-3-pro-image"):
        spec = resolve_model(model)
        assert spec.status == "GA"
        assert check_available(spec, "google") is None


async def test_a_shut_down_model_through_google_fails_before_sending() -> None:
    """create_session with a shut-down id on the google provider: ConfigError naming the
    replacement, nothing stored, nothing sent."""
    provider = FakeProvider(name="google")
    store = MemoryStore()
    async with Engine(EngineConfig(), provider=provider, store=store) as engine:
        with pytest.raises(ConfigError, match=r"use gemini-3\.1-flash-image"):
            await engine.create_session("gemini-3.1-flash-image-preview")
    assert provider.calls == [] and await store.list() == []


async def test_a_shut_down_model_through_a_gateway_warns_once() -> None:
    """Through a gateway the old id is sent as written, with one warning per engine."""
    provider = FakeProvider(name="wisdom-gate")
    async with Engine(EngineConfig(), provider=provider) as engine:
        with structlog.testing.capture_logs() as logs:
            s = await engine.create_session("gemini-3-pro-image-preview")
            await engine.create_session("gemini-3-pro-image-preview")
            await s.send("a mug")
    assert provider.calls[0].model == "gemini-3-pro-image-preview"
    assert [e["event"] for e in logs].count("model.shut_down") == 1


async def test_the_default_model_is_nano_banana_2_1() -> None:
    """No model named: gemini-nano-banana-2.1, Google's default since 2026-10-06."""
    async with Engine(EngineConfig(), provider=FakeProvider()) as engine:
        assert (await engine.create_session()).model == "gemini-nano-banana-2.1"


@pytest.mark.parametrize(
    ("alias", "model"),
    [
        ("nano-banana-2.1", "gemini-nano-banana-2.1"),
        ("nano-banana-2-lite", "gemini-3.1-flash-lite-image"),
        ("nano-banana-2", "gemini-3.1-flash-image"),
        ("google/nano-banana-2.1", "gemini-nano-banana-2.1"),
    ],
)
def test_the_autumn_2026_aliases(alias: str, model: str) -> None:
    """The new aliases resolve; `nano-banana-2` keeps meaning gemini-3.1-flash-image."""
    assert resolve_model(alias).id == model


def test_the_new_models_accept_what_google_documents() -> None:
    """Nano Banana 2.1: 1K/2K/4K (no 512), the 14 ratios, thinking minimal/medium/high (medium
    by default), 14 references, $30 per 1M image tokens. Lite: 1K only, thinking minimal/high,
    no search grounding."""
    nb = resolve_model("nano-banana-2.1")
    assert nb.sizes == ("1K", "2K", "4K") and len(nb.ratios) == 14 and "8:1" in nb.ratios
    assert nb.thinking_levels == ("minimal", "medium", "high") and nb.default_thinking == "medium"
    assert nb.max_input_images == 14
    assert nb.image_price("1K") == pytest.approx(30 * nb.output_tokens("1K") / 1e6)
    with pytest.raises(ConfigError, match=r"gemini-nano-banana-2\.1.*1K, 2K, 4K"):
        nb.validate(ImageConfig(image_size="512"))
    lite = resolve_model("nano-banana-2-lite")
    assert lite.sizes == ("1K",) and lite.thinking_levels == ("minimal", "high")
    with pytest.raises(ConfigError, match="allowed: 1K"):
        lite.validate(ImageConfig(image_size="2K"))
    with pytest.raises(ConfigError, match="allowed: minimal, high"):
        lite.check_thinking("medium")
    with pytest.raises(ConfigError, match="Google Search"):
        lite.check_tools([{"google_search": {}}])
    nb.check_tools([{"google_search": {}}])  # 2.1 grounds
    with pytest.raises(ConfigError, match="at most 14"):
        nb.check_input_images(15)


def test_flash_is_deprecated_with_its_replacement() -> None:
    """gemini-3.1-flash-image is deprecated (still served) in favour of Nano Banana 2.1: usable
    everywhere, with a warning that names the replacement."""
    spec = resolve_model("gemini-3.1-flash-image")
    assert spec.status == "deprecated" and spec.replacement == "gemini-nano-banana-2.1"
    for provider in ("google", "wisdom-gate"):
        warning = check_available(spec, provider)
        assert warning is not None and "gemini-nano-banana-2.1" in warning


async def test_a_deprecated_model_warns_once_per_engine() -> None:
    """Sessions on a deprecated model work and log one `model.deprecated` per engine."""
    provider = FakeProvider(name="google")
    for _ in range(2):
        async with Engine(EngineConfig(), provider=provider) as engine:
            with structlog.testing.capture_logs() as logs:
                s = await engine.create_session("nano-banana-2")
                await engine.create_session("gemini-3.1-flash-image")
                await s.send("a mug")
            deprecated = [e for e in logs if e["event"] == "model.deprecated"]
            assert len(deprecated) == 1
            assert deprecated[0]["replacement"] == "gemini-nano-banana-2.1"


async def test_per_model_limits_are_checked_before_sending() -> None:
    """A thinking level, a size, or search grounding the model does not take is refused at
    create_session, naming the model and what it accepts; nothing is stored or sent."""
    provider = FakeProvider(name="google")
    store = MemoryStore()
    async with Engine(EngineConfig(), provider=provider, store=store) as engine:
        with pytest.raises(ConfigError, match=r"gemini-3\.1-flash-lite-image.*minimal, high"):
            await engine.create_session("nano-banana-2-lite", thinking_level="medium")
        with pytest.raises(ConfigError, match="Google Search"):
            await engine.create_session("nano-banana-2-lite", tools=[{"googleSearch": {}}])
        with pytest.raises(ConfigError, match=r"gemini-3\.1-flash-lite-image.*allowed: 1K"):
            await engine.create_session(
                "nano-banana-2-lite", image_config=ImageConfig(image_size="4K")
            )
        s = await engine.create_session("nano-banana-2.1", thinking_level="high")
        await s.send("a mug")
        stored = (await store.load(s.id)).record.settings
    assert len(await store.list()) == 1 and len(provider.calls) == 1
    assert stored.generation_config == {"thinkingConfig": {"thinkingLevel": "high"}}
