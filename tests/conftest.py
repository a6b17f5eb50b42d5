"""Shared fixtures: emulators on 127.0.0.1, and leak checks for tasks and connections."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from engine.emulator import Emulator, EmulatorSettings


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
