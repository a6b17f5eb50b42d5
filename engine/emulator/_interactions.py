"""Google's Interactions API, emulated: `POST /v1beta/interactions` and its stored chains.

Each created interaction is kept, per API key, with the whole conversation it ends (inputs and
outputs), so `previous_interaction_id` continues it; one older than `interaction_ttl` seconds,
deleted, or another key's is a 404 `not_found`, as Google answers an expired one. The answer is
rendered exactly as `generateContent` renders it (same images, same prices); its output steps
are a `thought` (summary, signature) and a `model_output` (text, image).

Streams send `interaction.created`, `interaction.status_update`, `step.start` / `step.delta` /
`step.stop`, `interaction.completed` (usage), then `[DONE]`; every event carries an
`event_id`. The events are kept with the interaction, so `GET /v1beta/interactions/{id}
?stream=true&last_event_id=...` resumes a broken stream without a second generation. Faults
(`cut:N`, `malformed`, status codes) apply to the create call, never to a resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from engine.emulator._faults import Decision
from engine.emulator._gemini import (
    Job,
    _render_all,
    build_answer,
    check_limits,
    generation_params,
)
from engine.emulator._generate import ApiFailure, canonical_json, read_turn, seed_for
from engine.emulator._http import (
    STATE,
    ServerState,
    check_gemini_key,
    html_502,
    json_body,
    read_body,
    reset_connection,
    send_plain,
    send_stream,
)
from engine.emulator._models import model_spec
from engine.emulator._vault import StoredInteraction
from sessions import Blob, Content, ModelSpec, Part, b64decode_strict, b64encode

__all__ = [
    "API_REVISION",
    "handle_create_interaction",
    "handle_interaction",
]

API_REVISION = "2026-05-20"
_any = msgspec.json.Decoder()
_FIELDS = frozenset(
    {
        "model",
        "input",
        "previous_interaction_id",
        "store",
        "stream",
        "background",
        "system_instruction",
        "generation_config",
        "response_format",
        "tools",
        "safety_settings",
        "service_tier",
        "labels",
        "response_modalities",
        "response_mime_type",
    }
)
_CODES = {
    400: "invalid_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    413: "invalid_request",
    429: "rate_limit_exceeded",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}


def _failure(status: int, message: str, code: str = "") -> ApiFailure:
    return ApiFailure(status, message, code=code)


def interactions_error(failure: ApiFailure) -> web.Response:
    """An error in Interactions' shape: `{"error": {"code": "<snake_case>", "message"}}`."""
    code = failure.code or _CODES.get(failure.status, "internal")
    headers = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(failure.retry_after)))
    return web.Response(
        status=failure.status,
        body=json_body({"error": {"code": code, "message": failure.message}}),
        content_type="application/json",
        headers=headers,
    )


def _key_of(request: web.Request) -> str:
    given = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
    return hashlib.sha256(b"interactions-key\0" + given.encode()).hexdigest()[:24]


# --- requests ----------------------------------------------------------------------------------


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise _failure(400, "image data must be a base64 string")
    try:
        return b64decode_strict(text.encode())
    except ValueError:
        raise _failure(400, "image data is not valid base64") from None


def _parts(items: Any) -> list[Part]:
    if isinstance(items, str):
        return [Part(text=items)]
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise _failure(400, "content must be a string or a list of content items")
    parts = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str):
            parts.append(Part(text=item["text"]))
        elif kind == "image":
            if "data" not in item:
                raise _failure(400, "an image item needs data (uri input is not emulated)")
            mime = str(item.get("mime_type") or "image/png")
            parts.append(Part(inline_data=Blob(mime_type=mime, data=_b64(item["data"]))))
        else:
            raise _failure(400, f"unsupported content item type {kind!r}")
    return parts


def _contents_of_input(value: Any) -> list[Content]:
    """`input` as Gemini-shaped Contents: a string, content items (one user turn), or steps
    (`user_input`, `thought`, `model_output`; a run of model steps is one model Content)."""
    if isinstance(value, str) or (
        isinstance(value, list)
        and value
        and all(isinstance(i, dict) and i.get("type") in ("text", "image") for i in value)
    ):
        return [Content(role="user", parts=_parts(value))]
    if not isinstance(value, list) or not value:
        raise _failure(400, "input is required: a string, content items or steps")
    contents: list[Content] = []
    for step in value:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "user_input":
            contents.append(Content(role="user", parts=_parts(step.get("content", []))))
            continue
        if kind not in ("thought", "model_output"):
            raise _failure(400, f"unsupported step type {kind!r}")
        if not contents or contents[-1].role != "model":
            contents.append(Content(role="model", parts=[]))
        model = contents[-1]
        if kind == "thought":
            signature = step.get("signature")
            if not isinstance(signature, str) or not signature:
                raise _failure(400, "a thought step needs its signature")
            model.parts.append(Part(text="", thought=True, thought_signature=signature.encode()))
        else:
            model.parts.extend(_parts(step.get("content", [])))
    if contents[-1].role != "user":
        raise _failure(400, "the last step of input must be a user_input")
    return contents


def _config(spec: ModelSpec, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The request's response_format and generation_config as a generationConfig."""
    formats = doc.get("response_format")
    formats = formats if isinstance(formats, list) else [formats] if formats else []
    image = next((f for f in formats if isinstance(f, dict) and f.get("type") == "image"), None)
    modalities = ["TEXT", "IMAGE"]
    if formats:
        types = {f.get("type") for f in formats if isinstance(f, dict)}
        modalities = [m.upper() for m in ("text", "image") if m in types]
    config: dict[str, Any] = {"responseModalities": modalities}
    if image is not None:
        image_config = {}
        if image.get("aspect_ratio") is not None:
            image_config["aspectRatio"] = image["aspect_ratio"]
        if image.get("image_size") is not None:
            image_config["imageSize"] = image["image_size"]
        if image.get("mime_type") not in (None, "image/jpeg"):
            raise _failure(400, "response_format.mime_type must be image/jpeg")
        config["imageConfig"] = image_config
    generation = doc.get("generation_config") or {}
    if not isinstance(generation, dict):
        raise _failure(400, "generation_config must be an object")
    level = generation.get("thinking_level")
    if level is not None and level not in spec.thinking_levels:
        allowed = ", ".join(spec.thinking_levels) or "none"
        raise _failure(
            400,
            f"thinking_level {level!r} is not supported by {spec.id}; allowed: {allowed}",
        )
    if "image_config" in generation:
        raise _failure(
            400, "generation_config.image_config moved to response_format", "invalid_request"
        )
    return config


@dataclass(frozen=True, slots=True)
class _Prepared:
    spec: ModelSpec
    job: Job
    contents: list[Content]
    previous: str | None
    delivery: str


def _prepare(state: ServerState, request: web.Request, body: bytes) -> _Prepared:
    revision = request.headers.get("Api-Revision")
    if revision is not None and revision != API_REVISION:
        raise _failure(400, f"Api-Revision {revision!r} is not supported; use {API_REVISION}")
    try:
        doc = _any.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _failure(400, f"Invalid JSON payload received. {exc}") from None
    if not isinstance(doc, dict):
        raise _failure(400, "the request body must be a JSON object")
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise _failure(400, f"unknown parameter: {unknown[0]}", "parameter_unknown")
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise _failure(400, "model is required")
    try:
        spec = model_spec(name, request)
    except ApiFailure:
        raise _failure(404, f"Model '{name}' was not found.", "model_not_found") from None
    vault = state.interactions
    previous = doc.get("previous_interaction_id")
    history: list[Content] = []
    if previous is not None:
        if doc.get("store") is False:
            raise _failure(400, "previous_interaction_id needs store=true")
        history = list(vault.get(str(previous), _key_of(request)).contents)
    contents = history + _contents_of_input(doc.get("input"))
    system_text = doc.get("system_instruction")
    system = Content(parts=[Part(text=system_text)]) if isinstance(system_text, str) else None
    turn = read_turn(spec, contents, system)
    config = _config(spec, doc)
    params = generation_params(spec, config, turn)
    check_limits(spec, turn)
    digest = hashlib.sha256(turn.digest + canonical_json(config)).digest()
    job = Job(
        spec=spec,
        turn=turn,
        params=params,
        seed=seed_for(state.settings.seed, digest),
        digest=digest,
        grain=not state.settings.flat,
    )
    image_format = doc.get("response_format")
    delivery = "inline"
    for fmt in image_format if isinstance(image_format, list) else [image_format]:
        if isinstance(fmt, dict) and fmt.get("type") == "image" and fmt.get("delivery") == "uri":
            delivery = "uri"
    return _Prepared(spec, job, contents, str(previous) if previous else None, delivery)


# --- answers -----------------------------------------------------------------------------------


def _modalities(**tokens: int) -> list[dict[str, Any]]:
    return [{"modality": m, "tokens": n} for m, n in tokens.items() if n]


def _usage(gemini: Mapping[str, Any]) -> dict[str, Any]:
    prompt = gemini.get("promptTokenCount", 0)
    output = gemini.get("candidatesTokenCount", 0)
    thoughts = gemini.get("thoughtsTokenCount", 0)
    by_in = {d["modality"].lower(): d["tokenCount"] for d in gemini.get("promptTokensDetails", [])}
    by_out = {
        d["modality"].lower(): d["tokenCount"] for d in gemini.get("candidatesTokensDetails", [])
    }
    return {
        "total_input_tokens": prompt,
        "total_output_tokens": output,
        "total_thought_tokens": thoughts,
        "total_cached_tokens": 0,
        "total_tool_use_tokens": 0,
        "total_tokens": prompt + output + thoughts,
        "input_tokens_by_modality": _modalities(**by_in),
        "output_tokens_by_modality": _modalities(**by_out),
    }


def _output(parts: list[Part], base_url: str, delivery: str, state: ServerState) -> list[Any]:
    """Output steps for an answer's parts: a thought (with the image's signature) first."""
    steps: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    signature: bytes | None = None
    summary = ""
    for part in parts:
        if part.thought:
            summary += part.text or ""
            continue
        if part.inline_data is not None:
            blob = part.inline_data
            signature = part.thought_signature or signature
            if delivery == "uri":
                name = state.files.add(blob.mime_type, blob.data, "", base_url).id
                content.append(
                    {
                        "type": "image",
                        "uri": f"{base_url}/download/v1beta/files/{name}:download?alt=media",
                        "mime_type": blob.mime_type,
                    }
                )
            else:
                content.append(
                    {"type": "image", "data": msgspec.Raw(b'"' + b64encode(blob.data) + b'"'),
                     "mime_type": blob.mime_type}
                )  # fmt: skip
        elif part.text:
            signature = signature or part.thought_signature
            content.append({"type": "text", "text": part.text})
    if signature is not None:
        thought: dict[str, Any] = {"type": "thought", "signature": b64encode(signature).decode()}
        if summary:
            thought["summary"] = [{"type": "text", "text": summary}]
        steps.append(thought)
    if content:
        steps.append({"type": "model_output", "content": content})
    return steps


def _stored_answer(parts: list[Part]) -> Content:
    """The answer as the next turn of the chain sees it (no thought parts)."""
    return Content(role="model", parts=[p for p in parts if not p.thought])


async def _answer(
    state: ServerState, request: web.Request, prepared: _Prepared, decision: Decision
) -> StoredInteraction:
    job = prepared.job
    blocked = decision.outcome is not None and decision.outcome.kind in (
        "block",
        "image_safety",
        "no_image",
    )
    image, thought_image = (None, None) if blocked else await _render_all(state, job)
    answer = build_answer(state, job, image, thought_image, decision)
    now = time.time()
    interaction_id = "v1_" + secrets.token_urlsafe(18)
    base_url = f"{request.scheme}://{request.host}"
    status = "completed" if answer.parts and answer.prompt_feedback is None else "failed"
    document = {
        "id": interaction_id,
        "object": "interaction",
        "status": status,
        "model": prepared.spec.id,
        "created": int(now),
        "updated": int(now),
        "steps": _output(answer.parts, base_url, prepared.delivery, state),
        "usage": _usage(answer.usage),
    }
    if prepared.previous:
        document["previous_interaction_id"] = prepared.previous
    item = StoredInteraction(
        id=interaction_id,
        key=_key_of(request),
        created_at=now,
        model=prepared.spec.id,
        previous=prepared.previous,
        contents=[*prepared.contents, _stored_answer(answer.parts)],
        document=document,
    )
    state.interactions.add(item)
    return item


def _frames(item: StoredInteraction, text_chunks: int) -> list[tuple[str, dict[str, Any]]]:
    """The stream's events for a finished interaction, in order."""
    head = {k: item.document[k] for k in ("id", "object", "model", "created")}
    events: list[tuple[str, dict[str, Any]]] = [
        ("interaction.created", {"interaction": {**head, "status": "in_progress"}}),
        ("interaction.status_update", {"interaction_id": item.id, "status": "in_progress"}),
    ]
    for index, step in enumerate(item.document["steps"]):
        if step["type"] == "thought":
            events.append(("step.start", {"index": index, "step": {"type": "thought"}}))
            for summary in step.get("summary", []):
                delta = {"type": "thought_summary", "content": {"type": "text", **summary}}
                events.append(("step.delta", {"index": index, "delta": delta}))
            sig = {"type": "thought_signature", "signature": step["signature"]}
            events.append(("step.delta", {"index": index, "delta": sig}))
        else:
            events.append(
                ("step.start", {"index": index, "step": {"type": "model_output", "content": []}})
            )
            for item_ in step["content"]:
                if item_["type"] == "text":
                    for piece in _split(item_["text"], text_chunks):
                        delta = {"type": "text", "text": piece}
                        events.append(("step.delta", {"index": index, "delta": delta}))
                else:
                    events.append(("step.delta", {"index": index, "delta": item_}))
        events.append(("step.stop", {"index": index}))
    events.append(("interaction.completed", {"interaction": item.document}))
    return events


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [text]


def _encode_events(item: StoredInteraction, text_chunks: int) -> None:
    for n, (name, data) in enumerate(_frames(item, text_chunks), start=1):
        event_id = f"evt_{n}"
        payload = json_body({**data, "event_type": name, "event_id": event_id})
        item.events.append((event_id, name.encode() + b"\0" + payload))
    item.done.set()


async def _replay(
    item: StoredInteraction, after: str | None, *, done: bool = True
) -> AsyncGenerator[Any, None]:
    start = 0
    if after:
        ids = [event_id for event_id, _ in item.events]
        start = ids.index(after) + 1 if after in ids else 0
    for _, frame in item.events[start:]:
        name, _, payload = frame.partition(b"\0")
        yield name.decode(), payload
    if done:
        yield None, b"[DONE]"


# --- handlers ----------------------------------------------------------------------------------


async def handle_create_interaction(request: web.Request) -> web.StreamResponse:
    """POST /v1beta/interactions: create (and answer) one interaction."""
    state = request.app[STATE]
    state.requests["interactions"] += 1
    try:
        check_gemini_key(request, state.settings.api_key)
        body = await read_body(request, state.settings.max_request_bytes)
        state.record(request, "interactions", "", body)
        if len(body) > 256 * 1024:  # a full history: decoding it would stall the loop
            prepared = await state.pool.run(_prepare, state, request, body)
        else:
            prepared = _prepare(state, request, body)
        decision = state.decide(request, "interactions", body)
        outcome = decision.outcome
        if outcome is not None and outcome.status:
            raise _failure(outcome.status, f"emulated fault {outcome.status}")
    except ApiFailure as failure:
        return interactions_error(failure)
    latency = state.latency(decision)
    if outcome is not None and outcome.kind in ("reset", "html502"):
        await asyncio.sleep(latency)
        return reset_connection(request) if outcome.kind == "reset" else html_502()
    stream = _any.decode(body).get("stream") is True
    if not stream:
        item, _ = await asyncio.gather(
            _answer(state, request, prepared, decision), asyncio.sleep(latency)
        )
        _encode_events(item, state.settings.stream_text_chunks)
        return await send_plain(request, json_body(item.document), decision=decision)

    async def events() -> AsyncGenerator[Any, None]:
        item = await _answer(state, request, prepared, decision)
        _encode_events(item, state.settings.stream_text_chunks)
        frames = [frame async for frame in _replay(item, None)]
        yield frames[0]  # interaction.created: the id exists from here on
        await asyncio.sleep(latency)
        yield frames[1:]

    return await send_stream(request, events(), decision=decision)


async def handle_interaction(request: web.Request) -> web.StreamResponse:
    """GET (whole, or `?stream=true&last_event_id=` to resume) and DELETE one interaction."""
    state = request.app[STATE]
    try:
        check_gemini_key(request, state.settings.api_key)
        item = state.interactions.get(request.match_info["id"], _key_of(request))
    except ApiFailure as failure:
        return interactions_error(failure)
    if request.method == "DELETE":
        state.interactions.items.pop(item.id, None)
        return web.Response(body=b"{}", content_type="application/json")
    if request.method != "GET":
        return interactions_error(_failure(405, "method not allowed", "invalid_request"))
    if request.query.get("stream") == "true":
        state.requests["interactions.resume"] += 1
        return await send_stream(request, _replay(item, request.query.get("last_event_id")))
    user = [
        {"type": "user_input", "content": [{"type": "text", "text": p.text}]}
        for p in item.contents[-2].parts
        if p.text
    ][:1]
    document = {**item.document, "steps": [*user, *item.document["steps"]]}
    return web.Response(body=json_body(document), content_type="application/json")
