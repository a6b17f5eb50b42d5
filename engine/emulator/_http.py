"""Server state and HTTP plumbing shared by both API families: auth, capped body reads, error
bodies, and delivery (plain or SSE) with the delivery faults (reset, cut, malformed, drip)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import random
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from aiohttp import web

from engine.emulator._faults import (
    GOOGLE_STATUS,
    NO_FAULTS,
    Decision,
    Fault,
    FaultInjector,
    FaultPlan,
    parse_faults,
)
from engine.emulator._generate import ApiFailure, RenderPool
from engine.emulator._settings import EmulatorSettings
from engine.emulator._signatures import Signer
from engine.emulator._vault import BatchJob, FileVault, InteractionVault
from sessions import ConfigError

_log = structlog.get_logger("nanoedit.emulator")

__all__ = [
    "ENDPOINTS",
    "STATE",
    "RecordedRequest",
    "ServerState",
    "failure_for",
    "gemini_error",
    "json_response",
    "openai_error",
    "send_plain",
    "send_stream",
]

log = structlog.get_logger("nanoedit.emulator")

ENDPOINTS = (
    "generateContent",
    "batchGenerateContent",
    "streamGenerateContent",
    "countTokens",
    "chat.completions",
    "images.generations",
    "images.edits",
    "interactions",
    "interactions.resume",
)
FAULT_HEADER = "x-emulator-fault"
_SECRET_HEADERS = frozenset({"authorization", "x-goog-api-key", "api-key", "proxy-authorization"})
_encoder = msgspec.json.Encoder()
JSON_TYPE = "application/json; charset=UTF-8"

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request that reached a handler (kept when `record_requests` is set); no keys."""

    endpoint: str
    model: str
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class ServerState:
    """Everything one emulator server holds: settings, counters, caches."""

    settings: EmulatorSettings
    plan: FaultPlan
    injector: FaultInjector
    signer: Signer
    pool: RenderPool
    rng: random.Random
    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    recorded: list[RecordedRequest] = field(default_factory=list)
    files: FileVault = field(default_factory=lambda: FileVault(ttl=48 * 3600.0))
    batches: dict[str, BatchJob] = field(default_factory=dict)
    interactions: InteractionVault = field(default_factory=lambda: InteractionVault(ttl=1e9))
    in_flight: int = 0  # model calls being answered now
    max_in_flight: int = 0  # the most at once since the last reset (cluster cap tests)

    @classmethod
    def create(cls, settings: EmulatorSettings) -> ServerState:
        """Fresh state; ConfigError if the fault spec does not parse."""
        return cls(
            settings=settings,
            plan=parse_faults(settings.faults),
            injector=FaultInjector(settings.seed),
            signer=Signer(settings.seed),
            pool=RenderPool(
                threads=settings.render_threads,
                max_entries=settings.render_cache_entries,
                max_bytes=settings.render_cache_bytes,
                max_held_bytes=settings.held_bytes,
            ),
            rng=random.Random(settings.seed),
            files=FileVault(ttl=settings.file_ttl),
            interactions=InteractionVault(ttl=settings.interaction_ttl),
        )

    def stats(self) -> dict[str, Any]:
        """Counters, as GET /emulator/stats answers them."""
        return {
            "requests": {name: self.requests.get(name, 0) for name in ENDPOINTS},
            "faults": dict(sorted(self.faults.items())),
            "render": {
                "renders": self.pool.renders,
                "cache_hits": self.pool.hits,
                # Memory held by model calls in progress: the most at once, and how many calls
                # waited for room (EmulatorSettings.held_bytes).
                "held_bytes_peak": self.pool.held.peak,
                "held_waits": self.pool.held.waits,
            },
            # The whole process (render threads included): benchmarks report the emulator's
            # CPU apart from the client's.
            "cpu_s": _process_cpu(),
            "files": {"uploaded": self.files.uploaded, "stored": len(self.files.files)},
            "batches": len(self.batches),
            "interactions": {
                "created": self.interactions.created,
                "stored": len(self.interactions.items),
            },
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    def reset(self) -> None:
        """Zero the counters and fault state; forget recorded requests and cached images."""
        self.requests.clear()
        self.faults.clear()
        self.recorded.clear()
        self.injector.reset()
        self.pool.clear()
        self.max_in_flight = self.in_flight

    def record(self, request: web.Request, endpoint: str, model: str, body: bytes) -> None:
        """Keep the request for inspection, without its key."""
        if not self.settings.record_requests:
            return
        self.recorded.append(
            RecordedRequest(
                endpoint=endpoint,
                model=model,
                method=request.method,
                path=request.path,
                query={k: v for k, v in request.query.items() if k != "key"},
                headers={
                    k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS
                },
                body=body,
            )
        )

    def decide(self, request: web.Request, endpoint: str, body: bytes) -> Decision:
        """The faults for this request: the header's spec if present, else the server's."""
        header = request.headers.get(FAULT_HEADER)
        if header is None:
            plan = self.plan
        else:
            try:
                plan = parse_faults(header)
            except ConfigError as exc:
                raise ApiFailure(400, f"Invalid {FAULT_HEADER} header: {exc}") from None
        if not plan.clauses:
            return NO_FAULTS
        key = hashlib.sha256(endpoint.encode() + b"\0" + request.path.encode() + body).digest()
        decision = self.injector.decide(plan, key)
        self.faults.update(decision.kinds)
        if decision.kinds:
            log.debug("emulator.fault", endpoint=endpoint, faults=decision.kinds)
        return decision

    def latency(self, decision: Decision) -> float:
        """Seconds this answer waits: the server's latency with jitter, plus fault latency."""
        jitter = self.rng.uniform(0.0, self.settings.latency_jitter)
        return self.settings.latency + jitter + decision.latency


STATE = web.AppKey("nanoedit_emulator_state", ServerState)


# --- auth and body ------------------------------------------------------------------------


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_gemini_key(request: web.Request, key: str) -> None:
    """401 without `x-goog-api-key` / `?key=`, 403 with a wrong one; never echoes the key."""
    if not key:
        return
    given = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not given:
        raise ApiFailure(
            401,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    if not _same(given, key):
        raise ApiFailure(403, "API key not valid. Please pass a valid API key.")


def check_openai_key(request: web.Request, key: str) -> None:
    """401 without `Authorization`, 403 with a wrong key; `Bearer KEY` or a bare `KEY`."""
    if not key:
        return
    header = request.headers.get("Authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    given = rest.strip() if scheme.lower() == "bearer" else header
    if not given:
        raise ApiFailure(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            openai_code="missing_api_key",
        )
    if not _same(given, key):
        raise ApiFailure(403, "Incorrect API key provided.", openai_code="invalid_api_key")


def too_large(limit: int) -> ApiFailure:
    """Google's 400 for an oversized request body."""
    return ApiFailure(
        400,
        f"Request payload size exceeds the limit: {limit} bytes.",
        openai_code="request_too_large",
    )


async def read_body(request: web.Request, limit: int, *, mbps: float = 0.0) -> bytes:
    """The request body, refused with Google's 400 as soon as it exceeds `limit` bytes.

    `mbps` > 0 reads it no faster than that many megabits per second (a client's uplink)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    total = 0
    started = time.monotonic()
    while chunk := await request.content.readany():
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if mbps > 0:
            ahead = total * 8 / (mbps * 1e6) - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return b"".join(chunks)


# --- error bodies -------------------------------------------------------------------------

_FAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    408: "Request timed out.",
    429: "Resource has been exhausted (e.g. check quota).",
    499: "The operation was cancelled.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    502: "Bad gateway.",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


def failure_for(fault: Fault) -> ApiFailure:
    """The error answer a numeric fault stands for."""
    status = fault.status
    openai_type = "server_error" if status >= 500 else "invalid_request_error"
    code: str | None = None
    if status == 429:
        openai_type, code = "requests", "rate_limit_exceeded"
    return ApiFailure(
        status,
        _FAULT_MESSAGES[status],
        google_status=GOOGLE_STATUS[status],
        openai_type=openai_type,
        openai_code=code,
        retry_after=fault.retry,
    )


def _retry_headers(failure: ApiFailure) -> dict[str, str]:
    if failure.retry_after is None:
        return {}
    return {"Retry-After": str(math.ceil(failure.retry_after))}


def gemini_error(failure: ApiFailure) -> web.Response:
    """Google's error shape: `{"error": {"code", "message", "status", "details"?}}`."""
    error: dict[str, Any] = {
        "code": failure.status,
        "message": failure.message,
        "status": failure.google_status,
    }
    if failure.retry_after is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{failure.retry_after:g}s",
            }
        ]
    return web.Response(
        status=failure.status,
        body=_encoder.encode({"error": error}),
        headers={"Content-Type": JSON_TYPE, **_retry_headers(failure)},
    )


def openai_error(failure: ApiFailure) -> web.Response:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    error = {
        "message": failure.message,
        "type": failure.openai_type,
        "param": None,
        "code": failure.openai_code,
    }
    headers = {"Content-Type": JSON_TYPE, **_retry_headers(failure)}
    if failure.retry_after is not None:
        # OpenAI's servers also send the exact wait in milliseconds.
        headers["retry-after-ms"] = str(round(failure.retry_after * 1000))
    return web.Response(
        status=failure.status, body=_encoder.encode({"error": error}), headers=headers
    )


# --- delivery -----------------------------------------------------------------------------


def reset_connection(request: web.Request) -> web.Response:
    """Close the connection before any header, with an RST where the OS allows it."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns the close into a TCP reset, as a crashed proxy produces.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never sent: the transport is gone


def html_502() -> web.Response:
    """A gateway's HTML error page."""
    return web.Response(
        status=502, body=HTML_502, headers={"Content-Type": "text/html; charset=utf-8"}
    )


async def _drip(response: web.StreamResponse, data: bytes, fault: Fault | None) -> None:
    if fault is None:
        await response.write(data)
        return
    for start in range(0, len(data), fault.piece):
        await response.write(data[start : start + fault.piece])
        await asyncio.sleep(fault.delay)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def send_plain(
    request: web.Request,
    body: bytes,
    *,
    decision: Decision = NO_FAULTS,
    status: int = 200,
    content_type: str = JSON_TYPE,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send a whole body, applying the malformed, cut and drip faults."""
    outcome = decision.outcome.kind if decision.outcome else ""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if outcome == "malformed":
        body = body[: max(1, len(body) // 2)]
    if outcome != "cut" and decision.drip is None:
        return web.Response(status=status, body=body, headers=all_headers)
    response = web.StreamResponse(status=status, headers=all_headers)
    response.content_length = len(body)
    try:
        await response.prepare(request)
        if outcome == "cut":
            # Headers promise the whole body; half arrives, then the connection dies.
            await _drip(response, body[: len(body) // 2], decision.drip)
            _abort(request)
            return response
        await _drip(response, body, decision.drip)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away
    return response


Event = tuple[str | None, bytes]  # (SSE event name or None, JSON payload)
Events = Event | list[Event]
"""What a stream's producer yields: one event, or several that are ready at the same moment
(sent with one write when no drip fault spreads them out)."""


async def send_stream(
    request: web.Request,
    events: AsyncGenerator[Events, None],
    *,
    decision: Decision = NO_FAULTS,
    separator: bytes = b"\n\n",
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send `text/event-stream`, applying the cut, malformed and drip faults.

    Headers go out with the first event, so latency before it delays the first byte as a
    real server's thinking time does.
    """
    outcome = decision.outcome
    cut_after = outcome.count if outcome is not None and outcome.kind == "cut" else -1
    malformed = outcome is not None and outcome.kind == "malformed"
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **(headers or {}),
        },
    )
    sent = 0
    try:
        if cut_after == 0:
            await response.prepare(request)
            _abort(request)
            return response
        async for item in events:
            if not response.prepared:
                await response.prepare(request)
            # Events ready together go out in one write: five writes per Gemini answer were
            # 0.33 of the emulator's 3.8 s of handler time in a 6,000-call profile.
            frames: list[bytes] = []
            for name, payload in item if isinstance(item, list) else [item]:
                if malformed and sent == 1:
                    payload = payload[: max(1, len(payload) // 2)]
                frame = b"data: " + payload + separator
                if name is not None:
                    frame = b"event: " + name.encode() + b"\n" + frame
                if decision.drip is None:
                    frames.append(frame)
                else:
                    await _drip(response, frame, decision.drip)
                sent += 1
                if sent == cut_after:
                    break
            if frames:
                await response.write(b"".join(frames))
            if sent == cut_after:
                _abort(request)
                return response
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream
    except Exception:
        if not response.prepared:
            raise  # the middleware answers with a JSON 500
        # Headers are out: end the stream with an error event, as Google does, rather than
        # leave the client waiting on an open connection.
        _log.exception("emulator.stream_failed", path=request.path)
        error = {
            "error": {
                "code": 500,
                "message": "Internal error in the emulator.",
                "status": "INTERNAL",
            }
        }
        await response.write(b"data: " + json_body(error) + separator)
        await response.write_eof()
    finally:
        # Close now rather than at garbage collection when a cut ends the stream early.
        await events.aclose()
    return response


def json_response(value: Any, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """A 200 JSON answer."""
    return web.Response(
        body=json_body(value), headers={"Content-Type": JSON_TYPE, **(headers or {})}
    )


def json_body(value: Any) -> bytes:
    """JSON bytes (standard base64 for bytes fields)."""
    return _encoder.encode(value)


def frame_json_array(payloads: list[bytes]) -> bytes:
    """Google's non-SSE streamGenerateContent body: a JSON array of the chunks."""
    return b"[" + b",\r\n".join(payloads) + b"]"


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
