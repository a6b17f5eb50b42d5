"""Tenants of `nanoedit serve`: who a request's key belongs to, and what each tenant may spend.

Keys come from a JSON file `{"tenant-name": ["key", ...], ...}`. A request's key is compared with
every key in constant time (digests of equal length, `hmac.compare_digest`, no early exit), so
neither which key nor how much of one matched leaks through timing. Keys are held as digests
only and never logged. Without a keys file the server has one tenant, "".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine._exceptions import ConfigError

__all__ = ["RateWindow", "Tenants", "load_keys"]


def load_keys(path: Path) -> dict[str, list[str]]:
    """The tenants and their keys from a keys file; ConfigError for anything malformed."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--keys {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--keys {path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f'--keys {path}: expected {{"tenant": ["key", ...], ...}}')
    seen: set[str] = set()
    for tenant, keys in doc.items():
        if not tenant or not isinstance(keys, list) or not keys:
            raise ConfigError(f"--keys {path}: tenant {tenant!r} needs a list of keys")
        for key in keys:
            if not isinstance(key, str) or len(key) < 8:
                raise ConfigError(f"--keys {path}: tenant {tenant!r} has a key under 8 characters")
            if key in seen:
                raise ConfigError(f"--keys {path}: a key is listed twice")
            seen.add(key)
    return doc


def _digest(key: str) -> bytes:
    return hashlib.sha256(b"nanoedit-serve-key\0" + key.encode()).digest()


class Tenants:
    """Who holds which key; `identify(authorization)` names the tenant or returns None."""

    def __init__(self, keys: Mapping[str, Sequence[str]] | None) -> None:
        self.single = keys is None
        self._keys: list[tuple[bytes, str]] = [
            (_digest(k), tenant) for tenant, ks in (keys or {}).items() for k in ks
        ]

    def identify(self, authorization: str | None) -> str | None:
        """The tenant of `Authorization: Bearer KEY`; "" when single-tenant; None if unknown."""
        if self.single:
            return ""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        given = _digest(key.strip())
        found: str | None = None
        for digest, tenant in self._keys:  # every key, every time
            if hmac.compare_digest(digest, given):
                found = tenant
        return found


class RateWindow:
    """At most `per_minute` events in any sliding minute; `admit()` says when the next may."""

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque()

    def admit(self, now: float | None = None) -> float:
        """0.0 and the event counts; else the seconds until one would be admitted."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] <= now - 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return self._times[0] + 60.0 - now
        self._times.append(now)
        return 0.0
