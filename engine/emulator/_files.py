"""The Files API endpoints: resumable (and chunked) uploads, metadata, listing, deletion and
download. Files live `file_ttl` seconds (Google: 48 hours); a reference to an unknown or expired
file is answered with Google's 403 PERMISSION_DENIED text (see `_vault`).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec
from aiohttp import web

from engine.emulator._generate import ApiFailure, invalid
from engine.emulator._http import (
    STATE,
    ServerState,
    check_gemini_key,
    json_response,
    read_body,
)
from engine.emulator._vault import Upload

__all__ = [
    "handle_delete_file",
    "handle_download",
    "handle_get_file",
    "handle_list_files",
    "handle_upload",
]

_any = msgspec.json.Decoder()


# --- handlers -----------------------------------------------------------------------------


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def handle_upload(request: web.Request) -> web.Response:
    """POST /upload/v1beta/files: `start`, then `upload` chunks, the last with `finalize`."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    upload_id = request.query.get("upload_id")
    command = {c.strip() for c in request.headers.get("X-Goog-Upload-Command", "").split(",")}
    if upload_id is None:
        return await _start(request, state, command)
    upload = state.files.uploads.get(upload_id)
    if upload is None:
        raise ApiFailure(404, "Upload session not found.")
    if not command & {"upload", "finalize"}:
        raise invalid("X-Goog-Upload-Command must be upload and/or finalize")
    try:
        offset = int(request.headers.get("X-Goog-Upload-Offset", "0"))
    except ValueError:
        raise invalid("X-Goog-Upload-Offset must be a number") from None
    if offset != len(upload.received):
        raise invalid(f"X-Goog-Upload-Offset {offset}: {len(upload.received)} bytes received")
    limit = state.settings.max_file_bytes - len(upload.received)
    chunk = await read_body(request, max(limit, 0), mbps=state.settings.upload_mbps)
    upload.received += chunk
    if "finalize" not in command:
        return web.Response(
            headers={
                "X-Goog-Upload-Status": "active",
                "X-Goog-Upload-Size-Received": str(len(upload.received)),
            }
        )
    del state.files.uploads[upload_id]
    if upload.declared is not None and upload.declared != len(upload.received):
        raise invalid(
            f"the upload declared {upload.declared} bytes and sent {len(upload.received)}"
        )
    stored = state.files.add(
        upload.mime_type, bytes(upload.received), upload.display_name, _origin(request)
    )
    return json_response({"file": stored.resource()}, headers={"X-Goog-Upload-Status": "final"})


async def _start(request: web.Request, state: ServerState, command: set[str]) -> web.Response:
    if request.headers.get("X-Goog-Upload-Protocol") != "resumable" or command != {"start"}:
        raise invalid(
            "uploads use X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start"
        )
    body = await read_body(request, 64 * 1024)
    meta: Any = _any.decode(body) if body.strip() else {}
    info = meta.get("file") if isinstance(meta, dict) else None
    info = info if isinstance(info, dict) else {}
    name = info.get("display_name") or info.get("displayName") or ""
    length = request.headers.get("X-Goog-Upload-Header-Content-Length")
    try:
        declared = int(length) if length is not None else None
    except ValueError:
        raise invalid("X-Goog-Upload-Header-Content-Length must be a number") from None
    if declared is not None and declared > state.settings.max_file_bytes:
        raise invalid(f"the file is larger than {state.settings.max_file_bytes} bytes")
    mime = request.headers.get("X-Goog-Upload-Header-Content-Type", "application/octet-stream")
    upload_id = secrets.token_urlsafe(12)
    state.files.uploads[upload_id] = Upload(mime, declared, str(name))
    url = f"{_origin(request)}/upload/v1beta/files?upload_id={upload_id}"
    return web.Response(
        headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"},
    )


def _file_id(request: web.Request) -> str:
    return request.match_info["file_id"]


async def handle_get_file(request: web.Request) -> web.Response:
    """GET /v1beta/files/{id}."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    return json_response(state.files.get(_file_id(request)).resource())


async def handle_list_files(request: web.Request) -> web.Response:
    """GET /v1beta/files: the live files, newest first."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    now = time.time()
    live = [f for f in state.files.files.values() if f.expires > now]
    live.sort(key=lambda f: f.created, reverse=True)
    return json_response({"files": [f.resource() for f in live]} if live else {})


async def handle_delete_file(request: web.Request) -> web.Response:
    """DELETE /v1beta/files/{id}."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    state.files.get(_file_id(request))
    del state.files.files[_file_id(request)]
    return json_response({})


async def handle_download(request: web.Request) -> web.Response:
    """GET /download/v1beta/files/{id}:download?alt=media: the file's bytes."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    file_id = request.match_info["name"].removesuffix(":download")
    stored = state.files.get(file_id)
    return web.Response(body=stored.data, headers={"Content-Type": stored.mime_type})
