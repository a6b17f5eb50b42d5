"""What an emulator server holds for the Files, Batch and Interactions APIs: files (with their
expiry), uploads in progress, batch jobs and stored interactions. Pure state, no HTTP (the
handlers are in `_files`, `_batches`, `_interactions`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.emulator._generate import ApiFailure, invalid
from sessions import Blob, Content

__all__ = [
    "BatchJob",
    "FileVault",
    "InteractionVault",
    "StoredFile",
    "StoredInteraction",
    "missing_file",
    "resolve_file_parts",
    "rfc3339",
]


def rfc3339(t: float) -> str:
    """Google's timestamp format, e.g. 2026-12-01T10:00:00.123456Z."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def missing_file(file_id: str) -> ApiFailure:
    """Google's answer to a reference to an expired, deleted or unknown file."""
    return ApiFailure(
        403,
        f"You do not have permission to access the File {file_id} or it may not exist.",
        google_status="PERMISSION_DENIED",
    )


@dataclass(slots=True)
class StoredFile:
    """One uploaded file."""

    id: str
    mime_type: str
    data: bytes
    display_name: str
    created: float
    expires: float
    uri: str

    def resource(self) -> dict[str, Any]:
        """The File resource as Google describes it."""
        out: dict[str, Any] = {
            "name": f"files/{self.id}",
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.expires),
            "sha256Hash": _b64_sha(self.data),
            "uri": self.uri,
            "state": "ACTIVE",
            "source": "UPLOADED",
        }
        if self.display_name:
            out["displayName"] = self.display_name
        return out


def _b64_sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


@dataclass(slots=True)
class Upload:
    mime_type: str
    declared: int | None
    display_name: str
    received: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class FileVault:
    """Every file of one emulator server, and the uploads in progress."""

    ttl: float
    files: dict[str, StoredFile] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    uploaded: int = 0  # files completed, for stats

    def add(self, mime_type: str, data: bytes, display_name: str, origin: str) -> StoredFile:
        """Store a finished upload."""
        file_id = secrets.token_hex(6)
        now = time.time()
        stored = StoredFile(
            id=file_id,
            mime_type=mime_type,
            data=data,
            display_name=display_name,
            created=now,
            expires=now + self.ttl,
            uri=f"{origin}/v1beta/files/{file_id}",
        )
        self.files[file_id] = stored
        self.uploaded += 1
        return stored

    def get(self, file_id: str) -> StoredFile:
        """A live file, or Google's 403."""
        stored = self.files.get(file_id)
        if stored is None or stored.expires <= time.time():
            self.files.pop(file_id, None)
            raise missing_file(file_id)
        return stored

    def by_uri(self, uri: str) -> StoredFile:
        """The live file a `fileUri` names (full URI or "files/ID"), or Google's 403."""
        _, sep, file_id = uri.rpartition("files/")
        if not sep or not file_id:
            raise invalid(f"* GenerateContentRequest: unsupported file uri: {uri}")
        return self.get(file_id.split("?")[0].split(":")[0])

    def expire_all(self) -> None:
        """Make every stored file expire now (tests and `POST /emulator/expire-files`)."""
        for stored in self.files.values():
            stored.expires = 0.0


_MAX_INTERACTIONS = 100_000  # interactions kept at most (oldest forgotten first)


@dataclass(slots=True)
class StoredInteraction:
    """One created interaction: whose, when, the conversation it ends, what it said."""

    id: str
    key: str  # a fingerprint of the key that created it
    created_at: float
    model: str
    previous: str | None
    contents: list[Content]  # the whole conversation, its own answer last
    document: dict[str, Any]  # the Interaction as a GET returns it (output steps)
    events: list[tuple[str, bytes]] = field(default_factory=list)  # (event_id, SSE frame)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class InteractionVault:
    """The stored interactions of one emulator, bounded in number, expiring after `ttl`."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.items: OrderedDict[str, StoredInteraction] = OrderedDict()
        self.created = 0  # interactions generated (billed): a resume creates none

    def get(self, interaction_id: str, key: str) -> StoredInteraction:
        """The key's live interaction, else the 404 Google gives for a missing one."""
        found = self.items.get(interaction_id)
        if found is None or found.key != key or time.time() - found.created_at > self.ttl:
            message = f"Interaction '{interaction_id}' was not found."
            raise ApiFailure(404, message, code="not_found")
        return found

    def add(self, item: StoredInteraction) -> None:
        self.items[item.id] = item
        self.created += 1
        while len(self.items) > _MAX_INTERACTIONS:
            self.items.popitem(last=False)

    def expire(self) -> int:
        """Age every interaction past its retention (tests of the 404 fallback); how many."""
        for item in self.items.values():
            item.created_at -= self.ttl + 1
        return len(self.items)


def resolve_file_parts(contents: list[Content], vault: FileVault) -> list[Content]:
    """`contents` with every `fileData` part replaced by the file's bytes (signature kept)."""
    out = []
    for content in contents:
        if not any(p.file_data is not None for p in content.parts):
            out.append(content)
            continue
        parts = []
        for part in content.parts:
            ref = part.file_data
            if ref is not None:
                stored = vault.by_uri(ref.file_uri)
                blob = Blob(mime_type=ref.mime_type or stored.mime_type, data=stored.data)
                part = msgspec.structs.replace(part, file_data=None, inline_data=blob)
            parts.append(part)
        out.append(Content(role=content.role, parts=parts))
    return out


@dataclass(slots=True)
class BatchJob:
    """One batch job: its requests, its state and, when done, its output."""

    id: str
    model: str
    display_name: str
    items: list[tuple[str, bytes]]  # (key, GenerateContentRequest JSON), in input order
    from_file: bool
    created: float
    state: str = "BATCH_STATE_PENDING"
    updated: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)  # {"key", "response"|"error"}
    output_file: str | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        """True once the job reached a final state."""
        return self.state in FINAL_STATES


FINAL_STATES = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)
