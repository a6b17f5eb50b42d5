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
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from engine._config import ApiName

__all__ = [
    "CLIENTS",
    "MAX_REQUEST_BYTES",
    "FloorClient",
    "GenaiClient",
    "NanoeditChatClient",
    "NanoeditClient",
    "OpenAIChatClient",
    "Outcome",
    "PeerClient",
    "SimdFloorClient",
]


# The workload decides the request size, not a budget: 10 turns of 2K images are ~70 MB. The
# emulator is started with the same limit (Google's own inline limit is 100 MB since 2026-01).
MAX_REQUEST_BYTES = 256 * 1024 * 1024


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
    async def open(self) -> Any:
        """A new session (whatever the client keeps for one)."""

    @abc.abstractmethod
    async def turn(self, session: Any, prompt: str, out: Outcome) -> None:
        """One turn of `session`, adding to `out`."""

    async def session(self, prompts: Sequence[str], out: Outcome) -> None:
        """Run one session, one turn per prompt, adding to `out`."""
        handle = await self.open()
        for prompt in prompts:
            await self.turn(handle, prompt, out)

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
    api: ApiName | Literal[""] = ""  # the provider's own wire protocol (Gemini REST)
    path = ""  # appended to the emulator's base URL

    async def start(self) -> None:
        from engine._config import EngineConfig
        from engine.runtime import Engine

        cap = max(64, self.sessions)
        self._engine = Engine(
            EngineConfig(
                provider="custom",
                base_url=self.base_url + self.path,
                api=self.api,
                stream=self.stream,
                max_in_flight=cap,
                max_connections=cap,
                max_request_bytes=MAX_REQUEST_BYTES,
            )
        )
        await self._engine.start()

    async def open(self) -> Any:
        from sessions import ImageConfig

        return await self._engine.create_session(
            self.model,
            image_config=ImageConfig(aspect_ratio=self.aspect_ratio, image_size=self.image_size),
        )

    async def turn(self, session: Any, prompt: str, out: Outcome) -> None:
        turn = await session.send(prompt, stream=self.stream)
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

    async def open(self) -> Any:
        return self._client.aio.chats.create(model=self.model, config=self._config)

    async def turn(self, session: Any, prompt: str, out: Outcome) -> None:
        if self.stream:
            async for chunk in await session.send_message_stream(prompt):
                _count_genai(chunk, out)
        else:
            _count_genai(await session.send_message(prompt), out)
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

    async def open(self) -> Any:
        return []

    async def turn(self, session: Any, prompt: str, out: Outcome) -> None:
        contents: list[Any] = session
        contents.append({"role": "user", "parts": [{"text": prompt}]})
        body = _encode({"contents": contents, "generationConfig": self._gen})
        async with self._http.post(self._url, data=body) as resp:
            if resp.status != 200:
                contents.pop()
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


# --- the SIMD floor: nanoedit's design (images held as bytes) at its least work ---------------


class _SimdBlob(msgspec.Struct):
    mimeType: str = ""
    data: msgspec.Raw = msgspec.Raw(b"")  # the JSON string, quotes included, never a str


class _SimdPart(msgspec.Struct):
    text: str | None = None
    thought: bool | None = None
    thoughtSignature: str | None = None
    inlineData: _SimdBlob | None = None


class _SimdContent(msgspec.Struct):
    parts: list[_SimdPart] = []


class _SimdCandidate(msgspec.Struct):
    content: _SimdContent | None = None
    finishReason: str | None = None


class _SimdResponse(msgspec.Struct):
    candidates: list[_SimdCandidate] = []
    error: _Error | None = None


_decode_simd = msgspec.json.Decoder(_SimdResponse).decode


class _Pieces:
    """A request body written piece by piece (no join of the history's base64)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.size = sum(len(p) for p in pieces)


class SimdFloorClient(PeerClient):
    """The physical limit of holding images as bytes: answers decoded from the raw JSON by
    pybase64 (SIMD) and hashed once (as nanoedit does, for its content-addressed store); each
    request's history re-encoded by pybase64 and written piece by piece. No events, budgets,
    store or retries: the least work for what nanoedit does per byte."""

    name = "floor-simd"

    async def start(self) -> None:
        import aiohttp
        import aiohttp.payload

        class Payload(aiohttp.payload.Payload):
            def __init__(self, value: _Pieces) -> None:
                super().__init__(value, content_type="application/json")
                self._size = value.size

            def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
                return b"".join(self._value.pieces).decode(encoding, errors)

            async def write(self, writer: Any) -> None:
                for piece in self._value.pieces:
                    await writer.write(piece)

        self._payload = Payload
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(100, self.sessions)),
            headers={"x-goog-api-key": "k"},
        )
        gen = {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": self.aspect_ratio, "imageSize": self.image_size},
        }
        self._tail = b'],"generationConfig":' + _encode(gen) + b"}"
        base = f"{self.base_url}/v1beta/models/{self.model}"
        self._url = (
            f"{base}:streamGenerateContent?alt=sse" if self.stream else f"{base}:generateContent"
        )

    async def aclose(self) -> None:
        await self._http.close()

    async def open(self) -> Any:
        # Each Content as a list of JSON pieces (bytes) and images (mime, bytes, signature).
        return []

    async def turn(self, session: Any, prompt: str, out: Outcome) -> None:
        history: list[Any] = session
        history.append([_encode({"role": "user", "parts": [{"text": prompt}]})])
        body = self._payload(_Pieces(self._pieces(history)))
        async with self._http.post(self._url, data=body) as resp:
            if resp.status != 200:
                history.pop()
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
            if self.stream:
                parts = await self._read_stream(resp)
            else:
                parts = self._parts(_decode_simd(await resp.read()))
        history.append(self._model_content(parts, out))
        out.turns_ok += 1

    def _pieces(self, history: list[Any]) -> list[bytes]:
        from pybase64 import b64encode

        pieces = [b'{"contents":[']
        for i, content in enumerate(history):
            if i:
                pieces.append(b",")
            for item in content:
                if isinstance(item, bytes):
                    pieces.append(item)
                else:
                    mime, data, signature = item
                    pieces.append(b'{"inlineData":{"mimeType":"' + mime.encode() + b'","data":"')
                    pieces.append(b64encode(data))
                    pieces.append(b'"}' + signature + b"}")
        pieces.append(self._tail)
        return pieces

    @staticmethod
    def _parts(response: _SimdResponse) -> list[_SimdPart]:
        if response.error is not None:
            raise RuntimeError(f"error {response.error.code}: {response.error.message[:200]}")
        out: list[_SimdPart] = []
        for cand in response.candidates[:1]:
            if cand.content is not None:
                out.extend(cand.content.parts)
        return out

    @staticmethod
    def _model_content(parts: list[_SimdPart], out: Outcome) -> list[Any]:
        import hashlib

        from pybase64 import b64decode

        items: list[Any] = [b'{"role":"model","parts":[']
        texts: dict[bool, list[str]] = {}
        signatures: dict[bool, str] = {}
        first = True
        for part in parts:
            if part.inlineData is None:
                thought = bool(part.thought)
                texts.setdefault(thought, []).append(part.text or "")
                if part.thoughtSignature:
                    signatures[thought] = part.thoughtSignature
                continue
            data = b64decode(bytes(part.inlineData.data)[1:-1], validate=True)
            hashlib.sha256(data).digest()
            if not part.thought:
                out.images += 1
                out.image_bytes += len(data)
            sig = (
                b',"thoughtSignature":' + _encode(part.thoughtSignature)
                if part.thoughtSignature
                else b""
            ) + (b',"thought":true' if part.thought else b"")
            if not first:
                items.append(b",")
            items.append((part.inlineData.mimeType, data, sig))
            first = False
        for thought, pieces in texts.items():
            text: dict[str, Any] = {"text": "".join(pieces)}
            if thought:
                text["thought"] = True
            if thought in signatures:
                text["thoughtSignature"] = signatures[thought]
            items.append((b"" if first else b",") + _encode(text))
            first = False
        items.append(b"]}")
        return items

    @staticmethod
    async def _read_stream(resp: Any) -> list[_SimdPart]:
        # Lines found in each new chunk only; a line spanning chunks is joined once.
        parts: list[_SimdPart] = []
        finished = False
        pending: list[bytes] = []

        def handle(line: bytes) -> None:
            nonlocal finished
            if not line.startswith(b"data:"):
                return
            response = _decode_simd(line[5:])
            parts.extend(SimdFloorClient._parts(response))
            if any(c.finishReason for c in response.candidates[:1]):
                finished = True

        async for data in resp.content.iter_any():
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                piece = data[start:nl]
                if pending:
                    pending.append(piece)
                    piece = b"".join(pending)
                    pending = []
                handle(piece.rstrip(b"\r"))
                start = nl + 1
            if start < len(data):
                pending.append(data[start:])
        if pending:
            handle(b"".join(pending))
        if not finished:
            raise RuntimeError("stream ended without a finish reason")
        return parts


# --- OpenAI-compatible chat: nanoedit's openai-chat provider and the openai SDK -----------------


class NanoeditChatClient(NanoeditClient):
    """nanoedit's Engine speaking OpenAI-compatible chat completions to the emulator."""

    name = "nanoedit-chat"
    api: ApiName | Literal[""] = "openai-chat"
    path = "/v1"


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

    async def open(self) -> Any:
        return []

    async def turn(self, session: Any, prompt: str, out: Outcome) -> None:
        import base64

        messages: list[dict[str, Any]] = session
        extra = {"modalities": ["text", "image"], "image_config": {"image_size": self.image_size}}
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
    "floor-simd": SimdFloorClient,
    "nanoedit-chat": NanoeditChatClient,
    "openai-sdk": OpenAIChatClient,
}
