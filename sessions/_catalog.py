"""The model catalogue: windows, image token costs, pixel sizes, allowed image configs, prices.

Figures from ../shared/GEMINI_FACTS.md. The emulator reads the same table, so what the engine
budgets for is what the emulator bills.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from sessions._errors import ConfigError

__all__ = [
    "BUILTIN",
    "DEFAULT_MODEL",
    "MODELS",
    "RATIOS",
    "STATUSES",
    "Catalog",
    "CatalogDrift",
    "ImageConfig",
    "LimitChange",
    "ListedModel",
    "ModelSpec",
    "Prices",
    "Status",
    "check_available",
    "estimate_text_tokens",
    "overlay_toml",
    "resolve_model",
]

GEMINI_NB_21 = "gemini-nano-banana-2.1"
GEMINI_31_FLASH_LITE = "gemini-3.1-flash-lite-image"
GEMINI_31_FLASH = "gemini-3.1-flash-image"
GEMINI_3_PRO = "gemini-3-pro-image"
GEMINI_31_FLASH_PREVIEW = "gemini-3.1-flash-image-preview"
GEMINI_3_PRO_PREVIEW = "gemini-3-pro-image-preview"
GEMINI_25_FLASH = "gemini-2.5-flash-image"
# The model a session uses when none is named (the engine, the CLI and the emulator alike).
# Google's default for new projects since 2026-10-06.
DEFAULT_MODEL = GEMINI_NB_21

# "deprecated": still served, with a replacement named; "shut down": no longer served by Google.
Status = Literal["GA", "preview", "deprecated", "shut down"]
STATUSES: tuple[Status, ...] = ("GA", "preview", "deprecated", "shut down")

RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTREME_RATIOS = ("1:4", "4:1", "1:8", "8:1")

# width x height per ratio, per model family and size.
_PX_25 = {
    "1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184),
    "4:3": (1184, 864), "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344),
    "16:9": (1344, 768), "21:9": (1536, 672),
}  # fmt: skip
_PX_3_1K = {
    "1:1": (1024, 1024), "2:3": (848, 1264), "3:2": (1264, 848), "3:4": (896, 1200),
    "4:3": (1200, 896), "4:5": (928, 1152), "5:4": (1152, 928), "9:16": (768, 1376),
    "16:9": (1376, 768), "21:9": (1584, 672), "1:4": (512, 2048), "4:1": (2048, 512),
    "1:8": (384, 3072), "8:1": (3072, 384),
}  # fmt: skip
_PX_3_2K = {
    "1:1": (2048, 2048), "2:3": (1696, 2528), "3:2": (2528, 1696), "3:4": (1792, 2400),
    "4:3": (2400, 1792), "4:5": (1856, 2304), "5:4": (2304, 1856), "9:16": (1536, 2752),
    "16:9": (2752, 1536), "21:9": (3168, 1344), "1:4": (1024, 4096), "4:1": (4096, 1024),
    "1:8": (768, 6144), "8:1": (6144, 768),
}  # fmt: skip
_PX_3_4K = {
    "1:1": (4096, 4096), "2:3": (3392, 5056), "3:2": (5056, 3392), "3:4": (3584, 4800),
    "4:3": (4800, 3584), "4:5": (3712, 4608), "5:4": (4608, 3712), "9:16": (3072, 5504),
    "16:9": (5504, 3072), "21:9": (6336, 2688), "1:4": (2048, 8192), "4:1": (8192, 2048),
    "1:8": (1536, 12288), "8:1": (12288, 1536),
}  # fmt: skip
_PX_31_512 = {
    "1:1": (512, 512), "2:3": (424, 632), "3:2": (632, 424), "3:4": (448, 600),
    "4:3": (600, 448), "4:5": (464, 576), "5:4": (576, 464), "9:16": (384, 688),
    "16:9": (688, 384), "21:9": (792, 336), "1:4": (256, 1024), "4:1": (1024, 256),
    "1:8": (192, 1536), "8:1": (1536, 192),
}  # fmt: skip


class ImageConfig(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel", kw_only=True):
    """`generationConfig.imageConfig`: aspect ratio and size; unset fields are not sent."""

    aspect_ratio: str | None = None
    image_size: str | None = None


class Prices(msgspec.Struct, frozen=True, kw_only=True):
    """USD prices: Google per output image by size and per 1M input tokens; gateway per request."""

    image_by_size: Mapping[str, float]
    input_per_million: float
    text_output_per_million: float
    per_request: Mapping[str, float]  # provider name -> flat price per request (Wisdom Gate)
    # Implicitly cached input (a repeated prefix: every multi-turn request) at a tenth of the
    # input rate, Google's discount for cached tokens.
    cached_input_per_million: float = -1.0
    # Batch API requests cost this share of the interactive price (Google: half).
    batch_share: float = 0.5

    def cached_rate(self) -> float:
        """USD per 1M cached input tokens (a tenth of the input rate unless the catalog says)."""
        if self.cached_input_per_million >= 0:
            return self.cached_input_per_million
        return self.input_per_million / 10


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, weakref=True):
    """What one image model accepts and costs."""

    id: str
    aliases: tuple[str, ...]
    context_window: int
    max_input_images: int
    output_image_tokens: Mapping[str, int]  # by image size ("1K" ...), "" when sizes unsupported
    input_image_tokens: int  # per image (2.5 Flash: per 768x768 tile)
    tiled_input: bool
    pixels: Mapping[str, Mapping[str, tuple[int, int]]]  # size -> ratio -> (w, h)
    sizes: tuple[str, ...]  # allowed imageSize values; () when the field is not accepted
    ratios: tuple[str, ...]
    default_size: str
    thinking: bool  # answers carry thoughts and signatures
    prices: Prices
    status: Status = "GA"
    replacement: str | None = None  # for a deprecated or shut-down model: the id to use instead
    shut_down_on: str | None = None  # ISO date
    deprecated_on: str | None = None  # ISO date
    # `thinkingLevel` values the model accepts (() : the field is not accepted), and its default.
    thinking_levels: tuple[str, ...] = ()
    default_thinking: str | None = None
    grounding: bool = True  # accepts the Google Search tool
    output_token_limit: int = 32_768  # the model list's outputTokenLimit

    def output_pixels(self, aspect_ratio: str, image_size: str | None) -> tuple[int, int]:
        """Output (width, height) for a ratio and size; size None means the default."""
        return self.pixels[image_size or self.default_size][aspect_ratio]

    def output_tokens(self, image_size: str | None) -> int:
        """Tokens one output image costs at `image_size`."""
        return self.output_image_tokens[image_size or self.default_size]

    def image_input_tokens(self, width: int, height: int) -> int:
        """Tokens one input image costs; 2.5 Flash counts 768x768 tiles."""
        if not self.tiled_input or (width <= 384 and height <= 384):
            return self.input_image_tokens
        return self.input_image_tokens * math.ceil(width / 768) * math.ceil(height / 768)

    def image_price(self, image_size: str | None) -> float:
        """Google's USD price for one output image at `image_size`."""
        return self.prices.image_by_size[image_size or self.default_size]

    def check_thinking(self, level: str | None) -> None:
        """Raise ConfigError, before anything is sent, for a thinking level this model rejects."""
        if level is None:
            return
        if not self.thinking_levels:
            raise ConfigError(f"{self.id} does not accept a thinking level")
        if level not in self.thinking_levels:
            raise ConfigError(
                f"thinking level {level!r} is not supported by {self.id}; "
                f"allowed: {', '.join(self.thinking_levels)}"
            )

    def check_tools(self, tools: list[dict[str, Any]] | None) -> None:
        """Raise ConfigError for tools this model does not take (search grounding)."""
        if self.grounding or not tools:
            return
        if any("google_search" in t or "googleSearch" in t for t in tools):
            raise ConfigError(f"{self.id} does not support Google Search grounding")

    def check_input_images(self, count: int) -> None:
        """Raise ConfigError when a request would carry more input images than the model takes."""
        if count > self.max_input_images:
            raise ConfigError(
                f"{count} input images: {self.id} accepts at most {self.max_input_images}"
            )

    def validate(self, config: ImageConfig) -> None:
        """Raise ConfigError, before anything is sent, for a config this model rejects."""
        ratio, size = config.aspect_ratio, config.image_size
        if ratio is not None and ratio not in self.ratios:
            raise ConfigError(
                f"aspect_ratio {ratio!r} is not supported by {self.id}; "
                f"allowed: {', '.join(self.ratios)}"
            )
        if size is None:
            return
        if not self.sizes:
            raise ConfigError(f"{self.id} does not accept image_size (always {self.default_size})")
        if size not in self.sizes:
            hint = ""
            if size.upper() in self.sizes:
                hint = f" (use uppercase: {size.upper()!r})"
            raise ConfigError(
                f"image_size {size!r} is not supported by {self.id}{hint}; "
                f"allowed: {', '.join(self.sizes)}"
            )


_FLASH = ModelSpec(
    id=GEMINI_31_FLASH,
    aliases=("nano-banana-2",),
    context_window=131_072,
    max_input_images=14,
    output_image_tokens={"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
    input_image_tokens=1120,
    tiled_input=False,
    pixels={"512": _PX_31_512, "1K": _PX_3_1K, "2K": _PX_3_2K, "4K": _PX_3_4K},
    sizes=("512", "1K", "2K", "4K"),
    ratios=RATIOS + EXTREME_RATIOS,
    default_size="1K",
    thinking=True,
    prices=Prices(
        image_by_size={"512": 0.045, "1K": 0.067, "2K": 0.101, "4K": 0.151},
        input_per_million=0.50,
        text_output_per_million=3.00,
        per_request={"wisdom-gate": 0.058},
    ),
    thinking_levels=("minimal", "high"),
    default_thinking="minimal",
    status="deprecated",
    replacement=GEMINI_NB_21,
    deprecated_on="2026-10-06",
)
# Nano Banana 2.1: 3.1 Flash's image-token table (Google publishes none of its own: assumed),
# no 512, $30 per 1M output image tokens (1K: 1120 tokens, $0.0336).
_NB_21 = msgspec.structs.replace(
    _FLASH,
    id=GEMINI_NB_21,
    aliases=("nano-banana-2.1",),
    output_image_tokens={"1K": 1120, "2K": 1680, "4K": 2520},
    pixels={"1K": _PX_3_1K, "2K": _PX_3_2K, "4K": _PX_3_4K},
    sizes=("1K", "2K", "4K"),
    prices=Prices(
        image_by_size={"1K": 0.0336, "2K": 0.0504, "4K": 0.0756},
        input_per_million=0.50,
        text_output_per_million=3.00,
        per_request={},
    ),
    thinking_levels=("minimal", "medium", "high"),
    default_thinking="medium",
    status="GA",
    replacement=None,
    deprecated_on=None,
)
# Nano Banana 2 Lite: 1K only, no search grounding, $30 per 1M output image tokens.
_LITE = msgspec.structs.replace(
    _FLASH,
    id=GEMINI_31_FLASH_LITE,
    aliases=("nano-banana-2-lite",),
    output_image_tokens={"1K": 1120},
    pixels={"1K": _PX_3_1K},
    sizes=("1K",),
    prices=Prices(
        image_by_size={"1K": 0.0336},
        input_per_million=0.50,
        text_output_per_million=3.00,
        per_request={},
    ),
    thinking_levels=("minimal", "high"),
    default_thinking="minimal",
    grounding=False,
    status="GA",
    replacement=None,
    deprecated_on=None,
)
_PRO = ModelSpec(
    id=GEMINI_3_PRO,
    aliases=("nano-banana-pro",),
    context_window=65_536,
    max_input_images=14,
    output_image_tokens={"1K": 1120, "2K": 1120, "4K": 2000},
    input_image_tokens=560,
    tiled_input=False,
    pixels={
        "1K": {r: _PX_3_1K[r] for r in RATIOS},
        "2K": {r: _PX_3_2K[r] for r in RATIOS},
        "4K": {r: _PX_3_4K[r] for r in RATIOS},
    },
    sizes=("1K", "2K", "4K"),
    ratios=RATIOS,
    default_size="1K",
    thinking=True,
    prices=Prices(
        image_by_size={"1K": 0.134, "2K": 0.134, "4K": 0.24},
        input_per_million=2.00,
        text_output_per_million=12.00,
        per_request={"wisdom-gate": 0.068},
    ),
    thinking_levels=("high",),  # thinking is always on
    default_thinking="high",
)

MODELS: dict[str, ModelSpec] = {
    GEMINI_NB_21: _NB_21,
    GEMINI_31_FLASH_LITE: _LITE,
    GEMINI_31_FLASH: _FLASH,
    GEMINI_3_PRO: _PRO,
    # Shut down at Google; gateways may still route them, so they stay, with their successor.
    GEMINI_31_FLASH_PREVIEW: msgspec.structs.replace(
        _FLASH,
        id=GEMINI_31_FLASH_PREVIEW,
        aliases=(),
        status="shut down",
        replacement=GEMINI_31_FLASH,
        shut_down_on="2026-06-25",
        deprecated_on=None,
    ),
    GEMINI_3_PRO_PREVIEW: msgspec.structs.replace(
        _PRO,
        id=GEMINI_3_PRO_PREVIEW,
        aliases=(),
        status="shut down",
        replacement=GEMINI_3_PRO,
        shut_down_on="2026-06-25",
    ),
    GEMINI_25_FLASH: ModelSpec(
        id=GEMINI_25_FLASH,
        aliases=("nano-banana",),
        context_window=32_768,
        max_input_images=3,
        output_image_tokens={"1K": 1290},
        input_image_tokens=258,
        tiled_input=True,
        pixels={"1K": _PX_25},
        sizes=(),
        ratios=RATIOS,
        default_size="1K",
        thinking=False,
        prices=Prices(
            image_by_size={"1K": 0.039},
            input_per_million=0.30,
            text_output_per_million=2.50,
            per_request={},
        ),
        status="shut down",
        replacement=GEMINI_NB_21,
        shut_down_on="2026-10-02",
    ),
}

# Gateways name models with a vendor ("google/gemini-3.1-flash-image", OpenRouter), the REST
# API with a collection ("models/gemini-3.1-flash-image").
_PREFIXES = ("models/", "google/", "gemini/")
# TOML keys of a catalog entry; each overrides what the entry's `base` says.
_ENTRY_KEYS = frozenset(
    {
        "base",
        "aliases",
        "status",
        "replacement",
        "shut_down_on",
        "deprecated_on",
        "thinking_levels",
        "default_thinking",
        "grounding",
        "context_window",
        "output_token_limit",
        "max_input_images",
        "sizes",
        "ratios",
        "default_size",
        "output_image_tokens",
        "input_image_tokens",
        "image_price_usd",
        "input_per_million_usd",
        "output_per_million_usd",
        "cached_input_per_million_usd",
        "per_request_usd",
        "batch_share",
    }
)


class Catalog:
    """The models an engine knows: the built-in ones, plus or overridden by a TOML file."""

    def __init__(self, models: Mapping[str, ModelSpec], source: str = "") -> None:
        self.models: dict[str, ModelSpec] = dict(models)
        self.source = source  # the TOML file the entries came from ("" for the built-in)
        self._names: dict[str, ModelSpec] = {}
        for spec in self.models.values():
            for name in (spec.id, *spec.aliases):
                self._names[name] = spec

    def resolve(self, name: str) -> ModelSpec:
        """The spec for an id, an alias or a gateway spelling; ConfigError if unknown."""
        key = name.strip()
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        spec = self._names.get(key)
        if spec is None:
            raise ConfigError(
                f"unknown model {name!r}; known: {', '.join(sorted(self._names))}. A model "
                "nanoedit does not ship can be added with a TOML catalog (NANOEDIT_CATALOG or "
                "EngineConfig.catalog)"
            )
        return spec

    def refresh(self, listed: Sequence[ListedModel]) -> CatalogDrift:
        """Compare the catalog with a provider's model list (`nanoedit models --refresh`):
        image models it lacks, ids the provider stopped listing, limits that differ."""
        by_id = {m.id: m for m in listed}
        added = [m for m in listed if _is_image_model(m.id) and m.id not in self._names]
        missing = [
            spec.id
            for spec in self.models.values()
            if spec.status != "shut down" and spec.id not in by_id
        ]
        changed: list[LimitChange] = []
        for spec in self.models.values():
            found = by_id.get(spec.id)
            if found is None:
                continue
            for name, ours, theirs in (
                ("context_window", spec.context_window, found.input_token_limit),
                ("output_token_limit", spec.output_token_limit, found.output_token_limit),
            ):
                if theirs and theirs != ours:
                    changed.append(
                        LimitChange(id=spec.id, field=name, catalog=ours, provider=theirs)
                    )
        return CatalogDrift(added=added, missing=missing, changed=changed)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> Catalog:
        """The built-in catalog with the entries of the TOML file at `path` (None: built-in)."""
        if path is None:
            return BUILTIN
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"catalog {os.fspath(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog {os.fspath(path)!r}: {exc}") from None
        entries = doc.get("models", {})
        if not isinstance(entries, dict) or set(doc) - {"models"}:
            raise ConfigError(f'catalog {os.fspath(path)!r}: expected [models."ID"] tables')
        models = dict(BUILTIN.models)
        for model_id, entry in entries.items():
            models[model_id] = _entry(model_id, entry, models, os.fspath(path))
        return cls(models, os.fspath(path))


def _entry(model_id: str, entry: object, models: Mapping[str, ModelSpec], path: str) -> ModelSpec:
    where = f"catalog {path!r}, model {model_id!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_ENTRY_KEYS)}")
    base_id = entry.get("base", model_id)
    base = models.get(base_id) or BUILTIN._names.get(base_id)
    if base is None:
        raise ConfigError(f"{where}: 'base' must name a known model (got {base_id!r})")
    prices = base.prices
    changes: dict[str, Any] = {"id": model_id}
    try:
        if "aliases" in entry:
            changes["aliases"] = tuple(str(a) for a in entry["aliases"])
        elif model_id != base.id:
            changes["aliases"] = ()  # the base keeps its aliases
        for key in (
            "status",
            "replacement",
            "shut_down_on",
            "deprecated_on",
            "default_size",
            "default_thinking",
        ):
            if key in entry:
                changes[key] = str(entry[key])
        if "grounding" in entry:
            if not isinstance(entry["grounding"], bool):
                raise ValueError("grounding must be true or false")
            changes["grounding"] = entry["grounding"]
        if "thinking_levels" in entry:
            changes["thinking_levels"] = tuple(str(v) for v in entry["thinking_levels"])
        for key in (
            "context_window",
            "output_token_limit",
            "max_input_images",
            "input_image_tokens",
        ):
            if key in entry:
                changes[key] = _count(entry[key], key)
        for key in ("sizes", "ratios"):
            if key in entry:
                changes[key] = tuple(str(v) for v in entry[key])
        if "output_image_tokens" in entry:
            table = {
                str(k): _count(v, "output_image_tokens")
                for k, v in entry["output_image_tokens"].items()
            }
            changes["output_image_tokens"] = {**base.output_image_tokens, **table}
        price_changes: dict[str, Any] = {}
        if "image_price_usd" in entry:
            by_size = {str(k): _usd(v) for k, v in entry["image_price_usd"].items()}
            price_changes["image_by_size"] = {**prices.image_by_size, **by_size}
        for key, field_name in (
            ("input_per_million_usd", "input_per_million"),
            ("output_per_million_usd", "text_output_per_million"),
            ("cached_input_per_million_usd", "cached_input_per_million"),
        ):
            if key in entry:
                price_changes[field_name] = _usd(entry[key])
        if "batch_share" in entry:
            share = float(entry["batch_share"])
            if not 0 <= share <= 1:
                raise ValueError(f"batch_share must be within 0..1, not {share}")
            price_changes["batch_share"] = share
        if "per_request_usd" in entry:
            flat = {str(k): _usd(v) for k, v in entry["per_request_usd"].items()}
            price_changes["per_request"] = {**prices.per_request, **flat}
        if price_changes:
            changes["prices"] = msgspec.structs.replace(prices, **price_changes)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    spec = msgspec.structs.replace(base, **changes)
    _check_spec(spec, where)
    return spec


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def _usd(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
        raise ValueError(f"a price must be a non-negative number of USD, not {value!r}")
    return float(value)


def _check_spec(spec: ModelSpec, where: str) -> None:
    if spec.status not in STATUSES:
        raise ConfigError(f"{where}: status must be one of {', '.join(STATUSES)}")
    if spec.default_thinking is not None and spec.default_thinking not in spec.thinking_levels:
        raise ConfigError(f"{where}: default_thinking must be one of thinking_levels")
    sizes = spec.sizes or (spec.default_size,)
    for size in sizes:
        if size not in spec.pixels or size not in spec.output_image_tokens:
            raise ConfigError(f"{where}: size {size!r} has no pixel table or token cost")
        if size not in spec.prices.image_by_size:
            raise ConfigError(f"{where}: size {size!r} has no price")
        missing = [r for r in spec.ratios if r not in spec.pixels[size]]
        if missing:
            raise ConfigError(f"{where}: ratios {missing} have no pixel size at {size}")


class ListedModel(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a provider's model list (`GET /v1beta/models`)."""

    id: str  # without the "models/" collection
    input_token_limit: int = 0
    output_token_limit: int = 0
    methods: tuple[str, ...] = ()


class LimitChange(msgspec.Struct, frozen=True, kw_only=True):
    """A limit the provider lists differently from the catalog."""

    id: str
    field: str  # "context_window" (inputTokenLimit) or "output_token_limit"
    catalog: int
    provider: int


class CatalogDrift(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider's model list says that the catalog does not."""

    added: list[ListedModel]  # image models the provider serves that the catalog lacks
    missing: list[str]  # catalog ids (not shut down) the provider no longer lists
    changed: list[LimitChange]

    @property
    def empty(self) -> bool:
        """Nothing drifted."""
        return not (self.added or self.missing or self.changed)

    def overlay(self, today: str) -> dict[str, dict[str, Any]]:
        """The `[models."ID"]` entries that teach a catalog what drifted: new ids as previews
        built on the default model with their listed window, missing ids shut down (as of
        `today`), changed limits as listed."""
        entries: dict[str, dict[str, Any]] = {}
        for model in self.added:
            entry: dict[str, Any] = {"base": DEFAULT_MODEL, "status": "preview"}
            if model.input_token_limit:
                entry["context_window"] = model.input_token_limit
            if model.output_token_limit:
                entry["output_token_limit"] = model.output_token_limit
            entries[model.id] = entry
        for model_id in self.missing:
            entries[model_id] = {"status": "shut down", "shut_down_on": today}
            if model_id != DEFAULT_MODEL:
                entries[model_id]["replacement"] = DEFAULT_MODEL
        for change in self.changed:
            entries.setdefault(change.id, {})[change.field] = change.provider
        return entries


def _is_image_model(model_id: str) -> bool:
    return "image" in model_id or "banana" in model_id


BUILTIN = Catalog(MODELS)
"""The models nanoedit ships."""


def resolve_model(name: str, catalog: Catalog | None = None) -> ModelSpec:
    """The spec for a model id, alias (`nano-banana-2`, `nano-banana-pro`) or gateway spelling
    (`google/gemini-3.1-flash-image`), in `catalog` (the built-in one by default)."""
    return (catalog or BUILTIN).resolve(name)


def check_available(spec: ModelSpec, provider: str) -> str | None:
    """Raise ConfigError for a shut-down model asked of Google itself (before anything is sent);
    elsewhere (a gateway may still route it), and for a deprecated model anywhere, return the
    warning to log; None if there is none."""
    if spec.status == "deprecated":
        return (
            f"{spec.id} is deprecated by Google (since {spec.deprecated_on}); it is still "
            f"served, but use {spec.replacement}"
        )
    if spec.status != "shut down":
        return None
    message = f"{spec.id} was shut down by Google on {spec.shut_down_on}; use {spec.replacement}"
    if provider == "google":
        raise ConfigError(message)
    return message + f" (sent as written: provider {provider!r} may still route it)"


def overlay_toml(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """`[models."ID"]` tables as TOML text (strings, integers, floats, booleans, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return (
                "{ " + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + " }"
            )
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    out = []
    for model_id, entry in entries.items():
        out.append(f"[models.{json.dumps(model_id)}]")
        out.extend(f"{key} = {value(v)}" for key, v in entry.items())
        out.append("")
    return "\n".join(out)


def estimate_text_tokens(text: str) -> int:
    """Tokens for text until the server reports real counts: ceil(UTF-8 bytes / 4)."""
    return -(-len(text.encode()) // 4)
