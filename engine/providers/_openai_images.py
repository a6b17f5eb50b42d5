"""OpenAI's images API (`/images/generations`, `/images/edits`), multi-turn by chaining.

The images API keeps no history: turn 1 is a generation from the prompt; every later turn is an
edit whose first image is the head's latest image (the model's last one), followed by the
images attached to the new turn, with the new turn's text as the prompt. So a session edits
its own latest image over and over, as on the Gemini API.

`size` follows the session's `imageConfig` by this table: with an image size, the catalog's
exact output pixels (`WxH`) of the model at that ratio and size (gateways serving Gemini map
them back exactly); with only a ratio, OpenAI's 1024x1024 (square), 1536x1024 (landscape) or
1024x1536 (portrait); with neither, `auto`. Streaming asks for `partial_images` previews, each
published as `turn.partial_image` before the final `turn.image`.
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass
from typing import Any

import msgspec

from engine._exceptions import ConfigError, ContentBlocked, StreamBroken, TransportError
from engine.providers._base import (
    GenerateRequest,
    HttpProvider,
    OnDelta,
    ProviderResult,
    loop_time,
)
from engine.providers._errors import json_http_error
from engine.wire import (
    Headers,
    ImageDelta,
    LazyBody,
    PartialImageDelta,
    RawSSEDecoder,
    RequestBody,
    malformed,
)
from sessions import Blob, Content, Part, Usage, b64decode_strict, resolve_model

__all__ = ["PARTIAL_IMAGES", "ImagesBody", "OpenAIImagesProvider", "openai_size"]

PARTIAL_IMAGES = 2
"""Previews asked for when streaming (the API allows 0-3)."""

_encoder = msgspec.json.Encoder()
_any = msgspec.json.Decoder()
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def openai_size(model: str, image_config: dict[str, str] | None) -> str:
    """The `size` for a session's imageConfig (see the module docstring for the table)."""
    config = image_config or {}
    ratio, size = config.get("aspectRatio"), config.get("imageSize")
    if size is not None:
        try:
            width, height = resolve_model(model).output_pixels(ratio or "1:1", size)
        except (ConfigError, KeyError):
            pass
        else:
            return f"{width}x{height}"
    if ratio is None:
        return "auto"
    w, h = (int(n) for n in ratio.split(":"))
    return "1024x1024" if w == h else "1536x1024" if w > h else "1024x1536"


@dataclass(frozen=True, slots=True)
class ImagesBody(LazyBody):
    """A request to the images API: where it goes, its content type, and the same request with
    streaming asked for."""

    path: str = ""
    content_type: str = ""
    streaming: bytes = b""
    streaming_content_type: str = ""


def _multipart(
    fields: list[tuple[str, str]], files: list[Blob], mask: bytes | None = None
) -> tuple[bytes, str]:
    boundary = "nanoedit-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for n, blob in enumerate(files):
        ext = _EXTENSIONS.get(blob.mime_type, "bin")
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image[]"; '
            f'filename="image-{n}.{ext}"\r\nContent-Type: {blob.mime_type}\r\n\r\n'
        ).encode()
        out += blob.data + b"\r\n"
    if mask is not None:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="mask"; '
            'filename="mask.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        out += mask + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _latest_model_image(contents: list[Content]) -> Blob | None:
    for content in reversed(contents):
        if content.role != "model":
            continue
        for part in reversed(content.parts):
            if part.inline_data is not None and not part.thought:
                return part.inline_data
    return None


def _blob(b64: Any, mime: str) -> Blob | None:
    if not isinstance(b64, str):
        return None
    try:
        return Blob(mime_type=mime, data=b64decode_strict(b64.encode()))
    except (binascii.Error, ValueError):
        return None


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt, output = raw.get("input_tokens") or 0, raw.get("output_tokens") or 0
    details = raw.get("input_tokens_details") or {}
    image_in = details.get("image_tokens") or 0 if isinstance(details, dict) else 0
    if not all(isinstance(v, int) for v in (prompt, output, image_in)):
        return Usage()
    return Usage(
        prompt_tokens=prompt,
        output_tokens=output,
        total_tokens=raw.get("total_tokens") or prompt + output,
        prompt_image_tokens=image_in,
        prompt_text_tokens=max(0, prompt - image_in),
        output_image_tokens=output,
    )


class OpenAIImagesProvider(HttpProvider):
    """OpenAI's images API (or a gateway's): generations, then edits of the latest image."""

    api = "openai-images"
    supports_streaming = True
    native_masks = True

    def encode(self, request: GenerateRequest) -> bytes:
        """The request body (a generation's JSON or an edit's multipart form)."""
        return self.encode_body(request).join()

    def encode_body(self, request: GenerateRequest) -> ImagesBody:
        """The request, and the same request asking to stream with previews."""
        contents = list(request.contents)
        # The budget also sizes partial histories (even none): encode whatever is given.
        user = contents[-1] if contents and contents[-1].role != "model" else Content(parts=[])
        prompt = " ".join(p.text for p in user.parts if p.text and not p.thought).strip()
        attached = [p.inline_data for p in user.parts if p.inline_data is not None]
        latest = _latest_model_image(contents[:-1])
        images = ([latest] if latest is not None else []) + attached
        model = self._prefix + request.model
        size = openai_size(request.model, request.settings.image_config)
        if not images:
            fields: dict[str, Any] = {"model": model, "prompt": prompt, "n": 1, "size": size}
            plain = _encoder.encode(fields)
            streaming = _encoder.encode(
                {**fields, "stream": True, "partial_images": PARTIAL_IMAGES}
            )
            return ImagesBody(
                len(plain),
                lambda: (plain,),
                path="/images/generations",
                content_type="application/json",
                streaming=streaming,
                streaming_content_type="application/json",
            )
        form = [("model", model), ("prompt", prompt), ("n", "1"), ("size", size)]
        plain, content_type = _multipart(form, images, request.mask)
        more = [("stream", "true"), ("partial_images", str(PARTIAL_IMAGES))]
        streaming, streaming_type = _multipart(form + more, images, request.mask)
        return ImagesBody(
            len(plain),
            lambda: (plain,),
            path="/images/edits",
            content_type=content_type,
            streaming=streaming,
            streaming_content_type=streaming_type,
        )

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
        if not isinstance(body, ImagesBody):
            raise ConfigError("the images provider sends the bodies it encoded")
        url = self._base_url + body.path
        data = body.streaming if stream else body.join()
        content_type = body.streaming_content_type if stream else body.content_type
        headers = Headers({**self._headers, "content-type": content_type})
        if not stream:
            resp = await self._transport.request(
                "POST", url, body=data, headers=headers, errors=json_http_error
            )
            doc = self._decode(resp.body, resp.status)
            items = doc.get("data")
            item = items[0] if isinstance(items, list) and items else {}
            image = self._image(item)
            result = self._result(image, _usage(doc.get("usage")), resp.status)
            result.request_bytes, result.response_bytes = resp.request_bytes, resp.response_bytes
            result.timings = {
                "headers_s": resp.headers_at - resp.started_at,
                "done_s": resp.done_at - resp.started_at,
            }
            if on_delta is not None:
                await on_delta(ImageDelta(result.content.parts[0]))
            return result
        return await self._stream(url, data, headers, on_delta)

    def _decode(self, body: bytes, status: int) -> dict[str, Any]:
        try:
            doc = _any.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed(status, f"malformed images answer: {exc}", self._secrets) from exc
        if not isinstance(doc, dict):
            raise malformed(status, "images answer is not an object", self._secrets)
        return doc

    def _image(self, item: Any) -> Blob:
        if not isinstance(item, dict):
            raise ContentBlocked("the images API returned no image", reason="NO_IMAGE")
        mime = f"image/{item.get('output_format') or 'png'}".replace("jpg", "jpeg")
        blob = _blob(item.get("b64_json"), mime)
        url = item.get("url")
        if blob is None and isinstance(url, str) and url.startswith("data:image/"):
            head, _, data = url.partition(",")
            blob = _blob(data, head[5:].split(";", 1)[0])
        if blob is None:
            raise ContentBlocked("the images API returned no usable image", reason="NO_IMAGE")
        return blob

    def _result(self, image: Blob, usage: Usage, status: int) -> ProviderResult:
        return ProviderResult(
            content=Content(role="model", parts=[Part(inline_data=image)]),
            finish_reason="STOP",
            finish_message=None,
            usage=usage,
            grounding_metadata=None,
            model_version=None,
            response_id=None,
            status=status,
            request_bytes=0,
            response_bytes=0,
        )

    async def _stream(
        self, url: str, data: bytes, headers: Any, on_delta: OnDelta | None
    ) -> ProviderResult:
        final: Blob | None = None
        usage = Usage()
        timings: dict[str, float] = {}
        async with self._transport.stream(
            "POST", url, body=data, headers=headers, errors=json_http_error
        ) as resp:
            start = resp.started_at
            timings["headers_s"] = resp.headers_at - start
            if resp.content_type == "application/json":
                doc = self._decode(await resp.read(), resp.status)
                items = doc.get("data")
                final = self._image(items[0] if isinstance(items, list) and items else {})
                usage = _usage(doc.get("usage"))
            else:
                decoder = RawSSEDecoder(self._max_event_bytes)
                try:
                    async for chunk in resp:
                        for event in decoder.feed(chunk):
                            if not event.data or event.data.strip() == b"[DONE]":
                                continue
                            doc = self._decode(event.data, resp.status)
                            if "error" in doc:
                                raise json_http_error(500, event.data, {}, "", self._secrets)
                            kind = str(doc.get("type", ""))
                            mime = f"image/{doc.get('output_format') or 'png'}"
                            if kind.endswith(".partial_image"):
                                blob = _blob(doc.get("b64_json"), mime.replace("jpg", "jpeg"))
                                index = doc.get("partial_image_index", 0)
                                if blob is not None and on_delta is not None:
                                    await on_delta(
                                        PartialImageDelta(
                                            blob, index if isinstance(index, int) else 0
                                        )
                                    )
                            elif kind.endswith(".completed"):
                                final = self._image(doc)
                                usage = _usage(doc.get("usage"))
                                timings["first_image_s"] = loop_time() - start
                    decoder.close()
                except TransportError:
                    if final is None:
                        raise
            request_bytes, response_bytes = resp.request_bytes, resp.response_bytes
        if final is None:
            raise StreamBroken("the images stream ended before its completed event")
        result = self._result(final, usage, 200)
        result.request_bytes, result.response_bytes = request_bytes, response_bytes
        timings["done_s"] = loop_time() - start
        result.timings = timings
        if on_delta is not None:
            await on_delta(ImageDelta(result.content.parts[0]))
        return result
