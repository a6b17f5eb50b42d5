"""`engine.shared`: the shared state's two homes behave alike where the runtime can tell."""

from __future__ import annotations

from typing import Any, cast

from engine.policy import CostBreakdown, CostLedger, Limiter
from engine.runtime._shared import ClusterShared, LocalShared
from engine.state import Cluster


class DownCluster:
    """A cluster whose Redis went away after the call was made: counting spend fails."""

    def __init__(self) -> None:
        self.released: list[str] = []

    async def reserve(self, scopes: list[str], amount: float, ttl: float) -> str:
        return "rid-1"

    async def add_spent(self, scope: str, amount: float) -> float:
        raise ConnectionError("redis went away")

    async def release(self, rid: str, scopes: list[str]) -> None:
        self.released.append(rid)


async def test_a_paid_call_settles_even_when_the_cluster_counter_fails() -> None:
    """Settling never fails because Redis's spend counter cannot be reached: the engine's
    ledger records the spending (the store records the turn) and the reservation is let go."""
    ledger, cluster = CostLedger(), DownCluster()
    shared = ClusterShared(Limiter(4), ledger, cast(Cluster, cluster), cast(Any, None))
    hold = await shared.reserve("s1", "acme", 0.07, ttl=30)
    await shared.settle(hold, CostBreakdown(image_usd=0.06, total_usd=0.06))
    assert ledger.spent_for("s1") == 0.06 and ledger.reserved == 0
    assert cluster.released == ["rid-1"] and not hold.open


async def test_in_one_process_money_is_reserved_and_settled_in_the_ledger() -> None:
    """LocalShared sets money aside in the ledger and settles it there."""
    ledger = CostLedger()
    shared = LocalShared(Limiter(4), ledger)
    hold = await shared.reserve("s1", "acme", 0.07, ttl=30)
    assert ledger.reserved_for("s1") == 0.07 and await shared.reserved_for("s1") == 0.07
    await shared.settle(hold, CostBreakdown(image_usd=0.06, total_usd=0.06))
    assert ledger.spent_for("s1") == 0.06 and ledger.reserved == 0
    await shared.release(hold)  # a no-op once settled
    assert ledger.spent_for("s1") == 0.06
