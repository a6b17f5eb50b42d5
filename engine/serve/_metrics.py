"""The gateway's Prometheus metrics, fed by the engine's event bus.

prometheus-client is used rather than written here: the text format has escaping, histogram
and content-negotiation rules that it already gets right, and it is what scrapers are tested
against. Each gateway has its own registry (tests run several in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.events import Event, TurnCompleted, TurnFailed, TurnRetrying
from engine.state import EventBus

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)


class Metrics:
    """Turns by outcome, latency, retries, cost and images; turns in flight at scrape time."""

    def __init__(self, bus: EventBus) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = Counter(
            "nanoedit_turns", "Turns that ended, by outcome", ["outcome"], registry=r
        )
        self.latency = Histogram(
            "nanoedit_turn_latency_seconds",
            "Seconds from a turn's start to its commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("nanoedit_turn_retries", "Attempts retried", registry=r)
        self.cost = Counter("nanoedit_cost_usd", "USD settled for committed turns", registry=r)
        self.images = Counter("nanoedit_images", "Images committed", registry=r)
        self.failures = Counter(
            "nanoedit_turn_failures", "Failed turns by error type", ["error_type"], registry=r
        )
        self.in_flight = Gauge("nanoedit_turns_in_flight", "Turns running now", registry=r)
        self._unsubscribe = bus.on("turn.*", self._observe)

    def _observe(self, event: Event) -> None:
        kind = event.type
        if isinstance(event, TurnCompleted):
            self.turns.labels("completed").inc()
            self.latency.observe(event.latency_s)
            self.cost.inc(max(event.cost_usd, 0.0))
            self.images.inc(len(event.images))
        elif isinstance(event, TurnFailed):
            self.turns.labels("failed").inc()
            self.failures.labels(event.error_type).inc()
        elif kind == "turn.cancelled":
            self.turns.labels("cancelled").inc()
        elif isinstance(event, TurnRetrying):
            self.retries.inc()

    def render(self, *, in_flight: int) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        self.in_flight.set(in_flight)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """Stop listening to the bus."""
        self._unsubscribe()
