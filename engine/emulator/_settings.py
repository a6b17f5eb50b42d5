"""Emulator settings: one frozen value, defaults in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from engine.emulator._faults import MAX_SECONDS
from sessions import BUILTIN, Catalog, ConfigError

__all__ = ["EmulatorSettings"]


DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024  # Google's documented inline limit, gateways' too


def _quarter_of_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # not POSIX: a fixed 2 GiB
        return 2 * 1024**3


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    """How one emulator server behaves; see the package docstring for each knob."""

    # repr=False: the key never shows up in logs, reprs or tracebacks.
    api_key: str = field(default="", repr=False)
    latency: float = 0.0
    latency_jitter: float = 0.0
    faults: str = ""
    flat: bool = False
    seed: int = 0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    record_requests: bool = False
    stream_text_chunks: int = 3
    # "first": signature on the first streamed text piece (Google's usual behaviour);
    # "last": on an extra empty-text part after the last text piece (also seen from Google).
    stream_signature: str = "first"
    # The byte bound is the real limit: 256 entries made a load of more than 256 sessions render
    # every image again on every run (10,000 flat 1K images are 300 MB).
    render_cache_entries: int = 65_536
    render_cache_bytes: int = 512 * 1024 * 1024
    render_threads: int = 0  # 0: one per CPU, at least 2
    # Memory held by model calls in progress (the request, its history images, the rendered
    # answer; from the read to the last byte sent, the latency included); beyond it calls wait
    # for room. Default: a quarter of the machine's memory.
    held_bytes: int = field(default_factory=_quarter_of_memory)
    catalog: Catalog = field(default=BUILTIN, repr=False)  # every model it serves
    # How chat completions carry images: "images" (message.images[]), "parts" (image_url parts
    # in content), "markdown" (a data URL in the text), "json" (a JSON object in the text).
    openai_dialect: str = "images"
    file_ttl: float = 48 * 3600.0  # seconds an uploaded file lives (Google: 48 hours)
    max_file_bytes: int = 2 * 1024**3  # Google: 2 GB per file
    # > 0: request bodies and uploads are read no faster than this (a client's uplink).
    upload_mbps: float = 0.0
    batch_seconds: float = 2.0  # how long a batch job takes from PENDING to its end
    batch_expiry: float = 48 * 3600.0  # a job still unfinished after this long EXPIRES
    # Seconds a stored interaction can be continued (Google: 55 days paid, 1 day free); older
    # ones are a 404 not_found, the chain's fallback case.
    interaction_ttl: float = 55 * 86400.0

    def __post_init__(self) -> None:
        if not self.interaction_ttl > 0:
            raise ConfigError("interaction_ttl must be positive")
        if not (0 <= self.latency <= MAX_SECONDS and 0 <= self.latency_jitter <= MAX_SECONDS):
            raise ConfigError(f"latency and latency_jitter must be within 0..{MAX_SECONDS:g}s")
        if self.max_request_bytes < 1:
            raise ConfigError("max_request_bytes must be positive")
        if self.stream_text_chunks < 1:
            raise ConfigError("stream_text_chunks must be at least 1")
        if self.stream_signature not in ("first", "last"):
            raise ConfigError("stream_signature must be 'first' or 'last'")
        if self.openai_dialect not in ("images", "parts", "markdown", "json"):
            raise ConfigError("openai_dialect must be images, parts, markdown or json")
        if self.render_cache_entries < 0 or self.render_cache_bytes < 0:
            raise ConfigError("render cache limits must be >= 0")
        if self.held_bytes < 1:
            raise ConfigError("held_bytes must be positive")
        if not (self.file_ttl > 0 and self.batch_expiry > 0 and self.max_file_bytes > 0):
            raise ConfigError("file_ttl, batch_expiry and max_file_bytes must be positive")
        if self.upload_mbps < 0 or self.batch_seconds < 0:
            raise ConfigError("upload_mbps and batch_seconds must be >= 0")
