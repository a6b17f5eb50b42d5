"""Error bodies of JSON APIs (Google's `{"error": {...}}`, OpenAI-style and gateway shapes) as
typed errors; each provider passes its mapper to the transport, which knows plain HTTP only."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from engine._exceptions import ApiError, api_error
from engine.wire import SNIPPET, clean_message, html_title, looks_like_html, parse_retry_after

__all__ = [
    "error_from_body",
    "google_error",
    "json_http_error",
    "parse_retry_info",
]

_any_json = msgspec.json.Decoder()
# Google status strings for an in-stream error object whose numeric code is missing.
_GOOGLE_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "NOT_IMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# protobuf JSON Duration: decimal seconds with an "s" suffix ("15s", "1.5s", "0.250s").
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)s\s*")


def _duration(value: Any) -> float | None:
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        return float(match.group(1)) if match else None
    if isinstance(value, Mapping):
        # The object form; int64 seconds may arrive as a JSON string.
        try:
            seconds = float(value.get("seconds", 0) or 0)
            nanos = float(value.get("nanos", 0) or 0)
        except (TypeError, ValueError):
            return None
        total = seconds + nanos / 1e9
        return total if math.isfinite(total) and total >= 0 else None
    return None


def parse_retry_info(details: Sequence[Mapping[str, Any]]) -> float | None:
    """Seconds from a Google `google.rpc.RetryInfo` detail's `retryDelay`; None if there is none."""
    for detail in details:
        if not isinstance(detail, Mapping) or detail.get("@type") != _RETRY_INFO:
            continue
        delay = _duration(detail.get("retryDelay", detail.get("retry_delay")))
        if delay is not None:
            return delay
    return None


def _json_error(doc: Any) -> tuple[str, str, list[Any]] | None:
    """(message, code, details) from the JSON error shapes servers and gateways use."""
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        # streamGenerateContent without alt=sse answers errors as a one-element array.
        doc = doc[0]
    if not isinstance(doc, dict):
        return None
    err = doc.get("error")
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("status") or err.get("type") or err.get("code")
        details = err.get("details")
        return (
            message if isinstance(message, str) else "",
            code if isinstance(code, str) else "",
            details if isinstance(details, list) else [],
        )
    if isinstance(err, str):
        return err, "", []
    for key in ("message", "detail"):
        if isinstance(doc.get(key), str):
            return doc[key], "", []
    return None


def _server_delay(headers: Mapping[str, str], details: Sequence[Any]) -> float | None:
    # Both are the server's minimum wait; honouring the larger one satisfies both.
    delays = [
        d
        for d in (parse_retry_after(headers), parse_retry_info([x for x in details if x]))
        if d is not None
    ]
    return max(delays) if delays else None


def error_from_body(
    status: int,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    reason: str = "",
    secrets: Iterable[str] = (),
) -> ApiError:
    """The typed ApiError for a non-2xx answer, whatever its body: Google or OpenAI-style JSON,
    a gateway's HTML page (its title), plain text (a snippet), malformed JSON, or nothing.

    `retry_after` is the larger of the `Retry-After`/`retry-after-ms` headers and a Google
    `RetryInfo.retryDelay` (both are minimum waits).
    """
    headers = headers or {}
    content_type = headers.get("content-type", headers.get("Content-Type", "")).lower()
    text = body.decode("utf-8", "replace") if body else ""
    code = ""
    details: list[Any] = []
    stripped = text.strip()
    if not stripped:
        message = reason or "empty error body"
    elif stripped[0] in "{[":
        try:
            found = _json_error(_any_json.decode(body))
        except (msgspec.DecodeError, RecursionError):
            message = f"malformed JSON error body: {stripped[:SNIPPET]}"
        else:
            if found is None:
                message = f"unexpected JSON error body: {stripped[:SNIPPET]}"
            else:
                message, code, details = found
                message = message or reason or "no message"
    elif looks_like_html(content_type, stripped):
        message = html_title(stripped) or f"HTML error page ({reason or status})"
    else:
        message = stripped[:SNIPPET]
    return api_error(
        status,
        clean_message(message, secrets),
        code=code,
        retry_after=_server_delay(headers, details),
    )


def google_error(
    code: int,
    message: str,
    status: str,
    details: Sequence[Any],
    *,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> ApiError:
    """The typed ApiError for a Google `{"error": {...}}` object (e.g. one inside a stream)."""
    http_status = code or _GOOGLE_STATUS_CODES.get(status, 500)
    return api_error(
        http_status,
        clean_message(message or status or "error", secrets),
        code=status,
        retry_after=_server_delay(headers or {}, details),
    )


def json_http_error(
    status: int, body: bytes, headers: Mapping[str, str], reason: str, secrets: tuple[str, ...]
) -> ApiError:
    """`error_from_body` as a transport `ErrorMapper`."""
    return error_from_body(status, body, headers=headers, reason=reason, secrets=secrets)
