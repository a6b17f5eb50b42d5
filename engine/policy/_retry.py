"""Retry policy as small pure functions: what to retry and how long to wait.

The runtime owns the loop (and the sleeping); these functions only decide, so every branch is
unit-tested without a clock.
"""

from __future__ import annotations

import asyncio
import random

from engine._config import RetryPolicy
from engine._exceptions import (
    ApiError,
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    StreamBroken,
)
from engine.wire import parse_retry_after

__all__ = ["parse_retry_after", "retry_delay", "should_retry"]

_TRANSPORT_RETRYABLE = (ConnectError, ConnectTimeout, FirstByteTimeout, IdleTimeout, StreamBroken)


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
