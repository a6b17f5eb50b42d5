"""History images by reference: each image is uploaded once with the Files API and later
requests carry `fileData {mimeType, fileUri}` in its place, so a request stays the same size
however long the session grows.

The session's history itself never changes: it keeps every image inline (the store, exports and
other providers need the bytes). What changes is the request form of a Content (`view`): image
parts whose upload is live become `fileData` parts, thought flag and `thoughtSignature` kept byte
for byte. Uploads are keyed by sha256 and the provider's scope (endpoint + key fingerprint),
deduplicated across sessions, and recorded in the store so another process reuses them.

When uploads start: a committed turn's images right away, in the background (`schedule`), so
the next turn rarely waits; before a request, any history image still without a live upload
(`prepare`: a resumed session, an upload that failed or is about to expire). An upload that
fails leaves its image inline for that request: slower, never wrong.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

import msgspec

from engine._exceptions import ApiError, NanoeditError, TransportError
from engine._logs import Logger
from engine._memo import Memo
from engine.providers import UploadedFile
from sessions import BlobStore, Content, FileData, FileRef, Part, SessionStore

__all__ = ["EXPIRY_MARGIN_S", "FileUploader", "HistoryFiles", "missing_file_names"]

log = Logger("nanoedit.files")

EXPIRY_MARGIN_S = 3600.0
"""An upload with less than this left is uploaded again before it is referred to."""

_MISSING_FILE = re.compile(r"\bFile ([A-Za-z0-9_\-./]+) or it may not exist", re.IGNORECASE)


class FileUploader(Protocol):
    """What `HistoryFiles` needs of a provider (engine.providers._gemini has it)."""

    scope: str

    async def upload_file(
        self, data: bytes, mime_type: str, display_name: str = ""
    ) -> UploadedFile: ...

    async def file_exists(self, name: str) -> bool: ...


def missing_file_names(error: ApiError) -> list[str] | None:
    """The files an error says are gone ([] if it does not name them); None if the error is not
    about a missing file at all (403 PERMISSION_DENIED / 404 mentioning a file)."""
    if error.status not in (403, 404):
        return None
    text = str(error)
    if "file" not in text.lower():
        return None
    return [m if m.startswith("files/") else f"files/{m}" for m in _MISSING_FILE.findall(text)]


class HistoryFiles:
    """The uploads of one engine at one provider scope, and the request forms that use them."""

    def __init__(
        self,
        provider: FileUploader,
        store: SessionStore,
        blobs: BlobStore,
        *,
        margin: float = EXPIRY_MARGIN_S,
    ) -> None:
        self._provider = provider
        self._store = store
        self._blobs = blobs
        self._scope = provider.scope
        self._margin = margin
        self._refs: dict[str, FileRef] = {}  # sha256 -> its upload (live when recorded)
        self._uploads: dict[str, asyncio.Task[FileRef | None]] = {}
        self._views: Memo[Content, tuple[tuple[str | None, ...], Content]] = Memo()
        self.uploaded = 0  # files uploaded by this engine
        self.uploaded_bytes = 0

    # --- request forms ---------------------------------------------------------------------

    def _live(self, digest: str | None) -> FileRef | None:
        if digest is None:
            return None
        ref = self._refs.get(digest)
        return ref if ref is not None and ref.live(self._margin) else None

    def _digest(self, part: Part) -> str | None:
        blob = part.inline_data
        if blob is None or not blob.mime_type.startswith("image/"):
            return None
        return self._blobs.digest(blob.data)

    def view(self, content: Content) -> Content:
        """`content` as a request carries it: images with a live upload as `fileData`."""
        if not any(p.inline_data is not None for p in content.parts):
            return content
        uris = tuple(
            ref.uri if (ref := self._live(self._digest(p))) is not None else None
            for p in content.parts
        )
        kept = self._views.get(content, lambda c: ((None,) * len(c.parts), c))
        if kept[0] == uris:
            return kept[1]
        parts = []
        for part, uri in zip(content.parts, uris, strict=True):
            if uri is not None and part.inline_data is not None:
                data = FileData(file_uri=uri, mime_type=part.inline_data.mime_type)
                part = msgspec.structs.replace(part, inline_data=None, file_data=data)
            parts.append(part)
        form = Content(role=content.role, parts=parts)
        self._views.put(content, (uris, form))
        return form

    def referenced(self, contents: Iterable[Content]) -> list[str]:
        """The digests of the images these request forms' originals would send as files."""
        out = []
        for content in contents:
            for part in content.parts:
                digest = self._digest(part)
                if self._live(digest) is not None:
                    assert digest is not None
                    out.append(digest)
        return out

    # --- uploads ---------------------------------------------------------------------------

    def _images(self, contents: Iterable[Content]) -> dict[str, Part]:
        found: dict[str, Part] = {}
        for content in contents:
            for part in content.parts:
                digest = self._digest(part)
                if digest is not None and digest not in found:
                    found[digest] = part
        return found

    def schedule(self, contents: Iterable[Content]) -> None:
        """Start uploading these Contents' images that have no live upload (in background)."""
        for digest, part in self._images(contents).items():
            if self._live(digest) is None:
                self._start(digest, part)

    async def prepare(self, contents: Sequence[Content]) -> None:
        """Make sure every image of `contents` has a live upload, if one can be had: reuse what
        the store recorded (another process's uploads), wait for uploads in flight, upload the
        rest. Failures are logged and leave those images inline."""
        wanted = {d: p for d, p in self._images(contents).items() if self._live(d) is None}
        if not wanted:
            return
        unknown = [d for d in wanted if d not in self._uploads]
        if unknown:
            recorded = await self._store.file_refs(self._scope, unknown)
            for digest, ref in recorded.items():
                if ref.live(self._margin):
                    self._refs[digest] = ref
        waits = [self._start(d, p) for d, p in wanted.items() if self._live(d) is None]
        if waits:
            await asyncio.gather(*(asyncio.shield(t) for t in waits), return_exceptions=True)

    def _start(self, digest: str, part: Part) -> asyncio.Task[FileRef | None]:
        task = self._uploads.get(digest)
        if task is None:
            assert part.inline_data is not None
            task = asyncio.create_task(
                self._upload(digest, part.inline_data.data, part.inline_data.mime_type)
            )
            self._uploads[digest] = task
            task.add_done_callback(functools.partial(self._done, digest))
        return task

    def _done(self, digest: str, _task: object) -> None:
        self._uploads.pop(digest, None)

    async def _upload(self, digest: str, data: bytes, mime_type: str) -> FileRef | None:
        try:
            uploaded = await self._provider.upload_file(data, mime_type, f"nanoedit-{digest[:16]}")
        except (ApiError, TransportError, NanoeditError) as exc:
            log.warning("files.upload_failed", sha256=digest[:16], error=str(exc))
            return None
        ref = FileRef(
            scope=self._scope,
            sha256=digest,
            name=uploaded.name,
            uri=uploaded.uri,
            mime_type=uploaded.mime_type,
            size=uploaded.size,
            expires_at=uploaded.expires_at,
        )
        self.uploaded += 1
        self.uploaded_bytes += len(data)
        try:
            await self._store.save_file_ref(ref)
        except NanoeditError as exc:  # the upload still serves this process
            log.warning("files.record_failed", sha256=digest[:16], error=str(exc))
        # Known only once recorded: whoever waited for this upload finds it in the store too.
        self._refs[digest] = ref
        log.debug("files.uploaded", sha256=digest[:16], name=ref.name, size=ref.size)
        return ref

    async def forget(self, digests: Iterable[str], names: Sequence[str] = ()) -> list[str]:
        """Drop the uploads among `digests` that are gone: those named in `names` (what the
        error said) and those the server no longer holds (it names only the first it missed).
        Returns the digests dropped."""
        refs = {d: r for d in set(digests) if (r := self._refs.get(d)) is not None}
        unnamed = [d for d, r in refs.items() if r.name not in names]
        try:
            held = await asyncio.gather(
                *(self._provider.file_exists(refs[d].name) for d in unnamed)
            )
        except NanoeditError:
            held = [False] * len(unnamed)  # cannot tell: upload them all again
        kept = {d for d, ok in zip(unnamed, held, strict=True) if ok}
        gone = [d for d in refs if d not in kept]
        for digest in gone:
            self._refs.pop(digest, None)
        await self._store.drop_file_refs(self._scope, gone)
        return gone

    async def aclose(self) -> None:
        """Stop uploads in flight (a later process uploads what it needs)."""
        tasks = list(self._uploads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
