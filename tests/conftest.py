"""Shared fixtures and helpers: emulators on 127.0.0.1, engine configs with fast retries, a
`FakeProvider` scripted per attempt, and leak checks for tasks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import structlog
from PIL import Image as PILImage

from engine import EngineConfig, RetryPolicy
from engine.emulator import Emulator, EmulatorSettings
from engine.providers import GenerateRequest, OnDelta, Provider, ProviderResult
from engine.wire import ImageDelta, RequestBody, TextDelta
from sessions import (
    Blob,
    Content,
    MemoryStore,
    Part,
    PostgresStore,
    SessionStore,
    SqliteStore,
    Usage,
    wire_contents,
)

ENV_VARS = (
    "NANOEDIT_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "WISDOM_GATE_KEY",
    "NANOEDIT_BASE_URL",
    "NANOEDIT_PROVIDER",
    "NANOEDIT_MODEL",
)
"""The variables EngineConfig.from_env() reads: command-line tests run without them."""

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)
"""Retries without waiting: three attempts, millisecond back-off."""

PG_ADMIN = os.environ.get("NANOEDIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
"""Where the test databases are created (each test its own, dropped afterwards)."""

REDIS_URL = os.environ.get("NANOEDIT_TEST_REDIS", "redis://127.0.0.1:6379/15")
"""The Redis the cluster tests use: db 15 unless told otherwise (never db 0), each test under a
key prefix of its own."""

CHROMIUM = os.environ.get("NANOEDIT_TEST_CHROMIUM", "/usr/bin/chromium")
"""Debian's chromium, which the studio's browser tests drive through Playwright."""

REQUIRE_SERVICES = os.environ.get("NANOEDIT_TEST_REQUIRE_SERVICES") == "1"
"""CI sets it: a test whose service is missing fails instead of skipping."""


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _browser_missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"chromium not found at {CHROMIUM} "
            "(apt-get install -y chromium, or set NANOEDIT_TEST_CHROMIUM)"
        )
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def _server_missing(what: str, url: str, port: int, variable: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if _reachable(url, port):
            return None
        return f"{what} not reachable at {urlsplit(url).netloc} (start it, or set {variable})"

    return check


_SERVICE_CHECKS: dict[str, Callable[[], str | None]] = {
    "postgres": _server_missing("PostgreSQL", PG_ADMIN, 5432, "NANOEDIT_TEST_PG"),
    "redis": _server_missing("Redis", REDIS_URL, 6379, "NANOEDIT_TEST_REDIS"),
    "browser": _browser_missing,
}
_missing_services: dict[str, str | None] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked postgres, redis or browser skips with one line when that service is
    missing, or fails where NANOEDIT_TEST_REQUIRE_SERVICES=1 (CI)."""
    for name, check in _SERVICE_CHECKS.items():
        if item.get_closest_marker(name) is None:
            continue
        if name not in _missing_services:
            _missing_services[name] = check()
        why = _missing_services[name]
        if why is not None:
            if REQUIRE_SERVICES:
                pytest.fail(f"{why}; NANOEDIT_TEST_REQUIRE_SERVICES=1 requires it", pytrace=False)
            pytest.skip(why)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """For command-line tests: no key or provider in the environment, NANOEDIT_HOME in a
    temporary directory. `main()` configures structlog for the command line; the previous
    configuration comes back afterwards so other tests log as before."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "home"
    monkeypatch.setenv("NANOEDIT_HOME", str(path))
    saved = structlog.get_config()
    yield path
    structlog.configure(**saved)


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """The DSN of a fresh PostgreSQL database, dropped afterwards."""
    import asyncpg

    name = f"nanoedit_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


STORE_KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""The store implementations, for `@pytest.fixture(params=STORE_KINDS)`."""


@contextlib.asynccontextmanager
async def open_store_kind(kind: str, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """A fresh store of one implementation (PostgreSQL: a database of its own), closed after."""
    if kind == "postgres":
        async with pg_database() as dsn, PostgresStore(dsn) as pg:
            yield pg
        return
    store: SessionStore = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    async with store:
        yield store


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """The DSN of a fresh PostgreSQL database, dropped after the test."""
    async with pg_database() as dsn:
        yield dsn


def config_for(base_url: str, **kw: Any) -> EngineConfig:
    """An engine config pointing at a loopback server (fast back-off unless told otherwise)."""
    kw.setdefault("retry", FAST_RETRY)
    return EngineConfig(provider="custom", base_url=base_url, **kw)


def png(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    """A solid-colour PNG."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def live_owner() -> str:
    """A lease owner naming this (living) process, as another engine in it would."""
    return f"{socket.gethostname().replace(':', '_')}:{os.getpid()}:other"


def dead_owner() -> str:
    """A lease owner naming a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname().replace(':', '_')}:{proc.pid}:gone"


@dataclass
class Call:
    """One generate() call a FakeProvider received."""

    attempt: int
    model: str
    body: bytes
    stream: bool
    on_delta: OnDelta | None


Step = Callable[[Call], Awaitable[ProviderResult]]


def answer(image: bytes | None = None, text: str = "done", *, usage: Usage | None = None) -> Step:
    """A step that streams `text` and one image (a fresh PNG by default) and finishes."""

    async def step(call: Call) -> ProviderResult:
        data = image if image is not None else png(color=(call.attempt * 40 % 256, 10, 10))
        parts = [Part(text=text), Part(inline_data=Blob(mime_type="image/png", data=data))]
        if call.on_delta is not None:
            await call.on_delta(TextDelta(text, False))
            await call.on_delta(ImageDelta(parts[1]))
        return result_of(Content(role="model", parts=parts), usage=usage)

    return step


def fail(error: BaseException, *, image: bytes | None = None) -> Step:
    """A step that (streams an image first, if given, then) raises `error`."""

    async def step(call: Call) -> ProviderResult:
        if image is not None and call.on_delta is not None:
            await call.on_delta(
                ImageDelta(Part(inline_data=Blob(mime_type="image/png", data=image)))
            )
        raise error

    return step


def result_of(content: Content, *, usage: Usage | None = None) -> ProviderResult:
    """A successful ProviderResult for `content`."""
    return ProviderResult(
        content=content,
        finish_reason="STOP",
        finish_message=None,
        usage=usage or Usage(prompt_tokens=10, output_tokens=1290, total_tokens=1300),
        grounding_metadata=None,
        model_version=None,
        response_id=None,
        status=200,
        request_bytes=0,
        response_bytes=0,
    )


@dataclass
class FakeProvider(Provider):
    """A provider without sockets, scripted per attempt: call N runs `steps[N]` (the last
    step repeats). Every call is recorded."""

    steps: Sequence[Step] = field(default_factory=lambda: [answer()])
    name: str = "local"
    supports_streaming: bool = True
    calls: list[Call] = field(default_factory=list)

    def encode(self, request: GenerateRequest) -> bytes:
        """The contents as JSON (the size budgets see)."""
        return msgspec.json.encode(wire_contents(request.contents))

    async def generate(
        self,
        model: str,
        body: RequestBody,
        *,
        stream: bool,
        on_delta: OnDelta | None = None,
        images_only: bool = False,
    ) -> ProviderResult:
        """Run the next scripted step."""
        raw = body if isinstance(body, bytes) else body.join()
        call = Call(len(self.calls) + 1, model, raw, stream, on_delta)
        self.calls.append(call)
        step = self.steps[min(len(self.calls), len(self.steps)) - 1]
        return await step(call)

    async def aclose(self) -> None:
        """Nothing to release."""


class EmulatorThread:
    """An emulator serving from its own thread and loop, shared by many tests' loops."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.base_url = ""
        self.emulator: Emulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Emulator(self.settings) as emu:
            self.emulator = emu
            self.base_url = emu.base_url
            self._ready.set()
            await self._stop.wait()

    def start(self) -> str:
        """Start serving; returns the base URL."""
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("emulator did not start")
        return self.base_url

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def stats(self) -> dict[str, Any]:
        """The emulator's request and fault counters."""
        assert self.emulator is not None
        return self.emulator.stats()


@pytest.fixture(scope="session")
def emulator_thread() -> Iterator[EmulatorThread]:
    """One flat-image emulator for the whole run, recording requests."""
    emu = EmulatorThread(EmulatorSettings(flat=True, record_requests=True))
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def emulator_url(emulator_thread: EmulatorThread) -> str:
    """Base URL of the shared flat-image emulator."""
    return emulator_thread.base_url


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if it leaves tasks running in its loop."""
    before = asyncio.all_tasks()
    yield
    # Give cancelled tasks one turn of the loop to finish unwinding.
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    leaked = [t for t in leaked if t is not asyncio.current_task()]
    assert not leaked, f"leaked tasks: {leaked}"


EmulatorFactory = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def make_emulator(no_leaked_tasks: None) -> AsyncIterator[EmulatorFactory]:
    """Start extra emulators (e.g. with faults) in the test's own loop; closed afterwards.

    Depends on `no_leaked_tasks` so that the leak check runs after the emulators are closed.
    """
    started: list[Emulator] = []

    async def factory(**settings: Any) -> Emulator:
        settings.setdefault("flat", True)
        emu = Emulator(EmulatorSettings(**settings))
        await emu.start()
        started.append(emu)
        return emu

    yield factory
    for emu in reversed(started):
        await emu.aclose()
