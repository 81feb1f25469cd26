"""The feature engine: exact per-event window aggregations, shared by batch and streaming.

Each window feature is answered per transaction with two binary searches over the entity's events
sorted by (entity, time, tie order) and a difference of prefix sums, so the cost per event is
O(log n) whatever the window length; there is no sliding-window pane to copy elements into, and
the result is the window that ends exactly at this transaction.

Amounts are summed as exact integers (micro-units), so the sum over a window does not depend on
how much history precedes it: the stream (which sees only the history it reads back from the
feature store) and the batch path (which sees everything) produce bit-identical features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.features import (
    CUSTOMER,
    DAY_US,
    FEATURES,
    TERMINAL,
    Entity,
    RowFeature,
    WindowFeature,
    max_lookback_us,
)

__all__ = [
    "AMOUNT_SCALE",
    "EventColumns",
    "Events",
    "amount_units",
    "compute_feature_matrix",
    "entity_codes",
    "features_for",
    "order_rank",
    "row_features",
    "window_count_sum",
]

# Amounts are summed as integers of 1e-6 units: exact and associative.
AMOUNT_SCALE = 1_000_000
_INT64_MAX = np.iinfo(np.int64).max


def amount_units(amount: np.ndarray) -> np.ndarray:
    """Amounts as exact int64 micro-units."""
    return np.rint(np.asarray(amount, dtype=np.float64) * AMOUNT_SCALE).astype(np.int64)


def order_rank(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Tie order of transaction ids ("lower id first"): rank of (length, text), see schema.

    Integer arrays are their own order; strings are ranked by (len, text), which is numeric order
    for decimal ids without leading zeros.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    text = arr.astype(str)
    lengths = np.char.str_len(text)
    order = np.lexsort((text, lengths))
    rank = np.empty(len(text), dtype=np.int64)
    rank[order] = np.arange(len(text), dtype=np.int64)
    return rank


@dataclass
class Events:
    """Events of one entity type as parallel arrays.

    entity: int64 entity codes; time_us: int64 event times; rank: int64 tie order (comparable
    among events at the same time); value: int64 summed value (amount units, or 0/1 fraud flags).
    """

    entity: np.ndarray
    time_us: np.ndarray
    rank: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.time_us)


@dataclass
class _SortedEvents:
    key: np.ndarray  # entity * span + (time - base), ascending
    cum: np.ndarray  # prefix sums of value in that order, with a leading 0
    position: np.ndarray  # position[i] = index in sorted order of original event i
    base: int
    span: int


def _sort(events: Events, span_extra: int) -> _SortedEvents:
    time = events.time_us.astype(np.int64)
    base = int(time.min()) - span_extra - 1 if len(time) else 0
    span = (int(time.max()) - base + 1) if len(time) else 1
    n_entities = int(events.entity.max()) + 1 if len(time) else 1
    if n_entities > _INT64_MAX // span:
        raise OverflowError("too many entities for one pass; split the input by entity")
    order = np.lexsort((events.rank, time, events.entity))
    key = events.entity[order].astype(np.int64) * span + (time[order] - base)
    cum = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(events.value[order].astype(np.int64), out=cum[1:])
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64)
    return _SortedEvents(key, cum, position, base, span)


def _window(
    s: _SortedEvents,
    q_entity: np.ndarray,
    q_time: np.ndarray,
    q_index: np.ndarray | None,
    window_us: int,
    delay_us: int,
) -> tuple[np.ndarray, np.ndarray]:
    q_base = q_entity.astype(np.int64) * s.span - s.base
    lo = np.searchsorted(s.key, q_base + (q_time - delay_us - window_us), side="right")
    if delay_us == 0:
        if q_index is None:
            raise ValueError("a window without delay needs the queries' own positions")
        # The current event and, at the same instant, those before it in tie order.
        hi = s.position[q_index] + 1
    else:
        hi = np.searchsorted(s.key, q_base + (q_time - delay_us), side="right")
    hi = np.maximum(hi, lo)
    return hi - lo, s.cum[hi] - s.cum[lo]


def window_count_sum(
    events: Events,
    q_entity: np.ndarray,
    q_time: np.ndarray,
    q_index: np.ndarray | None,
    window_us: int,
    delay_us: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Count and sum of values of each query's entity's events in (t - d - w, t - d].

    With d = 0 the queries must be events themselves (q_index = their index in ``events``): the
    window then ends at the query in tie order, so simultaneous later events are excluded.
    """
    if len(q_time) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(events) == 0:
        zeros = np.zeros(len(q_time), dtype=np.int64)
        return zeros, zeros.copy()
    s = _sort(events, window_us + delay_us)
    return _window(s, q_entity, q_time.astype(np.int64), q_index, window_us, delay_us)


def row_features(time_us: np.ndarray, amount: np.ndarray) -> dict[str, np.ndarray]:
    """The stateless features, by transform name."""
    time_us = np.asarray(time_us, dtype=np.int64)
    days = np.floor_divide(time_us, DAY_US)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    hour = np.floor_divide(time_us - days * DAY_US, 3_600_000_000)
    return {
        "amount": np.asarray(amount, dtype=np.float64),
        "is_weekend": (weekday >= 5).astype(np.float64),
        "is_night": (hour <= 6).astype(np.float64),
    }


def compute_feature_matrix(
    *,
    time_us: np.ndarray,
    amount: np.ndarray,
    transactions: Mapping[Entity, Events],
    labels: Mapping[Entity, Events],
    query_index: Mapping[Entity, np.ndarray],
    features: Sequence[RowFeature | WindowFeature] = FEATURES,
) -> np.ndarray:
    """All features for a set of query transactions, as a float64 matrix in ``features`` order.

    Args:
      time_us, amount: the query transactions' times and amounts.
      transactions: per entity, that entity's transactions (history plus the queries), with
        ``value`` = amount units.
      labels: per entity with label-based features, its label events (``value`` = is_fraud).
      query_index: per entity, the index of each query within ``transactions[entity]``.
    """
    n = len(time_us)
    out = np.zeros((n, len(features)), dtype=np.float64)
    rows = row_features(time_us, amount)
    sorted_tx: dict[Entity, _SortedEvents] = {}
    sorted_labels: dict[Entity, _SortedEvents] = {}
    for col, feature in enumerate(features):
        if isinstance(feature, RowFeature):
            out[:, col] = rows[feature.transform]
            continue
        entity = feature.entity
        tx = transactions[entity]
        idx = query_index[entity]
        if len(tx) == 0 or n == 0:
            continue
        if entity not in sorted_tx:
            sorted_tx[entity] = _sort(tx, max_lookback_us(entity))
        q_entity = tx.entity[idx]
        q_time = tx.time_us[idx].astype(np.int64)
        count, total = _window(
            sorted_tx[entity], q_entity, q_time, idx, feature.window_us, feature.delay_us
        )
        if feature.aggregation == "count":
            out[:, col] = count
        elif feature.aggregation == "mean_amount":
            out[:, col] = _mean(total, count)
        else:
            lab = labels.get(entity)
            if lab is None or len(lab) == 0:
                continue
            if entity not in sorted_labels:
                sorted_labels[entity] = _sort(lab, max_lookback_us(entity))
            # Label events live on the same entity codes as the transactions.
            _, frauds = _window(
                sorted_labels[entity], q_entity, q_time, None, feature.window_us, feature.delay_us
            )
            out[:, col] = np.where(count > 0, frauds / np.maximum(count, 1), 0.0)
    return out


def _mean(total_units: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.where(count > 0, (total_units / AMOUNT_SCALE) / np.maximum(count, 1), 0.0)


def entity_codes(*id_arrays: np.ndarray) -> list[np.ndarray]:
    """Factorises several arrays of entity ids into one shared int64 code space."""
    sizes = [len(a) for a in id_arrays]
    if sum(sizes) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in id_arrays]
    arrays = [np.asarray(a) for a in id_arrays]
    if all(a.dtype.kind in "iu" for a in arrays):
        allv = np.concatenate([a.astype(np.int64) for a in arrays])
    else:
        allv = np.concatenate([a.astype(str) for a in arrays])
    _, codes = np.unique(allv, return_inverse=True)
    out, start = [], 0
    for size in sizes:
        out.append(codes[start : start + size].astype(np.int64))
        start += size
    return out


@dataclass
class EventColumns:
    """Transactions or labels as columns: ids, entity ids, times and a value.

    ``value`` is the amount for transactions and is_fraud (0/1) for labels.
    """

    transaction_id: np.ndarray
    customer_id: np.ndarray
    terminal_id: np.ndarray
    time_us: np.ndarray
    value: np.ndarray

    @classmethod
    def empty(cls) -> EventColumns:
        z = np.zeros(0, dtype=np.int64)
        return cls(z.astype(str), z.astype(str), z.astype(str), z, z.astype(np.float64))

    def __len__(self) -> int:
        return len(self.time_us)


def features_for(
    query: EventColumns,
    *,
    labels: EventColumns,
    customer_history: EventColumns | None = None,
    terminal_history: EventColumns | None = None,
    features: Sequence[RowFeature | WindowFeature] = FEATURES,
) -> np.ndarray:
    """Features of each query transaction, given the history each entity needs.

    The one entry point of the engine. Batch (training, backfill) passes every transaction as
    the query and no history; the stream passes a batch of new transactions as the query and
    the history it read back from the feature store (which must not contain the query's own
    transactions). Both call the same code, so they cannot disagree.
    """
    empty = EventColumns.empty()
    sides: dict[Entity, Events] = {}
    index: dict[Entity, np.ndarray] = {}
    label_events: dict[Entity, Events] = {}
    for entity, history in ((CUSTOMER, customer_history), (TERMINAL, terminal_history)):
        hist = history if history is not None else empty
        key = entity.key_field
        ids = np.concatenate([np.asarray(getattr(hist, key)), np.asarray(getattr(query, key))])
        tx_ids = np.concatenate([np.asarray(hist.transaction_id), np.asarray(query.transaction_id)])
        times = np.concatenate([hist.time_us, query.time_us]).astype(np.int64)
        values = amount_units(np.concatenate([hist.value, query.value]))
        if entity == TERMINAL:
            codes, label_codes = entity_codes(ids, np.asarray(labels.terminal_id))
            label_events[entity] = Events(
                label_codes,
                np.asarray(labels.time_us, dtype=np.int64),
                np.zeros(len(labels), dtype=np.int64),
                np.asarray(labels.value).astype(np.int64),
            )
        else:
            (codes,) = entity_codes(ids)
        if tx_ids.dtype.kind not in "iu":
            tx_ids = tx_ids.astype(str)
        sides[entity] = Events(codes, times, order_rank(tx_ids), values)
        index[entity] = np.arange(len(hist), len(hist) + len(query), dtype=np.int64)
    return compute_feature_matrix(
        time_us=np.asarray(query.time_us, dtype=np.int64),
        amount=np.asarray(query.value, dtype=np.float64),
        transactions=sides,
        labels=label_events,
        query_index=index,
        features=features,
    )
