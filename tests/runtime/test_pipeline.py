"""The turn pipeline's guarantees: leaving a stream, failures of any kind, cancellation near the
commit, image digests across retries. Runs on a FakeProvider (no sockets)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from engine import Engine, EngineConfig, NanoeditError, StreamBroken
from engine.events import Event
from engine.providers import ProviderResult
from engine.wire import ImageDelta
from sessions import Blob, Content, MemoryStore, Part, SessionRecord, SessionState, TurnRecord
from tests.conftest import FAST_RETRY, Call, FakeProvider, Step, answer, fail, result_of

TERMINAL = ("turn.completed", "turn.failed", "turn.cancelled")


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The guarantees must hold without the cycle collector."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def gated(started: asyncio.Event, release: asyncio.Event, step: Step) -> Step:
    """A step that signals `started`, waits for `release`, then runs `step`."""

    async def run(call: Call) -> ProviderResult:
        started.set()
        await release.wait()
        return await step(call)

    return run


@asynccontextmanager
async def engine_with(
    *steps: Step, store: MemoryStore | None = None
) -> AsyncIterator[tuple[Engine, FakeProvider]]:
    """An engine on a FakeProvider running `steps`."""
    provider = FakeProvider(steps=list(steps) or [answer()])
    async with Engine(EngineConfig(retry=FAST_RETRY), provider=provider, store=store) as e:
        yield e, provider


def terminal_events(events: list[Event], session_id: str) -> list[str]:
    return [ev.type for ev in events if ev.session_id == session_id and ev.type in TERMINAL]


def collect(engine: Engine) -> list[Event]:
    seen: list[Event] = []
    engine.bus.on("*", seen.append)
    return seen


# --- 1. leaving stream() ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["break", "aclose", "raise", "drop"])
async def test_leaving_a_stream_cancels_the_turn_at_once(no_gc: None, how: str) -> None:
    """Breaking out (then dropping), aclose(), an exception in the body or dropping the stream
    cancels the turn: nothing is committed and the next send() proceeds without gc."""
    async with engine_with(gated(asyncio.Event(), asyncio.Event(), answer())) as (e, provider):
        seen = collect(e)
        s = await e.create_session()
        if how == "break":
            async for ev in s.stream("a mug"):
                if ev.type == "turn.started":
                    break
        elif how == "aclose":
            st = s.stream("a mug")
            await st.__anext__()
            await st.aclose()
        elif how == "raise":
            with pytest.raises(RuntimeError):
                async for _ev in s.stream("a mug"):
                    raise RuntimeError("consumer failed")
        else:
            st = s.stream("a mug")
            await st.__anext__()
            del st
        provider.steps = [answer()]
        turn = await asyncio.wait_for(s.send("a cup"), 5)
        assert turn.index == 1
        assert [t.record.user.parts[0].text for t in s.turns()] == ["a cup"]
        assert terminal_events(seen, s.id) == ["turn.cancelled", "turn.completed"]
        assert e.ledger.reserved == 0


async def test_leaving_after_the_image_never_finds_the_turn_committed(no_gc: None) -> None:
    """`async with s.stream()` left right after turn.image: the commit had not begun, so the
    turn is cancelled, every time."""
    async with engine_with(answer()) as (e, _):
        for _ in range(20):
            s = await e.create_session()
            async with s.stream("a mug") as st:
                async for ev in st:
                    if ev.type == "turn.image":
                        break
            assert st.turn is None
            assert s.contents() == []
            assert (await e.store.load(s.id)).record.head is None


async def test_a_consumer_that_reads_on_gets_the_committed_turn() -> None:
    """Reading to the end commits the turn and hands it over."""
    async with engine_with(answer()) as (e, _):
        s = await e.create_session()
        async with s.stream("a mug") as st:
            types = [ev.type async for ev in st]
        assert types[-1] == "turn.completed"
        assert st.turn is not None and st.turn.index == 1
        assert len(s.contents()) == 2


# --- 2. any exception ends the turn properly --------------------------------------------------


async def test_a_foreign_exception_becomes_a_typed_failure() -> None:
    """A RecursionError inside the provider: send() raises NanoeditError, turn.failed is
    published, the reservation is released and the session is usable."""
    async with engine_with(fail(RecursionError("too deep"))) as (e, provider):
        seen = collect(e)
        s = await e.create_session()
        with pytest.raises(NanoeditError, match="RecursionError") as info:
            await s.send("a mug")
        assert isinstance(info.value.__cause__, RecursionError)
        assert terminal_events(seen, s.id) == ["turn.failed"]
        assert e.ledger.reserved == 0
        provider.steps = [answer()]
        assert (await s.send("a mug")).index == 1


async def test_a_stream_ends_when_the_turn_fails_with_a_foreign_exception() -> None:
    """stream() ends with turn.failed and records the error."""
    async with engine_with(fail(KeyError("x"))) as (e, _):
        s = await e.create_session()
        async with s.stream("a mug") as st:
            types = [ev.type async for ev in st]
        assert types[-1] == "turn.failed"
        assert isinstance(st.error, NanoeditError)
        assert e.ledger.reserved == 0


# --- 3. cancellation near the end of a turn ---------------------------------------------------


class SlowCommitStore(MemoryStore):
    """A store whose commit signals `entered` and waits for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def commit_turn(
        self,
        session_id: str,
        turn: TurnRecord,
        *,
        expected_version: int,
        lease_owner: str | None = None,
    ) -> SessionRecord:
        self.entered.set()
        await self.release.wait()
        return await super().commit_turn(
            session_id, turn, expected_version=expected_version, lease_owner=lease_owner
        )


@pytest.mark.parametrize("cancel", ["task", "wait_for"])
async def test_a_caller_cancelled_during_the_commit_gets_the_committed_turn(cancel: str) -> None:
    """Cancelled while the commit runs: the commit finishes, turn.completed (never
    turn.cancelled) is published, the caller gets the turn and the lease is released."""
    store = SlowCommitStore()
    async with engine_with(answer(), store=store) as (e, _):
        seen = collect(e)
        s = await e.create_session()
        if cancel == "task":
            task = asyncio.create_task(s.send("a mug"))
            await store.entered.wait()
            task.cancel()
            await asyncio.sleep(0.01)
            store.release.set()
            turn = await task
        else:

            async def release_soon() -> None:
                await store.entered.wait()
                await asyncio.sleep(0.05)
                store.release.set()

            releaser = asyncio.create_task(release_soon())
            turn = await asyncio.wait_for(s.send("a mug"), 0.02)
            await releaser
        assert turn.index == 1
        assert terminal_events(seen, s.id) == ["turn.completed"]
        assert await store.lease_holder(s.id) is None
        assert len((await store.load(s.id)).path()) == 1


class SlowReleaseStore(MemoryStore):
    """A store whose lease release (after the commit) waits until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.releasing = asyncio.Event()
        self.go_on = asyncio.Event()

    async def release_lease(self, session_id: str, owner: str) -> None:
        self.releasing.set()
        await self.go_on.wait()
        await super().release_lease(session_id, owner)


@pytest.mark.parametrize("cancel", ["task", "wait_for"])
async def test_a_cancellation_after_the_commit_still_returns_the_turn(cancel: str) -> None:
    """Cancelled after the commit, while the lease is given back on the way out of send():
    the caller gets the committed turn, never a CancelledError or TimeoutError."""
    store = SlowReleaseStore()
    async with engine_with(answer(), store=store) as (e, _):
        seen = collect(e)
        s = await e.create_session()
        if cancel == "task":
            task = asyncio.create_task(s.send("a mug"))
            await store.releasing.wait()
            task.cancel()
            await asyncio.sleep(0.01)
            store.go_on.set()
            turn = await task
        else:

            async def go_on_soon() -> None:
                await store.releasing.wait()
                await asyncio.sleep(0.05)
                store.go_on.set()

            releaser = asyncio.create_task(go_on_soon())
            turn = await asyncio.wait_for(s.send("a mug"), 0.02)
            await releaser
        assert turn.index == 1
        assert terminal_events(seen, s.id) == ["turn.completed"]
        assert await store.lease_holder(s.id) is None
        assert s.head is not None and s.head.id == turn.id


async def test_cancelled_before_the_commit_commits_nothing() -> None:
    """Cancelled while waiting for the answer: turn.cancelled, nothing stored, lease free."""
    started, release = asyncio.Event(), asyncio.Event()
    store = MemoryStore()
    async with engine_with(gated(started, release, answer()), store=store) as (e, _):
        seen = collect(e)
        s = await e.create_session()
        task = asyncio.create_task(s.send("a mug"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert terminal_events(seen, s.id) == ["turn.cancelled"]
        assert await store.lease_holder(s.id) is None
        assert (await store.load(s.id)).record.head is None


# --- 4. image digests across retries ----------------------------------------------------------


_SIZE = 300_000


def image_bytes(tag: int) -> bytes:
    """A PNG-signed payload of a fixed size, made fresh on each call."""
    return b"\x89PNG\r\n\x1a\n" + bytes([tag % 256]) * _SIZE


def broken_after_image(tag: int) -> Step:
    """Streams a fresh image (referenced by nothing else afterwards), then breaks."""

    async def step(call: Call) -> ProviderResult:
        assert call.on_delta is not None
        await call.on_delta(
            ImageDelta(Part(inline_data=Blob(mime_type="image/png", data=image_bytes(tag))))
        )
        # The image is freed here: its bytes' id may be reused by the next attempt's image.
        raise StreamBroken("cut")

    return step


def quiet_answer(tag: int) -> Step:
    """Answers with an image made at call time, delivered in the result only (no delta)."""

    async def step(call: Call) -> ProviderResult:
        image = Part(inline_data=Blob(mime_type="image/png", data=image_bytes(tag)))
        return result_of(Content(role="model", parts=[Part(text="done"), image]))

    return step


async def test_a_retried_turn_stores_its_own_image_under_its_own_digest() -> None:
    """Attempt 1 streams image A then breaks; attempt 2 answers image B: the turn holds B,
    stored under sha256(B), 20 times in a row (A's freed bytes may share B's id)."""
    for n in range(20):
        b = hashlib.sha256(image_bytes(2 * n + 1)).hexdigest()
        async with engine_with(broken_after_image(2 * n), quiet_answer(2 * n + 1)) as (e, _):
            s = await e.create_session()
            turn = await s.send("a mug")
            assert turn.attempts == 2
            image = turn.images[0]
            assert hashlib.sha256(image.data).hexdigest() == b
            assert image.sha256 == b
            stored = e.store.blobs.get(b)
            assert stored is not None and hashlib.sha256(stored).hexdigest() == b
            state: SessionState = await e.store.load(s.id)
            assert hashlib.sha256(state.contents()[1].images()[0].data).hexdigest() == b


def test_a_turn_reuses_the_images_its_events_described_only_for_the_same_bytes() -> None:
    """Turn.from_record takes an Image made earlier for the very bytes object it holds (the
    one the turn's events described, hashed once); for equal bytes in another object it makes
    a new one, so a turn never holds a second copy of an interned image."""
    from engine.runtime import Image, Turn

    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    blob = Blob(mime_type="image/png", data=data)
    record = TurnRecord(
        id="t1",
        parent=None,
        index=1,
        user=Content(role="user", parts=[Part(text="a mug")]),
        model=Content(role="model", parts=[Part(inline_data=blob)]),
        model_id="nano-banana-2",
    )
    described = Image.from_blob(blob)
    assert Turn.from_record(record, None, [described]).images[0] is described
    copy = Image.from_blob(Blob(mime_type="image/png", data=bytes(bytearray(data))))
    rebuilt = Turn.from_record(record, None, [copy]).images[0]
    assert rebuilt is not copy and rebuilt.data is data
    assert rebuilt.sha256 == hashlib.sha256(data).hexdigest()


def test_described_images_are_matched_by_position_thought_images_included() -> None:
    """The Images a turn's events described line up with the model Content's inline parts in
    order (a thought image included, then left out of turn.images): no lookup by id()."""
    from engine.runtime import Image, Turn

    thought = Blob(mime_type="image/png", data=b"\x89PNG\r\n\x1a\n" + b"\x01" * 32)
    answer = Blob(mime_type="image/png", data=b"\x89PNG\r\n\x1a\n" + b"\x02" * 32)
    record = TurnRecord(
        id="t1",
        parent=None,
        index=1,
        user=Content(role="user", parts=[Part(text="a mug")]),
        model=Content(
            role="model",
            parts=[
                Part(text="thinking", thought=True),
                Part(inline_data=thought, thought=True),
                Part(text="here"),
                Part(inline_data=answer),
            ],
        ),
        model_id="nano-banana-2",
    )
    described = [Image.from_blob(thought), Image.from_blob(answer)]
    assert Turn.from_record(record, None, described).images == [described[1]]
    assert Turn.from_record(record, None, described).images[0] is described[1]
