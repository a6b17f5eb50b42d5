"""engine._config: EngineConfig.from_env and secrets."""

from __future__ import annotations

import pytest
import structlog

from engine import ConfigError, EngineConfig, Secret


def test_no_key_selects_local_emulator() -> None:
    """With no key and no base URL the embedded emulator is the provider."""
    cfg = EngineConfig.from_env({})
    assert cfg.provider == "local"
    assert not cfg.api_key


def test_key_order() -> None:
    """NANOEDIT_API_KEY wins over GEMINI_API_KEY, GOOGLE_API_KEY and WISDOM_GATE_KEY."""
    env = {"GEMINI_API_KEY": "g", "NANOEDIT_API_KEY": "n", "WISDOM_GATE_KEY": "w"}
    assert EngineConfig.from_env(env).api_key.reveal() == "n"
    assert EngineConfig.from_env({"GOOGLE_API_KEY": "x"}).provider == "google"


def test_wisdom_gate_key_selects_wisdom_gate() -> None:
    """A Wisdom Gate key alone selects the Wisdom Gate preset."""
    cfg = EngineConfig.from_env({"WISDOM_GATE_KEY": "w"})
    assert cfg.provider == "wisdom-gate"
    assert cfg.resolved_base_url == "https://wisgate.ai"


def test_base_url_selects_custom() -> None:
    """NANOEDIT_BASE_URL alone selects a custom provider at that URL."""
    cfg = EngineConfig.from_env({"NANOEDIT_BASE_URL": "http://127.0.0.1:9/", "NANOEDIT_MODEL": "m"})
    assert cfg.provider == "custom"
    assert cfg.resolved_base_url == "http://127.0.0.1:9"
    assert cfg.model == "m"


def test_key_env_override() -> None:
    """key_env names the only variable the key is read from."""
    cfg = EngineConfig.from_env({"GEMINI_API_KEY": "g", "MY_KEY": "m"}, key_env="MY_KEY")
    assert cfg.api_key.reveal() == "m"


def test_secret_never_shows() -> None:
    """A key is hidden from repr and str of the config."""
    cfg = EngineConfig.from_env({"GEMINI_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(cfg)
    assert "sk-very-secret" not in str(cfg.api_key)
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")


@pytest.mark.parametrize(
    "kwargs",
    [{"provider": "custom"}, {"provider": "google"}, {"provider": "nope"}, {"max_in_flight": 0}],
)
def test_invalid_config_rejected(kwargs: dict[str, object]) -> None:
    """Configurations that cannot work raise ConfigError."""
    with pytest.raises(ConfigError):
        EngineConfig(**kwargs)  # type: ignore[arg-type]


def test_from_env_without_a_key_warns_once_naming_the_variables() -> None:
    """No key: the embedded emulator, and one warning saying which variables were looked at."""
    with structlog.testing.capture_logs() as logs:
        cfg = EngineConfig.from_env({"GEMINI_APIKEY": "misspelled"})
    assert cfg.provider == "local"
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "GEMINI_API_KEY" in warnings[0]["looked_at"]


def test_a_named_provider_without_a_key_is_refused() -> None:
    """NANOEDIT_PROVIDER=google with no key: ConfigError before anything starts."""
    with pytest.raises(ConfigError, match="needs an API key"):
        EngineConfig.from_env({"NANOEDIT_PROVIDER": "google"})
