"""Shared state: the event bus (sequence numbers and fan-out) and its Redis-backed cluster
counterpart (ledger, slots, rate buckets across nodes).
"""

from engine.state._bus import (
    EventBus,
    Handler,
    Overflow,
    Subscription,
)
from engine.state._redis import (
    Cluster,
    ClusterBus,
    ClusterError,
)

__all__ = [
    "Cluster",
    "ClusterBus",
    "ClusterError",
    "EventBus",
    "Handler",
    "Overflow",
    "Subscription",
]
