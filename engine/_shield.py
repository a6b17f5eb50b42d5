"""Finishing work that cancellation must not cut in half.

`anyio.CancelScope(shield=True)` does not stop a native `Task.cancel()` (asyncio.wait_for,
asyncio.timeout, TaskGroup): the awaited call is interrupted anyway. `finish()` runs the work in a
task of its own and waits for it through any number of cancellations, so a commit, its events and
a lease release either happen whole or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["finish"]

T = TypeVar("T")


async def finish(work: Awaitable[T], *, reraise: bool = True) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile.

    A cancellation that arrived while waiting is raised afterwards (`reraise=True`), or dropped
    so the caller gets the result of work that did happen (`reraise=False`). Only a cancellation
    of `work` itself ends the wait early.
    """
    task = asyncio.ensure_future(work)
    interrupted = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # the work itself was cancelled
            interrupted = True
            if task.done():
                # We were cancelled just as the work ended: its outcome stands.
                result = task.result()
                break
    if interrupted and reraise:
        raise asyncio.CancelledError
    return result
