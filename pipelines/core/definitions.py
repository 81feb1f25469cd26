"""Feature definitions, declared once as data.

Training (batch), backfill and the streaming pipeline all read this module: the model's input
names and order, the windows the engine computes and the Bigtable qualifiers the feature store
writes come from ``FEATURES`` and nowhere else.

Semantics (the reference workload, docs/specs/reference-workload.md section 2): for a
transaction at time t, a window feature with window w and delay d aggregates the entity's events
with time in (t - d - w, t - d]. With no delay the current transaction is included, and of
several transactions at exactly t only those "before or equal" in tie order (lower id first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CUSTOMER",
    "DAY_US",
    "ENTITIES",
    "FEATURES",
    "MODEL_INPUTS",
    "TERMINAL",
    "Entity",
    "RowFeature",
    "WindowFeature",
    "definitions_version",
    "influence_span_us",
    "max_lookback_us",
    "window_features",
]

DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class Entity:
    """An entity that features are aggregated per; one Bigtable row per entity instance."""

    name: str
    key_field: str

    def row_key(self, entity_id: str) -> bytes:
        return f"{self.name}#{entity_id}".encode()


CUSTOMER = Entity("customer", "customer_id")
TERMINAL = Entity("terminal", "terminal_id")
ENTITIES: tuple[Entity, ...] = (CUSTOMER, TERMINAL)


@dataclass(frozen=True)
class RowFeature:
    """A feature computed from the transaction alone (no state)."""

    name: str
    transform: Literal["amount", "is_weekend", "is_night"]


@dataclass(frozen=True)
class WindowFeature:
    """An aggregation over an entity's events in the window (t - delay - window, t - delay].

    Aggregations:
      count       number of the entity's transactions in the window.
      mean_amount mean transaction amount in the window (0 when empty).
      fraud_rate  frauds (from the label stream) / transactions in the window (0 when empty).
    """

    name: str
    entity: Entity
    aggregation: Literal["count", "mean_amount", "fraud_rate"]
    window_days: int
    delay_days: int = 0

    @property
    def window_us(self) -> int:
        return self.window_days * DAY_US

    @property
    def delay_us(self) -> int:
        return self.delay_days * DAY_US

    @property
    def needs_labels(self) -> bool:
        return self.aggregation == "fraud_rate"


def _customer_features(days: int) -> tuple[WindowFeature, ...]:
    return (
        WindowFeature(f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW", CUSTOMER, "count", days),
        WindowFeature(f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW", CUSTOMER, "mean_amount", days),
    )


# Labels become known 7 days after the transaction, so terminal risk looks at a delayed window.
LABEL_DELAY_DAYS = 7


def _terminal_features(days: int) -> tuple[WindowFeature, ...]:
    return (
        WindowFeature(
            f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW", TERMINAL, "count", days, LABEL_DELAY_DAYS
        ),
        WindowFeature(
            f"TERMINAL_ID_RISK_{days}DAY_WINDOW", TERMINAL, "fraud_rate", days, LABEL_DELAY_DAYS
        ),
    )


FEATURES: tuple[RowFeature | WindowFeature, ...] = (
    RowFeature("TX_AMOUNT", "amount"),
    RowFeature("TX_DURING_WEEKEND", "is_weekend"),
    RowFeature("TX_DURING_NIGHT", "is_night"),
    *(f for days in (1, 7, 30) for f in _customer_features(days)),
    *(f for days in (1, 7, 30) for f in _terminal_features(days)),
)

# The model's inputs, in the order of the input vector.
MODEL_INPUTS: tuple[str, ...] = tuple(f.name for f in FEATURES)


def definitions_version() -> str:
    """A short fingerprint of the feature declarations (sha256 over ``repr(FEATURES)``, 12 hex
    characters), recorded by the job's update fingerprint (tests/unit/test_update_compat.py).
    Model cards record one fingerprint per input instead (pipelines/core/model_inputs.py)."""
    import hashlib

    return hashlib.sha256(repr(FEATURES).encode()).hexdigest()[:12]


def window_features(entity: Entity | None = None) -> tuple[WindowFeature, ...]:
    """The window features, optionally only those of one entity."""
    return tuple(
        f
        for f in FEATURES
        if isinstance(f, WindowFeature) and (entity is None or f.entity == entity)
    )


def max_lookback_us(entity: Entity) -> int:
    """How far back in event time any window of this entity reaches (what the store must keep)."""
    return max((f.window_us + f.delay_us for f in window_features(entity)), default=0)


def max_delay_us(entity: Entity) -> int:
    """The largest delay among the entity's windows (the label delay for terminals)."""
    return max((f.delay_us for f in window_features(entity)), default=0)


def min_delay_us(entity: Entity) -> int:
    """The smallest delay among the entity's windows: newer events are never needed."""
    return min((f.delay_us for f in window_features(entity)), default=0)


def influence_span_us(entity: Entity, labels: bool = False) -> tuple[int, int]:
    """Which later transactions an event of this entity at time t counts for: those at a time in
    [t + lo, t + hi). ``labels`` restricts to the features that read the label stream.

    The feature store uses it to find the transactions an out-of-order event changes.
    """
    spans = [
        (f.delay_us, f.delay_us + f.window_us)
        for f in window_features(entity)
        if f.needs_labels or not labels
    ]
    if not spans:
        return (0, 0)
    return (min(lo for lo, _ in spans), max(hi for _, hi in spans))
