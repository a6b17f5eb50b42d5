"""Fault injection: a small spec language and the per-server state that applies it.

Grammar (whitespace around tokens is ignored)::

    SPEC    := CLAUSE (";" CLAUSE)*
    CLAUSE  := [SELECT ":"] FAULT ("," FAULT)*
    SELECT  := "rate=" P          fire with probability P (0..1), drawn from a hash of the
                                  server seed, the request body and a per-server counter
             | "fail_first=" N    fire for the first N arrivals of each distinct request
                                  (endpoint + body), then let that request pass
             | "once"             same as fail_first=1
    FAULT   := KIND (":" ARG)*

Kinds. *Outcomes* replace or break the answer; a firing clause picks one of its outcomes (no
selector: in turn, request by request; rate: from the same hash; fail_first: the k-th failure
uses the k-th outcome, cycling). *Shapers* always apply when their clause fires.

    outcomes
      NNN[:retry=S]   an HTTP error with Google's status for NNN (400 401 403 404 408 429 499
                      500 502 503 504); retry=S adds RetryInfo retryDelay "Ss" + Retry-After
      reset           the connection is closed before any response header
      cut[:N]         stream: the connection closes after N events (default 1);
                      plain: after the headers and half the body
      malformed       stream: the second event carries truncated JSON, the rest follows;
                      plain: status 200 with a truncated JSON body
      html502         a gateway's HTML "502 Bad Gateway" page (text/html)
      block           promptFeedback.blockReason SAFETY, no candidates
      image_safety    finishReason IMAGE_SAFETY, no image
      no_image        finishReason NO_IMAGE, text only
                      (OpenAI endpoints: block/image_safety -> chat finish_reason
                      "content_filter", images 400 moderation_blocked; no_image -> chat text
                      only, images "data": [])
    shapers
      latency:S       S more seconds before answering
      drip[:S[:B]]    send the body (or each event) in B-byte pieces (default 16384),
                      S seconds apart (default 0.05)
      sig_last        stream: the text signature rides on a trailing empty text part

Examples: ``429:retry=2`` · ``503:retry=1`` · ``cut:2`` · ``drip:0.01:4096`` ·
``rate=0.1:429,500,cut:1`` · ``fail_first=2:429`` · ``once:reset`` ·
``latency:0.5;rate=0.05:503``. A request header ``x-emulator-fault: SPEC`` replaces the
server's spec for that request (an empty header value disables faults for it).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from sessions import ConfigError

__all__ = [
    "FAULT_GRAMMAR",
    "Decision",
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "parse_faults",
]

# The docstring minus its title line: the epilog of `nanoedit emulator --help`.
FAULT_GRAMMAR = (
    "Fault specs (--faults SPEC, or per request the x-emulator-fault header).\n\n"
    + ((__doc__ or "").split("\n\n", 1)[-1])
)

# HTTP status -> Google's status string, for numeric outcomes.
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_OUTCOMES = {"reset", "cut", "malformed", "html502", "block", "image_safety", "no_image"}
_SHAPERS = {"latency", "drip", "sig_last"}
_MAX_TRACKED = 65_536  # fail_first keys remembered; oldest forgotten first


@dataclass(frozen=True, slots=True)
class Fault:
    """One parsed fault: its kind and arguments."""

    kind: str  # "429", "reset", "cut", "drip", ...
    status: int = 0  # numeric outcomes
    retry: float | None = None  # numeric outcomes: RetryInfo / Retry-After seconds
    count: int = 1  # cut: events before the cut
    delay: float = 0.0  # latency, drip
    piece: int = 16_384  # drip: bytes per piece

    @property
    def is_outcome(self) -> bool:
        """True for faults that replace or break the answer (not latency/drip/sig_last)."""
        return self.kind not in _SHAPERS


@dataclass(frozen=True, slots=True)
class _Clause:
    select: str  # "always" | "rate" | "fail_first"
    rate: float
    first: int
    outcomes: tuple[Fault, ...]
    shapers: tuple[Fault, ...]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """A parsed spec; `parse_faults("")` is the plan with no faults."""

    text: str
    clauses: tuple[_Clause, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the faults do to one request."""

    outcome: Fault | None = None
    latency: float = 0.0
    drip: Fault | None = None
    sig_last: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        """Fault kinds applied, for the stats counters."""
        out = [self.outcome.kind] if self.outcome else []
        if self.latency:
            out.append("latency")
        if self.drip:
            out.append("drip")
        if self.sig_last:
            out.append("sig_last")
        return tuple(out)


NO_FAULTS = Decision()


MAX_SECONDS = 3600.0
"""The longest latency, drip pause or retry delay a fault may ask for."""


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"fault spec: {what} must be a number, got {text!r}") from None
    if not 0 <= value <= MAX_SECONDS:
        # NaN, infinity and absurd waits are refused: a fault must end (and fit in a header).
        raise ConfigError(f"fault spec: {what} must be within 0..{MAX_SECONDS:g}, got {text!r}")
    return value


def _integer(text: str, what: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"fault spec: {what} must be a non-negative integer, got {text!r}")
    return int(text)


def _fault(text: str) -> Fault:
    kind, *args = (t.strip() for t in text.split(":"))
    if kind.isdigit():
        status = int(kind)
        if status not in GOOGLE_STATUS:
            raise ConfigError(
                f"fault spec: status {status} not supported; use one of "
                f"{', '.join(map(str, GOOGLE_STATUS))}"
            )
        retry = None
        for arg in args:
            name, _, value = arg.partition("=")
            if name != "retry" or not value:
                raise ConfigError(f"fault spec: {kind} takes only retry=SECONDS, got {arg!r}")
            retry = _number(value, "retry")
        return Fault(kind=kind, status=status, retry=retry)
    if kind in ("reset", "malformed", "html502", "block", "image_safety", "no_image", "sig_last"):
        if args:
            raise ConfigError(f"fault spec: {kind} takes no arguments")
        return Fault(kind=kind, status=502 if kind == "html502" else 0)
    if kind == "cut":
        if len(args) > 1:
            raise ConfigError("fault spec: cut takes at most one argument (events)")
        return Fault(kind=kind, count=_integer(args[0], "cut events") if args else 1)
    if kind == "latency":
        if len(args) != 1:
            raise ConfigError("fault spec: latency needs one argument (seconds)")
        return Fault(kind=kind, delay=_number(args[0], "latency"))
    if kind == "drip":
        if len(args) > 2:
            raise ConfigError("fault spec: drip takes at most two arguments (seconds, bytes)")
        delay = _number(args[0], "drip delay") if args else 0.05
        piece = _integer(args[1], "drip bytes") if len(args) > 1 else 16_384
        if piece < 1:
            raise ConfigError("fault spec: drip bytes must be at least 1")
        return Fault(kind=kind, delay=delay, piece=piece)
    raise ConfigError(f"fault spec: unknown fault {kind!r}")


def _clause(text: str) -> _Clause:
    select, rate, first = "always", 1.0, 0
    head, sep, rest = text.partition(":")
    head = head.strip()
    if sep and "=" in head:
        name, _, value = head.partition("=")
        name = name.strip()
        if name == "rate":
            select, rate = "rate", _number(value.strip(), "rate")
            if rate > 1:
                raise ConfigError(f"fault spec: rate must be within 0..1, got {value!r}")
        elif name == "fail_first":
            select, first = "fail_first", _integer(value.strip(), "fail_first")
        else:
            raise ConfigError(f"fault spec: unknown selector {name!r}")
        text = rest
    elif sep and head == "once":
        select, first, text = "fail_first", 1, rest
    faults = [_fault(item) for item in text.split(",") if item.strip()]
    if not faults:
        raise ConfigError("fault spec: a clause needs at least one fault")
    return _Clause(
        select=select,
        rate=rate,
        first=first,
        outcomes=tuple(f for f in faults if f.is_outcome),
        shapers=tuple(f for f in faults if not f.is_outcome),
    )


@functools.lru_cache(maxsize=256)
def parse_faults(spec: str) -> FaultPlan:
    """Parse a fault spec (grammar in this module's docstring); ConfigError when invalid."""
    clauses = tuple(_clause(part) for part in spec.split(";") if part.strip())
    return FaultPlan(text=spec.strip(), clauses=clauses)


class FaultInjector:
    """Per-server fault state: arrival counter, fail_first tallies, rotation counters."""

    def __init__(self, seed: int) -> None:
        self._seed = seed.to_bytes(16, "big", signed=True)
        self._arrivals = 0
        self._rotation: dict[tuple[str, int], int] = {}
        self._failures: OrderedDict[bytes, int] = OrderedDict()

    def reset(self) -> None:
        """Forget every counter, as if the server had just started."""
        self._arrivals = 0
        self._rotation.clear()
        self._failures.clear()

    def decide(self, plan: FaultPlan, key: bytes) -> Decision:
        """The faults for one request; `key` identifies it (a digest of endpoint and body)."""
        if not plan.clauses:
            return NO_FAULTS
        self._arrivals += 1
        outcome: Fault | None = None
        latency = 0.0
        drip: Fault | None = None
        sig_last = False
        for index, clause in enumerate(plan.clauses):
            pick = self._fires(plan.text, index, clause, key)
            if pick is None:
                continue
            for shaper in clause.shapers:
                if shaper.kind == "latency":
                    latency += shaper.delay
                elif shaper.kind == "drip":
                    drip = shaper
                else:
                    sig_last = True
            if outcome is None and clause.outcomes:
                outcome = clause.outcomes[pick % len(clause.outcomes)]
        return Decision(outcome=outcome, latency=latency, drip=drip, sig_last=sig_last)

    def _fires(self, text: str, index: int, clause: _Clause, key: bytes) -> int | None:
        """None when the clause does not fire; else which outcome to pick."""
        if clause.select == "always":
            slot = (text, index)
            turn = self._rotation.get(slot, 0)
            self._rotation[slot] = turn + 1
            return turn
        if clause.select == "rate":
            digest = hashlib.sha256(
                self._seed + index.to_bytes(4, "big") + key + self._arrivals.to_bytes(8, "big")
            ).digest()
            draw = int.from_bytes(digest[:8], "big") / 2.0**64
            return int.from_bytes(digest[8:16], "big") if draw < clause.rate else None
        # fail_first: keyed by the request itself, so an identical retry passes after N failures.
        tally_key = hashlib.sha256(text.encode() + index.to_bytes(4, "big") + key).digest()
        seen = self._failures.get(tally_key, 0)
        if seen >= clause.first:
            return None
        self._failures[tally_key] = seen + 1
        self._failures.move_to_end(tally_key)
        while len(self._failures) > _MAX_TRACKED:
            self._failures.popitem(last=False)
        return seen
