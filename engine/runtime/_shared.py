"""What the engines of one deployment share -- money set aside for calls in flight, in-flight
slots and rate buckets, who is alive -- behind one interface with two homes, picked once when
the Engine starts: this process alone (`LocalShared`), or every node of a cluster through Redis
(`ClusterShared`). No other code asks which. (The event sequence and its fan-out have the same
two homes one layer down: `EventBus` and `ClusterBus`.)

Money is set aside once, in its home: the engine's ledger here, Redis in a cluster (where the
ledger then records what was settled, for this engine's totals, without a reservation of its
own).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from engine._config import EngineConfig
from engine._logs import Logger
from engine.policy import CostBreakdown, CostLedger, Limiter, Reservation, SlotHandle
from engine.state import Cluster

__all__ = ["ClusterShared", "Hold", "LocalShared", "Shared"]

_log = Logger("nanoedit.shared")


@dataclass(slots=True)
class Hold:
    """Money set aside for one call, until it is settled or released."""

    session_id: str
    tenant: str
    amount: float
    local: Reservation | None = None  # in this engine's ledger
    remote: str | None = None  # a cluster reservation's id
    open: bool = True

    @property
    def scopes(self) -> list[str]:
        """What the money counts under: its session, its tenant."""
        return [f"session:{self.session_id}", f"tenant:{self.tenant}"]


class Shared(abc.ABC):
    """The shared state an engine's turns use; see the module docstring."""

    def __init__(self, limiter: Limiter, ledger: CostLedger) -> None:
        self.limiter = limiter
        self.ledger = ledger

    @abc.abstractmethod
    def slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]:
        """The slot an upstream request holds while it runs."""

    @abc.abstractmethod
    async def reserve(self, session_id: str, tenant: str, amount: float, ttl: float) -> Hold:
        """Set `amount` aside for a call (lapsing after `ttl` seconds if its holder dies)."""

    @abc.abstractmethod
    async def release(self, hold: Hold) -> None:
        """Give the money back: the call failed or was cancelled (a no-op once settled)."""

    @abc.abstractmethod
    async def settle(self, hold: Hold, breakdown: CostBreakdown) -> None:
        """Replace the reservation with what the call really cost."""

    @abc.abstractmethod
    async def reserved_for(self, session_id: str) -> float:
        """Money set aside for the session's calls in flight (every node's, in a cluster)."""

    @abc.abstractmethod
    async def reserved_for_tenant(self, tenant: str) -> float:
        """Money set aside for the tenant's calls in flight."""

    @property
    @abc.abstractmethod
    def node_gone(self) -> Callable[[str], Awaitable[bool]] | None:
        """Whether a lease owner's node stopped beating (None: no heartbeats here)."""

    @abc.abstractmethod
    async def ping(self) -> bool | None:
        """Whether the shared home answers (None: it is this process)."""


class LocalShared(Shared):
    """One process: the engine's limiter and ledger."""

    def slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]:
        return self.limiter.slot(model)

    async def reserve(self, session_id: str, tenant: str, amount: float, ttl: float) -> Hold:
        local = self.ledger.reserve(amount, session_id=session_id)
        return Hold(session_id, tenant, amount, local=local)

    async def release(self, hold: Hold) -> None:
        if hold.open and hold.local is not None:
            self.ledger.release(hold.local)
        hold.open = False

    async def settle(self, hold: Hold, breakdown: CostBreakdown) -> None:
        assert hold.local is not None
        self.ledger.settle(hold.local, breakdown)
        hold.open = False

    async def reserved_for(self, session_id: str) -> float:
        return self.ledger.reserved_for(session_id)

    async def reserved_for_tenant(self, tenant: str) -> float:
        return 0.0  # one process's tenant spend is read from the store

    @property
    def node_gone(self) -> None:
        return None

    async def ping(self) -> None:
        return None


class ClusterShared(Shared):
    """Every node of a cluster, through Redis; this node's limiter still applies on top."""

    def __init__(
        self, limiter: Limiter, ledger: CostLedger, cluster: Cluster, config: EngineConfig
    ) -> None:
        super().__init__(limiter, ledger)
        self.cluster = cluster
        self.config = config

    @asynccontextmanager
    async def _slot(self, model: str) -> AsyncIterator[SlotHandle]:
        cluster, cfg = self.cluster, self.config
        async with (
            cluster.slot(cfg.max_in_flight, model=model, per_minute=cfg.requests_per_minute),
            self.limiter.slot(model) as slot,
        ):
            yield slot
        if slot.status in (429, 503):
            # What one node learns, every node obeys: the allowance is shared.
            await cluster.halve(model, cfg.max_in_flight)

    def slot(self, model: str) -> AbstractAsyncContextManager[SlotHandle]:
        return self._slot(model)

    async def reserve(self, session_id: str, tenant: str, amount: float, ttl: float) -> Hold:
        hold = Hold(session_id, tenant, amount)
        hold.remote = await self.cluster.reserve(hold.scopes, amount, ttl)
        return hold

    async def release(self, hold: Hold) -> None:
        was_open, hold.open = hold.open, False
        if was_open and hold.remote is not None:
            try:
                await self.cluster.release(hold.remote, hold.scopes)
            except Exception as exc:  # harmless: it lapses after its TTL anyway
                _log.warning("shared.release_failed", error=str(exc))

    async def settle(self, hold: Hold, breakdown: CostBreakdown) -> None:
        self.ledger.record(hold.session_id, breakdown)
        try:
            # The live cross-node counter; the store, which the commit writes next, is the
            # record of what was spent: a paid turn is never lost to a Redis that went away.
            await self.cluster.add_spent(f"tenant:{hold.tenant}", breakdown.total_usd)
        except Exception as exc:
            _log.warning("shared.spend_not_counted", error=str(exc))
        await self.release(hold)

    async def reserved_for(self, session_id: str) -> float:
        return await self.cluster.reserved(f"session:{session_id}")

    async def reserved_for_tenant(self, tenant: str) -> float:
        return await self.cluster.reserved(f"tenant:{tenant}")

    @property
    def node_gone(self) -> Callable[[str], Awaitable[bool]]:
        return self.cluster.node_gone

    async def ping(self) -> bool:
        return await self.cluster.ping()
