"""What both API families share: reading the turn out of a history, pricing it, rendering.

Rendering is CPU-bound, so it runs in worker threads behind a bounded LRU keyed by everything
the pixels depend on; concurrent identical requests wait for one render instead of starting
their own (a load test sending one request from 1,000 sessions renders once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import io
import math
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec

from engine.emulator.render import MAX_SIDE, RenderResult, image_size, render_edit, render_scene
from sessions import Blob, Content, ModelSpec, b64encode, estimate_text_tokens

__all__ = [
    "ApiFailure",
    "HeldBytes",
    "InputImage",
    "RenderJob",
    "RenderPool",
    "TurnInput",
    "answer_text",
    "closest_ratio",
    "estimated_image_bytes",
    "read_turn",
    "seed_for",
    "thought_text",
]

T = TypeVar("T")

_TROUBLESHOOTING = "https://developers.generativeai.google/guide/troubleshooting"


class ApiFailure(Exception):
    """An error answer; each API family renders it in its own shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        google_status: str = "",
        openai_type: str = "invalid_request_error",
        openai_code: str | None = None,
        retry_after: float | None = None,
        code: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code  # Interactions' snake_case error code ("" : by status)
        self.status = status
        self.message = message
        self.google_status = google_status or _GOOGLE_STATUS.get(status, "UNKNOWN")
        self.openai_type = openai_type
        self.openai_code = openai_code
        self.retry_after = retry_after


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def invalid(message: str, *, code: str | None = None) -> ApiFailure:
    """A 400 INVALID_ARGUMENT failure."""
    return ApiFailure(400, message, openai_code=code)


# --- the turn inside a history ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputImage:
    """One inline image of the request, measured."""

    blob: Blob
    sha256: bytes
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class TurnInput:
    """What a request asks for, independent of the API family that carried it."""

    instruction: str  # the latest user text
    base: InputImage | None  # the latest non-thought image of any role; None: a new scene
    images: tuple[InputImage, ...]  # every non-thought inline image, in order
    latest_user_images: int  # images in the last user Content (what max_input_images limits)
    text_tokens: int
    image_tokens: int
    digest: bytes  # sha256 of the history's meaning (texts, image hashes, roles), no signatures
    _shas: Mapping[int, bytes]

    @property
    def prompt_tokens(self) -> int:
        """Input tokens by the catalog's rules."""
        return self.text_tokens + self.image_tokens

    def sha_of(self, blob: Blob) -> bytes:
        """The sha256 of an image of this request (any part, thought images included)."""
        sha = self._shas.get(id(blob))
        return sha if sha is not None else hashlib.sha256(blob.data).digest()


def _measure(blob: Blob) -> tuple[int, int]:
    try:
        return image_size(blob.data)
    except ValueError:
        raise invalid(
            f"Unable to process input image. Please retry or report in {_TROUBLESHOOTING}"
        ) from None


def read_turn(
    spec: ModelSpec, contents: Sequence[Content], system: Content | None = None
) -> TurnInput:
    """Measure a history: its latest instruction and image, tokens, and a digest of it."""
    digest = hashlib.sha256(spec.id.encode() + b"\0")
    text_tokens = 0
    image_tokens = 0
    images: list[InputImage] = []
    shas: dict[int, bytes] = {}
    instruction = ""
    latest_user_images = 0
    for content in [system] if system is not None else []:
        for part in content.parts:
            if part.text:
                text_tokens += estimate_text_tokens(part.text)
                digest.update(b"S" + part.text.encode() + b"\0")
    for content in contents:
        role = content.role or "user"
        digest.update(b"C" + role.encode() + b"\0")
        user_text: list[str] = []
        user_images = 0
        for part in content.parts:
            blob = part.inline_data
            if blob is not None:
                sha = hashlib.sha256(blob.data).digest()
                shas[id(blob)] = sha
                digest.update(b"I" + (b"t" if part.thought else b"") + sha)
                if part.thought or not blob.mime_type.startswith("image/"):
                    continue
                width, height = _measure(blob)
                images.append(InputImage(blob=blob, sha256=sha, width=width, height=height))
                image_tokens += spec.image_input_tokens(width, height)
                user_images += 1
            elif part.text is not None:
                digest.update(b"T" + (b"t" if part.thought else b"") + part.text.encode() + b"\0")
                if part.thought:
                    continue
                text_tokens += estimate_text_tokens(part.text)
                user_text.append(part.text)
        if role == "user":
            instruction = "".join(user_text).strip()
            latest_user_images = user_images
    return TurnInput(
        instruction=instruction,
        base=images[-1] if images else None,
        images=tuple(images),
        latest_user_images=latest_user_images,
        text_tokens=text_tokens,
        image_tokens=image_tokens,
        digest=digest.digest(),
        _shas=shas,
    )


@functools.lru_cache(maxsize=1024)
def closest_ratio(ratios: tuple[str, ...], width: int, height: int) -> str:
    """The ratio of `ratios` nearest to width:height (compared on a log scale). Cached: every
    edit asks it of its base image's size (12 us of splits and logs over 14 ratios)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ratios, key=distance)


def seed_for(server_seed: int, *material: bytes) -> int:
    """A 63-bit render seed from the server seed and request material."""
    h = hashlib.sha256(server_seed.to_bytes(16, "big", signed=True))
    for item in material:
        h.update(len(item).to_bytes(8, "big") + item)
    return int.from_bytes(h.digest()[:8], "big") >> 1


def _canonical(value: Any) -> Any:
    """Config with snake_case keys folded to camelCase, so both spellings hash alike."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            head, *rest = str(key).split("_")
            out[head + "".join(p[:1].upper() + p[1:] for p in rest)] = _canonical(item)
        return out
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


_sorted_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON of a config mapping (sorted, camelCase keys)."""
    return _sorted_encoder.encode(_canonical(value))


def thought_text(turn: TurnInput) -> str:
    """The one short thought the emulator 'has' before answering."""
    what = turn.instruction[:120] or "the request"
    if turn.base is not None:
        return f"**Planning the edit**\n\nI'll apply to the latest image: {what}"
    return f"**Composing the scene**\n\nI'll draw: {what}"


def answer_text(result: RenderResult, *, edited: bool) -> str:
    """The visible answer: what the renderer applied."""
    done = "; ".join(result.applied)
    if edited:
        return f"Here is the edited image ({done})." if done else "Here is the edited image."
    return f"Here is the image ({done})." if done else "Here is the image."


# --- rendering ---------------------------------------------------------------------------


def estimated_image_bytes(width: int, height: int, *, grain: bool) -> int:
    """About what a rendered image holds in memory, its bytes and their base64 (a grain PNG
    takes about 1.3 bytes per pixel, a flat one a sixtieth of that), rounded up."""
    per_pixel = 1.5 if grain else 0.025
    return math.ceil(width * height * per_pixel * 7 / 3) + 8192


@dataclass(frozen=True, slots=True)
class RenderJob:
    """Everything the pixels depend on."""

    model: str
    instruction: str
    base: bytes | None  # None: a new scene from `instruction`
    base_sha256: bytes
    width: int
    height: int
    seed: int
    grain: bool
    mime_type: str = "image/png"

    def estimated_bytes(self) -> int:
        """About what the rendered image holds in memory (see `estimated_image_bytes`)."""
        return estimated_image_bytes(self.width, self.height, grain=self.grain)

    def key(self) -> bytes:
        """Cache key: a hash of every field except the base bytes (their hash stands in)."""
        h = hashlib.sha256()
        for item in (
            self.model,
            self.instruction,
            self.base_sha256.hex() if self.base is not None else "-",
            f"{self.width}x{self.height}",
            str(self.seed),
            str(self.grain),
            self.mime_type,
        ):
            h.update(item.encode() + b"\0")
        return h.digest()

    def run(self) -> RenderResult:
        """Render synchronously (in a worker thread), with the image's sha256 and base64.

        A cached image is sent in many answers: hashing it for its signature and encoding its
        base64 (msgspec's scalar encoder, 1.2 ms per MB) once here, not per answer, keeps the
        emulator's per-request work from growing with the image.
        """
        limit = MAX_SIDE
        if max(self.width, self.height) <= limit:
            result = self._render(self.width, self.height)
        else:
            # The catalogue goes up to 12288 px (4K at 1:8 / 8:1) and the renderer may not:
            # render smaller, then scale to the exact size promised by the catalogue.
            scale = limit / max(self.width, self.height)
            small = self._render(max(1, int(self.width * scale)), max(1, int(self.height * scale)))
            result = _upscale(small, self.width, self.height)
        return dataclasses.replace(
            result, sha256=hashlib.sha256(result.data).digest(), b64=b64encode(result.data)
        )

    def _render(self, width: int, height: int) -> RenderResult:
        if self.base is None:
            return render_scene(
                self.instruction,
                width,
                height,
                seed=self.seed,
                grain=self.grain,
                output_mime=self.mime_type,
            )
        try:
            return render_edit(
                self.base,
                self.instruction,
                width,
                height,
                seed=self.seed,
                grain=self.grain,
                output_mime=self.mime_type,
            )
        except ValueError:
            raise invalid(
                f"Unable to process input image. Please retry or report in {_TROUBLESHOOTING}"
            ) from None


def _upscale(result: RenderResult, width: int, height: int) -> RenderResult:
    from PIL import Image

    with Image.open(io.BytesIO(result.data)) as source:
        big = source.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    fmt = {"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(result.mime_type, "PNG")
    big.save(buffer, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    return RenderResult(
        data=buffer.getvalue(),
        mime_type=result.mime_type,
        width=width,
        height=height,
        applied=result.applied,
    )


def previews(data: bytes, count: int) -> list[bytes]:
    """`count` progressively sharper low-resolution PNGs of an image (for partial_images)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as source:
        source.load()
        image = source.convert("RGB")
    out = []
    for index in range(count):
        factor = 2 ** (count - index + 1)  # 8, 4 for two previews; 16, 8, 4 for three
        small = image.resize(
            (max(1, image.width // factor), max(1, image.height // factor)),
            Image.Resampling.BILINEAR,
        )
        buffer = io.BytesIO()
        small.resize(image.size, Image.Resampling.NEAREST).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class HeldBytes:
    """The memory model calls in progress hold, kept under a limit.

    A call holds its request (the body, the history images decoded from it) and then its
    rendered answer until its last byte is sent, the emulated latency included. A call that
    would go over the limit waits for room before it reads its body, first come first served,
    as a busy server answers later; one larger than the whole limit goes alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.waits = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def holding(self, size: int) -> AsyncIterator[Callable[[int], None]]:
        """Hold `size` bytes for the block, waiting for room first. The block may hold more
        once it knows it needs more (`grow(n)`, no wait: it holds its request already)."""
        await self._acquire(size)
        total = size

        def grow(more: int) -> None:
            nonlocal total
            if more > 0:
                total += more
                self._take(more)

        try:
            yield grow
        finally:
            self._release(total)

    def _fits(self, size: int) -> bool:
        return self.held + size <= self.limit or self.held == 0

    def _take(self, size: int) -> None:
        self.held += size
        self.peak = max(self.peak, self.held)

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self._take(size)
            return
        self.waits += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(size)  # room was given just before the cancellation
            else:
                waiter.cancel()  # skipped when the queue is served
            raise

    def _release(self, size: int) -> None:
        self.held -= size
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if not self._fits(size):
                break
            self._waiters.popleft()
            self._take(size)
            waiter.set_result(None)


class RenderPool:
    """Worker threads for CPU-bound work, the render cache, and the memory calls hold."""

    def __init__(
        self, *, threads: int, max_entries: int, max_bytes: int, max_held_bytes: int = 1 << 62
    ) -> None:
        self.held = HeldBytes(max_held_bytes)
        self._limiter = anyio.CapacityLimiter(threads or max(2, os.cpu_count() or 2))
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._cache: OrderedDict[bytes, RenderResult] = OrderedDict()
        self._cache_bytes = 0
        self._pending: dict[bytes, asyncio.Task[RenderResult]] = {}
        self.renders = 0
        self.hits = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a worker thread."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def render(self, job: RenderJob) -> RenderResult:
        """The image for `job`, from the cache, from a render in flight, or rendered now."""
        key = job.key()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._render(key, job))
            # Retrieve the exception even when every waiter was cancelled: no "never retrieved".
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._pending[key] = task
        else:
            self.hits += 1
        # shield: a client that goes away must not cancel a render others are waiting for.
        return await asyncio.shield(task)

    async def _render(self, key: bytes, job: RenderJob) -> RenderResult:
        try:
            result = await self.run(job.run)
        finally:
            self._pending.pop(key, None)
        self.renders += 1
        self._store(key, result)
        return result

    def _store(self, key: bytes, result: RenderResult) -> None:
        size = len(result.data) + len(result.b64)
        if self._max_entries == 0 or size > self._max_bytes:
            return
        self._cache[key] = result
        self._cache_bytes += size
        while len(self._cache) > self._max_entries or self._cache_bytes > self._max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted.data) + len(evicted.b64)

    def clear(self) -> None:
        """Drop cached images and zero the counters."""
        self._cache.clear()
        self._cache_bytes = 0
        self.renders = 0
        self.hits = 0
        self.held.peak = self.held.held
        self.held.waits = 0

    async def aclose(self) -> None:
        """Wait for renders in flight (threads cannot be interrupted)."""
        pending = list(self._pending.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
