"""Retry policy: header and RetryInfo parsing, what is retried, how long to wait."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from engine import (
    ApiError,
    BudgetExceeded,
    ConnectError,
    ConnectTimeout,
    ContentBlocked,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    MalformedResponse,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    StreamBroken,
    TotalTimeout,
    Unauthorized,
)
from engine._exceptions import api_error
from engine.policy import parse_retry_after, retry_delay, should_retry
from engine.providers import parse_retry_info

NOW = 1_700_000_000.0


def _http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": "0"}, 0.0),
        ({"Retry-After": " 12 "}, 12.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After-Ms": "1500"}, 1.5),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": _http_date(30)}, 30.0),
        ({"Retry-After": _http_date(-30)}, 0.0),
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:37"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": ""}, None),
    ],
)
def test_parse_retry_after(headers: Mapping[str, str], expected: float | None) -> None:
    """Retry-After seconds/HTTP-date and retry-after-ms parse; junk counts as absent."""
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_reads_multidict_case_insensitively() -> None:
    """aiohttp's response headers (a CIMultiDict) work as they are."""
    assert parse_retry_after(CIMultiDict({"RETRY-after": "3"})) == 3.0


def test_parse_retry_after_http_date_defaults_to_the_clock() -> None:
    """Without `now`, an HTTP-date is relative to the current time (a past one gives 0)."""
    assert parse_retry_after({"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}) == 0.0


RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ([], None),
        ([{"@type": RETRY_INFO, "retryDelay": "15s"}], 15.0),
        ([{"@type": RETRY_INFO, "retryDelay": "1.5s"}], 1.5),
        ([{"@type": RETRY_INFO, "retryDelay": "0.250s"}], 0.25),
        ([{"@type": RETRY_INFO, "retryDelay": {"seconds": 3, "nanos": 500_000_000}}], 3.5),
        ([{"@type": RETRY_INFO, "retryDelay": {"seconds": "7"}}], 7.0),
        ([{"@type": RETRY_INFO, "retryDelay": {"nanos": 250_000_000}}], 0.25),
        ([{"@type": RETRY_INFO, "retryDelay": "15"}], None),
        ([{"@type": RETRY_INFO, "retryDelay": "-1s"}], None),
        ([{"@type": RETRY_INFO, "retryDelay": {"seconds": "x"}}], None),
        ([{"@type": RETRY_INFO}], None),
        ([{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "retryDelay": "9s"}], None),
        (
            [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE"},
                {"@type": RETRY_INFO, "retryDelay": "2s"},
            ],
            2.0,
        ),
    ],
)
def test_parse_retry_info(details: list[dict[str, Any]], expected: float | None) -> None:
    """google.rpc.RetryInfo retryDelay parses in both its string and object forms."""
    assert parse_retry_info(details) == expected


POLICY = RetryPolicy()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (api_error(429, "slow down"), True),
        (api_error(408, "request timeout"), True),
        (api_error(500, "internal"), True),
        (api_error(502, "bad gateway"), True),
        (api_error(503, "unavailable"), True),
        (api_error(504, "deadline"), True),
        (api_error(400, "bad"), False),
        (api_error(401, "no key"), False),
        (api_error(403, "denied"), False),
        (api_error(404, "no model"), False),
        (api_error(499, "cancelled"), False),
        (api_error(501, "not implemented"), False),
        (MalformedResponse("html with a 200", status=200), False),
        (MalformedResponse("502 page", status=502), True),
        (ConnectError("refused"), True),
        (ConnectTimeout("slow connect"), True),
        (FirstByteTimeout("no headers"), True),
        (IdleTimeout("silence"), True),
        (StreamBroken("cut"), True),
        (TotalTimeout("too long"), False),
        (ContentBlocked("no", reason="IMAGE_SAFETY"), False),
        (BudgetExceeded("over", limit="tokens", needed=2, allowed=1), False),
        (asyncio.CancelledError(), False),
        (ValueError("a bug"), False),
    ],
)
def test_should_retry(error: BaseException, expected: bool) -> None:
    """Retry transport failures and retryable statuses; never client errors or cancellation."""
    assert should_retry(error, POLICY) is expected


def test_should_retry_follows_the_policys_statuses() -> None:
    """The set of retryable statuses comes from the policy, not a constant."""
    policy = RetryPolicy(retry_statuses=frozenset({418}))
    assert should_retry(ApiError("teapot", status=418), policy)
    assert not should_retry(RateLimited("slow", status=429), policy)


def test_api_error_classes_match_should_retry_expectations() -> None:
    """The subclasses used above are what api_error builds (guards the table's premise)."""
    assert isinstance(api_error(429, ""), RateLimited)
    assert isinstance(api_error(503, ""), ServerError)
    assert isinstance(api_error(400, ""), InvalidRequest)
    assert isinstance(api_error(403, ""), Unauthorized)
    assert isinstance(api_error(404, ""), NotFound)


class _Top(random.Random):
    """An rng whose uniform(a, b) always returns b, exposing the backoff cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(
    ("attempt", "cap"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (60, 30.0), (5000, 30.0)],
)
def test_retry_delay_backoff_cap_doubles_until_max_delay(attempt: int, cap: float) -> None:
    """Backoff's upper bound is base_delay * 2 ** (attempt - 1), capped at max_delay."""
    policy = RetryPolicy(max_attempts=10_000)
    assert retry_delay(attempt, StreamBroken("cut"), policy, rng=_Top()) == cap


@given(attempt=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_retry_delay_is_full_jitter_within_the_cap(attempt: int, seed: int) -> None:
    """Every backoff delay lies in [0, cap]."""
    policy = RetryPolicy(max_attempts=100)
    delay = retry_delay(attempt, ConnectError("x"), policy, rng=random.Random(seed))
    assert delay is not None
    assert 0.0 <= delay <= min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(15.0, 15.0), (0.0, 0.0), (120.0, 120.0), (120.5, None), (3600.0, None), (-2.0, 0.0)],
)
def test_retry_delay_honours_server_delay_up_to_the_limit(
    retry_after: float, expected: float | None
) -> None:
    """A server-directed delay wins over backoff; one over max_server_delay means give up."""
    error = RateLimited("slow down", status=429, retry_after=retry_after)
    assert retry_delay(1, error, POLICY, rng=_Top()) == expected


def test_retry_delay_gives_up_after_max_attempts() -> None:
    """No delay (do not retry) once the attempt number reaches max_attempts."""
    policy = RetryPolicy(max_attempts=3)
    assert retry_delay(2, StreamBroken("cut"), policy) is not None
    assert retry_delay(3, StreamBroken("cut"), policy) is None
    assert retry_delay(3, RateLimited("x", status=429, retry_after=1.0), policy) is None


def test_retry_delay_without_server_delay_uses_backoff() -> None:
    """An ApiError without retry_after falls back to jittered backoff."""
    assert retry_delay(2, ServerError("x", status=500), POLICY, rng=_Top()) == 1.0
