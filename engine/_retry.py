"""Retry policy as small pure functions: what to retry and how long to wait.

The runtime owns the loop (and the sleeping); these functions only decide, so every branch is
unit-tested without a clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from engine._config import RetryPolicy
from engine._exceptions import (
    ApiError,
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    StreamBroken,
)

__all__ = ["parse_retry_after", "parse_retry_info", "retry_delay", "should_retry"]

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# protobuf JSON Duration: decimal seconds with an "s" suffix ("15s", "1.5s", "0.250s").
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)s\s*")
_TRANSPORT_RETRYABLE = (ConnectError, ConnectTimeout, FirstByteTimeout, IdleTimeout, StreamBroken)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Plain dicts are case-sensitive; multidicts are not. Try the fast path, then scan.
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, from `retry-after-ms` or `Retry-After`; None if absent.

    `Retry-After` may be seconds or an HTTP-date (relative to `now`, a Unix time; past dates
    give 0). Unparseable or negative values count as absent.
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        value = _seconds(ms.strip())
        if value is not None:
            return value / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    value = _seconds(raw)
    if value is not None:
        return value
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; a date without a zone is read as such.
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


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


def should_retry(error: BaseException, policy: RetryPolicy) -> bool:
    """Whether another attempt could succeed where this one failed with `error`.

    Retryable: an ApiError (MalformedResponse included, e.g. a gateway's 502 page) whose status is
    in `policy.retry_statuses`, and transport failures before or during the answer. Never:
    client errors, blocked content, budget, a total timeout, or cancellation.
    """
    if isinstance(error, asyncio.CancelledError):
        return False
    if isinstance(error, ApiError):
        # MalformedResponse is an ApiError too: a 200 with a broken body is not retried, a 502
        # HTML page is.
        return error.status in policy.retry_statuses
    return isinstance(error, _TRANSPORT_RETRYABLE)


def retry_delay(
    attempt: int,
    error: BaseException,
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before attempt `attempt + 1` (attempts count from 1); None: do not retry.

    A server-directed delay (`error.retry_after`) wins over backoff, but one longer than
    `policy.max_server_delay` means give up now rather than hold a slot that long. Otherwise full
    jitter: uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))). None also once
    `attempt` has reached `policy.max_attempts`.
    """
    if attempt >= policy.max_attempts:
        return None
    server = getattr(error, "retry_after", None)
    if isinstance(server, int | float) and not isinstance(server, bool):
        server = max(0.0, float(server))
        if server > policy.max_server_delay:
            return None
        return server
    # Overflow-safe: 2 ** 1000 is fine for ints, but a float product could become inf.
    exponent = min(max(attempt - 1, 0), 64)
    cap = min(policy.max_delay, policy.base_delay * 2.0**exponent)
    return (rng or random).uniform(0.0, cap)
