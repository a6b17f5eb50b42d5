"""Google's Files API and Batch API, as the Gemini-native provider speaks them.

Uploads use the documented resumable protocol: `start` (the metadata) answers an upload URL,
then the bytes go in `upload` chunks at increasing offsets, the last one `upload, finalize`,
which answers the File. Batch jobs are created with inline requests or a JSONL file uploaded
the same way, and followed through their operation (`batches/ID`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import msgspec

from engine._exceptions import ApiError
from engine.providers._errors import json_http_error
from engine.wire import Headers, Response, Transport, clean_message, malformed

__all__ = ["BatchOperation", "FilesAndBatches", "UploadedFile"]

UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # a multiple of the protocol's 256 KiB granularity
FILE_LIFETIME_S = 48 * 3600.0  # Google's, when an answer does not say
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A file the provider holds: name ("files/abc"), URI, type, size, expiry (Unix seconds)."""

    name: str
    uri: str
    mime_type: str
    size: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class BatchOperation:
    """A batch job as its operation describes it."""

    name: str  # "batches/abc"
    state: str  # BATCH_STATE_*
    done: bool
    counts: dict[str, int]  # requestCount, successfulRequestCount, failedRequestCount, ...
    inlined: list[dict[str, Any]] | None  # inline results, in input order
    responses_file: str | None  # "files/..." holding JSONL results
    error: str | None  # why the whole job failed

    @classmethod
    def from_json(cls, doc: Any, status: int, secrets: tuple[str, ...]) -> BatchOperation:
        """Read an operation; MalformedResponse if it is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise malformed(status, "a batch operation without a name", secrets)
        meta = _dict(doc.get("metadata"))
        stats = _dict(meta.get("batchStats"))
        counts = {}
        for key, value in stats.items():
            try:
                counts[key] = int(value)
            except (TypeError, ValueError):
                continue
        response = _dict(doc.get("response"))
        inlined = response.get("inlinedResponses")
        if isinstance(inlined, dict):
            inlined = inlined.get("inlinedResponses")
        error = doc.get("error")
        return cls(
            name=doc["name"],
            state=str(meta.get("state") or doc.get("state") or "BATCH_STATE_UNSPECIFIED"),
            done=bool(doc.get("done")),
            counts=counts,
            inlined=inlined if isinstance(inlined, list) else None,
            responses_file=response.get("responsesFile")
            if isinstance(response.get("responsesFile"), str)
            else None,
            error=clean_message(str(error.get("message", error)), secrets)
            if isinstance(error, dict)
            else None,
        )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _expiry(value: Any) -> float:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() + FILE_LIFETIME_S


class FilesAndBatches:
    """The Files and Batch API calls of a Gemini-native endpoint (mixed into its provider)."""

    _transport: Transport
    _base_url: str
    _headers: Headers
    _secrets: tuple[str, ...]
    scope: str

    def _json(self, resp: Response) -> Any:
        try:
            return _any.decode(resp.body)
        except msgspec.DecodeError as exc:
            raise malformed(resp.status, f"expected JSON: {exc}", self._secrets) from exc

    async def upload_file(
        self,
        data: bytes,
        mime_type: str,
        display_name: str = "",
        *,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> UploadedFile:
        """Upload `data` with the resumable protocol, in chunks of `chunk_bytes`."""
        start = Headers(self._headers)
        start.update(
            {
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": str(len(data)),
                "x-goog-upload-header-content-type": mime_type,
            }
        )
        meta = _encoder.encode({"file": {"display_name": display_name}} if display_name else {})
        resp = await self._transport.request(
            "POST",
            f"{self._base_url}/upload/v1beta/files",
            body=meta,
            headers=start,
            errors=json_http_error,
        )
        url = resp.headers.get("x-goog-upload-url")
        if not url:
            raise malformed(resp.status, "the upload start answered no upload URL", self._secrets)
        offset = 0
        while True:
            piece = data[offset : offset + chunk_bytes]
            last = offset + len(piece) >= len(data)
            headers = Headers(self._headers)
            headers.update(
                {
                    "content-type": mime_type,
                    "x-goog-upload-command": "upload, finalize" if last else "upload",
                    "x-goog-upload-offset": str(offset),
                }
            )
            resp = await self._transport.request(
                "POST", url, body=piece, headers=headers, errors=json_http_error
            )
            offset += len(piece)
            if last:
                break
        doc = self._json(resp)
        file = doc.get("file") if isinstance(doc, dict) else None
        if not isinstance(file, dict) or not isinstance(file.get("name"), str):
            raise malformed(resp.status, "the upload answered no file", self._secrets)
        name = file["name"]
        return UploadedFile(
            name=name,
            uri=str(file.get("uri") or f"{self._base_url}/v1beta/{name}"),
            mime_type=str(file.get("mimeType") or mime_type),
            size=len(data),
            expires_at=_expiry(file.get("expirationTime")),
        )

    async def file_exists(self, name: str) -> bool:
        """True while the service still holds the file ("files/abc"); False on its 403/404."""
        try:
            await self._transport.request(
                "GET",
                f"{self._base_url}/v1beta/{name}",
                headers=self._headers,
                errors=json_http_error,
            )
        except ApiError as exc:
            if exc.status in (403, 404):
                return False
            raise
        return True

    async def delete_file(self, name: str) -> None:
        """Delete an uploaded file ("files/abc")."""
        await self._transport.request(
            "DELETE",
            f"{self._base_url}/v1beta/{name}",
            headers=self._headers,
            errors=json_http_error,
        )

    async def download_file(self, name: str) -> bytes:
        """The bytes of a file the service wrote (batch results)."""
        url = f"{self._base_url}/download/v1beta/{name}:download?alt=media"
        resp = await self._transport.request(
            "GET", url, headers=self._headers, errors=json_http_error
        )
        return resp.body

    async def create_batch(
        self,
        model: str,
        requests: Sequence[tuple[str, bytes]] = (),
        *,
        file_name: str | None = None,
        display_name: str = "",
    ) -> BatchOperation:
        """Submit a batch: `(key, GenerateContentRequest JSON)` pairs inline, or the JSONL file
        `file_name` already uploaded."""
        if file_name is not None:
            config: bytes = _encoder.encode({"fileName": file_name})
        else:
            items = b",".join(
                b'{"request":' + body + b',"metadata":' + _encoder.encode({"key": key}) + b"}"
                for key, body in requests
            )
            config = b'{"requests":{"requests":[' + items + b"]}}"
        body = (
            b'{"batch":{"displayName":'
            + _encoder.encode(display_name)
            + b',"inputConfig":'
            + config
            + b"}}"
        )
        name = quote(model.removeprefix("models/"), safe="-._~")
        resp = await self._transport.request(
            "POST",
            f"{self._base_url}/v1beta/models/{name}:batchGenerateContent",
            body=body,
            headers=self._headers,
            errors=json_http_error,
        )
        return BatchOperation.from_json(self._json(resp), resp.status, self._secrets)

    async def get_batch(self, name: str) -> BatchOperation:
        """The job's operation now."""
        resp = await self._transport.request(
            "GET",
            f"{self._base_url}/v1beta/{name}",
            headers=self._headers,
            errors=json_http_error,
        )
        return BatchOperation.from_json(self._json(resp), resp.status, self._secrets)

    async def cancel_batch(self, name: str) -> None:
        """Ask the service to cancel the job."""
        await self._transport.request(
            "POST",
            f"{self._base_url}/v1beta/{name}:cancel",
            body=b"{}",
            headers=self._headers,
            errors=json_http_error,
        )
