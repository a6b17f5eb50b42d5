"""Variants (issue 25): N takes of one prompt at once, under one reservation, committed as
sibling turns; refused as a whole over budget; `promote`; regenerate gives a different take."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Budget, BudgetExceeded, ConfigError, Engine
from engine.events import TurnCompleted
from sessions import MemoryStore
from tests.conftest import EmulatorFactory, config_for

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_variants_are_sibling_turns_under_one_reservation(
    make_emulator: EmulatorFactory,
) -> None:
    """variants=4: four different images, four sibling turns of the same parent and index, the
    head on the first to finish; each turn.completed says its variant and turn id; the money
    was set aside once for all four; promote moves the head."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        reservations: list[float] = []
        reserve = engine.shared.reserve

        async def spy(session_id: str, tenant: str, amount: float, ttl: float) -> Any:
            reservations.append(amount)
            return await reserve(session_id, tenant, amount, ttl)

        engine.shared.reserve = spy  # type: ignore[method-assign]
        s = await engine.create_session()
        first = await s.send("a mug")
        async with engine.bus.subscribe(session_id=s.id, types=("turn.completed",)) as sub:
            head = await s.send("add a sprig", variants=4)
            done = [await anext(sub) for _ in range(4)]
        state = await store.load(s.id)
        takes = [t for t in state.turns.values() if t.parent == first.id]
        assert len(takes) == 4 and {t.index for t in takes} == {2}
        assert len({t.model.images()[0].data for t in takes}) == 4  # four different images
        assert state.record.head == head.id
        assert all(isinstance(e, TurnCompleted) for e in done)
        assert sorted(e.variant for e in done) == [1, 2, 3, 4]  # type: ignore[attr-defined]
        assert done[0].turn_id == head.id  # type: ignore[attr-defined]
        # One reservation for the four takes (a take with history costs a little more).
        assert len(reservations) == 2 and reservations[1] > 3.9 * reservations[0]
        other = next(t for t in takes if t.id != head.id)
        await s.promote(other.id)
        assert (await store.load(s.id)).record.head == other.id
        assert sum(t.cost_usd for t in takes) == pytest.approx(4 * takes[0].cost_usd, rel=0.05)


async def test_variants_over_budget_are_refused_as_a_whole(make_emulator: EmulatorFactory) -> None:
    """A budget that fits one more turn but not four: variants=4 is refused before anything is
    sent, and nothing is committed; out-of-range counts are ConfigError."""
    emu = await make_emulator(record_requests=True)
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session(budget=Budget(max_cost_usd=0.1))
        await s.send("a mug")
        sent = len(emu.requests)
        with pytest.raises(BudgetExceeded, match="4 variants"):
            await s.send("add a sprig", variants=4)
        assert len(emu.requests) == sent and len((await store.load(s.id)).turns) == 1
        for bad in (0, 9, True):
            with pytest.raises(ConfigError, match="variants"):
                await s.send("x", variants=bad)


async def test_regenerate_gives_another_take(make_emulator: EmulatorFactory) -> None:
    """A regenerate on the emulator is a different image (a seed of its own), and the same
    again in a new engine: deterministic."""
    emu = await make_emulator()
    images = []
    for _ in range(2):
        async with Engine(config_for(emu.base_url)) as engine:
            s = await engine.create_session()
            first = await s.send("a mug on an oak table")
            again = await s.regenerate()
            images.append((first.images[0].data, again.images[0].data))
    assert images[0][0] != images[0][1]
    assert images[0] == images[1]


def test_the_cli_writes_every_take(home: Any, tmp_path: Any, capsys: Any) -> None:
    """`nanoedit edit ... --variants 3` writes turn-02a.png, turn-02b.png, turn-02c.png."""
    from engine.cli import main

    out = tmp_path / "out"
    args = ["edit", "a mug", "add a sprig", "--flat", "--store", "memory", "--out", str(out),
            "--json", "--variants", "3"]  # fmt: skip
    assert main(args) == 0
    names = sorted(p.name for p in out.glob("turn-02*.png"))
    assert names == ["turn-02a.png", "turn-02b.png", "turn-02c.png"]
    assert main([*args[:-1], "9"]) == 1
