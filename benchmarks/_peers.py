"""The clients compared by compare_clients.py, behind one small interface.

- `NanoeditClient`: the engine (`Engine`, provider custom at the emulator's URL).
- `GenaiClient`: the official `google-genai` async chat (`client.aio.chats`).
- `NanoeditChatClient` / `OpenAIChatClient`: the same sessions over OpenAI-compatible chat
  completions, through nanoedit's openai-chat provider and through the official `openai` SDK.
- `FloorClient`: the least a correct multi-turn client can do: one aiohttp `ClientSession`,
  `contents` kept as a list whose model entries are the `msgspec.Raw` bytes received, the whole
  history POSTed each turn. Streaming splits `data:` lines with `bytes.find`, concatenates text
  pieces naively, and keeps image parts (raw, signature included) and every signature.

Every client runs a session's turns in order and stops the session at its first error, which it
counts; images are counted once their bytes are decoded.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = [
    "CLIENTS",
    "FloorClient",
    "GenaiClient",
    "NanoeditChatClient",
    "NanoeditClient",
    "OpenAIChatClient",
    "Outcome",
    "PeerClient",
]


@dataclass(slots=True)
class Outcome:
    """What a client's sessions produced."""

    turns_ok: int = 0
    images: int = 0
    image_bytes: int = 0
    errors: list[str] = field(default_factory=list)


class PeerClient(abc.ABC):
    """One client under test: start it, run sessions, close it."""

    name: str

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        image_size: str,
        aspect_ratio: str,
        stream: bool,
        sessions: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.image_size = image_size
        self.aspect_ratio = aspect_ratio
        self.stream = stream
        self.sessions = sessions

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections, clients, engines."""

    @abc.abstractmethod
    async def session(self, prompts: Sequence[str], out: Outcome) -> None:
        """Run one session, one turn per prompt, adding to `out`."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release what `start` opened."""

    async def run_session(self, prompts: Sequence[str], out: Outcome) -> None:
        """`session`, with its first error counted instead of raised."""
        try:
            await self.session(prompts, out)
        except Exception as exc:  # every client's errors are counted the same way
            out.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")


# --- nanoedit -------------------------------------------------------------------------------------


class NanoeditClient(PeerClient):
    """nanoedit's Engine pointed at the emulator as a custom provider."""

    name = "nanoedit"

    async def start(self) -> None:
        from engine._config import EngineConfig
        from engine.runtime import Engine

        cap = max(64, self.sessions)
        self._engine = Engine(
            EngineConfig(
                provider="custom",
                base_url=self.base_url,
                stream=self.stream,
                max_in_flight=cap,
                max_connections=cap,
            )
        )
        await self._engine.start()

    async def session(self, prompts: Sequence[str], out: Outcome) -> None:
        from engine.catalog import ImageConfig

        s = await self._engine.create_session(
            self.model,
            image_config=ImageConfig(aspect_ratio=self.aspect_ratio, image_size=self.image_size),
        )
        for prompt in prompts:
            turn = await s.send(prompt, stream=self.stream)
            out.turns_ok += 1
            for image in turn.images:
                out.images += 1
                out.image_bytes += len(image.data)

    async def aclose(self) -> None:
        await self._engine.aclose()


# --- google-genai ---------------------------------------------------------------------------------


class GenaiClient(PeerClient):
    """The official SDK's async chat, as its documentation shows it."""

    name = "google-genai"

    async def start(self) -> None:
        from google import genai
        from google.genai import types

        self._client = genai.Client(
            api_key="k", http_options=types.HttpOptions(base_url=self.base_url)
        )
        self._config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(
                aspect_ratio=self.aspect_ratio, image_size=self.image_size
            ),
        )

    async def session(self, prompts: Sequence[str], out: Outcome) -> None:
        chat = self._client.aio.chats.create(model=self.model, config=self._config)
        for prompt in prompts:
            if self.stream:
                async for chunk in await chat.send_message_stream(prompt):
                    _count_genai(chunk, out)
            else:
                _count_genai(await chat.send_message(prompt), out)
            out.turns_ok += 1

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def _count_genai(response: Any, out: Outcome) -> None:
    for candidate in response.candidates or ():
        if candidate.content is None:
            continue
        for part in candidate.content.parts or ():
            if part.inline_data is not None and part.inline_data.data and not part.thought:
                out.images += 1
                out.image_bytes += len(part.inline_data.data)


# --- the floor: aiohttp + msgspec by hand ---------------------------------------------------------


class _Blob(msgspec.Struct):
    mimeType: str = ""  # wire names, camelCase
    data: bytes = b""  # msgspec decodes base64 to bytes in C


class _Part(msgspec.Struct, omit_defaults=True):
    text: str | None = None
    thought: bool | None = None
    thoughtSignature: str | None = None  # kept as received, sent back verbatim
    inlineData: _Blob | None = None


class _ContentRaw(msgspec.Struct):
    parts: list[msgspec.Raw] = []


class _Candidate(msgspec.Struct):
    # msgspec.Raw cannot sit in a union with None: an empty Raw means "absent".
    content: msgspec.Raw = msgspec.Raw(b"")
    finishReason: str | None = None


class _CandidateParts(msgspec.Struct):
    content: _ContentRaw | None = None
    finishReason: str | None = None


class _Error(msgspec.Struct):
    code: int = 0
    message: str = ""


class _Response(msgspec.Struct):
    candidates: list[_Candidate] = []
    error: _Error | None = None


class _Chunk(msgspec.Struct):
    candidates: list[_CandidateParts] = []
    error: _Error | None = None


class _ContentParts(msgspec.Struct):
    parts: list[_Part] = []


_decode_response = msgspec.json.Decoder(_Response).decode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_part = msgspec.json.Decoder(_Part).decode
_decode_content = msgspec.json.Decoder(_ContentParts).decode
_encode = msgspec.json.Encoder().encode


class FloorClient(PeerClient):
    """The floor: the least work a correct multi-turn client can do."""

    name = "floor"

    async def start(self) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(100, self.sessions)),
            headers={"x-goog-api-key": "k", "content-type": "application/json"},
        )
        self._gen = {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": self.aspect_ratio, "imageSize": self.image_size},
        }
        base = f"{self.base_url}/v1beta/models/{self.model}"
        self._url = (
            f"{base}:streamGenerateContent?alt=sse" if self.stream else (f"{base}:generateContent")
        )

    async def aclose(self) -> None:
        await self._http.close()

    async def session(self, prompts: Sequence[str], out: Outcome) -> None:
        contents: list[Any] = []
        for prompt in prompts:
            contents.append({"role": "user", "parts": [{"text": prompt}]})
            body = _encode({"contents": contents, "generationConfig": self._gen})
            async with self._http.post(self._url, data=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                if self.stream:
                    model: Any = await self._read_stream(resp, out)
                else:
                    model = self._read_plain(await resp.read(), out)
            contents.append(model)
            out.turns_ok += 1

    @staticmethod
    def _read_plain(data: bytes, out: Outcome) -> msgspec.Raw:
        response = _decode_response(data)
        if response.error is not None:
            raise RuntimeError(f"error {response.error.code}: {response.error.message[:200]}")
        content = response.candidates[0].content if response.candidates else None
        if not content:
            raise RuntimeError("no content in the answer")
        for part in _decode_content(content).parts:
            if part.inlineData is not None and not part.thought:
                out.images += 1
                out.image_bytes += len(part.inlineData.data)
        # The model Content goes back as the very bytes received: no re-encoding of images.
        return content

    @staticmethod
    async def _read_stream(resp: Any, out: Outcome) -> dict[str, Any]:
        # Raw image parts and text accumulators ([thought, signature, pieces...]), in order.
        parts: list[Any] = []
        finished = False

        def handle(payload: bytes) -> None:
            nonlocal finished
            chunk = _decode_chunk(payload)
            if chunk.error is not None:
                raise RuntimeError(f"error {chunk.error.code}: {chunk.error.message[:200]}")
            for cand in chunk.candidates[:1]:
                if cand.finishReason:
                    finished = True
                if cand.content is None:
                    continue
                for raw in cand.content.parts:
                    part = _decode_part(raw)
                    if part.inlineData is not None:
                        if not part.thought:
                            out.images += 1
                            out.image_bytes += len(part.inlineData.data)
                        parts.append(raw)
                    elif part.text is not None:
                        thought = bool(part.thought)
                        last = parts[-1] if parts else None
                        if not isinstance(last, list) or last[0] != thought:
                            last = [thought, None]
                            parts.append(last)
                        last.append(part.text)
                        if part.thoughtSignature:
                            last[1] = part.thoughtSignature

        buf = bytearray()
        scan = 0
        async for data in resp.content.iter_any():
            buf += data
            while True:
                nl = buf.find(b"\n", scan)
                if nl < 0:
                    scan = len(buf)
                    break
                line = bytes(buf[:nl]).rstrip(b"\r")
                del buf[: nl + 1]
                scan = 0
                if line.startswith(b"data:"):
                    handle(line[5:])
        if buf.startswith(b"data:"):
            handle(bytes(buf[5:]))
        if not finished:
            raise RuntimeError("stream ended without a finish reason")
        model_parts: list[Any] = []
        for item in parts:
            if not isinstance(item, list):
                model_parts.append(item)
                continue
            text: dict[str, Any] = {"text": "".join(item[2:])}
            if item[0]:
                text["thought"] = True
            if item[1]:
                text["thoughtSignature"] = item[1]
            model_parts.append(text)
        return {"role": "model", "parts": model_parts}


# --- OpenAI-compatible chat: nanoedit's openai-chat provider and the openai SDK -----------------


class NanoeditChatClient(NanoeditClient):
    """nanoedit's Engine speaking OpenAI-compatible chat completions to the emulator."""

    name = "nanoedit-chat"

    async def start(self) -> None:
        from engine._config import EngineConfig
        from engine.runtime import Engine

        cap = max(64, self.sessions)
        self._engine = Engine(
            EngineConfig(
                provider="custom",
                base_url=self.base_url + "/v1",
                api="openai-chat",
                stream=self.stream,
                max_in_flight=cap,
                max_connections=cap,
            )
        )
        await self._engine.start()


class OpenAIChatClient(PeerClient):
    """The official `openai` SDK's async chat completions, keeping the history as messages
    (assistant images sent back as image_url data URLs, as a chat product would)."""

    name = "openai-sdk"

    async def start(self) -> None:
        import openai

        # Typed as Any: the history is plain dicts, as a chat product holds it. The SDK's default
        # pool (100 connections) is more than the sessions run at once.
        self._client: Any = openai.AsyncOpenAI(
            base_url=self.base_url + "/v1", api_key="unused", max_retries=0
        )

    async def session(self, prompts: Sequence[str], out: Outcome) -> None:
        import base64

        messages: list[dict[str, Any]] = []
        extra = {"modalities": ["text", "image"], "image_config": {"image_size": self.image_size}}
        for prompt in prompts:
            messages.append({"role": "user", "content": [{"type": "text", "text": prompt}]})
            text, urls = "", []
            if self.stream:
                stream = await self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    stream=True,
                    extra_body=extra,
                )
                async for chunk in stream:
                    for choice in chunk.choices:
                        delta = choice.delta
                        text += delta.content or ""
                        for image in (delta.model_extra or {}).get("images") or ():
                            urls.append(image["image_url"]["url"])
            else:
                answer = await self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    extra_body=extra,
                )
                message = answer.choices[0].message
                text = message.content or ""
                for image in (message.model_extra or {}).get("images") or ():
                    urls.append(image["image_url"]["url"])
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
            for url in urls:
                data = base64.b64decode(url.split(",", 1)[1])
                out.images += 1
                out.image_bytes += len(data)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            messages.append({"role": "assistant", "content": parts})
            out.turns_ok += 1

    async def aclose(self) -> None:
        await self._client.close()


CLIENTS: dict[str, type[PeerClient]] = {
    "nanoedit": NanoeditClient,
    "google-genai": GenaiClient,
    "floor": FloorClient,
    "nanoedit-chat": NanoeditChatClient,
    "openai-sdk": OpenAIChatClient,
}
