"""The gateway against its own `/openapi.json`, property-based (schemathesis): a bounded run of
generated requests per operation; no 500s, and every answer matches the documented status
codes, content types and schemas."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from engine import Engine, EngineConfig
from engine._config import EmulatorOptions
from engine.serve import ROUTES, ServeOptions, create_app
from engine.serve._openapi import openapi_document

SCHEMA = schemathesis.openapi.from_dict(json.loads(openapi_document(ROUTES)))
KEY = "schema-test-key-1"


class GatewayThread:
    """A gateway (embedded emulator, flat images) serving from its own thread and loop: the
    generated requests are made synchronously."""

    def __init__(self) -> None:
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        cfg = EngineConfig(emulator=EmulatorOptions(flat=True))
        async with Engine(cfg) as engine:
            app = create_app(engine, ServeOptions(keys={"t": [KEY]}, max_body_bytes=1_000_000))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.base_url = f"http://127.0.0.1:{port}"
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def start(self) -> str:
        self._thread.start()
        assert self._ready.wait(30), "the gateway did not start"
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    gateway = GatewayThread()
    yield gateway.start()
    gateway.stop()


@SCHEMA.exclude(path="/v1/sessions/{id}/events").parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_gateway_answers_as_its_schema_says(case: Any, gateway_url: str) -> None:
    """Every route answers what /openapi.json documents (schemathesis), never a 5xx."""
    case.call_and_validate(
        base_url=gateway_url,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )
