"""The provider contract: how the runtime talks to one wire protocol, documented once.

A provider turns a request into bytes (`encode`, so the runtime can measure and budget the exact
body) and makes ONE attempt to get an answer (`generate`); the runtime owns retries, limits,
events and commits. Everything a provider raises is from `engine._exceptions`:

- `ApiError` subclasses for error answers (also an error object inside a stream);
- `TransportError` subclasses when no usable answer arrived (`StreamBroken` when a stream ended
  without a finish reason);
- `MalformedResponse` for a 2xx body that is not the JSON it should be;
- `ContentBlocked` when the prompt or the output was blocked, or an image-only turn came back
  without an image (the turn must not be committed);
- `EventTooLarge` when one stream event exceeds the provider's maximum.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine._config import AuthScheme, Secret
from engine.wire import (
    DEFAULT_MAX_EVENT_BYTES,
    Headers,
    ImageDelta,
    PartialImageDelta,
    RequestBody,
    TextDelta,
    Transport,
)
from sessions import Content, SessionSettings, Usage

__all__ = [
    "AuthScheme",
    "GenerateRequest",
    "HttpProvider",
    "OnDelta",
    "Provider",
    "ProviderResult",
    "auth_headers",
    "loop_time",
    "scope_of",
]


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What one turn sends: the resolved model id, the whole history, the session's settings."""

    model: str  # resolved model id, e.g. "gemini-3.1-flash-image"
    contents: Sequence[Content]
    settings: SessionSettings
    # The model wants its thought signatures back (Gemini 3).
    signatures: bool = False
    # Positions in `contents` of model Contents that came through another API (an
    # OpenAI-compatible one: no signatures of their own). With `signatures` they get Google's
    # documented placeholder; a Gemini answer is sent exactly as it came, signed or not.
    foreign: frozenset[int] = frozenset()
    # The interaction that produced the head turn, for a provider that keeps conversations
    # server-side (Interactions): the request then carries only the new user turn.
    previous_interaction: str | None = None
    # A region edit through a provider with native masks: the mask as OpenAI takes it (a PNG
    # the size of the edited image, fully transparent where it may change).
    mask: bytes | None = None

    @property
    def images_only(self) -> bool:
        """True when the session asks for images only (`response_modalities == ["IMAGE"]`)."""
        modalities = self.settings.response_modalities
        return modalities is not None and [m.upper() for m in modalities] == ["IMAGE"]


@dataclass(slots=True)
class ProviderResult:
    """One successful answer: ONE merged model Content plus what the server said about it."""

    content: Content
    finish_reason: str | None
    finish_message: str | None
    usage: Usage
    grounding_metadata: dict[str, Any] | None
    model_version: str | None
    response_id: str | None
    status: int
    request_bytes: int
    response_bytes: int
    # Seconds from the attempt's start: "headers_s", "first_event_s", "first_image_s", "done_s"
    # (the middle two only when there was such an event).
    timings: dict[str, float] = field(default_factory=dict)


OnDelta = Callable[[TextDelta | ImageDelta | PartialImageDelta], Awaitable[None]]


def auth_headers(key: Secret, scheme: AuthScheme) -> Headers:
    """The credential header for a key: `Authorization: Bearer KEY`, the bare key (Wisdom
    Gate's OpenAI-compatible guide), or Google's `x-goog-api-key`."""
    headers = Headers({"content-type": "application/json"})
    value = key.reveal()
    if value:
        if scheme == "bearer":
            headers["authorization"] = f"Bearer {value}"
        elif scheme == "raw":
            headers["authorization"] = value
        else:
            headers["x-goog-api-key"] = value
    return headers


class Provider(abc.ABC):
    """One wire protocol (Gemini REST, later OpenAI-compatible) behind one interface."""

    name: str  # "google", "wisdom-gate", "custom", "local"
    supports_streaming: bool
    # The API it speaks; a turn's record keeps it when it is not Gemini-native (see
    # `GenerateRequest.foreign`).
    api: str = "gemini"
    # The server keeps each answer's conversation (Interactions with `store: true`): a turn may
    # name its parent's answer instead of sending the history (`previous_interaction`).
    keeps_conversations: bool = False
    # The API confines an edit to a mask itself (OpenAI's `/images/edits`): a region edit then
    # sends the whole image and the mask, and the engine only checks what changed outside.
    native_masks: bool = False
    # Where uploads are valid: a fingerprint of the endpoint and the key (never the key). A
    # provider with the Files and Batch APIs is a `FilesAndBatches` (engine.providers._gemini).
    scope: str = ""

    @abc.abstractmethod
    def encode(self, request: GenerateRequest) -> bytes:
        """The request body, in one encoder call (images become base64 in C)."""

    def encode_body(self, request: GenerateRequest) -> RequestBody:
        """The body to send: by default `encode`; a provider may encode it as it is written."""
        return self.encode(request)

    def content_sizer(self, *, signatures: bool) -> Callable[[Content], int] | None:
        """Bytes one Content takes in a request body, if the provider keeps that per Content
        (the budget planner then sums them); None: the planner measures with `encode`."""
        return None

    @abc.abstractmethod
    async def generate(
        self,
        model: str,
        body: RequestBody,
        *,
        stream: bool,
        on_delta: OnDelta | None = None,
        images_only: bool = False,
    ) -> ProviderResult:
        """Make ONE attempt (no retries) with an encoded body; await `on_delta` per delta.

        Deltas arrive as the stream does; a plain call delivers them all once its body arrived,
        so a caller can build its events from deltas alone in both modes. A failed attempt may
        have delivered deltas already (the runtime discards them).
        `images_only` (see `GenerateRequest.images_only`) makes an answer without a non-thought
        image a `ContentBlocked(reason="NO_IMAGE")`.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release what the provider owns (not the shared transport)."""


def scope_of(base_url: str, key: str) -> str:
    """A fingerprint of an endpoint and a key: what a stored upload is valid for. One-way, so
    the store never holds anything a key could be recovered from."""
    digest = hashlib.sha256(b"nanoedit-scope\0" + base_url.encode() + b"\0" + key.encode())
    return digest.hexdigest()[:32]


def loop_time() -> float:
    """The running loop's clock: the transport's timestamps are on it."""
    return asyncio.get_running_loop().time()


class HttpProvider(Provider):
    """What every provider over HTTP holds: the engine's shared transport, the base URL, the
    credential headers (by `auth` scheme), the key to scrub from messages, the vendor prefix
    some gateways put on model ids, the largest stream event accepted."""

    default_auth: AuthScheme = "bearer"

    def __init__(
        self,
        transport: Transport,
        *,
        base_url: str,
        api_key: Secret,
        name: str = "custom",
        auth: AuthScheme | None = None,
        model_prefix: str = "",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.name = name
        self._transport = transport
        self._base_url = base_url.rstrip("/")
        self._headers = auth_headers(api_key, auth or self.default_auth)
        key = api_key.reveal()
        self._secrets: tuple[str, ...] = (key,) if key else ()
        self.scope = scope_of(self._base_url, key)
        self._prefix = model_prefix
        self._max_event_bytes = max_event_bytes

    async def aclose(self) -> None:
        """Nothing to release: the transport belongs to the engine."""
