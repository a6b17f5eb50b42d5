"""The Batch API: many independent single-turn requests at half price, answered within a day.

`submit` checks every item locally (prompt, images, image config) before anything is sent,
encodes each as a generateContent request, and submits them inline (under `INLINE_LIMIT` bytes)
or as a JSONL file uploaded with the Files API. The job is recorded in the store, so `status`,
`wait`, `results` and `cancel` work from any process that opens the same store. Results are
priced at the catalog's batch share and settled in the engine's ledger once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from engine._exceptions import ConfigError, ContentBlocked, NanoeditError
from engine._logs import Logger
from engine.policy import CostBreakdown, settle_cost
from engine.providers import BatchOperation, FilesAndBatches, GeminiProvider, GenerateRequest
from engine.runtime._turns import Image, ImageInput, build_user_content
from sessions import BatchRecord, ImageConfig, ModelSpec, SessionSettings, Usage

if TYPE_CHECKING:
    from engine._config import EngineConfig
    from engine.policy import CostLedger
    from engine.providers import Provider
    from sessions import Catalog, SessionStore


class BatchHost(Protocol):
    """What batch jobs use of their engine (the `Engine` is one)."""

    @property
    def provider(self) -> Provider: ...
    @property
    def config(self) -> EngineConfig: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def ledger(self) -> CostLedger: ...
    @property
    def store(self) -> SessionStore: ...
    def check_open(self) -> None: ...
    def usable(self, model: str) -> ModelSpec: ...


__all__ = [
    "FINAL_STATES",
    "INLINE_LIMIT",
    "BatchItem",
    "BatchJobFailed",
    "BatchResult",
    "Batches",
    "read_items",
]

log = Logger("nanoedit.batch")

INLINE_LIMIT = 20 * 1024 * 1024
"""Requests up to this many bytes in all go inline; larger jobs go as a JSONL file."""
FINAL_STATES = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class BatchJobFailed(NanoeditError):
    """A batch job ended without results: failed, cancelled or expired (`state` says which)."""

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request of a batch: a key (unique in the job), a prompt, input images, image config."""

    key: str
    prompt: str = ""
    images: Sequence[ImageInput] = ()
    image_config: ImageConfig | None = None

    @classmethod
    def from_json(cls, doc: Any, *, base: Path, line: int) -> BatchItem:
        """An item from one JSONL line's object; image paths are relative to `base`."""
        where = f"line {line}"
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        unknown = set(doc) - {"key", "prompt", "images", "image_config"}
        if unknown:
            raise ConfigError(f"{where}: unknown fields {sorted(unknown)}")
        key, prompt = doc.get("key"), doc.get("prompt", "")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: 'key' must be a non-empty string")
        if not isinstance(prompt, str):
            raise ConfigError(f"{where}: 'prompt' must be a string")
        images = doc.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ConfigError(f"{where}: 'images' must be a list of paths")
        config = doc.get("image_config")
        image_config = None
        if config is not None:
            if not isinstance(config, dict) or set(config) - {"aspect_ratio", "image_size"}:
                raise ConfigError(f"{where}: 'image_config' takes aspect_ratio and image_size")
            image_config = ImageConfig(
                aspect_ratio=config.get("aspect_ratio"), image_size=config.get("image_size")
            )
        return cls(key, prompt, [base / i for i in images], image_config)


def read_items(path: Path) -> list[BatchItem]:
    """The items of a JSONL file (one object per line; blank lines skipped)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = _any.decode(line)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: line {n} is not JSON: {exc}") from None
        items.append(BatchItem.from_json(doc, base=path.parent, line=n))
    return items


@dataclass(slots=True)
class BatchResult:
    """One item's outcome: its images and text, or the error that item got."""

    key: str
    status: str  # "succeeded" or "failed"
    images: list[Image] = field(default_factory=list)
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    finish_reason: str | None = None
    error: str | None = None


Progress = Callable[[BatchOperation], Awaitable[None] | None]


class Batches:
    """An engine's batch jobs (`engine.batches`)."""

    def __init__(self, engine: BatchHost) -> None:
        self._engine = engine
        self._settled: set[str] = set()  # jobs whose cost this engine put in its ledger

    @property
    def _provider(self) -> FilesAndBatches:
        provider = self._engine.provider
        if not isinstance(provider, FilesAndBatches):
            raise ConfigError(f"provider {provider.name!r} has no Batch API (Gemini-native only)")
        return provider

    def _encode(self, spec: ModelSpec, item: BatchItem) -> bytes:
        content = build_user_content(item.prompt, item.images)
        config = item.image_config
        if config is not None:
            spec.validate(config)
        settings = SessionSettings(
            image_config=msgspec.to_builtins(config) if config is not None else None,
            response_modalities=["TEXT", "IMAGE"],
        )
        provider = self._engine.provider
        return provider.encode(
            GenerateRequest(spec.id, [content], settings, signatures=spec.thinking)
        )

    async def submit(
        self,
        items: Iterable[BatchItem],
        *,
        model: str | None = None,
        image_config: ImageConfig | None = None,
        display_name: str = "",
        inline_limit: int = INLINE_LIMIT,
    ) -> BatchRecord:
        """Check and submit a job; returns its record (also saved in the store)."""
        engine = self._engine
        engine.check_open()
        provider = self._provider
        spec = engine.usable(model or engine.config.model)
        items = [
            BatchItem(i.key, i.prompt, i.images, i.image_config or image_config) for i in items
        ]
        if not items:
            raise ConfigError("a batch needs at least one item")
        keys = [i.key for i in items]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ConfigError(f"batch keys must be unique; repeated: {', '.join(dupes[:5])}")
        bodies = []
        for item in items:
            try:
                bodies.append(self._encode(spec, item))
            except ConfigError as exc:
                raise ConfigError(f"item {item.key!r}: {exc}") from None
        total = sum(len(b) for b in bodies)
        input_file = None
        if total <= inline_limit:
            op = await provider.create_batch(
                spec.id, list(zip(keys, bodies, strict=True)), display_name=display_name
            )
        else:
            lines = b"".join(
                b'{"key":' + _encoder.encode(k) + b',"request":' + b + b"}\n"
                for k, b in zip(keys, bodies, strict=True)
            )
            uploaded = await provider.upload_file(lines, "application/jsonl", display_name)
            input_file = uploaded.name
            op = await provider.create_batch(
                spec.id, file_name=input_file, display_name=display_name
            )
        record = BatchRecord(
            name=op.name,
            scope=provider.scope,
            model=spec.id,
            keys=keys,
            image_sizes=[(i.image_config or ImageConfig()).image_size or "" for i in items],
            display_name=display_name,
            input_file=input_file,
            state=op.state,
        )
        await engine.store.save_batch(record)
        log.info(
            "batch.submitted",
            batch=op.name,
            items=len(items),
            bytes=total,
            input="file" if input_file else "inline",
        )
        return record

    async def status(self, name: str) -> BatchOperation:
        """The job's operation now; its state is recorded in the store."""
        self._engine.check_open()
        op = await self._provider.get_batch(name)
        await self._record_state(name, op.state)
        return op

    async def _record_state(self, name: str, state: str) -> None:
        record = await self._record(name)  # None: submitted elsewhere, nothing to update
        if record is not None and record.state != state:
            record.state, record.updated_at = state, time.time()
            await self._engine.store.save_batch(record)

    async def wait(
        self,
        name: str,
        *,
        on_progress: Progress | None = None,
        first_poll: float = 1.0,
        max_poll: float = 60.0,
    ) -> BatchOperation:
        """Poll until the job ends, waiting `first_poll` seconds, then 1.5x longer each time
        up to `max_poll`; `on_progress(operation)` after every poll. Bound it with
        `asyncio.timeout` if needed: the job goes on at the provider either way."""
        delay = first_poll
        while True:
            op = await self.status(name)
            if on_progress is not None:
                maybe = on_progress(op)
                if maybe is not None:
                    await maybe
            if op.done or op.state in FINAL_STATES:
                return op
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, max_poll)

    async def cancel(self, name: str) -> BatchOperation:
        """Ask for the job to be cancelled; its operation afterwards."""
        self._engine.check_open()
        await self._provider.cancel_batch(name)
        return await self.status(name)

    async def results(self, name: str, op: BatchOperation | None = None) -> list[BatchResult]:
        """Every item's outcome, in input order; BatchJobFailed for a job that ended without
        results, NanoeditError for one still running."""
        engine = self._engine
        op = op or await self.status(name)
        if op.state != "BATCH_STATE_SUCCEEDED":
            what = op.state.removeprefix("BATCH_STATE_").lower()
            if op.state in FINAL_STATES:
                detail = f": {op.error}" if op.error else ""
                raise BatchJobFailed(f"batch {name} {what}{detail}", state=op.state)
            raise NanoeditError(f"batch {name} is still {what}; wait for it first")
        provider = self._provider
        assert isinstance(provider, GeminiProvider)
        record = await self._record(name)
        entries = op.inlined
        if entries is None and op.responses_file is not None:
            data = await provider.download_file(op.responses_file)
            entries = [_any.decode(line) for line in data.splitlines() if line.strip()]
        if entries is None:
            raise BatchJobFailed(f"batch {name} succeeded without results", state=op.state)
        sizes = dict(zip(record.keys, record.image_sizes, strict=False)) if record else {}
        spec = engine.catalog.resolve(record.model if record else engine.config.model)
        results = []
        for n, entry in enumerate(entries):
            key = _key_of(entry, record.keys if record else [], n)
            results.append(self._result(provider, spec, key, entry, sizes.get(key) or None))
        if record is not None and not record.cost_settled:
            # The money went out once, whichever process collects the results first.
            total = sum(r.cost_usd for r in results)
            reservation = engine.ledger.reserve(0.0, session_id=f"batch:{name}")
            engine.ledger.settle(reservation, CostBreakdown(image_usd=total, total_usd=total))
            record.cost_settled = True
            await engine.store.save_batch(record)
        return results

    async def _record(self, name: str) -> BatchRecord | None:
        """The job's record in this engine's store, or None."""
        try:
            return await self._engine.store.load_batch(name)
        except NanoeditError:
            return None

    def _result(
        self,
        provider: GeminiProvider,
        spec: ModelSpec,
        key: str,
        entry: Any,
        image_size: str | None,
    ) -> BatchResult:
        if not isinstance(entry, dict):
            return BatchResult(key, "failed", error="the result is not a JSON object")
        error = entry.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
            return BatchResult(key, "failed", error=f"{code or 'error'}: {message}")
        response = entry.get("response")
        if not isinstance(response, dict):
            return BatchResult(key, "failed", error="the result has no response")
        try:
            result = provider.read_answer(_encoder.encode(response))
        except ContentBlocked as exc:
            return BatchResult(key, "failed", error=f"blocked ({exc.reason}): {exc}")
        except NanoeditError as exc:
            return BatchResult(key, "failed", error=f"{type(exc).__name__}: {exc}")
        images = [Image.from_blob(b) for b in result.content.images()]
        cost = settle_cost(
            spec, provider.name, result.usage, image_size, len(images), batch=True
        ).total_usd
        return BatchResult(
            key,
            "succeeded",
            images=images,
            text=result.content.text(),
            usage=result.usage,
            cost_usd=cost,
            finish_reason=result.finish_reason,
        )


def _key_of(entry: Any, keys: Sequence[str], n: int) -> str:
    if isinstance(entry, dict):
        if isinstance(entry.get("key"), str):
            return str(entry["key"])
        meta = entry.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("key"), str):
            return str(meta["key"])
    return keys[n] if n < len(keys) else str(n + 1)
