"""Finishing work that cancellation must not cut in half.

`anyio.CancelScope(shield=True)` does not stop a native `Task.cancel()` (asyncio.wait_for,
asyncio.timeout, TaskGroup): the awaited call is interrupted anyway. `finish()` runs the work to
its end and holds any cancellation of the caller back until then, so a commit, its events and a
lease release either happen whole or not at all.

The work runs in the caller's own task (anyio's cancel scopes and capacity limiters inside it see
the task they expect). Each future it waits for is waited on through a proxy future: a
cancellation of the caller cancels the proxy, never the future the work waits for, and the wait
goes on. This drives the coroutine through asyncio's task protocol (`_asyncio_future_blocking`),
which STYLE.md reserves for a measured reason; this is one. The library's own way (the work in a
task of its own, waited on through `asyncio.shield`) was measured again on 2026-12-07: 15.7 us
against 1.2 us per call (a `finish` of a one-step coroutine, 20,000 calls, process time), and a
turn makes two calls (its commit and its lease release): 31 us, 3.4% of a flat turn's client CPU
(0.9 ms, `benchmarks/compare_clients.py --flat --sessions 200`), over the 3% that justifies a
hand-made primitive. tests/runtime/test_shield.py holds its behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["finish"]

T = TypeVar("T")


class _Deferred:
    """Awaits a coroutine in the current task; cancellations are noted, not delivered."""

    __slots__ = ("_coro", "_proxy", "interrupted")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._proxy: asyncio.Future[None] | None = None
        self.interrupted = False

    def _wake(self, _done: object) -> None:
        proxy = self._proxy
        if proxy is not None and not proxy.done():
            proxy.set_result(None)

    def __await__(self) -> Generator[Any, None, Any]:
        coro = self._coro
        try:
            waited = coro.send(None)
            while True:
                if waited is None:
                    # A bare yield (asyncio.sleep(0)): one turn of the loop.
                    try:
                        yield None
                    except asyncio.CancelledError:
                        self.interrupted = True
                elif getattr(waited, "_asyncio_future_blocking", None) is not None:
                    # What a task does with an awaited future, through a proxy of it.
                    waited._asyncio_future_blocking = False
                    loop = waited.get_loop()
                    waited.add_done_callback(self._wake)
                    while not waited.done():
                        proxy = self._proxy = loop.create_future()
                        proxy._asyncio_future_blocking = True
                        try:
                            yield proxy
                        except asyncio.CancelledError:
                            self.interrupted = True
                    self._proxy = None
                else:
                    waited = coro.throw(RuntimeError(f"finish(): cannot wait for {waited!r}"))
                    continue
                waited = coro.send(None)
        except StopIteration as stop:
            return stop.value
        except GeneratorExit:
            coro.close()
            raise


async def finish(work: Coroutine[Any, Any, T], *, reraise: bool = True) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile.

    A cancellation that arrived while waiting is raised afterwards (`reraise=True`), or dropped
    so the caller gets the result of work that did happen (`reraise=False`). An exception of the
    work, a CancelledError of its own included, is raised as it is.
    """
    waiter = _Deferred(work)
    result: T = await waiter
    if waiter.interrupted and reraise:
        raise asyncio.CancelledError
    return result
