"""Google's Interactions API (`POST /v1beta/interactions`): the conversation kept server-side.

A turn names `previous_interaction_id` (the interaction that produced the session's head turn)
and sends only the new user input; without one (the first turn, a chain that broke, a session
that moved here from another API) it sends the whole history once as steps (`user_input`,
`thought` with its signature exactly as received, `model_output`). The session itself stays
ours: every turn is still stored Gemini-shaped, and records the id of the interaction that
produced it (per provider scope), so undo, checkout and fork continue from any stored turn.

An interaction's output maps onto one model Content: a `thought` step becomes a thought part
(its summary as text, its signature on it), a `model_output` step's items become text and
image parts, in order. Sending that Content back as steps gives the steps that came.

Streams (`stream: true`) carry `interaction.created`, `step.start` / `step.delta` /
`step.stop`, `interaction.completed` (usage), `error`, then `[DONE]`. A stream that breaks
once the interaction exists is resumed with `GET /interactions/{id}?stream=true&last_event_id=`
(nothing is generated, or paid for, twice); only a break before the id is known is retried by
the runtime from scratch.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from engine._exceptions import (
    ApiError,
    ContentBlocked,
    InteractionIncomplete,
    ServerError,
    StreamBroken,
    TransportError,
    api_error,
)
from engine.providers._base import (
    GenerateRequest,
    HttpProvider,
    OnDelta,
    ProviderResult,
    loop_time,
)
from engine.providers._errors import json_http_error
from engine.wire import (
    ContentMerger,
    Headers,
    ImageDelta,
    RawSSEDecoder,
    RequestBody,
    clean_message,
    html_title,
    malformed,
)
from sessions import Blob, Content, FileData, Part, Usage, b64decode_strict

__all__ = [
    "API_REVISION",
    "InteractionIncomplete",
    "InteractionsProvider",
    "chain_broken",
    "content_of_steps",
    "steps_of",
    "usage_of",
]

API_REVISION = "2026-05-20"
"""The `Api-Revision` header the documented examples and the official SDKs send."""

ImageDelivery = Literal["inline", "uri"]

# The error codes of Interactions' `{"error": {"code", "message"}}` body and their HTTP status
# (for errors that arrive inside a 200 stream).
_CODE_STATUS = {
    "invalid_request": 400,
    "failed_precondition": 400,
    "parameter_unknown": 400,
    "authentication": 401,
    "permission_denied": 403,
    "not_found": 404,
    "model_not_found": 404,
    "out_of_range": 416,
    "rate_limit_exceeded": 429,
    "quota_exceeded": 429,
    "internal": 500,
    "unavailable": 503,
    "deadline_exceeded": 504,
}
_MAX_RESUMES = 3  # resumptions of one broken stream before the attempt gives up
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def chain_broken(exc: BaseException) -> bool:
    """Whether `exc` says the previous interaction cannot be continued (expired, deleted,
    another key's, never stored): the turn then sends its full history once."""
    return isinstance(exc, ApiError) and exc.status == 404 and exc.code in ("not_found", "")


def _b64(text: str) -> bytes:
    """Standard base64 (checked, in C), or the URL-safe alphabet without padding; ValueError
    for anything else."""
    data = text.encode()
    try:
        return b64decode_strict(data)
    except ValueError:
        padded = data + b"=" * (-len(data) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)


# --- requests ----------------------------------------------------------------------------------


def _signature_text(part: Part) -> str:
    """A part's signature as it was received (its spelling kept in `extra` when it was not
    standard base64)."""
    raw = (part.extra or {}).get("thoughtSignature")
    if raw is not None:
        text = msgspec.json.decode(raw)
        if isinstance(text, str):
            return text
    assert part.thought_signature is not None
    return base64.b64encode(part.thought_signature).decode()


def _signature_part(text: str, summary: str | None = None) -> Part:
    """A thought part carrying `text` (a signature string) exactly as it came."""
    data = _b64(text)
    extra = None
    if base64.b64encode(data).decode() != text:
        extra = {"thoughtSignature": msgspec.Raw(_encoder.encode(text))}
    return Part(text=summary or "", thought=True, thought_signature=data, extra=extra)


def _item(part: Part) -> dict[str, Any] | None:
    """One content item for a part (None for parts Interactions has no item for)."""
    if part.inline_data is not None:
        blob = part.inline_data
        return {"type": "image", "data": blob.data, "mime_type": blob.mime_type}
    if part.file_data is not None:
        ref = part.file_data
        item: dict[str, Any] = {"type": "image", "uri": ref.file_uri}
        if ref.mime_type:
            item["mime_type"] = ref.mime_type
        return item
    if part.text:
        return {"type": "text", "text": part.text}
    return None


def _items(parts: Sequence[Part]) -> list[dict[str, Any]]:
    return [item for p in parts if (item := _item(p)) is not None]


def steps_of(contents: Sequence[Content]) -> list[dict[str, Any]]:
    """A history as Interactions steps, in order: a user Content is a `user_input`; a model
    Content's thought parts are `thought` steps (signature exactly as received, summary), its
    other parts `model_output` steps, and a signature on an answer part (a turn that came
    through `generateContent`) goes out as a `thought` step just before it."""
    steps: list[dict[str, Any]] = []
    for content in contents:
        if content.role != "model":
            steps.append({"type": "user_input", "content": _items(content.parts)})
            continue
        output: list[dict[str, Any]] = []
        for part in content.parts:
            if part.thought:
                if part.thought_signature is None:
                    continue  # a summary without a signature: nothing to send back
                if output:
                    steps.append({"type": "model_output", "content": output})
                    output = []
                step: dict[str, Any] = {"type": "thought", "signature": _signature_text(part)}
                if part.text:
                    step["summary"] = [{"type": "text", "text": part.text}]
                steps.append(step)
                continue
            if part.thought_signature is not None:
                if output:
                    steps.append({"type": "model_output", "content": output})
                    output = []
                steps.append({"type": "thought", "signature": _signature_text(part)})
            item = _item(part)
            if item is not None:
                output.append(item)
        if output:
            steps.append({"type": "model_output", "content": output})
    return steps


def _tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """generateContent tools in Interactions' spelling (`{"type": "google_search"}`)."""
    if not tools:
        return None
    out: list[dict[str, Any]] = []
    for tool in tools:
        if "type" in tool:
            out.append(dict(tool))
            continue
        for name, config in tool.items():
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
            out.append({"type": snake, **(config if isinstance(config, dict) else {})})
    return out


def _generation_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The session's generationConfig fields Interactions takes, in its spelling."""
    if not config:
        return None
    out: dict[str, Any] = {}
    thinking = config.get("thinkingConfig") or config.get("thinking_config")
    if isinstance(thinking, Mapping):
        level = thinking.get("thinkingLevel") or thinking.get("thinking_level")
        if level:
            out["thinking_level"] = level
    for camel, snake in (
        ("maxOutputTokens", "max_output_tokens"),
        ("seed", "seed"),
        ("stopSequences", "stop_sequences"),
    ):
        value = config.get(camel, config.get(snake))
        if value is not None:
            out[snake] = value
    return out or None


def request_body(
    request: GenerateRequest,
    *,
    previous: str | None,
    delivery: ImageDelivery = "inline",
    store: bool = True,
) -> dict[str, Any]:
    """The CreateModelInteraction body of a turn: with `previous`, only the new user turn;
    without, the whole history as steps."""
    settings = request.settings
    contents = request.contents
    body: dict[str, Any] = {"model": request.model}
    if previous is not None:
        body["previous_interaction_id"] = previous
        body["input"] = _items(contents[-1].parts)
    else:
        body["input"] = steps_of(contents)
    modalities = [m.upper() for m in settings.response_modalities or ("TEXT", "IMAGE")]
    if "IMAGE" in modalities:
        image_format: dict[str, Any] = {"type": "image"}
        config = settings.image_config or {}
        if config.get("aspectRatio"):
            image_format["aspect_ratio"] = config["aspectRatio"]
        if config.get("imageSize"):
            image_format["image_size"] = config["imageSize"]
        if delivery == "uri":
            image_format["delivery"] = "uri"
        body["response_format"] = (
            [{"type": "text"}, image_format] if "TEXT" in modalities else image_format
        )
    generation = _generation_config(settings.generation_config)
    if generation:
        body["generation_config"] = generation
    # Interaction-scoped: sent again every turn.
    if settings.system_instruction is not None:
        body["system_instruction"] = settings.system_instruction.text()
    tools = _tools(settings.tools)
    if tools:
        body["tools"] = tools
    body["store"] = store
    return body


# --- answers -----------------------------------------------------------------------------------


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _by_modality(entries: Any, modality: str) -> int:
    if not isinstance(entries, list):
        return 0
    return sum(
        _int(e.get("tokens"))
        for e in entries
        if isinstance(e, dict) and str(e.get("modality", "")).lower() == modality
    )


def usage_of(usage: Any) -> Usage:
    """`Usage` from an interaction's `usage` (totals and `*_by_modality` lists), as
    `usageMetadata` maps: output text is what the output total holds besides images."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = _int(usage.get("total_input_tokens"))
    output = _int(usage.get("total_output_tokens"))
    thoughts = _int(usage.get("total_thought_tokens"))
    tools = _int(usage.get("total_tool_use_tokens"))
    out_modal = usage.get("output_tokens_by_modality")
    image_out = _by_modality(out_modal, "image")
    if isinstance(out_modal, list) and any(
        isinstance(e, dict) and str(e.get("modality", "")).lower() == "text" for e in out_modal
    ):
        text_out = _by_modality(out_modal, "text")
    else:
        text_out = max(0, output - image_out) if isinstance(out_modal, list) else 0
    in_modal = usage.get("input_tokens_by_modality")
    return Usage(
        prompt_tokens=prompt,
        output_tokens=output,
        thoughts_tokens=thoughts,
        total_tokens=_int(usage.get("total_tokens")) or prompt + output + thoughts + tools,
        prompt_image_tokens=_by_modality(in_modal, "image"),
        prompt_text_tokens=_by_modality(in_modal, "text"),
        output_image_tokens=image_out,
        output_text_tokens=text_out,
        cached_tokens=min(_int(usage.get("total_cached_tokens")), prompt),
        tool_use_tokens=tools,
    )


def _image_part(item: Mapping[str, Any]) -> Part:
    mime = str(item.get("mime_type") or "image/png")
    data = item.get("data")
    if isinstance(data, str):
        return Part(inline_data=Blob(mime_type=mime, data=_b64(data)))
    uri = item.get("uri")
    if isinstance(uri, str):
        return Part(file_data=FileData(file_uri=uri, mime_type=mime))
    raise ValueError("an image item without data or uri")


def _item_parts(items: Any) -> list[Part]:
    parts: list[Part] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            parts.append(Part(text=item["text"]))
        elif kind == "image":
            parts.append(_image_part(item))
    return parts


def _summary(step: Mapping[str, Any]) -> str:
    summary = step.get("summary")
    if isinstance(summary, list):
        return "".join(
            s.get("text", "") for s in summary if isinstance(s, dict) and s.get("type") == "text"
        )
    return ""


def content_of_steps(steps: Any) -> Content:
    """The model Content of an interaction's output steps (`user_input` steps, which a GET
    returns too, are skipped)."""
    parts: list[Part] = []
    for step in steps if isinstance(steps, list) else ():
        if not isinstance(step, dict):
            continue
        kind = step.get("type")
        if kind == "thought":
            signature = step.get("signature")
            summary = _summary(step)
            if isinstance(signature, str) and signature:
                parts.append(_signature_part(signature, summary))
            elif summary:
                parts.append(Part(text=summary, thought=True))
        elif kind == "model_output":
            parts.extend(_item_parts(step.get("content")))
    return Content(role="model", parts=parts)


class _Interaction:
    """What one interaction's answer (plain or streamed) said."""

    __slots__ = ("id", "last_event_id", "model", "status", "usage")

    def __init__(self) -> None:
        self.id: str | None = None
        self.status: str | None = None
        self.model: str | None = None
        self.usage = Usage()
        self.last_event_id: str | None = None

    def read(self, doc: Mapping[str, Any]) -> None:
        if isinstance(doc.get("id"), str):
            self.id = doc["id"]
        if isinstance(doc.get("status"), str):
            self.status = doc["status"]
        if isinstance(doc.get("model"), str):
            self.model = doc["model"]
        if "usage" in doc:
            self.usage = usage_of(doc["usage"])


def _stream_error(doc: Any, secrets: tuple[str, ...]) -> ApiError:
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        err = {}
    code = str(err.get("code") or "internal")
    message = clean_message(str(err.get("message") or code), secrets)
    return api_error(_CODE_STATUS.get(code, 500), message, code=code)


def _check_status(found: _Interaction) -> None:
    status = found.status
    if status in (None, "completed"):
        return
    if status == "failed":
        raise ServerError("the interaction failed", status=500, code="failed")
    if status in ("incomplete", "budget_exceeded", "cancelled"):
        raise InteractionIncomplete(f"the interaction ended {status}", status=200, code=status)
    raise StreamBroken(f"the interaction ended while {status}")


class InteractionsProvider(HttpProvider):
    """Google's Interactions API; `GenerateRequest.previous_interaction` chains a turn."""

    api = "interactions"
    supports_streaming = True
    default_auth = "goog"

    def __init__(
        self, *args: Any, delivery: ImageDelivery = "inline", store: bool = True, **kwargs: Any
    ) -> None:
        """`store=False` keeps nothing at Google: every turn sends its whole history."""
        super().__init__(*args, **kwargs)
        self.delivery: ImageDelivery = delivery
        self.store = store
        self.keeps_conversations = store
        self._headers = Headers({**self._headers, "api-revision": API_REVISION})
        self.resumes = 0  # streams resumed after a break (for tests and benchmarks)
        self.max_resumes = _MAX_RESUMES  # per attempt; 0 retries a broken stream from scratch

    def _url(self, tail: str = "") -> str:
        return f"{self._base_url}/v1beta/interactions{tail}"

    def encode(self, request: GenerateRequest) -> bytes:
        """The CreateModelInteraction body (`stream` is added by `generate`)."""
        previous = request.previous_interaction if self.store else None
        body = request_body(request, previous=previous, delivery=self.delivery, store=self.store)
        return _encoder.encode(body)

    async def generate(
        self,
        model: str,
        body: RequestBody,
        *,
        stream: bool,
        on_delta: OnDelta | None = None,
        images_only: bool = False,
    ) -> ProviderResult:
        """One interaction: created, and answered whole or streamed (resumed after a break)."""
        data = body if isinstance(body, bytes) else body.join()
        if stream:
            return await self._stream(b'{"stream":true,' + data[1:], on_delta, images_only)
        return await self._once(data, on_delta, images_only)

    async def _once(
        self, data: bytes, on_delta: OnDelta | None, images_only: bool
    ) -> ProviderResult:
        resp = await self._transport.request(
            "POST", self._url(), body=data, headers=self._headers, errors=json_http_error
        )
        doc = self._json(resp.body, resp.status, resp.content_type)
        found = _Interaction()
        found.read(doc)
        _check_status(found)
        try:
            content = content_of_steps(doc.get("steps") or doc.get("outputs"))
        except ValueError as exc:
            raise malformed(resp.status, str(exc), self._secrets) from None
        content = await self._fetched(content)
        self._check(content, images_only)
        if on_delta is not None:
            for delta in ContentMerger().add(content.parts):
                await on_delta(delta)
        timings = {
            "headers_s": resp.headers_at - resp.started_at,
            "done_s": resp.done_at - resp.started_at,
        }
        return self._result(
            found, content, resp.status, resp.request_bytes, len(resp.body), timings
        )

    def _json(self, body: bytes, status: int, content_type: str) -> dict[str, Any]:
        if "html" in content_type:
            title = html_title(body[:65536].decode("utf-8", "replace"))
            raise malformed(
                status, f"expected JSON, got an HTML page: {title or ''}", self._secrets
            )
        try:
            doc = _any.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed(status, f"malformed interaction: {exc}", self._secrets) from None
        if not isinstance(doc, dict):
            raise malformed(status, "an interaction must be a JSON object", self._secrets)
        return doc

    def _check(self, content: Content, images_only: bool) -> None:
        if not any(not p.thought for p in content.parts):
            raise ContentBlocked("the model returned no content", reason="EMPTY_RESPONSE")
        if images_only and not any(p.is_image and not p.thought for p in content.parts):
            raise ContentBlocked("the model answered without an image", reason="NO_IMAGE")

    def _result(
        self,
        found: _Interaction,
        content: Content,
        status: int,
        request_bytes: int,
        response_bytes: int,
        timings: dict[str, float],
    ) -> ProviderResult:
        return ProviderResult(
            content=content,
            finish_reason="STOP",
            finish_message=None,
            usage=found.usage,
            grounding_metadata=None,
            model_version=found.model,
            response_id=found.id,
            status=status,
            request_bytes=request_bytes,
            response_bytes=response_bytes,
            timings=timings,
        )

    async def _fetched(self, content: Content) -> Content:
        """`delivery: "uri"` images downloaded (with the key) into inline parts."""
        if not any(p.file_data is not None for p in content.parts):
            return content
        parts = []
        for part in content.parts:
            ref = part.file_data
            if ref is not None and (ref.mime_type or "").startswith("image/"):
                resp = await self._transport.request(
                    "GET", ref.file_uri, headers=self._headers, errors=json_http_error
                )
                blob = Blob(mime_type=ref.mime_type or "image/png", data=resp.body)
                part = Part(inline_data=blob, thought=part.thought)
            parts.append(part)
        return Content(role=content.role, parts=parts)

    # --- streams ---------------------------------------------------------------------------

    async def _stream(
        self, data: bytes, on_delta: OnDelta | None, images_only: bool
    ) -> ProviderResult:
        found = _Interaction()
        merger = ContentMerger()
        timings: dict[str, float] = {}
        state = _StreamState()
        start = loop_time()
        request_bytes = response_bytes = 0
        status = 200
        method, url = "POST", self._url()
        body_now: bytes | None = data
        while True:
            try:
                async with self._transport.stream(
                    method, url, body=body_now, headers=self._headers, errors=json_http_error
                ) as resp:
                    timings.setdefault("headers_s", resp.headers_at - start)
                    status = resp.status
                    request_bytes = request_bytes or resp.request_bytes
                    try:
                        await self._read_events(resp, found, merger, state, on_delta, timings)
                    finally:
                        response_bytes += resp.response_bytes
                if state.completed:
                    break
                raise StreamBroken("the stream ended before interaction.completed")
            except TransportError:
                if state.completed:
                    break  # the answer was whole; only the connection's goodbye failed
                if found.id is None or state.resumed >= self.max_resumes:
                    raise
                # The interaction exists: pick the stream up after the last event received.
                state.resumed += 1
                self.resumes += 1
                query = "?stream=true"
                if found.last_event_id:
                    query += f"&last_event_id={quote(found.last_event_id, safe='')}"
                method, url = "GET", self._url("/" + quote(found.id, safe="")) + query
                body_now = None
        _check_status(found)
        content = await self._fetched(merger.content())
        self._check(content, images_only)
        timings["done_s"] = loop_time() - start
        if state.resumed:
            timings["resumed"] = float(state.resumed)
        return self._result(found, content, status, request_bytes, response_bytes, timings)

    async def _read_events(
        self,
        resp: Any,
        found: _Interaction,
        merger: ContentMerger,
        state: _StreamState,
        on_delta: OnDelta | None,
        timings: dict[str, float],
    ) -> None:
        if resp.content_type in ("application/json", "text/html"):
            doc = self._json(await resp.read(), resp.status, resp.content_type)
            raise _stream_error(doc, self._secrets)
        decoder = RawSSEDecoder(self._max_event_bytes)
        async for chunk in resp:
            for event in decoder.feed(chunk):
                text = event.data
                if not text or text == b"[DONE]":
                    continue
                try:
                    doc = _any.decode(text)
                except (msgspec.DecodeError, RecursionError) as exc:
                    message = f"malformed stream event: {exc}"
                    raise malformed(resp.status, message, self._secrets) from exc
                if not isinstance(doc, dict):
                    continue
                if event.id:
                    found.last_event_id = event.id
                elif isinstance(doc.get("event_id"), str):
                    found.last_event_id = doc["event_id"]
                timings.setdefault("first_event_s", loop_time() - resp.started_at)
                try:
                    parts = self._event_parts(doc, event.event or "", found, state, resp.status)
                except ValueError as exc:  # a signature that is not base64
                    raise malformed(resp.status, str(exc), self._secrets) from None
                for delta in merger.add(parts):
                    if isinstance(delta, ImageDelta):
                        timings.setdefault("first_image_s", loop_time() - resp.started_at)
                    if on_delta is not None:
                        await on_delta(delta)
        decoder.close()

    def _event_parts(
        self, doc: dict[str, Any], name: str, found: _Interaction, state: _StreamState, status: int
    ) -> list[Part]:
        kind = doc.get("event_type") or name
        if kind == "interaction.created" or kind == "interaction.completed":
            interaction = doc.get("interaction")
            if isinstance(interaction, dict):
                found.read(interaction)
            if kind == "interaction.completed":
                state.completed = True
            return []
        if kind == "interaction.status_update":
            if isinstance(doc.get("status"), str):
                found.status = doc["status"]
            return []
        if kind == "error":
            raise _stream_error(doc, self._secrets)
        if kind == "step.start":
            step = doc.get("step")
            state.step = step.get("type") if isinstance(step, dict) else None
            if isinstance(step, dict) and step.get("type") == "thought":
                signature = step.get("signature")
                if isinstance(signature, str) and signature:
                    return [_signature_part(signature)]
            if isinstance(step, dict) and step.get("type") == "model_output":
                return self._parts_or_malformed(step.get("content"), status)
            return []
        if kind == "step.delta":
            delta = doc.get("delta")
            if not isinstance(delta, dict):
                return []
            dtype = delta.get("type")
            if dtype == "text" and isinstance(delta.get("text"), str):
                return [Part(text=delta["text"], thought=state.step == "thought" or None)]
            if dtype == "thought_summary":
                text = delta.get("content", delta.get("text"))
                if isinstance(text, dict):
                    text = text.get("text")
                return [Part(text=text, thought=True)] if isinstance(text, str) else []
            if dtype == "thought_signature" and isinstance(delta.get("signature"), str):
                return [_signature_part(delta["signature"])]
            if dtype == "image":
                return self._parts_or_malformed([delta], status)
            return []
        if kind == "step.stop":
            state.step = None
        return []

    def _parts_or_malformed(self, items: Any, status: int) -> list[Part]:
        try:
            return _item_parts(items)
        except ValueError as exc:
            raise malformed(status, str(exc), self._secrets) from None


class _StreamState:
    __slots__ = ("completed", "resumed", "step")

    def __init__(self) -> None:
        self.completed = False
        self.resumed = 0
        self.step: str | None = None
