"""What the store remembers about work held by the provider: uploaded files and batch jobs.

A `FileRef` says that one image (by sha256) was uploaded to one provider endpoint under one key
(`scope`: a fingerprint of both, never the key itself) and may be referred to by URI until it
expires. A `BatchRecord` is a submitted Batch API job, so another process can follow it.
"""

from __future__ import annotations

import time

import msgspec

__all__ = ["BatchRecord", "FileRef"]


class FileRef(msgspec.Struct, frozen=True, kw_only=True):
    """An image uploaded with the Files API: its name, URI and expiry (Unix seconds)."""

    scope: str
    sha256: str
    name: str  # "files/abc"
    uri: str
    mime_type: str
    size: int
    expires_at: float

    def live(self, margin: float = 0.0, now: float | None = None) -> bool:
        """True while the file has more than `margin` seconds left."""
        return self.expires_at - margin > (time.time() if now is None else now)


class BatchRecord(msgspec.Struct, kw_only=True):
    """A submitted batch job and what is needed to collect its results from any process."""

    name: str  # "batches/abc"
    scope: str
    model: str
    keys: list[str]  # the items' keys, in input order
    image_sizes: list[str] = msgspec.field(default_factory=list)  # per item ("": default)
    display_name: str = ""
    input_file: str | None = None  # "files/..." when the requests went as a JSONL file
    state: str = "BATCH_STATE_PENDING"
    created_at: float = msgspec.field(default_factory=time.time)
    updated_at: float = msgspec.field(default_factory=time.time)
    cost_settled: bool = False  # its results' cost is in a ledger (counted once)
