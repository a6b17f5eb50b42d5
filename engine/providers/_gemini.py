"""The Gemini-native REST provider (Google, Wisdom Gate, the emulator, any compatible gateway).

Requests are encoded in one msgspec call; each SSE event is decoded in one msgspec call; streamed
parts are merged into one model Content (`engine.wire._merge`). Decisions worth knowing:

- a response without any candidate and without a prompt block is a `MalformedResponse`;
- an answer that finished with no parts at all is `ContentBlocked` (committing it would make the
  next request invalid): its finish reason, or "EMPTY_RESPONSE" when that was STOP or missing;
- a 2xx `application/json` answer to a streaming request (a gateway that ignored `alt=sse`) is
  read as one response or as a JSON array of chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from engine._exceptions import ContentBlocked, StreamBroken, TransportError
from engine._memo import Memo
from engine.providers._base import (
    GenerateRequest,
    HttpProvider,
    OnDelta,
    ProviderResult,
    loop_time,
)
from engine.providers._errors import google_error, json_http_error
from engine.providers._google_files import FilesAndBatches
from engine.wire import (
    ContentMerger,
    Delta,
    ImageDelta,
    LazyBody,
    RawSSEDecoder,
    RequestBody,
    StreamResponse,
    TextDelta,
    html_title,
    malformed,
)
from sessions import (
    Blob,
    Content,
    GenerateContentRequest,
    GenerateContentResponse,
    ModalityTokenCount,
    Part,
    PayloadCutter,
    Usage,
    UsageMetadata,
    WireContent,
    WireError,
    b64encode,
    decode_response,
    part_from_wire,
    wire_contents,
)

__all__ = ["BLOCKED_FINISH_REASONS", "GeminiProvider"]

BLOCKED_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "RECITATION",
        "BLOCKLIST",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
    }
)
"""Finish reasons that mean the model withheld its answer: the turn fails with ContentBlocked."""

_encoder = msgspec.json.Encoder()
_response_list_decoder = msgspec.json.Decoder(list[GenerateContentResponse])


def _tokens(details: list[ModalityTokenCount] | None, modality: str) -> int:
    return sum(d.token_count for d in details or () if d.modality == modality)


def usage_from(meta: UsageMetadata | None) -> Usage:
    """`Usage` from `usageMetadata`, split per modality; zeros when the server sent none.

    Real image answers list only IMAGE in `candidatesTokensDetails`: the rest of
    `candidatesTokenCount` is the visible text, and is counted (and billed) as such.
    """
    if meta is None:
        return Usage()
    details = meta.candidates_tokens_details
    image_out = _tokens(details, "IMAGE")
    if details is None:
        text_out = 0  # no breakdown at all: the budget estimates it
    elif any(d.modality == "TEXT" for d in details):
        text_out = _tokens(details, "TEXT")
    else:
        listed = sum(d.token_count for d in details)
        text_out = max(0, meta.candidates_token_count - listed)
    return Usage(
        prompt_tokens=meta.prompt_token_count,
        output_tokens=meta.candidates_token_count,
        thoughts_tokens=meta.thoughts_token_count,
        total_tokens=meta.total_token_count
        or meta.prompt_token_count
        + meta.candidates_token_count
        + meta.thoughts_token_count
        + meta.tool_use_prompt_token_count,
        prompt_image_tokens=_tokens(meta.prompt_tokens_details, "IMAGE"),
        prompt_text_tokens=_tokens(meta.prompt_tokens_details, "TEXT"),
        output_image_tokens=image_out,
        output_text_tokens=text_out,
        cached_tokens=min(meta.cached_content_token_count, meta.prompt_token_count),
        tool_use_tokens=meta.tool_use_prompt_token_count,
    )


class _Answer:
    """What the chunks of one answer said, gathered as they arrive."""

    __slots__ = (
        "candidates",
        "finish_message",
        "finish_reason",
        "grounding",
        "model_version",
        "response_id",
        "role",
        "secrets",
        "status",
        "usage",
    )

    def __init__(self, status: int, secrets: tuple[str, ...]) -> None:
        self.status = status
        self.secrets = secrets
        self.candidates = 0
        self.role: str | None = None
        self.finish_reason: str | None = None
        self.finish_message: str | None = None
        self.usage: UsageMetadata | None = None
        self.grounding: dict[str, Any] | None = None
        self.model_version: str | None = None
        self.response_id: str | None = None

    def observe(self, response: GenerateContentResponse) -> list[Part]:
        """Record one response (or chunk); return its parts. Raises on error and prompt block."""
        if response.error is not None:
            err = response.error
            raise google_error(err.code, err.message, err.status, err.details, secrets=self.secrets)
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            raise ContentBlocked(
                feedback.block_reason_message or "the prompt was blocked",
                reason=feedback.block_reason,
            )
        if response.usage_metadata is not None:
            # Later chunks carry the running (finally the full) usage; the last one wins.
            self.usage = response.usage_metadata
        self.model_version = response.model_version or self.model_version
        self.response_id = response.response_id or self.response_id
        candidate = next((c for c in response.candidates if c.index in (None, 0)), None)
        if candidate is None:
            return []
        self.candidates += 1
        if candidate.finish_reason:
            self.finish_reason = candidate.finish_reason
        if candidate.finish_message:
            self.finish_message = candidate.finish_message
        if candidate.grounding_metadata is not None:
            self.grounding = candidate.grounding_metadata
        if candidate.content is None:
            return []
        self.role = candidate.content.role or self.role
        try:
            return [part_from_wire(item) for item in candidate.content.parts]
        except WireError as exc:
            raise malformed(self.status, f"malformed part: {exc}", self.secrets) from exc

    def check(self, content: Content, *, images_only: bool, streamed: bool) -> None:
        """Raise if the finished answer must not become a turn."""
        reason = self.finish_reason
        if reason in BLOCKED_FINISH_REASONS:
            raise ContentBlocked(self.finish_message or "", reason=reason)
        if streamed and reason is None:
            raise StreamBroken("the stream ended before a finish reason")
        if not streamed and not self.candidates:
            raise malformed(self.status, "response has no candidates", self.secrets)
        if not content.parts:
            raise ContentBlocked(
                self.finish_message or "the model returned no content",
                reason=reason if reason and reason != "STOP" else "EMPTY_RESPONSE",
            )
        if images_only and not any(p.is_image and not p.thought for p in content.parts):
            raise ContentBlocked(
                self.finish_message or "the model answered without an image", reason="NO_IMAGE"
            )

    def result(
        self,
        content: Content,
        *,
        request_bytes: int,
        response_bytes: int,
        timings: dict[str, float],
    ) -> ProviderResult:
        return ProviderResult(
            content=content,
            finish_reason=self.finish_reason,
            finish_message=self.finish_message,
            usage=usage_from(self.usage),
            grounding_metadata=self.grounding,
            model_version=self.model_version,
            response_id=self.response_id,
            status=self.status,
            request_bytes=request_bytes,
            response_bytes=response_bytes,
            timings=timings,
        )


def _deltas(parts: Sequence[Part]) -> list[Delta]:
    out: list[Delta] = []
    for part in parts:
        if part.is_image:
            out.append(ImageDelta(part))
        elif part.text and part.inline_data is None:
            out.append(TextDelta(part.text, bool(part.thought)))
    return out


_CONTENTS_OPEN = b'{"contents":['


def _envelope(request: GenerateRequest, contents: list[Any]) -> GenerateContentRequest:
    settings = request.settings
    generation: dict[str, Any] = dict(settings.generation_config or {})
    if settings.response_modalities is not None:
        generation["responseModalities"] = list(settings.response_modalities)
    if settings.image_config:
        generation["imageConfig"] = dict(settings.image_config)
    system = settings.system_instruction
    return GenerateContentRequest(
        contents=contents,
        system_instruction=wire_contents([system])[0] if system is not None else None,
        tools=settings.tools,
        tool_config=settings.tool_config,
        safety_settings=settings.safety_settings,
        generation_config=generation or None,
    )


# Stands in for an image's bytes in a Content encoded without them; its base64 marks where the
# image's own base64 goes. No image data starts with a NUL and this text.
_SENTINEL = b"\x00nanoedit-image-payload\x00"
_SENTINEL_B64 = b64encode(_SENTINEL)


def _content_pieces(content: Content | WireContent) -> Iterator[bytes | Blob]:
    """A Content's JSON in pieces: the JSON around each inline image, and each image's Blob in
    its place (whose base64 goes there: the same bytes msgspec would write)."""
    if not isinstance(content, Content) or not any(p.inline_data for p in content.parts):
        yield _encoder.encode(content)
        return
    payloads: list[Blob] = []
    parts = []
    for p in content.parts:
        if p.inline_data is not None:
            payloads.append(p.inline_data)
            p = msgspec.structs.replace(
                p, inline_data=msgspec.structs.replace(p.inline_data, data=_SENTINEL)
            )
        parts.append(p)
    skeleton = _encoder.encode(Content(role=content.role, parts=parts))
    chunks = skeleton.split(_SENTINEL_B64)
    if len(chunks) != len(payloads) + 1:  # pragma: no cover - the sentinel is never in text
        yield _encoder.encode(content)
        return
    for chunk, payload in zip(chunks, payloads, strict=False):
        yield chunk
        yield payload
    yield chunks[-1]


PLACEHOLDER_SIGNATURE = b"skip_thought_signature_validator"
"""Google's documented signature for model turns that did not come from this API (the bytes,
sent base64-encoded like any signature, as the official SDK does)."""


def _signed(request: GenerateRequest) -> Sequence[Content]:
    """The history, with the placeholder signature on the model turns that came through
    another API and have none at all: on the first answer text and on every image."""
    if not request.signatures or not request.foreign:
        return request.contents
    foreign = request.foreign
    return [_signed_content(c) if i in foreign else c for i, c in enumerate(request.contents)]


def _signed_content(content: Content) -> Content:
    # Signed answer parts: sent as they are. Signatures on thought parts alone (an
    # Interactions answer's `thought` steps) do not sign the answer's text and images.
    if content.role != "model" or any(p.thought_signature for p in content.parts if not p.thought):
        return content
    parts, text_signed = [], False
    for part in content.parts:
        needs = part.is_image or (bool(part.text) and not part.thought and not text_signed)
        if needs and not part.thought:
            text_signed = text_signed or not part.is_image
            part = msgspec.structs.replace(part, thought_signature=PLACEHOLDER_SIGNATURE)
        parts.append(part)
    return Content(role=content.role, parts=parts)


# A Content's encoded form: the JSON pieces around its images with the image Blobs in their
# places, and its encoded length.
_Template = tuple[tuple["bytes | Blob", ...], int]


def _template(content: Content, *, signatures: bool) -> _Template:
    wire = wire_contents([_signed_content(content) if signatures else content])[0]
    pieces = tuple(_content_pieces(wire))
    size = sum(len(p) if isinstance(p, bytes) else 4 * ((len(p.data) + 2) // 3) for p in pieces)
    return pieces, size


def _signed_template(content: Content) -> _Template:
    return _template(content, signatures=True)


def _plain_template(content: Content) -> _Template:
    return _template(content, signatures=False)


class GeminiProvider(FilesAndBatches, HttpProvider):
    """Gemini REST: `:generateContent` and `:streamGenerateContent?alt=sse`.

    The transport is shared and owned by the engine; `aclose()` leaves it open.
    """

    supports_streaming = True
    default_auth = "goog"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signed_memo: Memo[Content, _Template] = Memo()
        self._plain_memo: Memo[Content, _Template] = Memo()

    def _url(self, model: str, method: str) -> str:
        name = quote(model.removeprefix("models/"), safe="-._~")
        return f"{self._base_url}/v1beta/models/{name}:{method}"

    def encode(self, request: GenerateRequest) -> bytes:
        """The generateContent body: history verbatim plus the session's settings."""
        return _encoder.encode(_envelope(request, wire_contents(_signed(request))))

    def _template_of(self, signatures: bool) -> Callable[[Content], _Template]:
        # History Contents are the same objects turn after turn: each is encoded (without its
        # images' bytes) once, not once per later turn (at turn 6 of a small-image session that
        # re-encoding was a fifth of the client's CPU).
        if signatures:
            memo, compute = self._signed_memo, _signed_template
        else:
            memo, compute = self._plain_memo, _plain_template
        return functools.partial(memo.get, compute=compute)

    def content_sizer(self, *, signatures: bool) -> Callable[[Content], int]:
        """Bytes a Content takes in a request body (its images' base64 included), kept."""
        template = self._template_of(signatures)
        return lambda content: template(content)[1]

    def encode_body(self, request: GenerateRequest) -> LazyBody:
        """The same bytes as `encode`, produced one Content at a time while being written."""
        plain = self._template_of(False)
        foreign = request.foreign if request.signatures else frozenset()
        if foreign:
            signed = self._template_of(True)
            templates = [
                (signed if i in foreign else plain)(c) for i, c in enumerate(request.contents)
            ]
        else:
            templates = [plain(c) for c in request.contents]
        skeleton = _encoder.encode(_envelope(request, []))
        # `contents` is the first field, so the skeleton starts with an empty contents array
        # that the history is written into.
        head, tail = skeleton[: len(_CONTENTS_OPEN)], skeleton[len(_CONTENTS_OPEN) :]
        if head != _CONTENTS_OPEN:  # pragma: no cover - guards the field order assumption
            return LazyBody(len(body := self.encode(request)), lambda: (body,))
        size = len(skeleton) + sum(t[1] for t in templates) + max(len(templates) - 1, 0)

        def pieces() -> Iterator[bytes]:
            # Small pieces (commas, text turns, the JSON around images) are gathered into one
            # write; an image's base64 is its own piece, encoded by the SIMD codec (10x
            # msgspec's scalar one) only after everything before it went out, so the writer has
            # let go of the previous image's base64 and its memory is reused.
            pending = bytearray(head)
            for i, (template, _) in enumerate(templates):
                if i:
                    pending += b","
                for piece in template:
                    if isinstance(piece, bytes):
                        pending += piece
                        continue
                    yield bytes(pending)
                    pending.clear()
                    yield b64encode(piece.data)
            pending += tail
            yield bytes(pending)

        return LazyBody(size, pieces)

    async def generate(
        self,
        model: str,
        body: RequestBody,
        *,
        stream: bool,
        on_delta: OnDelta | None = None,
        images_only: bool = False,
    ) -> ProviderResult:
        """One attempt at `model` with an encoded body (see `Provider.generate`)."""
        if stream:
            return await self._stream(model, body, on_delta, images_only)
        return await self._once(model, body, on_delta, images_only)

    async def _once(
        self, model: str, body: RequestBody, on_delta: OnDelta | None, images_only: bool
    ) -> ProviderResult:
        resp = await self._transport.request(
            "POST",
            self._url(model, "generateContent"),
            body=body,
            headers=self._headers,
            errors=json_http_error,
        )
        timings = {
            "headers_s": resp.headers_at - resp.started_at,
            "done_s": resp.done_at - resp.started_at,
        }
        result = self.read_answer(
            resp.body,
            status=resp.status,
            content_type=resp.content_type,
            images_only=images_only,
            request_bytes=resp.request_bytes,
            timings=timings,
        )
        if on_delta is not None:
            for delta in _deltas(result.content.parts):
                await on_delta(delta)
        return result

    def read_answer(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        images_only: bool = False,
        request_bytes: int = 0,
        timings: dict[str, float] | None = None,
    ) -> ProviderResult:
        """One whole GenerateContentResponse (a plain call's body, a batch item's response)
        as a result; raises what `generate` raises for a bad or blocked answer."""
        answer = _Answer(status, self._secrets)
        parts: list[Part] = []
        for response in self._decode_body(body, content_type, answer):
            parts.extend(answer.observe(response))
        content = Content(role=answer.role or "model", parts=parts)
        answer.check(content, images_only=images_only, streamed=False)
        return answer.result(
            content,
            request_bytes=request_bytes,
            response_bytes=len(body),
            timings=timings or {},
        )

    def _decode_body(
        self, body: bytes, content_type: str, answer: _Answer
    ) -> list[GenerateContentResponse]:
        if "html" in content_type:
            title = html_title(body[:65536].decode("utf-8", "replace"))
            raise malformed(
                answer.status, f"expected JSON, got an HTML page: {title or ''}", self._secrets
            )
        try:
            if body.lstrip()[:1] == b"[":
                return _response_list_decoder.decode(body)
            return [decode_response(body)]
        except (msgspec.DecodeError, RecursionError) as exc:
            message = f"malformed response body: {exc}"
            raise malformed(answer.status, message, self._secrets) from exc

    async def _stream(
        self, model: str, body: RequestBody, on_delta: OnDelta | None, images_only: bool
    ) -> ProviderResult:
        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        timings: dict[str, float] = {}
        merger = ContentMerger()
        async with self._transport.stream(
            "POST", url, body=body, headers=self._headers, errors=json_http_error
        ) as resp:
            start = resp.started_at
            timings["headers_s"] = resp.headers_at - start
            answer = _Answer(resp.status, self._secrets)
            if resp.content_type in ("application/json", "text/html"):
                for response in self._decode_body(await resp.read(), resp.content_type, answer):
                    await self._chunk(response, answer, merger, on_delta, timings, start)
            else:
                try:
                    await self._read_events(resp, answer, merger, on_delta, timings, start)
                except TransportError:
                    if answer.finish_reason is None:
                        raise
                    # The model had finished and said so in a complete event; only the
                    # connection's goodbye failed. Retrying would pay for the image twice.
            response_bytes = resp.response_bytes
            request_bytes = resp.request_bytes
        content = merger.content()
        answer.check(content, images_only=images_only, streamed=True)
        timings["done_s"] = loop_time() - start
        return answer.result(
            content, request_bytes=request_bytes, response_bytes=response_bytes, timings=timings
        )

    async def _read_events(
        self,
        resp: StreamResponse,
        answer: _Answer,
        merger: ContentMerger,
        on_delta: OnDelta | None,
        timings: dict[str, float],
        start: float,
    ) -> None:
        decoder = RawSSEDecoder(self._max_event_bytes)
        # Image payloads leave the stream before the SSE decoder sees it (see PayloadCutter).
        cutter = PayloadCutter(self._max_event_bytes)
        payloads = cutter.payloads
        async for data in resp:
            # An oversized event raises engine._exceptions.EventTooLarge (sse uses it).
            for piece in cutter.feed(data):
                for event in decoder.feed(piece):
                    text = event.data
                    if not text or text == b"[DONE]":
                        continue
                    try:
                        response = decode_response(text, payloads)
                    except (msgspec.DecodeError, RecursionError) as exc:
                        message = f"malformed stream event: {exc}"
                        raise malformed(answer.status, message, self._secrets) from exc
                    await self._chunk(response, answer, merger, on_delta, timings, start)
        decoder.close()

    @staticmethod
    async def _chunk(
        response: GenerateContentResponse,
        answer: _Answer,
        merger: ContentMerger,
        on_delta: OnDelta | None,
        timings: dict[str, float],
        start: float,
    ) -> None:
        if "first_event_s" not in timings:
            timings["first_event_s"] = loop_time() - start
        parts = answer.observe(response)
        if not parts:
            return
        for delta in merger.add(parts):
            if isinstance(delta, ImageDelta) and "first_image_s" not in timings:
                timings["first_image_s"] = loop_time() - start
            if on_delta is not None:
                await on_delta(delta)
