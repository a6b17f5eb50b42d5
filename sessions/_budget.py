"""A session's budget as stored in its settings: limits and the policy for a request that would
not fit. The engine's policy layer plans and enforces it; this is the value and its rules."""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

from sessions._errors import ConfigError

__all__ = ["Budget", "Policy"]

Policy = Literal["reject", "drop_oldest", "rebase"]


class Budget(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A session's limits and what to do when the next request would not fit.

    Zero means "no limit of our own": `max_context_tokens` 0 uses the model's context window,
    `max_request_bytes` 0 the engine's `max_request_bytes`, `max_cost_usd` 0 spends without limit.
    `warn_at` is the fraction of any limit at which a `budget.warning` is emitted.
    """

    max_context_tokens: int = 0
    max_request_bytes: int = 0
    max_cost_usd: float = 0.0
    policy: Policy = "reject"
    warn_at: float = 0.8

    def __post_init__(self) -> None:
        """Reject limits that cannot work (wrong types, NaN, infinity, negatives)."""
        for name in ("max_context_tokens", "max_request_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"budget {name} must be an int, not {value!r}")
        for name in ("max_cost_usd", "warn_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"budget {name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"budget {name} must be finite, not {value!r}")
        if self.max_context_tokens < 0 or self.max_request_bytes < 0 or self.max_cost_usd < 0:
            raise ConfigError("budget limits must be >= 0 (0 means the default)")
        if not 0.0 < self.warn_at <= 1.0:
            raise ConfigError(f"budget warn_at must be in (0, 1], not {self.warn_at}")
        if self.policy not in ("reject", "drop_oldest", "rebase"):
            raise ConfigError(f"unknown budget policy {self.policy!r}")

    def to_builtins(self) -> dict[str, Any]:
        """The budget as JSON-ready builtins, for `SessionSettings.budget` (defaults omitted)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def from_builtins(cls, data: dict[str, Any] | None) -> Budget:
        """The budget stored by `to_builtins` (None: the default budget)."""
        if data is None:
            return cls()
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid budget: {exc}") from exc
