"""Transport: typed errors for every way an HTTP exchange fails, timeouts, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio
import structlog

from engine import (
    ApiError,
    Closed,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    StreamBroken,
    Timeouts,
    TotalTimeout,
    Unauthorized,
)
from engine.providers import error_from_body, json_http_error
from engine.wire import MAX_MESSAGE, Transport, clean_message, secrets_of
from tests._loopback import LoopbackServer, Reply, closed_port

KEY = "AIzaSyTEST-secret-key-0123456789abcdefXYZ"
FAST = Timeouts(connect=1.0, first_byte=2.0, idle=2.0, total=5.0)
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer() as srv:
        yield srv


@pytest_asyncio.fixture
async def transport() -> AsyncIterator[Transport]:
    async with Transport(timeouts=FAST, max_connections=4) as tr:
        yield tr


def _google(code: int, status: str, message: str, *details: dict[str, object]) -> bytes:
    err = {"code": code, "message": message, "status": status, "details": list(details)}
    return json.dumps({"error": err}).encode()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _conns(transport: Transport) -> tuple[int, int]:
    """(idle pooled connections, connections in use) of the transport's pool."""
    connector = transport.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    idle = sum(len(v) for v in connector._conns.values())
    return idle, len(connector._acquired)


async def test_request_returns_the_body_and_counts_bytes(
    server: LoopbackServer, transport: Transport
) -> None:
    """A 2xx answer comes back whole; both directions are counted; the request arrives intact."""
    server.script(Reply(body=b'{"ok": true}', headers={"content-type": "application/json"}))
    resp = await transport.request(
        "POST", server.url + "/v1/x?alt=1", body=b"hello", headers={"x-test": "1"}
    )
    assert (resp.status, resp.body, resp.content_type) == (200, b'{"ok": true}', "application/json")
    assert (resp.request_bytes, resp.response_bytes) == (5, 12)
    assert (transport.bytes_sent, transport.bytes_received) == (5, 12)
    assert resp.started_at <= resp.headers_at <= resp.done_at
    [seen] = server.requests
    assert (seen.method, seen.path, seen.query, seen.body) == ("POST", "/v1/x", "alt=1", b"hello")
    assert seen.headers["x-test"] == "1"
    assert seen.headers["user-agent"] == "nanoedit/0.1"


async def test_connections_are_pooled_and_reused(
    server: LoopbackServer, transport: Transport
) -> None:
    """Sequential requests share one kept-alive connection."""
    for _ in range(3):
        await transport.request("GET", server.url + "/")
    assert _conns(transport) == (1, 0)
    assert server.open_connections == 1


@pytest.mark.parametrize(
    ("reply", "cls", "code", "message", "retry_after"),
    [
        (
            Reply(400, _google(400, "INVALID_ARGUMENT", "Image part is missing a signature.")),
            InvalidRequest,
            "INVALID_ARGUMENT",
            "Image part is missing a signature.",
            None,
        ),
        (
            Reply(401, _google(401, "UNAUTHENTICATED", "API key not valid.")),
            Unauthorized,
            "UNAUTHENTICATED",
            "API key not valid.",
            None,
        ),
        (
            Reply(403, _google(403, "PERMISSION_DENIED", "denied")),
            Unauthorized,
            "PERMISSION_DENIED",
            "denied",
            None,
        ),
        (
            Reply(404, _google(404, "NOT_FOUND", "models/x is not found")),
            NotFound,
            "NOT_FOUND",
            "models/x is not found",
            None,
        ),
        (
            Reply(
                429,
                _google(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded",
                    {"@type": RETRY_INFO, "retryDelay": "15s"},
                ),
            ),
            RateLimited,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded",
            15.0,
        ),
        (
            Reply(500, _google(500, "INTERNAL", "An internal error has occurred.")),
            ServerError,
            "INTERNAL",
            "An internal error has occurred.",
            None,
        ),
        (
            Reply(
                503,
                _google(503, "UNAVAILABLE", "The model is overloaded."),
                headers={"Retry-After": "7"},
            ),
            ServerError,
            "UNAVAILABLE",
            "The model is overloaded.",
            7.0,
        ),
        (
            Reply(
                502,
                b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
                b"</body>\r\n</html>\r\n",
                headers={"content-type": "text/html"},
            ),
            ServerError,
            "",
            "502 Bad Gateway",
            None,
        ),
        (
            Reply(504, b"<!DOCTYPE html><html><body><h1>Gateway &amp; Timeout</h1></body></html>"),
            ServerError,
            "",
            "Gateway & Timeout",
            None,
        ),
        (
            Reply(500, b"upstream connect error or disconnect/reset before headers\n"),
            ServerError,
            "",
            "upstream connect error or disconnect/reset before headers",
            None,
        ),
        (Reply(503, b""), ServerError, "", "Service Unavailable", None),
        (
            Reply(
                500, b'{"error": {"code": 500, "mess', headers={"content-type": "application/json"}
            ),
            ServerError,
            "",
            'malformed JSON error body: {"error": {"code": 500, "mess',
            None,
        ),
        (
            Reply(400, b'{"error": {"message": "bad size", "type": "invalid_request_error"}}'),
            InvalidRequest,
            "invalid_request_error",
            "bad size",
            None,
        ),
        (
            Reply(
                429,
                b'[{"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}}]',
            ),
            RateLimited,
            "RESOURCE_EXHAUSTED",
            "slow",
            None,
        ),
        (Reply(502, b'{"detail": "upstream failed"}'), ServerError, "", "upstream failed", None),
        (
            Reply(500, b'{"foo": 1}'),
            ServerError,
            "",
            'unexpected JSON error body: {"foo": 1}',
            None,
        ),
        (Reply(418, b"teapot"), ApiError, "", "teapot", None),
    ],
    ids=[
        "400-google",
        "401-google",
        "403-google",
        "404-google",
        "429-retryinfo",
        "500-google",
        "503-retry-after",
        "502-html",
        "504-html-heading",
        "500-plain-text",
        "503-empty",
        "500-malformed-json",
        "400-openai",
        "429-json-array",
        "502-detail",
        "500-unexpected-json",
        "418-other",
    ],
)
async def test_error_answers_become_typed_errors(
    server: LoopbackServer,
    transport: Transport,
    reply: Reply,
    cls: type[ApiError],
    code: str,
    message: str,
    retry_after: float | None,
) -> None:
    """Each non-2xx body shape maps to the ApiError for its status, with a clear message."""
    server.script(reply)
    with pytest.raises(ApiError) as info:
        await transport.request(
            "POST",
            server.url + "/v1beta/models/m:generateContent",
            body=b"{}",
            errors=json_http_error,
        )
    err = info.value
    assert type(err) is cls
    assert (err.status, err.code, err.message, err.retry_after) == (
        reply.status,
        code,
        message,
        retry_after,
    )


async def test_stream_raises_the_same_typed_error_before_yielding(
    server: LoopbackServer, transport: Transport
) -> None:
    """A streaming request answered with an error status raises before any chunk is read."""
    server.script(Reply(429, _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded")))
    with pytest.raises(RateLimited, match="Quota exceeded"):
        async with transport.stream("POST", server.url + "/s", errors=json_http_error):
            pytest.fail("the block must not run")


@pytest.mark.parametrize(
    ("headers", "retry_delay", "expected"),
    [
        ({"Retry-After": "30"}, "15s", 30.0),
        ({"Retry-After": "5"}, "15s", 15.0),
        ({"retry-after-ms": "2500"}, None, 2.5),
    ],
)
async def test_retry_after_takes_the_larger_server_delay(
    server: LoopbackServer,
    transport: Transport,
    headers: dict[str, str],
    retry_delay: str | None,
    expected: float,
) -> None:
    """With both Retry-After and RetryInfo, the longer wait wins (both are minimums)."""
    details: list[dict[str, object]] = (
        [{"@type": RETRY_INFO, "retryDelay": retry_delay}] if retry_delay else []
    )
    server.script(Reply(429, _google(429, "RESOURCE_EXHAUSTED", "slow", *details), headers=headers))
    with pytest.raises(RateLimited) as info:
        await transport.request("GET", server.url + "/", errors=json_http_error)
    assert info.value.retry_after == expected


async def test_long_messages_are_cut_and_base64_elided(
    server: LoopbackServer, transport: Transport
) -> None:
    """An error echoing megabytes (say the request's image) yields a short message without it."""
    blob = "iVBORw0KGgo" + "A" * 200_000
    server.script(Reply(400, _google(400, "INVALID_ARGUMENT", f"bad data {blob} " + "word " * 300)))
    with pytest.raises(InvalidRequest) as info:
        await transport.request("POST", server.url + "/", errors=json_http_error)
    message = info.value.message
    assert len(message) <= MAX_MESSAGE
    assert message.startswith("bad data [200011 chars elided] word word")
    assert "AAAAAAAAAA" not in message


async def test_plain_text_error_keeps_only_a_snippet(
    server: LoopbackServer, transport: Transport
) -> None:
    """A plain-text error body gives its first 200 characters."""
    server.script(Reply(500, b"x" * 50 + b" " + b"y " * 1000))
    with pytest.raises(ServerError) as info:
        await transport.request("GET", server.url + "/")
    assert info.value.message == ("x" * 50 + " " + "y " * 100)[:200].strip()


@pytest.mark.parametrize(
    "reply",
    [
        Reply(401, _google(401, "UNAUTHENTICATED", f"API key {KEY} not valid")),
        Reply(400, f"<html><title>Bad key {KEY}</title></html>".encode()),
        Reply(500, f"key={KEY}".encode()),
        Reply(403, json.dumps({"error": {"message": f"Bearer {KEY}", "type": "auth"}}).encode()),
    ],
    ids=["google-json", "html", "plain", "openai"],
)
async def test_the_key_never_appears_in_errors_or_logs(
    server: LoopbackServer, transport: Transport, reply: Reply
) -> None:
    """Even when the server echoes the key, no message, chained cause or log line carries it."""
    server.script(reply)
    with structlog.testing.capture_logs() as logs, pytest.raises(ApiError) as info:
        await transport.request(
            "POST",
            server.url + "/v1beta/x?key=" + KEY,
            headers={"x-goog-api-key": KEY},
            errors=json_http_error,
        )
    assert server.requests[0].headers["x-goog-api-key"] == KEY
    for exc in _chain(info.value):
        assert KEY not in str(exc) and KEY not in repr(exc)
    assert "***" in info.value.message
    assert logs and KEY not in repr(logs)
    assert all("?" not in str(entry.get("path")) for entry in logs)


async def test_the_key_never_appears_in_transport_failures(
    server: LoopbackServer, transport: Transport
) -> None:
    """Connection-level failures and their logs carry no key either."""
    server.script(Reply(chunks=[b"partial"], cut=True))
    with structlog.testing.capture_logs() as logs, pytest.raises(StreamBroken) as info:
        await transport.request("GET", server.url + "/", headers={"authorization": f"Bearer {KEY}"})
    for exc in _chain(info.value):
        assert KEY not in str(exc)
    assert [e["event"] for e in logs] == ["http.failed"]
    assert logs[0]["error"] == "StreamBroken" and KEY not in repr(logs)


async def test_success_is_logged_without_headers_or_query(
    server: LoopbackServer, transport: Transport
) -> None:
    """The debug line has method, path (no query), status, byte counts and durations only."""
    server.script(Reply(body=b"abc"))
    with structlog.testing.capture_logs() as logs:
        await transport.request("POST", server.url + "/p/q?key=" + KEY, body=b"12")
    [entry] = logs
    assert entry["event"] == "http.response" and entry["log_level"] == "debug"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/p/q", 200)
    assert (entry["request_bytes"], entry["response_bytes"]) == (2, 3)
    assert set(entry) == {
        "event",
        "log_level",
        "method",
        "path",
        "status",
        "request_bytes",
        "response_bytes",
        "headers_s",
        "duration_s",
    }


async def test_no_headers_in_time_is_a_first_byte_timeout(server: LoopbackServer) -> None:
    """A server that sits on the request raises FirstByteTimeout after `first_byte`."""
    server.script(Reply(delay=5.0))
    async with Transport(timeouts=Timeouts(connect=1, first_byte=0.05, idle=5, total=5)) as tr:
        with pytest.raises(FirstByteTimeout):
            await tr.request("GET", server.url + "/")


async def test_silence_between_chunks_is_an_idle_timeout(server: LoopbackServer) -> None:
    """A stream that stops sending for longer than `idle` raises IdleTimeout mid-body."""
    server.script(Reply(chunks=[b"first", 5.0, b"never"]))
    received = []
    async with Transport(timeouts=Timeouts(connect=1, first_byte=1, idle=0.05, total=5)) as tr:
        with pytest.raises(IdleTimeout):
            async with tr.stream("GET", server.url + "/") as resp:
                async for chunk in resp.chunks():
                    received.append(chunk)
    assert received == [b"first"]


async def test_a_silence_after_slow_headers_is_caught_within_idle(server: LoopbackServer) -> None:
    """The headers come later than `idle` (within `first_byte`); a silence after them still
    ends the read after `idle`, not at the header deadline: the second chunk, due long before
    that deadline, is never waited for."""
    server.script(Reply(delay=0.3, chunks=[b"first", 1.0, b"late"]))
    received = []
    async with Transport(timeouts=Timeouts(connect=1, first_byte=3, idle=0.1, total=5)) as tr:
        with pytest.raises(IdleTimeout):
            async with tr.stream("GET", server.url + "/") as resp:
                async for chunk in resp.chunks():
                    received.append(chunk)
    assert received == [b"first"]


@pytest.mark.parametrize("outer_first", [True, False])
async def test_a_caller_timeout_and_the_header_wait_are_told_apart(
    server: LoopbackServer, outer_first: bool
) -> None:
    """The caller's own asyncio.timeout running out first is the caller's TimeoutError; the
    header wait running out first is FirstByteTimeout, even inside the caller's timeout."""
    server.script(Reply(delay=5.0))
    first_byte, outer = (5.0, 0.05) if outer_first else (0.05, 5.0)
    timeouts = Timeouts(connect=1, first_byte=first_byte, idle=5, total=10)
    async with Transport(timeouts=timeouts) as tr:
        with pytest.raises((TimeoutError, FirstByteTimeout)) as info:
            async with asyncio.timeout(outer):
                await tr.request("GET", server.url + "/")
    assert type(info.value) is (TimeoutError if outer_first else FirstByteTimeout)
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_a_slow_reader_is_not_an_idle_server(server: LoopbackServer) -> None:
    """Idle time is counted while waiting for data only: a consumer that takes longer than
    `idle` between reads, with the data already there, is not timed out; a later silence is."""
    server.script(Reply(chunks=[b"a", 0.02, b"b", 0.02, b"c", 1.5, b"never"]))
    received = []
    async with Transport(timeouts=Timeouts(connect=1, first_byte=1, idle=0.15, total=5)) as tr:
        with pytest.raises(IdleTimeout):
            async with tr.stream("GET", server.url + "/") as resp:
                async for chunk in resp.chunks():
                    received.append(chunk)
                    await asyncio.sleep(0.2)  # longer than idle, on our side
    assert b"".join(received) == b"abc"


async def test_a_steady_trickle_hits_the_total_timeout(server: LoopbackServer) -> None:
    """Chunks arriving within `idle` but beyond `total` overall raise TotalTimeout."""
    server.script(Reply(chunks=[x for _ in range(40) for x in (b"x", 0.01)]))
    async with Transport(timeouts=Timeouts(connect=1, first_byte=1, idle=1, total=0.1)) as tr:
        with pytest.raises(TotalTimeout):
            await tr.request("GET", server.url + "/")


async def test_total_bounds_the_wait_for_headers(server: LoopbackServer) -> None:
    """When `total` is shorter than `first_byte`, the header wait raises TotalTimeout."""
    server.script(Reply(delay=5.0))
    async with Transport(timeouts=Timeouts(connect=1, first_byte=5, idle=5, total=0.05)) as tr:
        with pytest.raises(TotalTimeout):
            await tr.request("GET", server.url + "/")


async def test_connection_refused_is_a_connect_error(transport: Transport) -> None:
    """Nobody listening on the port gives ConnectError."""
    with pytest.raises(ConnectError) as info:
        await transport.request("GET", f"http://127.0.0.1:{closed_port()}/")
    assert isinstance(info.value.__cause__, aiohttp.ClientError)


@contextlib.contextmanager
def _unaccepting_port() -> Iterator[int]:
    """A listening port whose accept queue is full, so new handshakes hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            fillers.append(sock)
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


async def test_a_hanging_handshake_is_a_connect_timeout() -> None:
    """A TCP handshake that does not complete within `connect` raises ConnectTimeout."""
    with _unaccepting_port() as port:
        async with Transport(timeouts=Timeouts(connect=0.05, first_byte=5, idle=5, total=5)) as tr:
            with pytest.raises(ConnectTimeout):
                await tr.request("GET", f"http://127.0.0.1:{port}/")


async def test_close_before_headers_is_a_connect_error(
    server: LoopbackServer, transport: Transport
) -> None:
    """A server dropping the connection before answering gives ConnectError."""
    server.script(Reply(close_before_headers=True))
    with pytest.raises(ConnectError):
        await transport.request("POST", server.url + "/", body=b"x")


async def test_stream_cut_mid_body_is_stream_broken(
    server: LoopbackServer, transport: Transport
) -> None:
    """A chunked body that stops without its terminating chunk raises StreamBroken."""
    server.script(Reply(chunks=[b"data: 1\n\n", 0.01, b"data: 2"], cut=True))
    received = []
    with pytest.raises(StreamBroken):
        async with transport.stream("GET", server.url + "/") as resp:
            async for chunk in resp:
                received.append(chunk)
    assert b"".join(received).startswith(b"data: 1\n\n")
    assert _conns(transport) == (0, 0)


async def test_short_content_length_body_is_stream_broken(
    server: LoopbackServer, transport: Transport
) -> None:
    """A body shorter than its Content-Length (connection closed) raises StreamBroken."""
    server.script(Reply(body=b"short", content_length=100, cut=True))
    with pytest.raises(StreamBroken):
        await transport.request("GET", server.url + "/")


async def test_error_status_survives_an_unreadable_error_body(
    server: LoopbackServer, transport: Transport
) -> None:
    """A 503 whose body breaks off is still a ServerError with its status."""
    server.script(Reply(503, b"Service overl", content_length=500, cut=True))
    with pytest.raises(ServerError) as info:
        await transport.request("GET", server.url + "/")
    assert info.value.status == 503
    assert info.value.message == "Service overl"


async def test_stream_delivers_chunks_and_returns_the_connection(
    server: LoopbackServer, transport: Transport
) -> None:
    """A fully read stream yields every byte, counts them, and puts its connection back."""
    server.script(Reply(chunks=[b"a" * 10, 0.01, b"b" * 20, 0.01, b"c"]))
    async with transport.stream("POST", server.url + "/", body=b"q") as resp:
        body = await resp.read()
        assert (resp.status, resp.request_bytes) == (200, 1)
    assert body == b"a" * 10 + b"b" * 20 + b"c"
    assert resp.response_bytes == 31
    assert _conns(transport) == (1, 0)


async def test_leaving_a_stream_early_drops_the_connection(
    server: LoopbackServer, transport: Transport
) -> None:
    """Exiting the block before the body ended closes that connection instead of pooling it."""
    server.script(Reply(chunks=[b"a", 0.01, b"b", 5.0, b"c"]))
    async with transport.stream("GET", server.url + "/") as resp:
        async for _ in resp:
            break
    assert _conns(transport) == (0, 0)


async def test_cancellation_mid_stream_closes_the_connection_and_leaks_no_task(
    server: LoopbackServer, transport: Transport
) -> None:
    """Cancelling a reader mid-stream propagates CancelledError and leaves nothing open."""
    server.script(Reply(chunks=[b"first", 5.0, b"never"]))
    before = asyncio.all_tasks()
    got_first = asyncio.Event()

    async def reader() -> None:
        async with transport.stream("GET", server.url + "/") as resp:
            async for _ in resp:
                got_first.set()

    task = asyncio.create_task(reader())
    await got_first.wait()
    assert _conns(transport) == (0, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _conns(transport) == (0, 0)
    for _ in range(50):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert server.open_connections == 0
    assert asyncio.all_tasks() <= before


async def test_cancellation_while_waiting_for_headers_passes_through(
    server: LoopbackServer, transport: Transport
) -> None:
    """Cancelling before the headers arrive raises CancelledError, not a nanoedit error."""
    server.script(Reply(delay=5.0))
    task = asyncio.create_task(transport.request("GET", server.url + "/"))
    await server.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _conns(transport) == (0, 0)


async def test_aclose_closes_the_session_and_refuses_new_requests(
    server: LoopbackServer,
) -> None:
    """After aclose() the pool is closed and requests raise Closed; aclose is idempotent."""
    tr = Transport(timeouts=FAST)
    assert tr.connector is None
    await tr.request("GET", server.url + "/")
    connector = tr.connector
    assert connector is not None and not connector.closed
    await tr.aclose()
    await tr.aclose()
    assert tr.closed and connector.closed and tr.connector is None
    with pytest.raises(Closed):
        await tr.request("GET", server.url + "/")


async def test_invalid_url_is_a_config_error(transport: Transport) -> None:
    """A URL aiohttp cannot use is a ConfigError (nothing was sent)."""
    with pytest.raises(ConfigError):
        await transport.request("GET", "not a url")


async def test_a_non_http_answer_is_a_connect_error(transport: Transport) -> None:
    """Bytes that are not HTTP before the headers give ConnectError."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError, match="invalid HTTP response"):
            await transport.request("GET", f"http://127.0.0.1:{port}/")
    finally:
        srv.close()
        await srv.wait_closed()


def test_secrets_of_finds_credential_headers() -> None:
    """Credential header values (and bearer tokens) are secrets; other headers are not."""
    headers = {"X-Goog-Api-Key": "k1", "Authorization": "Bearer t2", "content-type": "json"}
    assert set(secrets_of(headers)) == {"k1", "Bearer t2", "t2"}
    assert secrets_of(None) == ()


def test_clean_message_scrubs_collapses_and_cuts() -> None:
    """clean_message removes secrets, collapses whitespace and caps the length."""
    assert clean_message("key  s3cr3t\n\tthere", ["s3cr3t"]) == "key *** there"
    assert len(clean_message("w " * 1000)) == MAX_MESSAGE


def test_error_from_body_reads_plain_dict_headers() -> None:
    """error_from_body works with ordinary dict headers as well as aiohttp's multidict."""
    err = error_from_body(502, b"<title>Bad</title>", headers={"Content-Type": "text/html"})
    assert (type(err), err.message) == (ServerError, "Bad")


async def test_the_transport_alone_reads_errors_as_plain_http(
    server: LoopbackServer, transport: Transport
) -> None:
    """Without a provider's mapper, a JSON error body is text: status class, snippet, no code;
    Retry-After is still honoured (it is HTTP)."""
    server.script(
        Reply(429, _google(429, "RESOURCE_EXHAUSTED", "slow"), headers={"Retry-After": "3"})
    )
    with pytest.raises(RateLimited) as info:
        await transport.request("GET", server.url + "/")
    assert info.value.code == ""
    assert info.value.message.startswith('{"error"')
    assert info.value.retry_after == 3.0
