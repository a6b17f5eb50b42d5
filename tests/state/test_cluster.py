"""Beyond one machine (issue 13): sessions in PostgreSQL, events and the in-flight cap in Redis.

Unit tests drive `engine.cluster` against the local Redis; the integration tests run two real
`nanoedit serve` processes on one PostgreSQL database and one Redis (each test its own database
and key prefix, both removed afterwards) in front of one emulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from engine import Engine, EngineConfig, SessionBusy
from engine.cli._procs import serve_process
from engine.events import TurnStarted
from engine.state import Cluster, ClusterBus, ClusterError
from sessions import MemoryStore, PostgresStore, SqliteStore
from tests.conftest import ENV_VARS, EmulatorFactory, pg_database
from tests.conftest import REDIS_URL as REDIS

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_leaked_tasks")]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"nanoedit-test-{uuid.uuid4().hex[:12]}"
    yield name
    async with Cluster(REDIS, prefix=name) as cluster:
        keys = [k async for k in cluster.redis.scan_iter(match=f"{name}:*")]
        if keys:
            await cluster.redis.delete(*keys)


async def test_seq_is_one_sequence_across_nodes(prefix: str) -> None:
    """Seq is one sequence across nodes."""
    async with Cluster(REDIS, prefix=prefix) as a, Cluster(REDIS, prefix=prefix) as b:
        bus_a, bus_b = ClusterBus(a), ClusterBus(b)

        async def publish(bus: ClusterBus, n: int) -> list[int]:
            seqs = []
            for i in range(n):
                event = await bus.publish(
                    TurnStarted(session_id="s1", model=f"m{i}", stream=True, history_turns=0)
                )
                seqs.append(event.seq)
            return seqs

        first, second = await asyncio.gather(publish(bus_a, 40), publish(bus_b, 40))
        assert sorted(first + second) == list(range(1, 81))  # no gap, no repeat
        assert first == sorted(first) and second == sorted(second)
        # Either node reads the whole stream, in order, with the seqs.
        missed, events = await a.events_after("s1", 0, 80)
        assert missed == 0 and [e.seq for e in events] == list(range(1, 81))
        assert await b.last_seq("s1") == 80
        await bus_a.aclose()
        await bus_b.aclose()


async def test_seq_goes_on_after_the_sessions_keys_alone_are_lost(prefix: str) -> None:
    """Only the session's keys went (evicted; the epoch stayed): the next event's seq goes on
    above the last one the node saw, so a client resuming with Last-Event-ID misses nothing."""
    async with Cluster(REDIS, prefix=prefix) as node:
        bus = ClusterBus(node)
        for _ in range(13):
            await bus.publish(TurnStarted(session_id="s1", model="m", stream=True, history_turns=0))
        await node.redis.delete(f"{prefix}:seq:s1", f"{prefix}:events:s1")
        assert await node.last_seq("s1") == 13
        event = await bus.publish(
            TurnStarted(session_id="s1", model="m", stream=True, history_turns=0)
        )
        assert event.seq == 14
        missed, events = await node.events_after("s1", 13, 14)
        assert missed == 0 and [e.seq for e in events] == [14]
        await bus.aclose()


async def test_a_node_that_never_saw_the_session_goes_on_above_the_lost_numbering(
    prefix: str,
) -> None:
    """Redis lost its state and the next event comes from another node, one that never saw the
    session: the store counts a new epoch, the seq lies above every seq before, a client
    resuming with Last-Event-ID 13 gets the new event and an `events.missed`, and numbering
    never goes back however often Redis loses its state."""
    store = MemoryStore()
    async with (
        Cluster(REDIS, prefix=prefix, epochs=store.next_event_epoch) as a,
        Cluster(REDIS, prefix=prefix, epochs=store.next_event_epoch) as b,
    ):
        bus_a, bus_b = ClusterBus(a), ClusterBus(b)
        started = TurnStarted(session_id="s1", model="m", stream=True, history_turns=0)
        seqs = [(await bus_a.publish(started)).seq for _ in range(13)]
        assert seqs == list(range(1, 14))  # the first epoch numbers from 1
        for _ in range(2):
            keys = [k async for k in a.redis.scan_iter(match=f"{prefix}:*")]
            await a.redis.delete(*keys)  # what a restart without persistence leaves
            before = seqs[-1]
            after = await asyncio.gather(
                *(bus_b.publish(msgspec.structs.replace(started)) for _ in range(5))
            )
            seqs.extend(sorted(e.seq for e in after))
            assert seqs[-5] > before and seqs[-5:] == list(range(seqs[-5], seqs[-5] + 5))
            missed, events = await b.events_after("s1", before, seqs[-1])
            assert missed >= 1 and [e.seq for e in events] == seqs[-5:]
            # The node that saw the old numbering goes on in the new epoch too.
            seqs.append((await bus_a.publish(started)).seq)
            assert seqs[-1] == seqs[-2] + 1
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert await store.next_event_epoch() == 4  # one epoch per loss (three so far)
        await bus_a.aclose()
        await bus_b.aclose()


async def test_the_epoch_outlives_the_process_in_the_store(prefix: str, tmp_path: Path) -> None:
    """The epoch count is kept by a durable store: a node that starts later with a fresh Redis
    numbers above what nodes before it numbered."""
    path = str(tmp_path / "s.db")
    started = TurnStarted(session_id="s1", model="m", stream=True, history_turns=0)
    async with (
        SqliteStore(path) as store,
        Cluster(REDIS, prefix=prefix, epochs=store.next_event_epoch) as node,
    ):
        bus = ClusterBus(node)
        first = (await bus.publish(started)).seq
        keys = [k async for k in node.redis.scan_iter(match=f"{prefix}:*")]
        await node.redis.delete(*keys)
        await bus.aclose()
    async with (
        SqliteStore(path) as store,
        Cluster(REDIS, prefix=prefix, epochs=store.next_event_epoch) as node,
    ):
        bus = ClusterBus(node)
        later = (await bus.publish(started)).seq
        await bus.aclose()
    assert first == 1 and later > first


async def test_the_window_is_trimmed_and_says_what_it_lost(prefix: str) -> None:
    """The window is trimmed and says what it lost."""
    async with Cluster(REDIS, prefix=prefix, retain=10) as cluster:
        bus = ClusterBus(cluster)
        for i in range(300):
            await bus.publish(
                TurnStarted(session_id="s2", model=str(i), stream=True, history_turns=0)
            )
        missed, events = await cluster.events_after("s2", 0, 300)
        assert missed > 0 and events[0].seq == missed + 1 and events[-1].seq == 300
        later = await cluster.read("s2", 295, block_ms=10)
        assert [e.seq for e in later] == [296, 297, 298, 299, 300]
        await bus.aclose()


async def test_the_in_flight_cap_holds_across_nodes(prefix: str) -> None:
    """The in flight cap holds across nodes."""
    async with Cluster(REDIS, prefix=prefix) as a, Cluster(REDIS, prefix=prefix) as b:
        now = 0
        most = 0

        async def work(cluster: Cluster) -> None:
            nonlocal now, most
            async with cluster.slot(3, poll=0.005):
                now += 1
                most = max(most, now)
                await asyncio.sleep(0.02)
                now -= 1

        await asyncio.gather(*(work(a if i % 2 else b) for i in range(24)))
        assert most == 3


async def test_a_dead_nodes_slots_expire(prefix: str) -> None:
    """A dead node's slots expire."""
    async with (
        Cluster(REDIS, prefix=prefix, slot_ttl=0.3) as dead,
        Cluster(REDIS, prefix=prefix, slot_ttl=0.3) as alive,
    ):
        held = dead.slot(1)
        await held.__aenter__()
        beat = [t for t in asyncio.all_tasks() if "_heartbeat" in repr(t.get_coro())]
        for task in beat:  # the node "dies": its heartbeat stops, nobody releases the slot
            task.cancel()
        await asyncio.gather(*beat, return_exceptions=True)
        async with asyncio.timeout(10), alive.slot(1, poll=0.02):
            pass  # taken once the dead node's slot expired


# --- two serve processes ---------------------------------------------------------------------


class Node:
    """One `nanoedit serve` process."""

    def __init__(self, proc: subprocess.Popen[str], base: str) -> None:
        self.proc = proc
        self.base = base


def _start_node(tmp_path: Path, dsn: str, prefix: str, emulator: str, *args: str) -> Node:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["NANOEDIT_HOME"] = str(tmp_path / "home")
    options = [
        "--store",
        dsn,
        "--redis",
        REDIS,
        "--redis-prefix",
        prefix,
        "--base-url",
        emulator,
    ]
    return Node(*serve_process([*options, *args], env=env))


@pytest.fixture
async def nodes(tmp_path: Path, prefix: str, make_emulator: EmulatorFactory) -> AsyncIterator[Any]:
    """A factory of two-node clusters (one database, one Redis prefix, one emulator)."""
    started: list[Node] = []
    async with pg_database() as dsn:

        async def factory(
            *args: str, emulator: dict[str, Any] | None = None
        ) -> tuple[Node, Node, Any]:
            emu = await make_emulator(**(emulator or {}))
            for _ in range(2):
                node = await asyncio.to_thread(
                    _start_node, tmp_path, dsn, prefix, emu.base_url, *args
                )
                started.append(node)
            return started[-2], started[-1], emu

        try:
            yield factory
        finally:
            for node in started:
                if node.proc.poll() is None:
                    node.proc.terminate()
                try:
                    await asyncio.to_thread(node.proc.wait, 30)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                for stream in (node.proc.stdout, node.proc.stderr):
                    if stream is not None:
                        stream.close()


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.postgres
async def test_two_nodes_share_sessions_and_events(nodes: Any) -> None:
    """Two nodes share sessions and events."""
    a, b, _ = await nodes(emulator={"latency": 0.3})
    async with aiohttp.ClientSession() as http:
        status, session = await _post(http, f"{a.base}/v1/sessions", {"title": "shared"})
        assert status == 201
        sid = session["id"]
        async with http.get(f"{b.base}/v1/sessions/{sid}") as resp:
            assert resp.status == 200 and (await resp.json())["title"] == "shared"
        # A subscriber on A; the turn runs on B.
        seen: list[dict[str, Any]] = []
        subscribed = asyncio.Event()

        async def subscribe() -> None:
            async with http.get(f"{a.base}/v1/sessions/{sid}/events") as resp:
                subscribed.set()
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        data = [ln[6:] for ln in block.split(b"\n") if ln.startswith(b"data: ")]
                        if data:
                            seen.append(json.loads(data[0]))
                            if seen[-1]["type"] == "turn.completed":
                                return

        reader = asyncio.ensure_future(subscribe())
        await subscribed.wait()
        await asyncio.sleep(0.2)
        status, turn = await _post(http, f"{b.base}/v1/sessions/{sid}/turns", {"text": "a mug"})
        assert status == 200
        await asyncio.wait_for(reader, 30)
        kinds = [e["type"] for e in seen]
        assert kinds[0] == "turn.started" and kinds[-1] == "turn.completed"
        seqs = [e["seq"] for e in seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # in order, no gap
        # B's image is served by A too, and A continues the session B wrote.
        async with http.get(a.base + turn["images"][0]["url"]) as resp:
            assert resp.status == 200
        status, second = await _post(http, f"{a.base}/v1/sessions/{sid}/turns", {"text": "more"})
        assert status == 200 and second["index"] == 2


@pytest.mark.postgres
async def test_the_cluster_wide_cap_holds_at_the_emulator(nodes: Any) -> None:
    """The cluster wide cap holds at the emulator."""
    a, b, emu = await nodes("--max-in-flight", "2", emulator={"latency": 0.4})
    async with aiohttp.ClientSession() as http:
        sids = []
        for node in (a, b) * 4:
            _, session = await _post(http, f"{node.base}/v1/sessions", {})
            sids.append((node, session["id"]))
        emu.reset_stats()
        results = await asyncio.gather(
            *(
                _post(http, f"{node.base}/v1/sessions/{sid}/turns", {"text": "a mug"})
                for node, sid in sids
            )
        )
    assert [status for status, _ in results] == [200] * 8
    assert emu.stats()["max_in_flight"] == 2


@pytest.mark.postgres
async def test_a_node_killed_mid_turn_leaves_nothing_partial(nodes: Any) -> None:
    """A node killed mid turn leaves nothing partial."""
    a, b, _ = await nodes(emulator={"latency": 3})
    async with aiohttp.ClientSession() as http:
        status, session = await _post(http, f"{a.base}/v1/sessions", {})
        sid = session["id"]
        turn = asyncio.ensure_future(
            _post(http, f"{b.base}/v1/sessions/{sid}/turns", {"text": "a mug"})
        )
        for _ in range(200):
            async with http.get(f"{b.base}/healthz") as resp:
                if (await resp.json())["turns_in_flight"]:
                    break
            await asyncio.sleep(0.02)
        b.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(b.proc.wait, 30)  # reaped, as init would (no zombie left)
        with pytest.raises(aiohttp.ClientError):
            await turn
        # A takes the session over at once (B's lease names a dead process), not after the
        # lease's 30 s; B's turn left nothing behind.
        status, doc = await _post(http, f"{a.base}/v1/sessions/{sid}/turns", {"text": "again"})
        assert status == 200, doc
        async with http.get(f"{a.base}/v1/sessions/{sid}?tree=1") as resp:
            tree = await resp.json()
        assert [t["prompt"] for t in tree["turns"]] == ["again"]
        assert len(tree["branches"]) == 1


async def test_a_node_whose_heartbeat_stopped_is_gone(prefix: str) -> None:
    """A node whose heartbeat stopped is gone."""
    async with (
        Cluster(REDIS, prefix=prefix) as alive,
        Cluster(REDIS, prefix=prefix) as other,
    ):
        await other.register("host:1:other", every=0.05)
        await alive.register("host:2:alive", every=0.05)
        assert not await alive.node_gone("host:1:other")
        assert await alive.node_gone("host:3:never-registered")
        await other.aclose()  # its heartbeat stops: gone within three beats
        await asyncio.sleep(0.3)
        assert await alive.node_gone("host:1:other")
        assert not await other_view(prefix, "host:2:alive")


async def other_view(prefix: str, owner: str) -> bool:
    async with Cluster(REDIS, prefix=prefix) as cluster:
        return await cluster.node_gone(owner)


@pytest.mark.postgres
async def test_a_lease_of_a_node_gone_elsewhere_is_taken_over_at_once(
    prefix: str, make_emulator: EmulatorFactory
) -> None:
    """A lease held by an owner on another host (no pid to check) whose heartbeat lapsed is
    taken over without waiting its 30 s; and the old holder could no longer commit."""
    emu = await make_emulator()
    async with pg_database() as dsn, PostgresStore(dsn) as store:
        cfg = EngineConfig(
            provider="custom", base_url=emu.base_url, redis_url=REDIS, redis_prefix=prefix
        )
        async with Engine(cfg, store=store) as engine:
            session = await engine.create_session()
            foreign = "other-host:4242:abcdef"  # never registered: its node is gone
            assert await store.acquire_lease(session.id, foreign, 30)
            turn = await session.send("a mug")  # on_busy="raise": no waiting happened
            assert turn.index == 1
            with pytest.raises(SessionBusy, match="lease"):
                await store.commit_turn(
                    session.id,
                    turn.record.__class__(
                        id="late",
                        parent=None,
                        index=1,
                        user=turn.record.user,
                        model=turn.record.model,
                        model_id="m",
                    ),
                    expected_version=2,
                    lease_owner=foreign,
                )


async def test_spend_is_reserved_and_settled_across_nodes(prefix: str) -> None:
    """Spend is reserved and settled across nodes."""
    async with Cluster(REDIS, prefix=prefix) as a, Cluster(REDIS, prefix=prefix) as b:
        first = await a.reserve(["session:s", "tenant:t"], 0.07, ttl=30)
        await b.reserve(["session:s2", "tenant:t"], 0.05, ttl=30)
        assert await b.reserved("tenant:t") == pytest.approx(0.12)
        assert await b.reserved("session:s") == pytest.approx(0.07)
        await a.release(first, ["session:s", "tenant:t"])
        assert await b.reserved("tenant:t") == pytest.approx(0.05)
        # A reservation of a node that died lapses after its ttl.
        await a.reserve(["tenant:t"], 1.0, ttl=0.1)
        await asyncio.sleep(0.2)
        assert await b.reserved("tenant:t") == pytest.approx(0.05)
        assert await a.spent("tenant:t", start=0.5) == pytest.approx(0.5)
        await b.add_spent("tenant:t", 0.25)
        assert await a.spent("tenant:t", start=99) == pytest.approx(0.75)


async def test_rate_and_shared_allowance(prefix: str) -> None:
    """The per-minute rate and the halved allowance after a 429 hold across nodes."""
    async with Cluster(REDIS, prefix=prefix) as a, Cluster(REDIS, prefix=prefix) as b:
        # 60 per minute: one a second, burst 1; the second node waits for the first's token.
        assert await a.take_token("m", 60) == 0
        assert 0 < await b.take_token("m", 60) <= 1.0
        assert await b.allowance("m", 8) == 8
        assert await a.halve("m", 8) == 4  # a 429 on node a...
        assert await b.allowance("m", 8) == 4  # ...holds node b back too
        assert await b.halve("m", 8) == 2
        assert await a.halve("m", 8, hold=0.1) == 1
        await asyncio.sleep(0.2)
        assert await a.allowance("m", 8) == 8  # back to the cap once it is quiet


async def test_a_read_from_a_redis_that_went_away_is_a_cluster_error(prefix: str) -> None:
    """Reading a session's events from an unreachable Redis raises ClusterError (which a
    fan-out treats as its end: its streams close and their clients reconnect)."""
    from redis.asyncio import Redis

    async with Cluster(REDIS, prefix=prefix) as node:
        gone = Redis.from_url("redis://127.0.0.1:1/15", socket_connect_timeout=1.0)
        working, node._readers = node._readers, gone
        try:
            with pytest.raises(ClusterError, match="cannot read events"):
                await node.read("s1", 0, block_ms=10)
        finally:
            node._readers = working
            await gone.aclose()


async def test_in_a_cluster_money_is_set_aside_once_in_redis(
    prefix: str, make_emulator: EmulatorFactory
) -> None:
    """A cluster node's turn sets its money aside in Redis only (every node sees it), not a
    second time in the engine's ledger; settled, the ledger counts the spending and Redis
    holds nothing more."""
    emu = await make_emulator(latency=0.3)
    cfg = EngineConfig(
        provider="custom", base_url=emu.base_url, redis_url=REDIS, redis_prefix=prefix
    )
    async with Engine(cfg, store=MemoryStore()) as engine, Cluster(REDIS, prefix=prefix) as peer:
        session = await engine.create_session(owner="acme")
        task = asyncio.ensure_future(session.send("a mug"))
        for _ in range(200):  # the call waits 0.3 s at the emulator, its money set aside
            if await peer.reserved(f"session:{session.id}") > 0 or task.done():
                break
            await asyncio.sleep(0.01)
        assert await peer.reserved(f"session:{session.id}") > 0
        assert await peer.reserved("tenant:acme") > 0
        assert engine.ledger.reserved == 0  # not set aside twice
        turn = await task
        assert await peer.reserved(f"session:{session.id}") == 0
        assert engine.ledger.spent_for(session.id) == pytest.approx(turn.cost_usd)
        assert await peer.spent("tenant:acme") == pytest.approx(turn.cost_usd)
