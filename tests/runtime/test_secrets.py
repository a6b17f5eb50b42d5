"""The API key never reaches a traceback: not in messages, not in any frame's locals that a
logged exception can show (structlog's traceback renderer with locals on)."""

from __future__ import annotations

import socket

import msgspec
import pytest
import structlog

from engine import Engine, EngineConfig, NanoeditError, RetryPolicy, Secret
from tests._loopback import LoopbackServer, Reply

KEY = "AIzaSy-very-secret-key-0123456789abcdef"


def rendered(exc: BaseException) -> str:
    """The exception as structlog's dict_tracebacks would log it, locals included."""
    trace = structlog.tracebacks.extract(
        type(exc), exc, exc.__traceback__, show_locals=True, locals_max_string=10_000
    )
    return msgspec.json.encode(trace).decode()


def echoing_error(status: int) -> bytes:
    """A Google error body that quotes the key back (some gateways do)."""
    return b'{"error": {"code": %d, "message": "bad key %s", "status": "X"}}' % (
        status,
        KEY.encode(),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config(base_url: str) -> EngineConfig:
    return EngineConfig(
        provider="custom",
        base_url=base_url,
        api_key=Secret(KEY),
        retry=RetryPolicy(max_attempts=1),
    )


@pytest.mark.parametrize("status", [400, 500])
async def test_an_error_answer_keeps_the_key_out_of_the_traceback(status: int) -> None:
    """An error answer (which echoes the key) through send(): no frame shows the key."""
    async with LoopbackServer() as server:
        server.script(Reply(status=status, body=echoing_error(status)))
        async with Engine(config(server.url)) as engine:
            s = await engine.create_session()
            with pytest.raises(NanoeditError) as info:
                await s.send("a mug")
    text = rendered(info.value)
    assert "frames" in text and "locals" in text
    assert KEY not in text


async def test_a_refused_connection_keeps_the_key_out_of_the_traceback() -> None:
    """A ConnectError (aiohttp's own frames beneath it): no frame shows the key."""
    async with Engine(config(f"http://127.0.0.1:{free_port()}")) as engine:
        s = await engine.create_session()
        with pytest.raises(NanoeditError) as info:
            await s.send("a mug")
    text = rendered(info.value)
    assert "locals" in text
    assert KEY not in text
