"""`finish()`: work that cancellation must not cut in half."""

from __future__ import annotations

import asyncio

import pytest

from engine.runtime._shield import finish


async def _work(started: asyncio.Event, release: asyncio.Event, done: list[str]) -> str:
    started.set()
    await release.wait()
    await asyncio.sleep(0)
    done.append("work")
    return "result"


@pytest.mark.parametrize("reraise", [True, False])
async def test_a_cancelled_caller_waits_for_the_work_to_end(reraise: bool) -> None:
    """The caller's cancellation lands on the shield: the work runs to its end, then the
    cancellation is raised (reraise) or dropped and the result returned."""
    started, release = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def caller() -> str:
        return await finish(_work(started, release, done), reraise=reraise)

    task = asyncio.ensure_future(caller())
    await started.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for the work
    release.set()
    if reraise:
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        assert await task == "result"
    assert done == ["work"]


async def test_the_works_own_error_and_cancellation_are_raised_as_they_are() -> None:
    """An exception of the work, its own CancelledError included, reaches the caller as is."""

    async def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        await finish(fails())

    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await finish(cancels_itself(), reraise=False)
