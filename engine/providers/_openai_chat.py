"""OpenAI-compatible chat completions (`POST {base}/chat/completions`), as gateways serve Gemini
image models (Wisdom Gate's OpenAI-compatible endpoint, OpenRouter, ...).

The session stays Gemini-shaped; this provider translates at the edge. The whole history goes
out as `messages`: the system instruction as `system`, user turns as text plus `image_url`
data-URL parts, model turns as `assistant` messages with their visible text and their images as
`image_url` parts (thought parts stay home). Answers carry images in any of the dialects
gateways use, all read:

- `message.images[]` (`{"type": "image_url", "image_url": {"url": "data:..."}}`);
- `image_url` parts in a list `message.content`;
- markdown data URLs in a content string (`![image](data:image/png;base64,...)`);
- a JSON object `{"mime_type"|"mimeType": ..., "b64"|"data": ...}` in the content, fenced or
  with stray text around it (the JSON-only prompt pattern of the Wisdom Gate guide).

A data URL or such JSON never stays in the turn's text. Streams are `data:` chunks with
`delta.content` (a data URL may be split across many deltas), `delta.images` and a final
`usage`, ending with `data: [DONE]`; a plain JSON answer to a stream request is read as one.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from engine._exceptions import ContentBlocked, StreamBroken, TransportError
from engine.providers._base import (
    GenerateRequest,
    HttpProvider,
    OnDelta,
    ProviderResult,
    loop_time,
)
from engine.providers._errors import json_http_error
from engine.wire import ImageDelta, LazyBody, RawSSEDecoder, RequestBody, TextDelta, malformed
from sessions import Blob, Content, Part, Usage, b64decode_strict, b64encode, cut_strings

__all__ = ["OpenAIChatProvider", "extract_images"]


_encoder = msgspec.json.Encoder()
_any = msgspec.json.Decoder()
# `0.5K` is how OpenAI-style gateways spell Gemini's 512 size.
_SIZE_NAMES = {"512": "0.5K"}
_DATA_URL = re.compile(r"data:(image/[\w.+-]+);base64,([A-Za-z0-9+/=_-]+)")
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*(data:image/[^)\s]+)\s*\)")
_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_BLOCKED = {"content_filter": "SAFETY"}


# Stands in for an image's base64 in a request encoded without it (encode_body); a NUL cannot
# come from base64 and is escaped in JSON, so its encoded form is unambiguous.
_MARKER = "\x00nanoedit-image\x00"
_MARKER_JSON = msgspec.json.encode(_MARKER)[1:-1]


def _data_url(blob: Blob) -> str:
    # Every history image goes out again on every turn: the SIMD codec, as for Gemini.
    return f"data:{blob.mime_type};base64,{b64encode(blob.data).decode()}"


def _blob(mime: str, data: str) -> Blob | None:
    try:
        raw = b64decode_strict(data.encode())  # the usual case, in one SIMD pass
    except ValueError:
        try:  # URL-safe, unpadded or with stray characters, as gateways send
            raw = base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_", validate=False)
        except (binascii.Error, ValueError):
            return None
    return Blob(mime_type=mime, data=raw) if raw else None


def _json_image(doc: Any) -> Blob | None:
    if not isinstance(doc, dict):
        return None
    mime = doc.get("mime_type") or doc.get("mimeType") or "image/png"
    data = doc.get("b64") or doc.get("data") or doc.get("b64_json")
    if not isinstance(mime, str) or not isinstance(data, str) or not mime.startswith("image/"):
        return None
    return _blob(mime, data)


def _json_objects(text: str) -> Iterator[tuple[int, int]]:
    """Spans of balanced `{...}` objects in `text` (strings respected)."""
    depth, start, in_string, escape = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield start, i + 1


def extract_images(text: str) -> tuple[str, list[Blob]]:
    """The text without its embedded images, and the images, in order of appearance."""
    images: list[Blob] = []
    for fenced in list(_FENCE.finditer(text)):
        try:
            blob = _json_image(_any.decode(fenced.group(1)))
        except (msgspec.DecodeError, RecursionError):
            blob = None
        if blob is not None:
            images.append(blob)
            text = text.replace(fenced.group(0), " ", 1)
    if "{" in text:
        for start, end in reversed(list(_json_objects(text))):
            try:
                blob = _json_image(_any.decode(text[start:end]))
            except (msgspec.DecodeError, RecursionError):
                continue
            if blob is not None:
                images.insert(0, blob)
                text = text[:start] + " " + text[end:]

    def markdown(match: re.Match[str]) -> str:
        found = _DATA_URL.fullmatch(match.group(1))
        blob = _blob(found.group(1), found.group(2)) if found else None
        if blob is None:
            return match.group(0)
        images.append(blob)
        return " "

    text = _MARKDOWN_IMAGE.sub(markdown, text)

    def bare(match: re.Match[str]) -> str:
        blob = _blob(match.group(1), match.group(2))
        if blob is None:
            return match.group(0)
        images.append(blob)
        return " "

    text = _DATA_URL.sub(bare, text)
    return re.sub(r"[ \t]{2,}", " ", text).strip(), images


def _image_parts(items: Any) -> list[Blob]:
    out = []
    for item in items if isinstance(items, list) else ():
        url = item.get("image_url") if isinstance(item, dict) else None
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, _SplicedUrl):
            blob = url.blob
        else:
            found = _DATA_URL.fullmatch(url.strip()) if isinstance(url, str) else None
            blob = _blob(found.group(1), found.group(2)) if found else None
        if blob is not None:
            out.append(blob)
    return out


# --- data URLs cut out before parsing ------------------------------------------------------------

_URL_STRING = b'"data:image/'
_SPLICE_MIN = 16 * 1024
"""A JSON string this long holding a data URL is decoded from the bytes, not parsed (below)."""
_MIME = re.compile(rb"image/[\w.+-]+")


# A data URL cut out of an answer: its text (a view of the received bytes) and its image.
_Cut = tuple[memoryview, Blob | None]


class _SplicedUrl(str):
    """A data URL decoded straight from the answer's bytes; its text is a placeholder."""

    blob: Blob | None


def decode_chat(data: bytes) -> Any:
    """The JSON of a chat answer or chunk, with each long data-URL string (an image in the
    `images` or `image_url` shapes) decoded straight from the received bytes by the SIMD codec.

    Parsed as JSON, a 1.7 MB data URL became a str, was searched by a regular expression and
    encoded back to bytes before its base64 was decoded: two more copies of it per answer in
    flight (the streamed peak RSS was 1.08x the openai SDK's). Each such string is replaced by a
    short placeholder before parsing; a placeholder found as a `url` value comes back as a
    `_SplicedUrl` carrying its image, anywhere else as the original text. A URL that is not
    standard base64 (URL-safe, say) is left to the regular path.
    """
    if type(data) is not bytes or len(data) < _SPLICE_MIN or _URL_STRING not in data:
        return _any.decode(data)
    spliced = cut_strings(data, _URL_STRING, 0, _data_url_image)
    if spliced is None:
        return _any.decode(data)
    doc, kept = spliced
    return _put_back(_any.decode(doc), {f"\x00{i}": value for i, value in enumerate(kept)})


def _data_url_image(data: bytes, start: int, end: int) -> _Cut | None:
    # A long standard-base64 data URL: its text and its image; anything else stays in place.
    view = memoryview(data)
    comma = data.find(b";base64,", start, min(end, start + 128))
    if end - start < _SPLICE_MIN or comma < 0 or not _MIME.fullmatch(data, start + 5, comma):
        return None
    try:
        raw = b64decode_strict(view[comma + 8 : end])
    except ValueError:
        return None
    mime = data[start + 5 : comma].decode("ascii")
    return view[start:end], Blob(mime_type=mime, data=raw) if raw else None


def _put_back(node: Any, cut: dict[str, _Cut], key: Any = None) -> Any:
    """`node` with its placeholders replaced: a `url` value by a `_SplicedUrl`, any other by the
    original text."""
    if isinstance(node, str):
        if node not in cut:
            return node
        text, blob = cut[node]
        if key != "url":
            return bytes(text).decode()
        spliced = _SplicedUrl(node)
        spliced.blob = blob
        return spliced
    if isinstance(node, dict):
        for name, value in node.items():
            node[name] = _put_back(value, cut, name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _put_back(value, cut)
    return node


def _message_text(content: Any) -> tuple[str, list[Blob]]:
    """Text and images of a message's `content` (a string or a list of parts)."""
    if isinstance(content, str):
        return extract_images(content)
    if not isinstance(content, list):
        return "", []
    texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    text, images = extract_images("".join(t for t in texts if isinstance(t, str)))
    return text, _image_parts([p for p in content if isinstance(p, dict)]) + images


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt = raw.get("prompt_tokens") or 0
    completion = raw.get("completion_tokens") or 0
    details = raw.get("completion_tokens_details") or {}
    image = details.get("image_tokens") or 0 if isinstance(details, dict) else 0
    reasoning = details.get("reasoning_tokens") or 0 if isinstance(details, dict) else 0
    ints = all(isinstance(v, int) for v in (prompt, completion, image, reasoning))
    if not ints:
        return Usage()
    return Usage(
        prompt_tokens=prompt,
        output_tokens=completion - reasoning,
        thoughts_tokens=reasoning,
        total_tokens=raw.get("total_tokens") or prompt + completion,
        output_image_tokens=image,
        output_text_tokens=max(0, completion - reasoning - image) if image else 0,
    )


class OpenAIChatProvider(HttpProvider):
    """`/chat/completions` of an OpenAI-compatible gateway, every image dialect read."""

    api = "openai-chat"
    supports_streaming = True

    @property
    def _url(self) -> str:
        return self._base_url + "/chat/completions"

    def _messages(
        self, request: GenerateRequest, images: list[Blob] | None = None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        system = request.settings.system_instruction
        if system is not None:
            text = "".join(p.text or "" for p in system.parts)
            if text:
                out.append({"role": "system", "content": text})
        for content in request.contents:
            parts: list[dict[str, Any]] = []
            for part in content.parts:
                if part.thought:
                    continue  # the reasoning stays home; only what the user saw goes back
                if part.text:
                    parts.append({"type": "text", "text": part.text})
                elif part.inline_data is not None:
                    if images is None:
                        url = _data_url(part.inline_data)
                    else:  # its base64 goes in where the marker is (see encode_body)
                        images.append(part.inline_data)
                        url = f"data:{part.inline_data.mime_type};base64,{_MARKER}"
                    parts.append({"type": "image_url", "image_url": {"url": url}})
            role = "assistant" if content.role == "model" else "user"
            out.append({"role": role, "content": parts})
        return out

    def _body(self, request: GenerateRequest, images: list[Blob] | None = None) -> dict[str, Any]:
        settings = request.settings
        body: dict[str, Any] = {
            "model": self._prefix + request.model,
            "messages": self._messages(request, images),
        }
        if settings.response_modalities:
            body["modalities"] = [m.lower() for m in settings.response_modalities]
        config = settings.image_config or {}
        image_config = {}
        if config.get("aspectRatio"):
            image_config["aspect_ratio"] = config["aspectRatio"]
        if config.get("imageSize"):
            image_config["image_size"] = _SIZE_NAMES.get(config["imageSize"], config["imageSize"])
        if image_config:
            body["image_config"] = image_config
        return body

    def encode(self, request: GenerateRequest) -> bytes:
        """The chat completions body (without `stream`, which `generate` adds)."""
        return _encoder.encode(self._body(request))

    def encode_body(self, request: GenerateRequest) -> RequestBody:
        """The same bytes as `encode`, each history image's base64 encoded only as it is
        written.

        Built whole, a request held every history image three times over (its base64, the data
        URL text, the encoded body) and the streamed form copied the body once more: 7 MB per
        turn in flight at turn 3 of a 1K session, most of the chat provider's peak memory.
        """
        images: list[Blob] = []
        skeleton = _encoder.encode(self._body(request, images))
        chunks = skeleton.split(_MARKER_JSON)
        if not images or len(chunks) != len(images) + 1:
            # No image, or the marker's text also came from elsewhere: the whole body.
            return skeleton if not images else self.encode(request)
        size = len(skeleton) - len(_MARKER_JSON) * len(images)
        size += sum(4 * ((len(blob.data) + 2) // 3) for blob in images)

        def pieces() -> Iterator[bytes]:
            yield chunks[0]
            for blob, chunk in zip(images, chunks[1:], strict=True):
                yield b64encode(blob.data)
                yield chunk

        return LazyBody(size, pieces)

    # --- one attempt -----------------------------------------------------------------------

    async def generate(
        self,
        model: str,
        body: RequestBody,
        *,
        stream: bool,
        on_delta: OnDelta | None = None,
        images_only: bool = False,
    ) -> ProviderResult:
        """One attempt (see `Provider.generate`)."""
        if stream:
            return await self._stream(_streaming(body), on_delta, images_only)
        resp = await self._transport.request(
            "POST",
            self._base_url + "/chat/completions",
            body=body,
            headers=self._headers,
            errors=json_http_error,
        )
        answer = self._decode(resp.body, resp.status)
        result = self._result(answer, resp.status, images_only)
        result.request_bytes, result.response_bytes = resp.request_bytes, resp.response_bytes
        result.timings = {
            "headers_s": resp.headers_at - resp.started_at,
            "done_s": resp.done_at - resp.started_at,
        }
        await _deliver(result, on_delta)
        return result

    def _decode(self, body: bytes, status: int) -> dict[str, Any]:
        try:
            doc = decode_chat(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed(status, f"malformed chat completion: {exc}", self._secrets) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
            raise malformed(status, "chat completion without choices", self._secrets)
        return doc

    def _result(self, doc: dict[str, Any], status: int, images_only: bool) -> ProviderResult:
        choices = doc["choices"]
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        if not isinstance(message, dict):
            raise malformed(status, "chat completion message is not an object", self._secrets)
        text, images = _message_text(message.get("content"))
        images = _image_parts(message.get("images")) + images
        return self._finish(
            text,
            images,
            choice.get("finish_reason"),
            _usage(doc.get("usage")),
            status,
            doc,
            images_only=images_only,
        )

    def _finish(
        self,
        text: str,
        images: Sequence[Blob],
        finish: Any,
        usage: Usage,
        status: int,
        doc: dict[str, Any],
        *,
        images_only: bool,
    ) -> ProviderResult:
        if finish in _BLOCKED:
            raise ContentBlocked("the gateway filtered the answer", reason=_BLOCKED[finish])
        parts = ([Part(text=text)] if text else []) + [Part(inline_data=b) for b in images]
        if not parts:
            raise ContentBlocked("the model returned no content", reason="EMPTY_RESPONSE")
        if images_only and not images:
            raise ContentBlocked("the model answered without an image", reason="NO_IMAGE")
        return ProviderResult(
            content=Content(role="model", parts=parts),
            finish_reason="STOP" if finish in (None, "stop") else str(finish).upper(),
            finish_message=None,
            usage=usage,
            grounding_metadata=None,
            model_version=doc.get("model") if isinstance(doc.get("model"), str) else None,
            response_id=doc.get("id") if isinstance(doc.get("id"), str) else None,
            status=status,
            request_bytes=0,
            response_bytes=0,
        )

    async def _stream(
        self, body: RequestBody, on_delta: OnDelta | None, images_only: bool
    ) -> ProviderResult:
        text = _StreamedText()
        images: list[Blob] = []
        finish: Any = None
        usage = Usage()
        meta: dict[str, Any] = {}
        done = False
        timings: dict[str, float] = {}
        async with self._transport.stream(
            "POST",
            self._base_url + "/chat/completions",
            body=body,
            headers=self._headers,
            errors=json_http_error,
        ) as resp:
            start = resp.started_at
            timings["headers_s"] = resp.headers_at - start
            if resp.content_type == "application/json":
                # A gateway that ignored "stream": one plain answer.
                doc = self._decode(await resp.read(), resp.status)
                result = self._result(doc, resp.status, images_only)
                if on_delta is not None:
                    for part in result.content.parts:
                        if part.inline_data is not None:
                            await on_delta(ImageDelta(part))
                        elif part.text:
                            await on_delta(TextDelta(part.text, False))
                result.request_bytes, result.response_bytes = (
                    resp.request_bytes,
                    resp.response_bytes,
                )
                return result
            decoder = RawSSEDecoder(self._max_event_bytes)
            try:
                async for data in resp:
                    for event in decoder.feed(data):
                        if not event.data:
                            continue
                        if event.data.strip() == b"[DONE]":
                            done = True
                            continue
                        chunk = self._chunk(event.data, resp.status)
                        timings.setdefault("first_event_s", loop_time() - start)
                        meta.setdefault("id", chunk.get("id"))
                        meta.setdefault("model", chunk.get("model"))
                        if isinstance(chunk.get("usage"), dict):
                            usage = _usage(chunk["usage"])
                        for choice in chunk.get("choices") or ():
                            if not isinstance(choice, dict):
                                continue
                            delta = choice.get("delta") or {}
                            if choice.get("finish_reason"):
                                finish = choice["finish_reason"]
                            if not isinstance(delta, dict):
                                continue
                            piece = delta.get("content")
                            found = _image_parts(delta.get("images"))
                            if isinstance(piece, list):  # content parts, images among them
                                piece, parts = _message_text(piece)
                                found += parts
                            if isinstance(piece, str) and piece:
                                shown = text.add(piece)
                                if shown and on_delta is not None:
                                    await on_delta(TextDelta(shown, False))
                            for blob in found:
                                images.append(blob)
                                timings.setdefault("first_image_s", loop_time() - start)
                                if on_delta is not None:
                                    await on_delta(ImageDelta(Part(inline_data=blob)))
                decoder.close()
            except TransportError:
                if not done and finish is None:
                    raise
            request_bytes, response_bytes = resp.request_bytes, resp.response_bytes
        if finish is None and not done:
            raise StreamBroken("the stream ended before a finish reason")
        clean, embedded = extract_images(text.full)
        for blob in embedded:
            images.append(blob)
            if on_delta is not None:
                await on_delta(ImageDelta(Part(inline_data=blob)))
        rest = text.rest(clean)
        if rest and on_delta is not None:
            await on_delta(TextDelta(rest, False))
        result = self._finish(clean, images, finish, usage, 200, meta, images_only=images_only)
        result.request_bytes, result.response_bytes = request_bytes, response_bytes
        result.timings = timings
        return result

    def _chunk(self, data: bytes, status: int) -> dict[str, Any]:
        try:
            chunk = decode_chat(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed(status, f"malformed stream chunk: {exc}", self._secrets) from exc
        if not isinstance(chunk, dict):
            raise malformed(status, "stream chunk is not an object", self._secrets)
        error = chunk.get("error")
        if error is not None:
            # An error inside the stream: the same typed error as the same body with a status.
            code = str(error.get("code") if isinstance(error, dict) else "")
            status = int(code) if code.isdigit() else 500
            raise json_http_error(status, _encoder.encode({"error": error}), {}, "", self._secrets)
        return chunk


class _StreamedText:
    """Streamed content text, shown as it arrives until something that may be an embedded
    image starts (a data URL, markdown image, JSON object or fence); the rest waits for the
    end, so no base64 reaches a text event."""

    _MARKERS = ("data:", "![", "{", "```")

    def __init__(self) -> None:
        self.full = ""
        self.shown = 0
        self.held = False

    def add(self, piece: str) -> str:
        """Record `piece`; the part of it that may be shown now."""
        self.full += piece
        if self.held:
            return ""
        tail = self.full[self.shown :]
        cut = min((i for m in self._MARKERS if (i := tail.find(m)) >= 0), default=-1)
        # A marker may also be arriving in pieces: keep back a few characters at the end.
        if cut < 0:
            safe = max(0, len(tail) - 4)
        else:
            safe = cut
            self.held = True
        shown = tail[:safe]
        self.shown += len(shown)
        return shown

    def rest(self, clean: str) -> str:
        """What of the final clean text was not shown yet."""
        shown = self.full[: self.shown]
        return clean[len(shown) :] if clean.startswith(shown) else ""


async def _deliver(result: ProviderResult, on_delta: OnDelta | None) -> None:
    """A whole answer's text and images as deltas, for a caller that builds events from them."""
    if on_delta is None:
        return
    for part in result.content.parts:
        if part.inline_data is not None:
            await on_delta(ImageDelta(part))
        elif part.text:
            await on_delta(TextDelta(part.text, False))


def _streaming(body: RequestBody) -> RequestBody:
    """The body with `"stream": true` and usage in the last chunk, added in front."""
    head = b'{"stream":true,"stream_options":{"include_usage":true},'
    if isinstance(body, bytes):
        return head + body[1:]
    inner = body

    def pieces() -> Iterator[bytes]:
        first = True
        for piece in inner.pieces():
            if first:
                first = False
                yield head + piece[1:]
            else:
                yield piece

    return LazyBody(inner.size + len(head) - 1, pieces)
