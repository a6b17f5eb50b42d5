"""Configuration as values, defaults in one place. `EngineConfig.from_env()` is the only code that
reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from engine._exceptions import ConfigError
from engine._logs import Logger
from sessions import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "KEY_ENV_VARS",
    "PRESETS",
    "PROVIDER_PRESETS",
    "ApiName",
    "AuthScheme",
    "EmulatorOptions",
    "EngineConfig",
    "HistoryImages",
    "ImageDelivery",
    "Preset",
    "RetryPolicy",
    "Secret",
    "Timeouts",
]

_log = Logger("nanoedit.config")

# Looked up in this order; the first one set wins.
KEY_ENV_VARS = ("NANOEDIT_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "WISDOM_GATE_KEY")
ApiName = Literal["gemini", "interactions", "openai-chat", "openai-images"]
APIS: tuple[str, ...] = ("gemini", "interactions", "openai-chat", "openai-images")
ImageDelivery = Literal["inline", "uri"]
AuthScheme = Literal["bearer", "raw", "goog"]


@dataclass(frozen=True, slots=True)
class Preset:
    """Where a named provider is and how it is spoken to."""

    api: ApiName
    base_url: str
    auth: AuthScheme
    model_prefix: str = ""  # OpenRouter names Google's models "google/..."


PRESETS: Mapping[str, Preset] = {
    "local": Preset("gemini", "", "goog"),
    "google": Preset("gemini", "https://generativelanguage.googleapis.com", "goog"),
    "wisdom-gate": Preset("gemini", "https://wisgate.ai", "goog"),
    "wisdom-gate-openai": Preset("openai-chat", "https://wisdom-gate.juheapi.com/v1", "raw"),
    "openrouter": Preset("openai-chat", "https://openrouter.ai/api/v1", "bearer", "google/"),
    "openai": Preset("openai-images", "https://api.openai.com/v1", "bearer"),
    "custom": Preset("gemini", "", "goog"),
}
"""The providers by name: wire protocol, base URL, credential header."""
PROVIDER_PRESETS: Mapping[str, str] = {n: p.base_url for n, p in PRESETS.items() if p.base_url}
ProviderName = Literal[
    "local", "google", "wisdom-gate", "wisdom-gate-openai", "openrouter", "openai", "custom"
]
_KEYED = ("google", "wisdom-gate", "wisdom-gate-openai", "openrouter", "openai")
OnBusy = Literal["raise", "wait"]
HistoryImages = Literal["inline", "files", "auto"]
HISTORY_IMAGES = ("inline", "files", "auto")
# Where "auto" means files: the Gemini-native presets, whose endpoints have the Files API.
FILES_PRESETS = frozenset({"local", "google", "wisdom-gate"})
MiB = 1024 * 1024
# The largest request body each provider accepts when the config does not say: Google's
# documented inline limit (100 MB since January 2026), 20 MB for gateways and the rest.
DEFAULT_REQUEST_LIMITS: Mapping[str, int] = {"google": 100 * MiB}
DEFAULT_REQUEST_BYTES = 20 * MiB


class Secret:
    """A key that never shows itself in repr, str, logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the one header that needs it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect, to the response headers, of silence between chunks, per attempt."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 60.0
    total: float = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; server-directed delays honoured."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    # Honour server-directed delays up to two minutes; longer ones fail fast instead.
    max_server_delay: float = 120.0
    retry_statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class EmulatorOptions:
    """How the embedded emulator behaves when the engine starts it."""

    flat: bool = False
    latency: float = 0.0
    faults: str = ""
    seed: int = 0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything an Engine needs; build it in code or with `from_env()`."""

    provider: ProviderName = "local"
    base_url: str = ""
    # The wire protocol, apart from the endpoint ("": the provider's own); `auth` likewise.
    api: ApiName | Literal[""] = ""
    auth: AuthScheme | Literal[""] = ""
    api_key: Secret = field(default_factory=lambda: Secret(""))
    model: str = DEFAULT_MODEL
    stream: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_connections: int = 100
    max_in_flight: int = 64
    requests_per_minute: float = 0.0  # 0: no per-model rate limit
    max_request_bytes: int = 0  # 0: the provider's own limit (`request_byte_limit`)
    # History images in requests: "inline" (base64 every time), "files" (uploaded once, then
    # referred to by URI), "auto" (files where the provider has the Files API). A session may
    # set its own.
    history_images: HistoryImages = "auto"
    # api="interactions": images come inline (base64 in the answer) or as a URI downloaded
    # with the key ("uri").
    image_delivery: ImageDelivery = "inline"
    # api="interactions": keep each conversation at Google (`store: true`) so turns chain; False
    # stores nothing there and sends the whole history every turn.
    interactions_store: bool = True
    emulator: EmulatorOptions = field(default_factory=EmulatorOptions)
    home: Path | None = None  # session store directory; see `store_dir()`
    # Where the command line keeps sessions: "memory", a SQLite path, or a PostgreSQL DSN
    # (postgresql://USER@HOST:PORT/DB); "": the SQLite file under `home` (NANOEDIT_STORE).
    store: str = ""
    # Redis shared by the nodes of a cluster (redis://HOST:PORT/DB): session events and their
    # seq, and the in-flight cap, hold across every node (engine.cluster). "": this process only.
    redis_url: str = ""
    redis_prefix: str = "nanoedit"  # the cluster's keys start with this (one Redis, many clusters)
    # A TOML file of models to add or override (see sessions._catalog.Catalog); None: built-in.
    catalog: Path | None = None
    user_agent: str = "nanoedit/0.1"
    # Another engine (another process) holds the session's store lease: "raise" SessionBusy at
    # once, or "wait" for it, polling with backoff, up to `lease_wait` seconds. Nothing is sent
    # before the lease is held.
    on_busy: OnBusy = "raise"
    # Seconds a lease lasts; a running turn renews it every third of that, so it never runs
    # out mid-turn. A process killed mid-turn blocks its session for at most this long.
    lease_ttl: float = 30.0
    lease_wait: float = 300.0  # on_busy="wait": give up with SessionBusy after this long

    def __post_init__(self) -> None:
        if self.provider not in PRESETS:
            raise ConfigError(f"unknown provider {self.provider!r}; one of {', '.join(PRESETS)}")
        if self.provider == "custom" and not self.base_url:
            raise ConfigError("provider 'custom' needs a base_url")
        if self.base_url and urlsplit(self.base_url).scheme not in ("http", "https"):
            # Refused now: an ftp:// or schemeless URL would only fail, and be retried, later.
            raise ConfigError(f"base_url must be an http:// or https:// URL, not {self.base_url!r}")
        if self.provider in _KEYED and not self.api_key:
            raise ConfigError(f"provider {self.provider!r} needs an API key")
        if self.api not in ("", *APIS):
            raise ConfigError(f"api must be one of {', '.join(APIS)}, not {self.api!r}")
        if self.image_delivery not in ("inline", "uri"):
            raise ConfigError(f"image_delivery must be inline or uri, not {self.image_delivery!r}")
        if self.auth not in ("", "bearer", "raw", "goog"):
            raise ConfigError(f"auth must be bearer, raw or goog, not {self.auth!r}")
        if self.max_in_flight < 1 or self.max_connections < 1:
            raise ConfigError("max_in_flight and max_connections must be at least 1")
        if self.on_busy not in ("raise", "wait"):
            raise ConfigError(f"on_busy must be 'raise' or 'wait', not {self.on_busy!r}")
        if not self.lease_ttl > 0 or not self.lease_wait >= 0:
            raise ConfigError("lease_ttl must be positive and lease_wait at least 0")
        if self.history_images not in HISTORY_IMAGES:
            raise ConfigError(
                f"history_images must be inline, files or auto, not {self.history_images!r}"
            )
        if self.max_request_bytes < 0:
            raise ConfigError("max_request_bytes must be at least 0 (0: the provider's limit)")

    @property
    def request_byte_limit(self) -> int:
        """The largest request body budgeted for: `max_request_bytes`, else the provider's."""
        return self.max_request_bytes or DEFAULT_REQUEST_LIMITS.get(
            self.provider, DEFAULT_REQUEST_BYTES
        )

    @property
    def preset(self) -> Preset:
        """The provider's preset with `api` and `auth` applied (an explicit `openai-chat` on a
        Gemini preset speaks Bearer unless told otherwise)."""
        preset = PRESETS[self.provider]
        api = self.api or preset.api
        auth = self.auth or (preset.auth if api == preset.api else _default_auth(api))
        return Preset(api, preset.base_url, auth, preset.model_prefix)

    @property
    def resolved_base_url(self) -> str:
        """The base URL requests go to (empty for `local` until the emulator has started)."""
        if self.base_url:
            return self.base_url.rstrip("/")
        return PROVIDER_PRESETS.get(self.provider, "")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        key_env: str | None = None,
        warn: bool = True,
    ) -> EngineConfig:
        """Read NANOEDIT_* and the key variables; no key and no base URL -> embedded emulator.

        Falling back to the emulator logs one warning naming the variables looked at (`warn`),
        so a misspelled key variable does not silently give fake images. A named non-local
        provider without a key is a ConfigError.
        """
        env = os.environ if env is None else env
        names = (key_env,) if key_env else KEY_ENV_VARS
        key = next((env[n] for n in names if env.get(n)), "")
        base_url = env.get("NANOEDIT_BASE_URL", "")
        provider = env.get("NANOEDIT_PROVIDER", "")
        api = env.get("NANOEDIT_API", "")
        if not provider:
            if base_url:
                provider = "custom"
            elif key:
                provider = "wisdom-gate" if env.get("WISDOM_GATE_KEY") == key else "google"
            else:
                provider = "local"
        if provider == "local":
            base_url = ""
            if warn and not env.get("NANOEDIT_PROVIDER"):
                _log.warning(
                    "config.no_api_key",
                    message="no API key found: using the embedded emulator (fake images)",
                    looked_at=", ".join(names),
                )
        home = env.get("NANOEDIT_HOME")
        catalog = env.get("NANOEDIT_CATALOG")
        return cls(
            store=env.get("NANOEDIT_STORE", ""),
            catalog=Path(catalog) if catalog else None,
            api=api,  # type: ignore[arg-type]  # validated in __post_init__
            provider=provider,  # type: ignore[arg-type]  # validated in __post_init__
            base_url=base_url,
            api_key=Secret(key),
            model=env.get("NANOEDIT_MODEL") or DEFAULT_MODEL,
            home=Path(home) if home else None,
        )


def _default_auth(api: str) -> AuthScheme:
    return "goog" if api in ("gemini", "interactions") else "bearer"
