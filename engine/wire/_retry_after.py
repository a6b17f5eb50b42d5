"""The server's own word on when to try again: `retry-after-ms` and `Retry-After` (HTTP)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]


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
