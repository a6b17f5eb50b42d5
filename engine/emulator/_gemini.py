"""The Gemini-native endpoints: generateContent, streamGenerateContent, countTokens, models."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from aiohttp import web

from engine.emulator._faults import Decision
from engine.emulator._generate import (
    ApiFailure,
    RenderJob,
    TurnInput,
    answer_text,
    canonical_json,
    closest_ratio,
    estimated_image_bytes,
    invalid,
    read_turn,
    seed_for,
    thought_text,
)
from engine.emulator._http import (
    STATE,
    Event,
    Events,
    ServerState,
    check_gemini_key,
    failure_for,
    frame_json_array,
    gemini_error,
    html_502,
    json_body,
    read_body,
    reset_connection,
    send_plain,
    send_stream,
)
from engine.emulator._models import model_spec
from engine.emulator._signatures import check_history
from engine.emulator._vault import resolve_file_parts
from engine.emulator.render import RenderResult
from sessions import (
    Blob,
    Content,
    IncomingRequest,
    ModelSpec,
    Part,
    RequestContent,
    WireError,
    decode_part,
    estimate_text_tokens,
    request_decoder,
    splice_payloads,
)

__all__ = [
    "METHODS",
    "admit",
    "answer_request",
    "model_call_handler",
]

log = structlog.get_logger("nanoedit.emulator")

_SSE_SEPARATOR = b"\r\n\r\n"
_OFFLOAD_BYTES = 512 * 1024  # bodies above this are parsed in a worker thread
_NO_IMAGE_TEXT = (
    "I'm unable to create that image. I can help with a different request or a rephrased one."
)
_IMAGE_SAFETY_MESSAGE = (
    "Unable to show the generated image. The image was filtered out because it violated "
    "Google's Generative AI Prohibited Use policy. You will not be charged for blocked images. "
    "Try rephrasing the prompt."
)


# --- request parsing ----------------------------------------------------------------------


def _field(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _decode_request(body: bytes) -> IncomingRequest:
    try:
        return request_decoder.decode(body).normalized()
    except (msgspec.DecodeError, RecursionError) as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None
    except msgspec.ValidationError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None


def _contents(
    raw: list[RequestContent], payloads: dict[bytes, memoryview] | None = None
) -> list[Content]:
    try:
        return [
            Content(role=c.role, parts=[decode_part(p, payloads) for p in c.parts]) for c in raw
        ]
    except WireError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None


def _system(
    raw: RequestContent | None, payloads: dict[bytes, memoryview] | None = None
) -> Content | None:
    return None if raw is None else _contents([raw], payloads)[0]


def _read_request(body: bytes) -> tuple[IncomingRequest, list[Content], Content | None]:
    """The request, its contents and its system instruction.

    History images are cut out of the body before it is parsed (`splice_payloads`), so
    msgspec never scans their base64: parsing the envelope and then each part scanned every
    image twice (~0.26 ms per MB each time). Unless every cut string turns out to be an
    image part's data, or whenever anything fails, the body is parsed whole, so errors and
    odd requests are answered exactly as before.
    """
    spliced = splice_payloads(body)
    if spliced is not None:
        doc, payloads = spliced
        try:
            incoming = _decode_request(doc)
            contents = _contents(incoming.contents, payloads)
            system = _system(incoming.systemInstruction, payloads)
        except ApiFailure:
            pass
        else:
            if not payloads:
                return incoming, contents, system
    incoming = _decode_request(body)
    return incoming, _contents(incoming.contents), _system(incoming.systemInstruction)


def _ratio_key(ratio: str) -> tuple[int, int]:
    w, h = ratio.split(":")
    return int(w), int(h)


def _one_of(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


_IMAGE_CONFIG = "* GenerateContentRequest.generation_config.image_config"


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """The effective generationConfig of one request."""

    aspect_ratio: str
    image_size: str | None
    width: int
    height: int
    want_text: bool
    want_image: bool
    include_thoughts: bool


def generation_params(
    spec: ModelSpec, config: Mapping[str, Any], turn: TurnInput
) -> GenerationParams:
    """Validate generationConfig as Google does; 400 with a Google-like message otherwise."""
    image_config = _field(config, "imageConfig", "image_config") or {}
    if not isinstance(image_config, Mapping):
        raise invalid(f"{_IMAGE_CONFIG}: image_config must be an object.\n")
    ratio = _field(image_config, "aspectRatio", "aspect_ratio")
    size = _field(image_config, "imageSize", "image_size")
    if ratio is not None and (not isinstance(ratio, str) or ratio not in spec.ratios):
        allowed = _one_of(tuple(sorted(spec.ratios, key=_ratio_key)))
        raise invalid(f"{_IMAGE_CONFIG}.aspect_ratio: aspect_ratio must be one of {allowed}.\n")
    if size is not None:
        if not spec.sizes:
            raise invalid(
                f"{_IMAGE_CONFIG}.image_size: image_size is not supported for models/{spec.id}.\n"
            )
        if not isinstance(size, str) or size not in spec.sizes:
            raise invalid(
                f"{_IMAGE_CONFIG}.image_size: image_size must be one of {_one_of(spec.sizes)}.\n"
            )
    if ratio is None:
        ratio = (
            "1:1"
            if turn.base is None
            else closest_ratio(spec.ratios, turn.base.width, turn.base.height)
        )
    width, height = spec.output_pixels(ratio, size)
    modalities = _field(config, "responseModalities", "response_modalities")
    if modalities is None:
        want_text = want_image = True
    elif not isinstance(modalities, list) or not modalities:
        raise invalid("* GenerateContentRequest.generation_config.response_modalities: invalid.\n")
    else:
        names = {str(m).upper() for m in modalities}
        want_text, want_image = "TEXT" in names, "IMAGE" in names
    thinking = _field(config, "thinkingConfig", "thinking_config") or {}
    include = bool(_field(thinking, "includeThoughts", "include_thoughts"))
    return GenerationParams(
        aspect_ratio=ratio,
        image_size=size,
        width=width,
        height=height,
        want_text=want_text,
        want_image=want_image,
        include_thoughts=include and spec.thinking,
    )


def check_limits(spec: ModelSpec, turn: TurnInput) -> None:
    """The context window and input image limits, with Google's messages."""
    if turn.prompt_tokens > spec.context_window:
        raise invalid(
            f"The input token count ({turn.prompt_tokens}) exceeds the maximum number of "
            f"tokens allowed ({spec.context_window})."
        )
    if turn.latest_user_images > spec.max_input_images:
        raise invalid(
            f"Too many input images: the request has {turn.latest_user_images} images, "
            f"{spec.id} accepts at most {spec.max_input_images}."
        )


# --- the answer ---------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """One response, built once and sent whole or as stream chunks."""

    parts: list[Part]
    finish_reason: str | None
    finish_message: str | None
    prompt_feedback: dict[str, Any] | None
    usage: dict[str, Any]
    partial_usage: dict[str, Any]
    model_version: str
    response_id: str
    # The JSON of image parts whose base64 was worked out with the render, by id(part).
    encoded: dict[int, msgspec.Raw] = field(default_factory=dict)


def _encoded_part(part: Part, b64: bytes) -> msgspec.Raw:
    """`part` as JSON, its image's base64 spliced in instead of encoded again."""
    blob = part.inline_data
    assert blob is not None
    body = json_body(
        msgspec.structs.replace(part, inline_data=msgspec.structs.replace(blob, data=b""))
    )
    at = body.index(b'"data":""') + len(b'"data":"')
    return msgspec.Raw(b"".join((body[:at], b64, body[at:])))  # one copy of the base64


def _details(**by_modality: int) -> list[dict[str, Any]]:
    return [{"modality": m, "tokenCount": n} for m, n in by_modality.items() if n]


def _prompt_details(turn: TurnInput) -> list[dict[str, Any]]:
    return [
        {"modality": "TEXT", "tokenCount": turn.text_tokens},
        *_details(IMAGE=turn.image_tokens),
    ]


def _usage(
    spec: ModelSpec,
    turn: TurnInput,
    *,
    text: str,
    thought: str,
    image_tokens: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    prompt = turn.prompt_tokens
    text_tokens = estimate_text_tokens(text) if text else 0
    thoughts = estimate_text_tokens(thought) if thought else 0
    candidates = text_tokens + image_tokens
    final: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": _prompt_details(turn),
    }
    if candidates:
        # As real image answers report it: only IMAGE is listed when there is an image; the
        # rest of candidatesTokenCount is the visible text.
        by_modality = {"IMAGE": image_tokens} if image_tokens else {"TEXT": text_tokens}
        final["candidatesTokensDetails"] = _details(**by_modality)
    if spec.thinking:
        final["thoughtsTokenCount"] = thoughts
    partial = {"promptTokenCount": prompt, "totalTokenCount": prompt + thoughts}
    if spec.thinking:
        partial["thoughtsTokenCount"] = thoughts
    return final, partial


def _response_id(digest: bytes) -> str:
    raw = hashlib.sha256(b"response-id\0" + digest).digest()[:17]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Job:
    """One validated generateContent request, ready to answer."""

    spec: ModelSpec
    turn: TurnInput
    params: GenerationParams
    seed: int
    digest: bytes
    grain: bool


def _render_jobs(job: Job) -> list[RenderJob]:
    """The output image's render and, with includeThoughts, a small interim thought image's."""
    if not job.params.want_image:
        return []
    base = job.turn.base
    render = RenderJob(
        model=job.spec.id,
        instruction=job.turn.instruction,
        base=base.blob.data if base else None,
        base_sha256=base.sha256 if base else b"",
        width=job.params.width,
        height=job.params.height,
        seed=job.seed,
        grain=job.grain,
    )
    if not job.params.include_thoughts:
        return [render]
    draft = RenderJob(
        model=render.model,
        instruction=render.instruction,
        base=render.base,
        base_sha256=render.base_sha256,
        width=max(16, render.width // 4),
        height=max(16, render.height // 4),
        seed=render.seed,
        grain=False,
    )
    return [render, draft]


# What a call holds per byte of its request (the body, and the history images decoded from its
# base64: three quarters of it; tracemalloc of 40 calls in flight: 3.7 MB each with a 1.74 MB
# body), and the allowance it takes for its answer before its request is read: a 1K image,
# flat or grain (indexed by `grain`).
_HELD_PER_REQUEST_BYTE = 2
_DEFAULT_IMAGE_BYTES = tuple(estimated_image_bytes(1024, 1024, grain=g) for g in (False, True))


async def _render_all(
    state: ServerState, job: Job
) -> tuple[RenderResult | None, RenderResult | None]:
    """The output image and, with includeThoughts, a small interim thought image."""
    renders = _render_jobs(job)
    if not renders:
        return None, None
    if len(renders) == 1:
        return await state.pool.render(renders[0]), None
    image, thought_image = await asyncio.gather(*(state.pool.render(r) for r in renders))
    return image, thought_image


def build_answer(
    state: ServerState,
    job: Job,
    image: RenderResult | None,
    thought_image: RenderResult | None,
    decision: Decision,
) -> Answer:
    """The response parts, usage and finish for a rendered (or refused) turn."""
    spec, turn = job.spec, job.turn
    outcome = decision.outcome.kind if decision.outcome else ""
    signer = state.signer
    # Gemini 3 models always think (and bill it as thoughtsTokenCount); the thought summary is
    # part of the answer only with includeThoughts, as on Google.
    thought = thought_text(turn) if spec.thinking else ""
    parts: list[Part] = []
    encoded: dict[int, msgspec.Raw] = {}
    if thought and job.params.include_thoughts:
        parts.append(Part(text=thought, thought=True))
    if thought_image is not None:
        blob = Blob(mime_type=thought_image.mime_type, data=thought_image.data)
        parts.append(Part(inline_data=blob, thought=True))
        if thought_image.b64:
            encoded[id(parts[-1])] = _encoded_part(parts[-1], thought_image.b64)
    finish_reason: str | None = "STOP"
    finish_message = None
    prompt_feedback = None
    text = ""
    image_tokens = 0
    if outcome == "block":
        parts = []
        thought = ""
        finish_reason = None
        prompt_feedback = {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ],
        }
    elif outcome == "image_safety":
        parts = []
        finish_reason, finish_message = "IMAGE_SAFETY", _IMAGE_SAFETY_MESSAGE
    elif outcome == "no_image":
        text = _NO_IMAGE_TEXT
        finish_reason = "NO_IMAGE"
    else:
        if job.params.want_text:
            text = (
                answer_text(image, edited=turn.base is not None)
                if image is not None
                else f"Noted: {turn.instruction[:200]}"
            )
    if text:
        signature = signer.text(job.digest) if spec.thinking else None
        parts.append(Part(text=text, thought_signature=signature))
    if image is not None and outcome not in ("block", "image_safety", "no_image"):
        sha = image.sha256 or hashlib.sha256(image.data).digest()
        signature = signer.image(sha) if spec.thinking else None
        blob = Blob(mime_type=image.mime_type, data=image.data)
        parts.append(Part(inline_data=blob, thought_signature=signature))
        if image.b64:
            encoded[id(parts[-1])] = _encoded_part(parts[-1], image.b64)
        image_tokens = spec.output_tokens(job.params.image_size)
    usage, partial = _usage(spec, turn, text=text, thought=thought, image_tokens=image_tokens)
    return Answer(
        parts=parts,
        finish_reason=finish_reason,
        finish_message=finish_message,
        prompt_feedback=prompt_feedback,
        usage=usage,
        partial_usage=partial,
        model_version=spec.id,
        response_id=_response_id(job.digest),
        encoded=encoded,
    )


def _chunk(
    parts: list[Part] | None,
    *,
    usage: Mapping[str, Any],
    model_version: str,
    response_id: str,
    finish_reason: str | None = None,
    finish_message: str | None = None,
    prompt_feedback: dict[str, Any] | None = None,
    encoded: Mapping[int, msgspec.Raw] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if prompt_feedback is not None:
        out["promptFeedback"] = prompt_feedback
    else:
        candidate: dict[str, Any] = {}
        if parts and encoded:
            wire = [encoded.get(id(p), p) for p in parts]
            candidate["content"] = {"role": "model", "parts": wire}
        elif parts:
            candidate["content"] = Content(role="model", parts=parts)
        if finish_reason:
            candidate["finishReason"] = finish_reason
        if finish_message:
            candidate["finishMessage"] = finish_message
        candidate["index"] = 0
        out["candidates"] = [candidate]
    out["usageMetadata"] = usage
    out["modelVersion"] = model_version
    out["responseId"] = response_id
    return out


def _final_chunk(answer: Answer, parts: list[Part] | None) -> dict[str, Any]:
    return _chunk(
        parts,
        usage=answer.usage,
        model_version=answer.model_version,
        response_id=answer.response_id,
        finish_reason=answer.finish_reason,
        finish_message=answer.finish_message,
        prompt_feedback=answer.prompt_feedback,
        encoded=answer.encoded,
    )


def _partial_chunk(answer: Answer, parts: list[Part]) -> dict[str, Any]:
    return _chunk(
        parts,
        usage=answer.partial_usage,
        model_version=answer.model_version,
        response_id=answer.response_id,
        encoded=answer.encoded,
    )


def whole_response(answer: Answer) -> bytes:
    """The non-streamed GenerateContentResponse."""
    return json_body(_final_chunk(answer, answer.parts))


def _split(text: str, pieces: int) -> list[str]:
    # Cut at spaces where possible, so pieces look like a model's token groups.
    words = text.split(" ")
    if len(words) < pieces:
        size = -(-len(text) // pieces)
        return [text[i : i + size] for i in range(0, len(text), size)]
    per = -(-len(words) // pieces)
    groups = [words[i : i + per] for i in range(0, len(words), per)]
    out = [" ".join(g) for g in groups]
    return [p + " " for p in out[:-1]] + out[-1:]


def stream_chunks(answer: Answer, *, text_chunks: int, sig_last: bool) -> list[list[Part]]:
    """The answer's parts grouped into stream chunks: thoughts, text pieces, the image."""
    chunks: list[list[Part]] = []
    for part in answer.parts:
        if part.thought:
            chunks.append([part])
        elif part.text is not None:
            pieces = _split(part.text, text_chunks)
            signature = part.thought_signature
            texts = [[Part(text=p)] for p in pieces]
            if signature is not None:
                if sig_last:
                    texts[-1].append(Part(text="", thought_signature=signature))
                else:
                    texts[0][0] = Part(text=pieces[0], thought_signature=signature)
            chunks.extend(texts)
        else:
            chunks.append([part])  # an image: whole, in one event
    return chunks


# --- handlers -----------------------------------------------------------------------------


async def admit(request: web.Request, state: ServerState, endpoint: str, model: str) -> bytes:
    """Auth, then the capped body read; records the request either way."""
    try:
        check_gemini_key(request, state.settings.api_key)
        body = await read_body(
            request, state.settings.max_request_bytes, mbps=state.settings.upload_mbps
        )
    except ApiFailure:
        state.record(request, endpoint, model, b"")
        raise
    state.record(request, endpoint, model, body)
    return body


def _parse_and_prepare(state: ServerState, spec: ModelSpec, body: bytes) -> Job:
    """Decode and validate a generateContent body (pure; safe in a worker thread)."""
    incoming, contents, system = _read_request(body)
    contents = resolve_file_parts(contents, state.files)
    if not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified\n")
    turn = read_turn(spec, contents, system)
    config = incoming.generationConfig or {}
    params = generation_params(spec, config, turn)
    check_limits(spec, turn)
    if spec.thinking:
        problem = check_history(contents, state.signer, turn.sha_of)
        if problem is not None:
            raise invalid(problem)
    digest = hashlib.sha256(turn.digest + canonical_json(config)).digest()
    return Job(
        spec=spec,
        turn=turn,
        params=params,
        seed=seed_for(state.settings.seed, digest),
        digest=digest,
        grain=not state.settings.flat,
    )


async def answer_request(
    state: ServerState, spec: ModelSpec, body: bytes, decision: Decision
) -> bytes:
    """One generateContent request answered whole, as a batch runs each of its items; an error
    answer (a bad request, a missing file, a fault) raises ApiFailure."""
    if len(body) > _OFFLOAD_BYTES:
        job = await state.pool.run(_parse_and_prepare, state, spec, body)
    else:
        job = _parse_and_prepare(state, spec, body)
    outcome = decision.outcome
    if outcome is not None and (outcome.status or outcome.kind in ("reset", "html502")):
        raise failure_for(outcome) if outcome.status else ApiFailure(500, "Internal error.")
    blocked = outcome is not None and outcome.kind in ("block", "image_safety", "no_image")
    image, thought_image = (None, None) if blocked else await _render_all(state, job)
    return whole_response(build_answer(state, job, image, thought_image, decision))


async def _error_outcome(request: web.Request, decision: Decision) -> web.StreamResponse | None:
    """Answer an error-kind fault (status, reset, html502), or None to carry on."""
    outcome = decision.outcome
    if outcome is None:
        return None
    if outcome.kind == "reset":
        if decision.latency:
            await asyncio.sleep(decision.latency)
        return reset_connection(request)
    if outcome.kind == "html502" or outcome.status:
        if decision.latency:
            await asyncio.sleep(decision.latency)
        return html_502() if outcome.kind == "html502" else gemini_error(failure_for(outcome))
    return None


async def _generate(request: web.Request, state: ServerState, model: str) -> web.StreamResponse:
    # The call holds its request and then its answer until the last byte is sent: room for
    # the request (by its Content-Length) and a default image is taken before the body is read,
    # so calls beyond the emulator's memory bound wait before they take any (see HeldBytes).
    length = request.content_length or state.settings.max_request_bytes
    reserved = length * _HELD_PER_REQUEST_BYTE + _DEFAULT_IMAGE_BYTES[not state.settings.flat]
    async with state.pool.held.holding(reserved) as grow:
        return await _generate_held(request, state, model, grow)


async def _generate_held(
    request: web.Request, state: ServerState, model: str, grow: Callable[[int], None]
) -> web.StreamResponse:
    stream = request.match_info["name"].endswith(":streamGenerateContent")
    endpoint = "streamGenerateContent" if stream else "generateContent"
    body = await admit(request, state, endpoint, model)
    spec = model_spec(model, request)
    if len(body) > _OFFLOAD_BYTES:
        # Decoding, hashing and measuring megabytes of history images would stall the loop.
        job = await state.pool.run(_parse_and_prepare, state, spec, body)
    else:
        job = _parse_and_prepare(state, spec, body)
    decision = state.decide(request, endpoint, body)
    early = await _error_outcome(request, decision)
    if early is not None:
        return early
    latency = state.latency(decision)
    blocked = decision.outcome is not None and decision.outcome.kind in (
        "block",
        "image_safety",
        "no_image",
    )
    if not blocked:  # an image larger than the default allowance: hold the difference too
        grow(sum(r.estimated_bytes() for r in _render_jobs(job)) - _DEFAULT_IMAGE_BYTES[job.grain])
    log.debug(
        "emulator.generate",
        endpoint=endpoint,
        model=spec.id,
        width=job.params.width,
        height=job.params.height,
        edit=job.turn.base is not None,
    )
    if stream and request.query.get("alt") == "sse":
        return await send_stream(
            request,
            _sse_events(state, job, decision, latency, blocked),
            decision=decision,
            separator=_SSE_SEPARATOR,
        )

    async def render() -> tuple[RenderResult | None, RenderResult | None]:
        return (None, None) if blocked else await _render_all(state, job)

    (image, thought_image), _ = await asyncio.gather(render(), asyncio.sleep(latency))
    answer = build_answer(state, job, image, thought_image, decision)
    if stream:
        # Without alt=sse Google streams one JSON array of the chunks; we send it whole.
        chunks = [payload async for _, payload in _events(state, answer, decision)]
        return await send_plain(request, frame_json_array(chunks), decision=decision)
    return await send_plain(request, whole_response(answer), decision=decision)


async def _sse_events(
    state: ServerState, job: Job, decision: Decision, latency: float, blocked: bool
) -> AsyncGenerator[Events, None]:
    """SSE events: the thought first (a quarter of the latency in), the rest after the render."""
    render_task: asyncio.Task[tuple[RenderResult | None, RenderResult | None]] | None = None
    if not blocked:
        render_task = asyncio.ensure_future(_render_all(state, job))
    try:
        await asyncio.sleep(latency / 4)
        thought_sent = False
        if job.spec.thinking and job.params.include_thoughts and not blocked:
            # The thought goes out before the render is done, like real thinking output.
            thought = Part(text=thought_text(job.turn), thought=True)
            _, partial = _usage(
                job.spec, job.turn, text="", thought=thought.text or "", image_tokens=0
            )
            first = _chunk(
                [thought],
                usage=partial,
                model_version=job.spec.id,
                response_id=_response_id(job.digest),
            )
            yield None, json_body(first)
            thought_sent = True
        await asyncio.sleep(latency * 3 / 4)
        image, thought_image = (None, None) if render_task is None else await render_task
        answer = build_answer(state, job, image, thought_image, decision)
        if thought_sent:
            answer.parts = answer.parts[1:]  # the thought text, already sent
        yield [event async for event in _events(state, answer, decision)]
    finally:
        if render_task is not None and not render_task.done():
            render_task.cancel()


async def _events(
    state: ServerState, answer: Answer, decision: Decision
) -> AsyncGenerator[Event, None]:
    """Stream chunks of a built answer; the last carries the finish reason and full usage."""
    if answer.prompt_feedback is None:
        chunks = stream_chunks(
            answer,
            text_chunks=state.settings.stream_text_chunks,
            sig_last=decision.sig_last or state.settings.stream_signature == "last",
        )
        for parts in chunks:
            yield None, json_body(_partial_chunk(answer, parts))
    # Like Google's: the finishing chunk carries an empty text part, so clients that drop
    # content-less chunks (the official SDK's chat history does) still see a valid turn.
    closing = [Part(text="")] if answer.finish_reason in ("STOP", "NO_IMAGE") else None
    yield None, json_body(_final_chunk(answer, closing))


async def _count_tokens(request: web.Request, state: ServerState, model: str) -> web.Response:
    body = await admit(request, state, "countTokens", model)
    spec = model_spec(model, request)
    incoming = _decode_request(body)
    if incoming.generateContentRequest is not None:
        incoming = _decode_request(json_body(incoming.generateContentRequest))
    turn = read_turn(spec, _contents(incoming.contents), _system(incoming.systemInstruction))
    answer = {
        "totalTokens": turn.prompt_tokens,
        "promptTokensDetails": _prompt_details(turn),
    }
    return web.Response(body=json_body(answer), content_type="application/json")


ModelMethod = Callable[[web.Request, ServerState, str], Any]
METHODS: dict[str, ModelMethod] = {
    "generateContent": _generate,
    "streamGenerateContent": _generate,
    "countTokens": _count_tokens,
}
"""The model methods answered here; the server adds batchGenerateContent (`_batches`)."""


def model_call_handler(
    methods: Mapping[str, ModelMethod],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of POST /v1beta/models/{model}:{method} for these methods."""

    async def handle_model_call(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        model, sep, method = request.match_info["name"].rpartition(":")
        handler = methods.get(method) if sep else None
        if handler is None:
            return gemini_error(ApiFailure(404, f"Method not found: {method or '(none)'}."))
        state.requests[method] += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response: web.StreamResponse = await handler(request, state, model)
        except ApiFailure as failure:
            return gemini_error(failure)
        finally:
            state.in_flight -= 1
        return response

    return handle_model_call
