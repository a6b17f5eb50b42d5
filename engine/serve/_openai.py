"""The OpenAI-compatible faces of `nanoedit serve` (base URL `http://HOST:PORT/v1`).

- `GET /v1/models`: the catalog's image models and aliases (not shut down), OpenAI's list shape.
- `POST /v1/chat/completions`: a chat product's conversation, resent in full, continues the
  tenant's session it matches (`_chat`); the answer's images ride in `message.images` (the
  OpenRouter dialect), as data URLs or this server's image URLs (`--chat-images`).
- `POST /v1/images/generations` and `/v1/images/edits`: OpenAI's image shapes; an edit of a
  session's latest image continues that session; `n` > 1 runs sibling turns.
- `POST /v1/responses` (+ `GET /v1/responses/{id}`): `previous_response_id` names a turn.

Errors leave in OpenAI's shape (`{"error": {"message", "type", "code", "param"}}`) with the
native API's statuses; another tenant's ids are 404 exactly like unknown ones.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from engine.events import TurnPartialImage, TurnTextDelta
from engine.runtime import Region, Session, Turn, sniff_mime
from engine.serve._chat import Conversations, Message, blobs_of, contents_of, read_conversation
from engine.serve._gateway import GATEWAY, Gateway
from engine.serve._http import HttpError, decode_body, read_body, read_form, status_of
from sessions import Blob, ConfigError, Content, ImageConfig, ModelSpec, Part, TurnRecord

__all__ = [
    "chat_completions",
    "get_response",
    "image_edits",
    "image_generations",
    "list_models",
    "responses",
]

_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_SESSION_HEADER = "X-Nanoedit-Session"


def _gateway(request: web.Request) -> tuple[Gateway, str]:
    gateway = request.app[GATEWAY]
    tenant = gateway.tenants.identify(request.headers.get("Authorization"))
    if tenant is None:
        raise HttpError(401, "Unauthorized", "a valid key is needed: Authorization: Bearer KEY")
    return gateway, tenant


def _json(value: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(value), content_type="application/json", headers=headers
    )


async def _doc(request: web.Request, gateway: Gateway) -> dict[str, Any]:
    doc = decode_body(await read_body(request, gateway.options.max_body_bytes), dict[str, Any])
    return doc


def _conversations(gateway: Gateway) -> Conversations:
    return gateway.conversations


def _spec(gateway: Gateway, name: Any) -> ModelSpec:
    if name is None:
        return gateway.engine.catalog.resolve(gateway.engine.config.model)
    if not isinstance(name, str):
        raise HttpError(400, "InvalidRequest", "model must be a string")
    try:
        return gateway.engine.catalog.resolve(name)
    except ConfigError as exc:
        raise HttpError(404, "ModelNotFound", str(exc).split(";")[0]) from None


def _image_url(request: web.Request, gateway: Gateway, image: Any) -> str:
    if gateway.options.chat_images == "url":
        return f"{request.scheme}://{request.host}/v1/images/{image.sha256}"
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode()}"


def _usage(record: TurnRecord) -> dict[str, Any]:
    usage = record.usage
    completion = usage.output_tokens + usage.thoughts_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": usage.total_tokens or usage.prompt_tokens + completion,
        "cost": record.cost_usd,
    }


async def _run(
    gateway: Gateway, tenant: str, session: Session, run: Callable[[], Awaitable[Turn]]
) -> Turn:
    await gateway.check_tenant_limits(tenant)
    task = await gateway.start_turn(tenant, session, run)
    turn = await asyncio.shield(task)
    _conversations(gateway).learn(tenant, session.id, turn.record)
    return turn


# --- models -----------------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: image models and aliases that are not shut down."""
    gateway, _ = _gateway(request)
    data = []
    for spec in gateway.engine.catalog.models.values():
        if spec.status == "shut down":
            continue
        # nanoedit's own field (clients ignore what they do not know): what the studio needs
        # for a cost estimate before sending, and the model's sizes.
        extra = {
            "image_price_usd": dict(spec.prices.image_by_size),
            "sizes": list(spec.sizes) or [spec.default_size],
            "default_size": spec.default_size,
            "status": spec.status,
        }
        for name in (spec.id, *spec.aliases):
            data.append(
                {"id": name, "object": "model", "created": 0, "owned_by": "google",
                 "nanoedit": extra}
            )  # fmt: skip
    return _json({"object": "list", "data": data})


# --- chat completions -------------------------------------------------------------------------


async def _session_for_chat(
    request: web.Request, gateway: Gateway, tenant: str, doc: dict[str, Any]
) -> tuple[str, str | None, Message, list[tuple[Any, Any]], ModelSpec, str]:
    """(session id or "" for new, turn to continue from, the new user message, turns to import,
    the model, the system text)."""
    conversation = read_conversation(doc.get("messages"))
    spec = _spec(gateway, doc.get("model"))
    explicit = request.headers.get(_SESSION_HEADER)
    metadata = doc.get("metadata")
    if explicit is None and isinstance(metadata, dict):
        value = metadata.get("nanoedit_session")
        explicit = value if isinstance(value, str) else None
    if explicit:
        return explicit, None, conversation.latest, [], spec, conversation.system
    matched = await _conversations(gateway).match(tenant, conversation.pairs)
    if matched is not None:
        state, turn_id = matched
        return state.id, turn_id, conversation.latest, [], spec, conversation.system
    tenant_image = functools.partial(gateway.tenant_image, tenant)
    imported = await contents_of(tenant_image, conversation.pairs)
    return "", None, conversation.latest, imported, spec, conversation.system


def _image_config(doc: dict[str, Any]) -> ImageConfig | None:
    config = doc.get("image_config")
    if not isinstance(config, dict):
        return None
    ratio, size = config.get("aspect_ratio"), config.get("image_size")
    if ratio is None and size is None:
        return None
    return ImageConfig(
        aspect_ratio=str(ratio) if ratio else None, image_size=str(size) if size else None
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions with an image model."""
    gateway, tenant = _gateway(request)
    doc = await _doc(request, gateway)
    session_id, continue_from, latest, imported, spec, system = await _session_for_chat(
        request, gateway, tenant, doc
    )
    images = await blobs_of(functools.partial(gateway.tenant_image, tenant), latest)
    if not latest.text and not images:
        raise HttpError(400, "InvalidRequest", "the last user message has no text or image")
    if not session_id:
        session = await gateway.engine.create_session(
            spec.id,
            image_config=_image_config(doc),
            system_instruction=system or None,
            budget=gateway.options.default_budget,
            title=latest.text[:60],
            owner=tenant,
            history=imported,
        )
        session_id = session.id
    stream = doc.get("stream") is True
    async with gateway.using(tenant, session_id) as session:
        session.check_input(latest.text, images)
        if continue_from is not None and session.state.record.head != continue_from:
            await session.checkout(continue_from)  # "edit an earlier message": a new branch
        created = int(time.time())
        headers = {_SESSION_HEADER: session.id}
        run = lambda: session.send(latest.text, images)  # noqa: E731
        if not stream:
            turn = await _run(gateway, tenant, session, run)
            return _json(_completion(request, gateway, session, turn, created), headers)
        return await _stream_chat(request, gateway, tenant, session, run, created, headers)


def _completion(
    request: web.Request, gateway: Gateway, session: Session, turn: Turn, created: int
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text}
    message["images"] = [
        {"type": "image_url", "image_url": {"url": _image_url(request, gateway, image)}}
        for image in turn.images
    ]
    return {
        "id": f"chatcmpl-{turn.id}",
        "object": "chat.completion",
        "created": created,
        "model": session.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": _usage(turn.record),
        "nanoedit": {"session_id": session.id, "turn_id": turn.id, "turn": turn.index},
    }


def _chunk(turn_id: str, created: int, model: str, delta: dict[str, Any], **extra: Any) -> bytes:
    body = {
        "id": f"chatcmpl-{turn_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": extra.pop("finish", None)}],
        **extra,
    }
    return b"data: " + _encoder.encode(body) + b"\n\n"


async def _stream_chat(
    request: web.Request,
    gateway: Gateway,
    tenant: str,
    session: Session,
    run: Callable[[], Awaitable[Turn]],
    created: int,
    headers: dict[str, str],
) -> web.StreamResponse:
    await gateway.check_tenant_limits(tenant)
    async with gateway.watched_turn(tenant, session, run, ("turn.text_delta",)) as (task, events):
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", **headers}
        )
        await response.prepare(request)
        pending = "pending"
        await response.write(_chunk(pending, created, session.model, {"role": "assistant"}))
        async for event in events:
            if isinstance(event, TurnTextDelta) and not event.thought:
                text = {"content": event.text}
                await response.write(_chunk(pending, created, session.model, text))
        try:
            turn = task.result()
        except Exception as exc:
            status, _ = status_of(exc)
            error = {"error": _error_body(status, type(exc).__name__, str(exc))}
            await response.write(b"data: " + _encoder.encode(error) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            return response
        _conversations(gateway).learn(tenant, session.id, turn.record)
        images = [
            {"type": "image_url", "image_url": {"url": _image_url(request, gateway, i)}}
            for i in turn.images
        ]
        if images:
            delta = {"images": images}
            await response.write(_chunk(turn.id, created, session.model, delta))
        await response.write(
            _chunk(turn.id, created, session.model, {}, finish="stop", usage=_usage(turn.record))
        )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    return response


def _error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"message": message, "type": openai_type(status), "code": kind, "param": None}


def openai_type(status: int) -> str:
    """OpenAI's error `type` for a status."""
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status == 402:
        return "insufficient_quota"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


# --- images -----------------------------------------------------------------------------------


def _size(spec: ModelSpec, size: Any) -> ImageConfig | None:
    """OpenAI's `size` ("WIDTHxHEIGHT" or "auto") as the model's ratio and image size."""
    if size in (None, "auto"):
        return None
    if not isinstance(size, str) or "x" not in size:
        raise HttpError(400, "InvalidRequest", f"size must be WIDTHxHEIGHT or auto, not {size!r}")
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise HttpError(400, "InvalidRequest", f"size {size!r} is not WIDTHxHEIGHT") from None
    for image_size, table in spec.pixels.items():
        for ratio, pixels in table.items():
            if pixels == (width, height) and ratio in spec.ratios:
                sized = image_size if spec.sizes else None
                return ImageConfig(aspect_ratio=ratio, image_size=sized)
    if width == height == 1024:
        return ImageConfig(aspect_ratio="1:1")
    raise HttpError(400, "InvalidRequest", f"{spec.id} has no {size} output")


def _n(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
        raise HttpError(400, "InvalidRequest", "n must be an integer from 1 to 10")
    return value


async def _variants(
    gateway: Gateway, tenant: str, session: Session, n: int, prompt: str, images: list[Blob]
) -> list[Turn]:
    """`n` sibling turns from the session's current head."""
    parent = session.state.record.head
    turns = []
    for i in range(n):
        if i:
            await session.checkout(parent)
        turns.append(await _run(gateway, tenant, session, lambda: session.send(prompt, images)))
    return turns


def _images_answer(
    request: web.Request, gateway: Gateway, session: Session, turns: list[Turn], fmt: Any
) -> web.Response:
    if fmt not in (None, "b64_json", "url"):
        raise HttpError(400, "InvalidRequest", "response_format must be b64_json or url")
    data = []
    for turn in turns:
        for image in turn.images:
            if fmt == "url":
                data.append({"url": f"{request.scheme}://{request.host}/v1/images/{image.sha256}"})
            else:
                data.append({"b64_json": base64.b64encode(image.data).decode()})
    usage = {
        "input_tokens": sum(t.usage.prompt_tokens for t in turns),
        "output_tokens": sum(t.usage.output_tokens for t in turns),
        "total_tokens": sum(t.usage.total_tokens for t in turns),
        "cost": sum(t.cost_usd for t in turns),
    }
    return _json(
        {"created": int(time.time()), "data": data, "usage": usage},
        {_SESSION_HEADER: session.id},
    )


async def image_generations(request: web.Request) -> web.Response:
    """POST /v1/images/generations: a new session; `n` sibling turns."""
    gateway, tenant = _gateway(request)
    doc = await _doc(request, gateway)
    prompt = doc.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise HttpError(400, "InvalidRequest", "prompt is required")
    spec = _spec(gateway, doc.get("model"))
    n = _n(doc.get("n"))
    config = _size(spec, doc.get("size"))
    fmt = doc.get("response_format")
    session = await gateway.engine.create_session(
        spec.id, image_config=config, budget=gateway.options.default_budget,
        title=prompt[:60], owner=tenant,
    )  # fmt: skip
    async with gateway.using(tenant, session.id) as held:
        turns = await _variants(gateway, tenant, held, n, prompt, [])
        return _images_answer(request, gateway, held, turns, fmt)


async def _edit_form(request: web.Request, limit: int) -> tuple[dict[str, Any], list[Blob]]:
    fields: dict[str, Any] = {}
    images: list[Blob] = []
    for part in await read_form(request, limit):
        if part.name in ("image", "image[]"):
            mime = sniff_mime(part.data, "")
            if not mime:
                raise HttpError(400, "InvalidRequest", "image is not a PNG, JPEG, GIF or WebP")
            images.append(Blob(mime_type=mime, data=part.data))
        elif part.name == "mask":
            fields["mask"] = part.data
        else:
            fields[part.name] = part.data.decode("utf-8", "replace")
    return fields, images


async def image_edits(request: web.Request) -> web.Response:
    """POST /v1/images/edits (multipart): continues the session whose latest image is the
    first image, else a new session with the images as input."""
    gateway, tenant = _gateway(request)
    if not request.content_type.startswith("multipart/"):
        raise HttpError(400, "InvalidRequest", "images/edits takes multipart/form-data")
    fields, images = await _edit_form(request, gateway.options.max_body_bytes)
    mask = fields.get("mask")
    region = _openai_mask(mask) if mask is not None else None
    prompt = fields.get("prompt", "")
    if not prompt.strip() or not images:
        raise HttpError(400, "InvalidRequest", "an edit needs a prompt and at least one image")
    spec = _spec(gateway, fields.get("model"))
    try:
        n = _n(int(fields["n"])) if "n" in fields else 1
    except ValueError:
        raise HttpError(400, "InvalidRequest", "n must be an integer from 1 to 10") from None
    config = _size(spec, fields.get("size"))
    fmt = fields.get("response_format")
    digest = hashlib.sha256(images[0].data).hexdigest()
    continued = await _conversations(gateway).match_image(tenant, digest)
    if continued is not None:
        session_id, rest = continued, images[1:]
    elif region is not None:
        # A masked edit of an image the server never drew: the image becomes the session's
        # first turn (imported), so the region edit has a head image to keep pixel for pixel.
        upload = Content(role="user", parts=[Part(text="(an uploaded image)")])
        picture = Content(role="model", parts=[Part(inline_data=images[0])])
        session = await gateway.engine.create_session(
            spec.id, image_config=config, budget=gateway.options.default_budget,
            title=prompt[:60], owner=tenant, history=[(upload, picture)], history_api="upload",
        )  # fmt: skip
        session_id, rest = session.id, images[1:]
    else:
        session = await gateway.engine.create_session(
            spec.id, image_config=config, budget=gateway.options.default_budget,
            title=prompt[:60], owner=tenant,
        )  # fmt: skip
        session_id, rest = session.id, images
    async with gateway.using(tenant, session_id) as held:
        held.check_input(prompt, rest)
        if region is not None:

            def run() -> Awaitable[Turn]:
                return held.send(prompt, rest, region=region, variants=n)

            turns = _takes(held, await _run(gateway, tenant, held, run))
        else:
            turns = await _variants(gateway, tenant, held, n, prompt, rest)
        return _images_answer(request, gateway, held, turns, fmt)


def _takes(session: Session, head: Turn) -> list[Turn]:
    """Every take of the turn `head` is one of (itself alone for a single take)."""
    if "variant" not in head.record.metadata:
        return [head]
    records = [
        r
        for r in session.state.turns.values()
        if r.parent == head.record.parent and r.index == head.index and "variant" in r.metadata
    ]
    return [Turn.from_record(r) for r in sorted(records, key=lambda r: r.created_at)]


def _openai_mask(data: bytes) -> Region:
    """OpenAI's edit mask (fully transparent where the image may change) as a region mask
    (white where it may change); a mask without transparency is read as white = change."""
    from PIL import Image, UnidentifiedImageError

    try:
        mask = Image.open(io.BytesIO(data))
        mask.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HttpError(400, "InvalidRequest", f"mask is not an image: {exc}") from None
    if "A" in mask.getbands() or mask.info.get("transparency") is not None:
        alpha = mask.convert("RGBA").getchannel("A")
        region_mask = alpha.point(lambda v: 255 if v == 0 else 0)
    else:
        region_mask = mask.convert("L")
    out = io.BytesIO()
    region_mask.save(out, "PNG")
    return Region.from_mask(out.getvalue())


# --- responses --------------------------------------------------------------------------------


def _response_id(session_id: str, turn_id: str) -> str:
    return f"resp_{session_id}_{turn_id}"


def _parse_response_id(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or not value.startswith("resp_") or value.count("_") != 2:
        raise HttpError(404, "NotFound", f"no response {value!r}")
    _, session_id, turn_id = value.split("_")
    return session_id, turn_id


def _response_doc(session: Session, record: TurnRecord, blobs: Any) -> dict[str, Any]:
    turn = Turn.from_record(record, blobs)
    output: list[dict[str, Any]] = [
        {
            "type": "image_generation_call",
            "id": f"ig_{record.id}_{n}",
            "status": "completed",
            "result": base64.b64encode(image.data).decode(),
        }
        for n, image in enumerate(turn.images)
    ]
    output.append(
        {
            "type": "message",
            "id": f"msg_{record.id}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": turn.text, "annotations": []}],
        }
    )
    usage = record.usage
    return {
        "id": _response_id(session.id, record.id),
        "object": "response",
        "created_at": int(record.created_at),
        "status": "completed",
        "model": session.model,
        "output": output,
        "previous_response_id": _response_id(session.id, record.parent) if record.parent else None,
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.output_tokens + usage.thoughts_tokens,
            "total_tokens": usage.total_tokens,
            "cost": record.cost_usd,
        },
    }


async def responses(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses with an image model."""
    gateway, tenant = _gateway(request)
    doc = await _doc(request, gateway)
    spec = _spec(gateway, doc.get("model"))
    raw = doc.get("input")
    latest = Message(text=raw) if isinstance(raw, str) else read_conversation(raw).latest
    images = await blobs_of(functools.partial(gateway.tenant_image, tenant), latest)
    previous = doc.get("previous_response_id")
    if previous is not None:
        session_id, turn_id = _parse_response_id(previous)
    else:
        instructions = doc.get("instructions")
        session = await gateway.engine.create_session(
            spec.id,
            system_instruction=instructions if isinstance(instructions, str) else None,
            budget=gateway.options.default_budget,
            title=latest.text[:60],
            owner=tenant,
        )
        session_id, turn_id = session.id, ""
    async with gateway.using(tenant, session_id) as session:
        if turn_id:
            if turn_id not in session.state.turns:
                raise HttpError(404, "NotFound", f"no response {previous!r}")
            if session.state.record.head != turn_id:
                await session.checkout(turn_id)
        session.check_input(latest.text, images)
        run = lambda: session.send(latest.text, images)  # noqa: E731
        if doc.get("stream") is not True:
            turn = await _run(gateway, tenant, session, run)
            return _json(_response_doc(session, turn.record, gateway.engine.store.blobs))
        return await _stream_response(request, gateway, tenant, session, run)


class _ResponseEvents:
    """The Responses event sequence written to one SSE response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.seq = 0

    async def send(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        body = {"type": kind, "sequence_number": self.seq, **fields}
        frame = f"event: {kind}\n".encode() + b"data: " + _encoder.encode(body) + b"\n\n"
        await self.response.write(frame)


async def _stream_response(
    request: web.Request,
    gateway: Gateway,
    tenant: str,
    session: Session,
    run: Callable[[], Awaitable[Turn]],
) -> web.StreamResponse:
    """The turn's events as they happen: `response.created`, the image call in progress (and
    its `partial_image`s when the provider sends previews), `response.output_text.delta`s,
    then each item done and `response.completed` with the committed turn."""
    await gateway.check_tenant_limits(tenant)
    blobs = gateway.engine.store.blobs
    types = ("turn.text_delta", "turn.partial_image")
    async with gateway.watched_turn(tenant, session, run, types) as (task, events):
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        out = _ResponseEvents(response)
        head = {"id": "resp_pending", "object": "response", "created_at": int(time.time()),
                "status": "in_progress", "model": session.model, "output": []}  # fmt: skip
        await out.send("response.created", response=head)
        await out.send("response.in_progress", response=head)
        image_item = {"type": "image_generation_call", "id": "ig_pending", "status": "in_progress"}
        await out.send("response.output_item.added", output_index=0, item=image_item)
        message_item = {"type": "message", "id": "msg_pending", "status": "in_progress",
                        "role": "assistant", "content": []}  # fmt: skip
        await out.send("response.output_item.added", output_index=1, item=message_item)
        async for event in events:
            if isinstance(event, TurnTextDelta) and not event.thought:
                await out.send(
                    "response.output_text.delta",
                    item_id="msg_pending",
                    output_index=1,
                    content_index=0,
                    delta=event.text,
                )
            elif isinstance(event, TurnPartialImage):
                preview = blobs.get(event.image.sha256)
                if preview is not None:
                    await out.send(
                        "response.image_generation_call.partial_image",
                        item_id="ig_pending",
                        output_index=0,
                        partial_image_index=event.index,
                        partial_image_b64=base64.b64encode(preview).decode(),
                    )
        try:
            turn = task.result()
        except Exception as exc:
            status, _ = status_of(exc)
            error = _error_body(status, type(exc).__name__, str(exc))
            await out.send("error", **error)
            await response.write_eof()
            return response
        _conversations(gateway).learn(tenant, session.id, turn.record)
        answer = _response_doc(session, turn.record, blobs)
        for n, item in enumerate(answer["output"]):
            if item["type"] == "message":
                await out.send(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=n,
                    content_index=0,
                    text=turn.text,
                )
            await out.send("response.output_item.done", output_index=n, item=item)
        await out.send("response.completed", response=answer)
        await response.write_eof()
    return response


async def get_response(request: web.Request) -> web.Response:
    """GET /v1/responses/{id}: a committed turn as a response again."""
    gateway, tenant = _gateway(request)
    session_id, turn_id = _parse_response_id(request.match_info["id"])
    async with gateway.using(tenant, session_id) as session:
        record = session.state.turns.get(turn_id)
        if record is None:
            raise HttpError(404, "NotFound", "no such response")
        return _json(_response_doc(session, record, gateway.engine.store.blobs))
