"""The OpenAI-compatible endpoints, as gateways in front of Gemini image models serve them:
`/v1/chat/completions` (images in `message.images[]`), `/v1/images/generations` and
`/v1/images/edits` (with `partial_images` streaming in the shapes the `openai` SDK parses).

No thought signatures here: gateways keep them server-side. `created` is a fixed timestamp so
that, like everything the emulator answers, the bytes are a pure function of the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import BodyPartReader, ClientPayloadError, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from engine.emulator._faults import Decision
from engine.emulator._gemini import check_limits, generation_params
from engine.emulator._generate import (
    ApiFailure,
    InputImage,
    RenderJob,
    TurnInput,
    answer_text,
    canonical_json,
    closest_ratio,
    invalid,
    previews,
    read_turn,
    seed_for,
)
from engine.emulator._http import (
    STATE,
    Event,
    Events,
    ServerState,
    check_openai_key,
    failure_for,
    html_502,
    json_body,
    openai_error,
    read_body,
    reset_connection,
    send_plain,
    send_stream,
    too_large,
)
from engine.emulator.render import RenderResult
from sessions import (
    DEFAULT_MODEL,
    Blob,
    ConfigError,
    Content,
    ModelSpec,
    Part,
    estimate_text_tokens,
)

__all__ = [
    "handle_chat_completions",
    "handle_image_edits",
    "handle_image_generations",
    "openai_models",
    "openai_size",
]

CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z, fixed: answers stay byte-identical
_BLOCKING = ("block", "image_safety", "no_image")
_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SIZE_WORDS = {"0.5K": "512", "512": "512", "1K": "1K", "2K": "2K", "4K": "4K"}


def _model(state: ServerState, name: str) -> ModelSpec:
    # Gateways prefix a vendor ("google/gemini-3.1-flash-image"); accept that too.
    try:
        return state.settings.catalog.resolve(name.rsplit("/", 1)[-1])
    except ConfigError:
        raise ApiFailure(
            404,
            f"The model `{name}` does not exist or you do not have access to it.",
            openai_code="model_not_found",
        ) from None


def openai_models(state: ServerState) -> dict[str, Any]:
    """GET /v1/models in OpenAI's list shape."""
    data = [
        {"id": name, "object": "model", "created": CREATED, "owned_by": "google"}
        for spec in state.settings.catalog.models.values()
        for name in (spec.id, *spec.aliases)
    ]
    return {"object": "list", "data": data}


def _decode_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise invalid("Invalid base64 image data.", code="invalid_image") from None


_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?;base64,", re.ASCII)


def _data_url(url: str) -> Blob:
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid(
            "Only data: URLs with base64 image data are supported by the emulator.",
            code="invalid_image_url",
        )
    data = _decode_b64(url[match.end() :])
    return Blob(mime_type=match.group("mime") or _sniff(data), data=data)


def _data_url_of(image: RenderResult) -> str:
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode()}"


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return "application/octet-stream"


# --- shared machinery ---------------------------------------------------------------------


async def _admit(request: web.Request, state: ServerState, endpoint: str) -> bytes:
    try:
        check_openai_key(request, state.settings.api_key)
        body = await read_body(request, state.settings.max_request_bytes)
    except ApiFailure:
        state.record(request, endpoint, "", b"")
        raise
    return body


async def _error_outcome(request: web.Request, decision: Decision) -> web.StreamResponse | None:
    outcome = decision.outcome
    if outcome is None or not (outcome.status or outcome.kind == "reset"):
        return None
    if decision.latency:
        await asyncio.sleep(decision.latency)
    if outcome.kind == "reset":
        return reset_connection(request)
    if outcome.kind == "html502":
        return html_502()
    return openai_error(failure_for(outcome))


def _wrap(
    endpoint: str,
    handler: Callable[[web.Request, ServerState], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.requests[endpoint] += 1
        try:
            return await handler(request, state)
        except ApiFailure as failure:
            return openai_error(failure)

    handle.__doc__ = handler.__doc__
    return handle


def _job(
    spec: ModelSpec,
    state: ServerState,
    turn: TurnInput,
    base: InputImage | None,
    width: int,
    height: int,
    seed: int,
    mime: str = "image/png",
) -> RenderJob:
    return RenderJob(
        model=spec.id,
        instruction=turn.instruction,
        base=base.blob.data if base else None,
        base_sha256=base.sha256 if base else b"",
        width=width,
        height=height,
        seed=seed,
        grain=not state.settings.flat,
        mime_type=mime,
    )


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _id(prefix: str, digest: bytes) -> str:
    return prefix + hashlib.sha256(b"openai-id\0" + digest).hexdigest()[:24]


# --- chat completions ---------------------------------------------------------------------

DIALECTS = ("images", "parts", "markdown", "json")
"""How a chat answer carries its image, as gateways do: `message.images[]`, `image_url` parts in
`content`, a markdown data URL in the content string, or a JSON object in the content string."""
_DATA_URL_PIECE = 64 * 1024  # a streamed data URL or JSON arrives in deltas of this size


def _image_item(image: RenderResult) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": _data_url_of(image)}}


def _embedded(dialect: str, image: RenderResult) -> str:
    if dialect == "markdown":
        return f"\n\n![image]({_data_url_of(image)})"
    payload = json_body({"mime_type": image.mime_type, "b64": image.data}).decode()
    return f"\n```json\n{payload}\n```"


def _dialect_message(dialect: str, text: str, image: RenderResult | None) -> dict[str, Any]:
    """The non-streamed assistant message in `dialect`."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if image is None:
        return message
    if dialect == "images":
        message["images"] = [_image_item(image)]
    elif dialect == "parts":
        message["content"] = [{"type": "text", "text": text}, _image_item(image)]
    else:
        message["content"] = text + _embedded(dialect, image)
    return message


def _dialect_deltas(
    dialect: str, text: str, image: RenderResult | None, pieces: int
) -> list[dict[str, Any]]:
    """The streamed deltas of the answer in `dialect` (before the finishing chunk)."""
    deltas: list[dict[str, Any]] = [{"content": piece} for piece in _split(text, pieces)]
    if image is None:
        return deltas
    if dialect == "images":
        deltas.append({"images": [_image_item(image)]})
    elif dialect == "parts":
        deltas.append({"content": [_image_item(image)]})
    else:
        embedded = _embedded(dialect, image)
        # Split across many deltas, as real streams do with long data URLs.
        deltas += [
            {"content": embedded[i : i + _DATA_URL_PIECE]}
            for i in range(0, len(embedded), _DATA_URL_PIECE)
        ]
    return deltas


class _ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class _ChatPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None
    image_url: _ImageUrl | str | None = None


class _ChatMessage(msgspec.Struct):
    role: str
    content: str | list[_ChatPart] | None = None
    images: list[_ChatPart] | None = None


class _ChatRequest(msgspec.Struct):
    messages: list[_ChatMessage]
    model: str = ""
    stream: bool = False
    modalities: list[str] | None = None
    image_config: dict[str, Any] | None = None


_chat_decoder = msgspec.json.Decoder(_ChatRequest)


def _chat_parts(parts: list[_ChatPart]) -> list[Part]:
    out = []
    for part in parts:
        if part.type == "text" and part.text is not None:
            out.append(Part(text=part.text))
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            out.append(Part(inline_data=_data_url(url)))
        else:
            raise invalid(f"Unsupported content part type {part.type!r}.", code="invalid_value")
    return out


def _chat_contents(messages: list[_ChatMessage]) -> tuple[list[Content], Content | None]:
    contents: list[Content] = []
    system: list[Part] = []
    for message in messages:
        if isinstance(message.content, str):
            parts = [Part(text=message.content)]
        else:
            parts = _chat_parts(message.content or [])
        if message.role in ("system", "developer"):
            system.extend(p for p in parts if p.text is not None)
            continue
        if message.role not in ("user", "assistant"):
            raise invalid(f"Unsupported message role {message.role!r}.", code="invalid_value")
        if message.images:
            parts.extend(_chat_parts(message.images))
        contents.append(Content(role="user" if message.role == "user" else "model", parts=parts))
    if not contents:
        raise invalid("'messages' must contain at least one user message.", code="invalid_value")
    return contents, Content(role="user", parts=system) if system else None


async def _chat(request: web.Request, state: ServerState) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    body = await _admit(request, state, "chat.completions")
    try:
        chat = _chat_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        state.record(request, "chat.completions", "", body)
        raise invalid(f"We could not parse the JSON body of your request. ({exc})") from None
    state.record(request, "chat.completions", chat.model, body)
    if not chat.model:
        raise invalid("you must provide a model parameter", code="missing_required_parameter")
    spec = _model(state, chat.model)
    contents, system = _chat_contents(chat.messages)
    turn = read_turn(spec, contents, system)
    config: dict[str, Any] = {"imageConfig": chat.image_config or {}}
    if chat.modalities:
        config["responseModalities"] = [m.upper() for m in chat.modalities]
    params = generation_params(spec, config, turn)
    check_limits(spec, turn)
    digest = hashlib.sha256(b"chat\0" + turn.digest + canonical_json(config)).digest()
    decision = state.decide(request, "chat.completions", body)
    early = await _error_outcome(request, decision)
    if early is not None:
        return early
    outcome = decision.outcome.kind if decision.outcome else ""
    job = _job(
        spec,
        state,
        turn,
        turn.base,
        params.width,
        params.height,
        seed_for(state.settings.seed, digest),
    )
    latency = state.latency(decision)
    want_image = params.want_image and outcome not in _BLOCKING

    async def render() -> RenderResult | None:
        return await state.pool.render(job) if want_image else None

    def reply(image: RenderResult | None) -> tuple[str, str, dict[str, Any]]:
        if outcome in ("block", "image_safety"):
            text, finish = "", "content_filter"
        elif outcome == "no_image":
            text, finish = "I'm unable to create that image.", "stop"
        else:
            text = answer_text(image, edited=turn.base is not None) if image else "Noted."
            finish = "stop"
        image_tokens = spec.output_tokens(params.image_size) if image else 0
        completion = estimate_text_tokens(text) + image_tokens
        usage = {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": turn.prompt_tokens + completion,
            "completion_tokens_details": {"image_tokens": image_tokens},
        }
        return text, finish, usage

    head = {"id": _id("chatcmpl-", digest), "created": CREATED, "model": spec.id}
    dialect = request.headers.get("x-emulator-dialect") or state.settings.openai_dialect
    if dialect not in DIALECTS:
        raise invalid(f"Unknown x-emulator-dialect {dialect!r}; one of {', '.join(DIALECTS)}.")
    if not chat.stream:
        image, _ = await asyncio.gather(render(), asyncio.sleep(latency))
        text, finish, usage = reply(image)
        message = _dialect_message(dialect, text, image)
        answer = {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return await send_plain(request, json_body(answer), decision=decision)

    async def events() -> AsyncGenerator[Events, None]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json_body(
                {**head, "object": "chat.completion.chunk", "choices": [choice], **extra}
            )

        task = asyncio.ensure_future(render())
        try:
            await asyncio.sleep(latency / 4)
            yield None, chunk({"role": "assistant", "content": ""})
            await asyncio.sleep(latency * 3 / 4)
            image = await task
            text, finish, usage = reply(image)
            deltas = _dialect_deltas(dialect, text, image, state.settings.stream_text_chunks)
            yield [
                *((None, chunk(delta)) for delta in deltas),
                (None, chunk({}, finish, usage=usage)),
                (None, b"[DONE]"),
            ]
        finally:
            if not task.done():
                task.cancel()

    return await send_stream(request, events(), decision=decision)


# --- images -------------------------------------------------------------------------------


def openai_size(
    spec: ModelSpec, size: str | None, base: InputImage | None
) -> tuple[str, str | None]:
    """(aspect ratio, imageSize) for an OpenAI `size`: "auto", "WxH", or a gateway "1K".

    "WxH" takes the catalogue ratio nearest to W:H and the image size whose long side is
    nearest to max(W, H) on a log scale (1024x1024 -> 1:1 1K, 1536x1024 -> 3:2 1K,
    256x256 -> 512 on 3.1 Flash).
    """

    def auto_ratio() -> str:
        return "1:1" if base is None else closest_ratio(spec.ratios, base.width, base.height)

    if size is None or size == "auto":
        return auto_ratio(), None
    if size in _SIZE_WORDS:
        word = _SIZE_WORDS[size]
        if word in spec.sizes:
            return auto_ratio(), word
        if not spec.sizes and word == spec.default_size:
            return auto_ratio(), None
        raise _bad_size(spec, size)
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise _bad_size(spec, size)
    width, height = int(match.group(1)), int(match.group(2))
    ratio = closest_ratio(spec.ratios, width, height)
    if not spec.sizes:
        return ratio, None
    longest = max(width, height)

    def distance(name: str) -> float:
        return abs(math.log(max(spec.output_pixels(ratio, name)) / longest))

    return ratio, min(spec.sizes, key=distance)


def _bad_size(spec: ModelSpec, size: str) -> ApiFailure:
    words = ["auto", "WIDTHxHEIGHT", *(w for w, s in _SIZE_WORDS.items() if s in spec.sizes)]
    allowed = ", ".join(f"'{w}'" for w in words)
    return ApiFailure(
        400,
        f"Invalid value: '{size}'. Supported values are: {allowed}.",
        openai_code="invalid_value",
    )


@dataclass(frozen=True, slots=True)
class _ImageParams:
    model: str
    prompt: str
    n: int
    size: str | None
    response_format: str
    output_format: str
    stream: bool
    partial_images: int
    aspect_ratio: str | None
    image_size: str | None


def _int(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid '{name}': expected an integer.", code="invalid_value") from None
    if not low <= number <= high:
        raise invalid(
            f"Invalid '{name}': {number} is not within {low}..{high}.", code="invalid_value"
        )
    return number


def _image_params(fields: dict[str, Any]) -> _ImageParams:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("Missing required parameter: 'prompt'.", code="missing_required_parameter")
    response_format = fields.get("response_format") or "b64_json"
    if response_format not in ("b64_json", "url"):
        raise invalid(f"Invalid 'response_format': {response_format!r}.", code="invalid_value")
    output_format = fields.get("output_format") or "png"
    if output_format not in _FORMATS:
        raise invalid(f"Invalid 'output_format': {output_format!r}.", code="invalid_value")
    stream = fields.get("stream", False)
    if isinstance(stream, str):
        stream = stream.lower() == "true"
    size = fields.get("size")
    return _ImageParams(
        model=str(fields.get("model") or DEFAULT_MODEL),
        prompt=prompt,
        n=_int(fields.get("n", 1), "n", 1, 10),
        size=None if size is None else str(size),
        response_format=response_format,
        output_format=output_format,
        stream=bool(stream),
        partial_images=_int(fields.get("partial_images", 0), "partial_images", 0, 3),
        aspect_ratio=fields.get("aspect_ratio"),
        image_size=fields.get("image_size"),
    )


async def _images(
    request: web.Request,
    state: ServerState,
    endpoint: str,
    fields: dict[str, Any],
    body: bytes,
    inputs: list[Blob],
) -> web.StreamResponse:
    """Generations and edits after parsing: validate, fault, render, answer."""
    params = _image_params(fields)
    spec = _model(state, params.model)
    user = Content(
        role="user", parts=[Part(text=params.prompt), *(Part(inline_data=b) for b in inputs)]
    )
    turn = read_turn(spec, [user])
    # OpenAI edits the first image; the others are references.
    base = turn.images[0] if turn.images else None
    ratio, size = openai_size(spec, params.size, base)
    image_config = {
        "aspectRatio": params.aspect_ratio or ratio,
        "imageSize": params.image_size or size,
    }
    config = {"imageConfig": {k: v for k, v in image_config.items() if v is not None}}
    gen = generation_params(spec, config, turn)
    check_limits(spec, turn)
    digest = hashlib.sha256(
        endpoint.encode()
        + b"\0"
        + turn.digest
        + canonical_json(config)
        + f"{params.n}:{params.output_format}".encode()
    ).digest()
    decision = state.decide(request, endpoint, body)
    early = await _error_outcome(request, decision)
    if early is not None:
        return early
    outcome = decision.outcome.kind if decision.outcome else ""
    if outcome in ("block", "image_safety"):
        raise ApiFailure(
            400,
            "Your request was rejected as a result of our safety system.",
            openai_type="image_generation_user_error",
            openai_code="moderation_blocked",
        )
    latency = state.latency(decision)
    mime = _FORMATS[params.output_format]
    jobs = [
        _job(
            spec,
            state,
            turn,
            base,
            gen.width,
            gen.height,
            seed_for(state.settings.seed, digest, index.to_bytes(4, "big")),
            mime,
        )
        for index in range(params.n if outcome != "no_image" else 0)
    ]
    image_tokens = spec.output_tokens(gen.image_size) * len(jobs)
    usage = {
        "input_tokens": turn.prompt_tokens,
        "input_tokens_details": {
            "image_tokens": turn.image_tokens,
            "text_tokens": turn.text_tokens,
        },
        "output_tokens": image_tokens,
        "total_tokens": turn.prompt_tokens + image_tokens,
    }
    size_text = f"{gen.width}x{gen.height}"

    def item(image: RenderResult) -> dict[str, Any]:
        data = base64.b64encode(image.data).decode()
        if params.response_format == "url":
            return {"url": f"data:{image.mime_type};base64,{data}", "revised_prompt": params.prompt}
        return {"b64_json": data, "revised_prompt": params.prompt}

    if not params.stream:
        images, _ = await asyncio.gather(
            asyncio.gather(*(state.pool.render(j) for j in jobs)), asyncio.sleep(latency)
        )
        answer = {
            "created": CREATED,
            "data": [item(image) for image in images],
            "usage": usage,
            "size": size_text,
            "output_format": params.output_format,
        }
        return await send_plain(request, json_body(answer), decision=decision)

    prefix = "image_edit" if endpoint == "images.edits" else "image_generation"
    common = {
        "created_at": CREATED,
        "size": size_text,
        "quality": "auto",
        "background": "opaque",
        "output_format": params.output_format,
    }

    async def events() -> AsyncGenerator[Event, None]:
        steps = params.partial_images + 1
        for job in jobs:
            image = await state.pool.render(job)
            partials = await state.pool.run(previews, image.data, params.partial_images)
            for index, partial in enumerate(partials):
                await asyncio.sleep(latency / steps)
                name = f"{prefix}.partial_image"
                payload = {
                    "type": name,
                    "b64_json": base64.b64encode(partial).decode(),
                    "partial_image_index": index,
                    **common,
                }
                yield name, json_body(payload)
            await asyncio.sleep(latency / steps)
            name = f"{prefix}.completed"
            data = base64.b64encode(image.data).decode()
            yield name, json_body({"type": name, "b64_json": data, **common, "usage": usage})

    return await send_stream(request, events(), decision=decision)


_images_decoder = msgspec.json.Decoder(dict[str, Any])


async def _generations(request: web.Request, state: ServerState) -> web.StreamResponse:
    """POST /v1/images/generations."""
    body = await _admit(request, state, "images.generations")
    try:
        fields = _images_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        state.record(request, "images.generations", "", body)
        raise invalid(f"We could not parse the JSON body of your request. ({exc})") from None
    state.record(request, "images.generations", str(fields.get("model") or DEFAULT_MODEL), body)
    return await _images(request, state, "images.generations", fields, body, [])


@dataclass(frozen=True, slots=True)
class FormPart:
    """One multipart/form-data field."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


async def read_form(request: web.Request, limit: int) -> list[FormPart]:
    """The fields of a multipart/form-data request (what the openai SDK and curl -F send), read
    with aiohttp's multipart reader and refused with a 400 past `limit` bytes of field data."""
    if not request.content_type.startswith("multipart/form-data"):
        raise invalid("Expected a multipart/form-data body.", code="invalid_value")
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    out: list[FormPart] = []
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise invalid("Nested multipart bodies are not supported.", code="invalid_value")
            chunks = []
            while chunk := await part.read_chunk():
                total += len(chunk)
                if total > limit:
                    raise too_large(limit)
                chunks.append(chunk)
            out.append(
                FormPart(
                    name=part.name or "",
                    filename=part.filename,
                    content_type=part.headers.get(hdrs.CONTENT_TYPE),
                    data=b"".join(chunks),
                )
            )
    except (ValueError, AssertionError, ClientPayloadError, HttpProcessingError) as exc:
        # aiohttp's reader signals a broken body with these (boundary, headers, framing).
        raise invalid(f"Malformed multipart body ({exc}).", code="invalid_value") from None
    return out


async def _edits(request: web.Request, state: ServerState) -> web.StreamResponse:
    """POST /v1/images/edits (multipart)."""
    try:
        check_openai_key(request, state.settings.api_key)
        form = await read_form(request, state.settings.max_request_bytes)
    except ApiFailure:
        state.record(request, "images.edits", "", b"")
        raise
    fields: dict[str, Any] = {}
    images: list[Blob] = []
    for part in form:
        if part.name in ("image", "image[]"):
            mime = part.content_type or ""
            if not mime.startswith("image/"):
                mime = _sniff(part.data)  # the SDK sends raw bytes as octet-stream
            if not mime.startswith("image/"):
                raise invalid(
                    "Invalid input image - format must be one of image/png, image/jpeg, "
                    "image/webp.",
                    code="invalid_image_format",
                )
            images.append(Blob(mime_type=mime, data=part.data))
        elif part.name in ("mask", "markup"):
            continue  # accepted and ignored: the renderer edits the whole image
        else:
            fields[part.name] = part.data.decode("utf-8", "replace")
    # The request's identity for recording and fault decisions: its fields and images, not the
    # raw body (whose boundary differs on every request).
    body = msgspec.json.encode(fields) + b"".join(i.data for i in images)
    state.record(request, "images.edits", str(fields.get("model") or DEFAULT_MODEL), body)
    if not images:
        raise invalid("Missing required parameter: 'image'.", code="missing_required_parameter")
    return await _images(request, state, "images.edits", fields, body, images)


handle_chat_completions = _wrap("chat.completions", _chat)
handle_image_generations = _wrap("images.generations", _generations)
handle_image_edits = _wrap("images.edits", _edits)
