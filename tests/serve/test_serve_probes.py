"""What a reliability probe of `nanoedit serve` found broken, each held by a test: handles let
go, no 409 after a streamed turn, images readable when turn.completed arrives, ownership checked
before opening, DELETE under the lease, 400 for bad multipart and bad images, 405 with Allow,
conditional and HEAD image requests, no header value in a log."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer

from engine import Engine, EngineConfig
from engine.events import Event
from engine.serve import GATEWAY, ServeOptions, create_app, status_of
from engine.state import ClusterError
from sessions import MemoryStore, SessionStore, StoreError
from tests.conftest import EmulatorFactory, config_for, live_owner, png

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

ALICE, BOB = "alice-key-0001", "bob-key-0002"
KEYS = {"alice": [ALICE], "bob": [BOB]}


class SlowReleaseStore(MemoryStore):
    """A store whose lease release takes a moment (a remote database's round trip)."""

    async def release_lease(self, session_id: str, owner: str) -> None:
        await asyncio.sleep(0.05)
        await super().release_lease(session_id, owner)


class Gate:
    """A gateway on 127.0.0.1 over an engine on its own store, and an HTTP client for it."""

    def __init__(self, engine: Engine, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.engine = engine
        self.server = server
        self.http = http
        self.base = str(server.make_url("")).rstrip("/")

    @property
    def gateway(self) -> Any:
        return self.server.app[GATEWAY]

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str = ALICE, **kw: Any
    ) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        async with self.http.request(
            method, self.base + path, data=data, headers=headers, **kw
        ) as resp:
            raw = await resp.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = raw
            return resp.status, doc, resp.headers


@pytest.fixture
async def gate(make_emulator: EmulatorFactory) -> AsyncIterator[Any]:
    """Start gateways over a store of the test's choosing; closed afterwards."""
    started: list[Gate] = []

    async def factory(store: SessionStore | None = None, **options: Any) -> Gate:
        emu = await make_emulator()
        engine = Engine(config_for(emu.base_url), store=store or MemoryStore())
        await engine.start()
        server = TestServer(create_app(engine, ServeOptions(keys=KEYS, **options)))
        await server.start_server()
        g = Gate(engine, server, aiohttp.ClientSession())
        started.append(g)
        return g

    yield factory
    for g in reversed(started):
        await g.http.close()
        await g.server.close()
        await g.engine.aclose()


async def _stream_turn(g: Gate, sid: str, text: str) -> list[dict[str, Any]]:
    """A streamed turn read to the end of its body; its events."""
    events: list[dict[str, Any]] = []
    async with g.http.post(
        f"{g.base}/v1/sessions/{sid}/turns",
        json={"text": text, "stream": True},
        headers={"Authorization": f"Bearer {ALICE}"},
    ) as resp:
        assert resp.status == 200
        body = await resp.read()
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    return events


async def test_handles_are_let_go_when_no_request_uses_them(gate: Any) -> None:
    """A gateway that touched many sessions holds only the few most recent once its requests
    are done (idle_sessions), however many it touched."""
    g = await gate(idle_sessions=3)
    for n in range(12):
        status, session, _ = await g.call("POST", "/v1/sessions", {})
        assert status == 201
        sid = session["id"]
        assert (await g.call("POST", f"/v1/sessions/{sid}/turns", {"text": f"mug {n}"}))[0] == 200
        assert (await g.call("GET", f"/v1/sessions/{sid}"))[0] == 200
    assert g.gateway.sessions_held == 3


async def test_a_streamed_turn_is_over_when_its_last_event_arrives(gate: Any) -> None:
    """A strictly sequential client never gets 409 SessionBusy right after a streamed turn:
    the lease is let go before the terminal event is sent."""
    g = await gate(SlowReleaseStore())
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]
    for n in range(3):
        events = await _stream_turn(g, sid, f"turn {n}")
        assert events[-1]["type"] == "turn.completed"
        # The next request at once: another turn, then head moves.
        if n == 0:
            status, doc, _ = await g.call("POST", f"/v1/sessions/{sid}/turns", {"text": "x"})
        else:
            status, doc, _ = await g.call("POST", f"/v1/sessions/{sid}/undo")
        assert status == 200, doc


async def test_the_image_is_readable_when_turn_completed_arrives(gate: Any) -> None:
    """Nothing is announced before it can be read: the image of turn.completed is served at
    once (the tenant's images come from the store, where the commit put them first)."""
    g = await gate(SlowReleaseStore())
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]
    async with g.http.post(
        f"{g.base}/v1/sessions/{sid}/turns",
        json={"text": "a mug", "stream": True},
        headers={"Authorization": f"Bearer {ALICE}"},
    ) as resp:
        async for line in resp.content:
            if line.startswith(b"data: ") and b'"turn.completed"' in line:
                digest = json.loads(line[6:])["images"][0]["sha256"]
                status, _, _ = await g.call("GET", f"/v1/images/{digest}")
                assert status == 200
                break
        else:
            raise AssertionError("no turn.completed")


async def test_another_tenants_session_is_not_opened(gate: Any) -> None:
    """Another tenant's id answers 404 like an unknown one, and publishes nothing into the
    owner's event stream (the record's owner is read before the session is opened)."""
    store = MemoryStore()
    async with Engine(EngineConfig(), store=store) as first:
        sid = (await first.create_session(owner="alice")).id
    g = await gate(store)
    seen: list[Event] = []
    g.engine.bus.on("*", seen.append)
    for path in (f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/export"):
        status, doc, _ = await g.call("GET", path, key=BOB)
        unknown = await g.call("GET", path.replace(sid, "f" * 32), key=BOB)
        assert status == unknown[0] == 404 and doc["error"]["type"] == "SessionNotFound"
    assert [e for e in seen if e.session_id == sid] == []


async def test_delete_takes_the_lease(gate: Any) -> None:
    """DELETE while another engine holds the session's lease is 409 and deletes nothing."""
    store = MemoryStore()
    g = await gate(store)
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]
    assert await store.acquire_lease(sid, live_owner(), 30.0)
    status, doc, headers = await g.call("DELETE", f"/v1/sessions/{sid}")
    assert status == 409 and doc["error"]["type"] == "SessionBusy" and "Retry-After" in headers
    assert (await store.load_record(sid)).id == sid
    await store.release_lease(sid, live_owner())
    assert (await g.call("DELETE", f"/v1/sessions/{sid}"))[0] == 204
    assert (await g.call("GET", f"/v1/sessions/{sid}"))[0] == 404


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=text\r\n\r\nhi"),
        ("multipart/form-data; boundary=zzz", b"--x\r\nnot a form\r\n--x--\r\n"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n\xff\xfe\xfa\r\n--b--\r\n',
        ),
        (  # a part header aiohttp cannot parse (raised InvalidHeader: a 500 before)
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="\x16w\xc2\x9b"\r\n\r\nx\r\n--b--\r\n',
        ),
    ],
)
async def test_a_malformed_multipart_body_is_400(gate: Any, content_type: str, body: bytes) -> None:
    """No boundary, a wrong boundary, a non-UTF-8 field, an unparsable part header: 400, and
    the session has no turn."""
    g = await gate()
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]
    status, doc, _ = await g.call(
        "POST", f"/v1/sessions/{sid}/turns", body, headers={"Content-Type": content_type}
    )
    assert status == 400 and doc["error"]["type"] == "InvalidRequest", doc
    assert (await g.call("GET", f"/v1/sessions/{sid}"))[1]["turns"] == []


def _png_bomb() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 65535, 65535, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _b64(data: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(data).decode()}


@pytest.mark.parametrize(
    ("images", "words"),
    [
        ([_b64(png(64, 64)[:-30])], "damaged or truncated"),
        ([_b64(_png_bomb())], "too many pixels"),
        ([_b64(png())] * 15, "at most 14"),
    ],
)
async def test_an_invalid_image_is_400_before_anything_is_sent(
    gate: Any, images: list[dict[str, str]], words: str
) -> None:
    """A truncated PNG, a 65535x65535 PNG bomb, more images than the model takes: 400 from the
    gateway itself (not the upstream's 400 as 502), and the session stays as it was."""
    g = await gate()
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]
    status, doc, _ = await g.call(
        "POST", f"/v1/sessions/{sid}/turns", {"text": "edit", "images": images}
    )
    assert status == 400 and words in doc["error"]["message"], doc
    assert (await g.call("GET", f"/v1/sessions/{sid}"))[1]["turns"] == []


async def test_405_says_which_methods_are_allowed(gate: Any) -> None:
    """A method a path does not take is 405 in the JSON error shape, with its Allow header."""
    g = await gate()
    status, doc, headers = await g.call("PUT", "/v1/sessions")
    assert status == 405 and doc["error"]["status"] == 405
    assert set(headers["Allow"].split(",")) >= {"GET", "POST"}


async def test_images_answer_conditional_and_head_requests(gate: Any) -> None:
    """If-None-Match with a weak tag or `*` is 304; HEAD answers the GET's headers, no body."""
    g = await gate()
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]
    turn = (await g.call("POST", f"/v1/sessions/{sid}/turns", {"text": "a mug"}))[1]
    url = turn["images"][0]["url"]
    digest = turn["images"][0]["sha256"]
    for tag in (f'W/"{digest}"', "*", f'"other", "{digest}"'):
        status, _, headers = await g.call("GET", url, headers={"If-None-Match": tag})
        assert status == 304 and headers["ETag"] == f'"{digest}"', tag
    assert (await g.call("GET", url, headers={"If-None-Match": '"other"'}))[0] == 200
    async with g.http.head(g.base + url, headers={"Authorization": f"Bearer {ALICE}"}) as resp:
        assert resp.status == 200 and resp.headers["ETag"] == f'"{digest}"'
        assert int(resp.headers["Content-Length"]) > 0 and await resp.read() == b""


class BrokenStore(MemoryStore):
    """A store with a bug: listing raises something no handler expects."""

    async def list(self, *, owner: str | None = None) -> list[Any]:
        raise RuntimeError("a bug in a store")


async def test_an_internal_error_logs_no_header_value(gate: Any) -> None:
    """The generic 500: the JSON error shape, and the log line carries no key or header."""
    g = await gate(BrokenStore())
    out = io.StringIO()
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(out),
    )
    try:
        status, doc, _ = await g.call("GET", "/v1/sessions", headers={"X-Secret": "hdr-value-77"})
    finally:
        structlog.configure(**saved)
    assert status == 500 and doc["error"]["type"] == "InternalError"
    logged = out.getvalue()
    assert "serve.internal_error" in logged and "a bug in a store" in logged
    assert ALICE not in logged and "hdr-value-77" not in logged and "Bearer" not in logged


def test_an_unreachable_store_or_redis_is_503_with_retry_after() -> None:
    """StoreError and ClusterError mean "try again shortly": 503 with a Retry-After."""
    assert status_of(StoreError("down")) == (503, 5.0)
    assert status_of(ClusterError("redis down")) == (503, 5.0)


async def test_healthz_is_503_while_the_store_is_down(gate: Any) -> None:
    """/healthz says which part is down, with 503."""

    class DownStore(MemoryStore):
        async def load_record(self, session_id: str) -> Any:
            raise StoreError("the database went away")

    g = await gate(DownStore())
    status, health, _ = await g.call("GET", "/healthz")
    assert status == 503 and health["store"] == "down" and health["status"] == "unavailable"


async def test_events_answer_503_when_their_source_cannot_start(gate: Any) -> None:
    """/events opens the session's event source (Redis in a cluster) before answering: when it
    cannot, the client gets 503 with Retry-After, never a 200 stream that stays silent."""
    g = await gate()
    sid = (await g.call("POST", "/v1/sessions", {}))[1]["id"]

    class Unreachable:
        ready = asyncio.Event()

        async def begin(self) -> None:
            raise ClusterError("redis: connection refused")

    g.gateway._new_fanout = lambda session_id: Unreachable()
    status, doc, headers = await g.call("GET", f"/v1/sessions/{sid}/events")
    assert status == 503 and doc["error"]["type"] == "ClusterError"
    assert "Retry-After" in headers
