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
import pandas as pd

from pipelines.core.definitions import (
    CUSTOMER,
    DAY_US,
    ENTITIES,
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
    "aggregate",
    "amount_unit",
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


def amount_unit(amount: float) -> int:
    """One amount as exact micro-units: the same IEEE product and the same rounding (half to
    even) as ``amount_units``, in plain Python (a NumPy scalar costs ten times more)."""
    return round(float(amount) * AMOUNT_SCALE)


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
    order: np.ndarray  # order[j] = original index of the j-th event in sorted order
    position: np.ndarray  # position[i] = index in sorted order of original event i
    base: int
    span: int

    def query_key(self, q_entity: np.ndarray, q_time: np.ndarray) -> np.ndarray:
        return q_entity.astype(np.int64) * self.span + (q_time - self.base)


def _sort(
    events: Events, span_extra: int, t_max: int | None = None, t_min: int | None = None
) -> _SortedEvents:
    """Sorts events by (entity, time, rank) into one int64 key per event.

    The key space of each entity spans from the oldest event or query time (``t_min``) minus
    ``span_extra`` (the longest lookback) to ``t_max`` (the newest event or query time): a
    query's window must not reach into the previous entity's range, nor a query beyond the
    newest event into the next one's.
    """
    time = events.time_us.astype(np.int64)
    newest = max(int(time.max()) if len(time) else 0, t_max if t_max is not None else 0)
    oldest = int(time.min()) if len(time) else 0
    if t_min is not None:
        oldest = min(oldest, t_min)
    base = oldest - span_extra - 1 if len(time) else 0
    span = newest - base + 1 if len(time) else 1
    n_entities = int(events.entity.max()) + 1 if len(time) else 1
    if n_entities > _INT64_MAX // span:
        raise OverflowError("too many entities for one pass; split the input by entity")
    order = np.lexsort((events.rank, time, events.entity))
    key = events.entity[order].astype(np.int64) * span + (time[order] - base)
    cum = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(events.value[order].astype(np.int64), out=cum[1:])
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64)
    return _SortedEvents(key, cum, order, position, base, span)


def _query_order(s: _SortedEvents, q_index: np.ndarray | None, q_key: np.ndarray) -> np.ndarray:
    """The order that sorts the queries by (entity, time)."""
    if q_index is not None:
        if len(q_index) == len(s.order) and np.array_equal(
            q_index, np.arange(len(q_index), dtype=q_index.dtype)
        ):
            return s.order  # every event is a query: their sorted order is already known
        return np.argsort(s.position[q_index], kind="stable")
    return np.argsort(q_key, kind="stable")


@dataclass
class _Queries:
    """Queries in ascending (entity, time) order: binary searches over a large array visit
    memory sequentially then, about 10x faster than in random order. Results are computed in
    this order and scattered back once per feature."""

    order: np.ndarray  # order[j] = original index of the j-th query
    entity: np.ndarray  # entity codes, sorted order
    time_us: np.ndarray  # times, sorted order
    position: np.ndarray | None  # the queries' own positions among the events (no-delay windows)

    @classmethod
    def of(
        cls, s: _SortedEvents, q_entity: np.ndarray, q_time: np.ndarray, q_index: np.ndarray | None
    ) -> _Queries:
        order = _query_order(s, q_index, s.query_key(q_entity, q_time))
        position = None if q_index is None else s.position[q_index][order]
        return cls(order, q_entity[order], q_time[order], position)


def _window(
    s: _SortedEvents,
    q: _Queries,
    window_us: int,
    delay_us: int,
    bounds: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Count and sum per query (in the queries' sorted order) over (t - d - w, t - d].

    ``bounds`` caches the binary searches by offset for one (events, queries) pair: windows
    sharing an edge (a count and a mean, the delayed windows' common end) search once.
    """
    bounds = {} if bounds is None else bounds

    def bound(offset: int) -> np.ndarray:
        if offset not in bounds:
            q_key = s.query_key(q.entity, q.time_us)
            bounds[offset] = np.searchsorted(s.key, q_key - offset, side="right")
        return bounds[offset]

    lo = bound(delay_us + window_us)
    if delay_us == 0:
        if q.position is None:
            raise ValueError("a window without delay needs the queries' own positions")
        # The current event and, at the same instant, those before it in tie order.
        hi = q.position + 1
    else:
        hi = bound(delay_us)
    hi = np.maximum(hi, lo)
    return hi - lo, s.cum[hi] - s.cum[lo]


def _unsort(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out


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
    q_time = np.asarray(q_time, dtype=np.int64)
    s = _sort(events, window_us + delay_us, int(q_time.max()), int(q_time.min()))
    q = _Queries.of(s, np.asarray(q_entity, dtype=np.int64), q_time, q_index)
    count, total = _window(s, q, window_us, delay_us)
    return _unsort(count, q.order), _unsort(total, q.order)


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
    queries: dict[Entity, _Queries] = {}
    tx_bounds: dict[Entity, dict[int, np.ndarray]] = {}
    label_bounds: dict[Entity, dict[int, np.ndarray]] = {}
    q_time = np.asarray(time_us, dtype=np.int64)
    t_max = int(q_time.max()) if n else 0
    t_min = int(q_time.min()) if n else 0
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
            s = sorted_tx[entity] = _sort(tx, max_lookback_us(entity))
            queries[entity] = _Queries.of(s, tx.entity[idx], q_time, idx)
            tx_bounds[entity], label_bounds[entity] = {}, {}
        q = queries[entity]
        count, total = _window(
            sorted_tx[entity], q, feature.window_us, feature.delay_us, tx_bounds[entity]
        )
        frauds = None
        if feature.needs_labels:
            lab = labels.get(entity)
            if lab is None or len(lab) == 0:
                continue
            if entity not in sorted_labels:
                # Labels may all be later than a query: their keys must start before its
                # window does (t_min), or the window's start lands in the previous entity.
                sorted_labels[entity] = _sort(lab, max_lookback_us(entity), t_max, t_min)
            # Label events live on the same entity codes as the transactions, so the queries'
            # (entity, time) order holds on both sides.
            _, frauds = _window(
                sorted_labels[entity], q, feature.window_us, feature.delay_us, label_bounds[entity]
            )
        out[q.order, col] = aggregate(feature.aggregation, count, total, frauds)
    return out


def aggregate(
    aggregation: str, count: np.ndarray, total_units: np.ndarray, frauds: np.ndarray | None
) -> np.ndarray:
    """A window feature's values from its window's exact integer aggregates: the one place the
    integers become floats, so every path that sums the same integers (the engine over events,
    pipelines.core.window_state over bucket summaries and edge cells) gives the same bits."""
    count = np.asarray(count, dtype=np.int64)
    if aggregation == "count":
        return count.astype(np.float64)
    if aggregation == "mean_amount":
        total = np.asarray(total_units, dtype=np.int64)
        return np.where(count > 0, (total / AMOUNT_SCALE) / np.maximum(count, 1), 0.0)
    if aggregation == "fraud_rate":
        assert frauds is not None, "fraud_rate needs the window's frauds"
        flags = np.asarray(frauds, dtype=np.int64)
        return np.where(count > 0, flags / np.maximum(count, 1), 0.0)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def entity_codes(*id_arrays: np.ndarray) -> list[np.ndarray]:
    """Factorises several arrays of entity ids into one shared int64 code space."""
    sizes = [len(a) for a in id_arrays]
    if sum(sizes) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in id_arrays]
    arrays = [np.asarray(a) for a in id_arrays]
    if all(a.dtype.kind in "iu" for a in arrays):
        allv = np.concatenate([a.astype(np.int64) for a in arrays])
    else:
        allv = np.concatenate([a.astype(str) for a in arrays]).astype(object)
    # Hash-based: O(n), and the codes' order does not matter (they only group events).
    codes, _ = pd.factorize(allv)
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


def _concat(history: np.ndarray, query: np.ndarray) -> np.ndarray:
    # An empty history must not promote the query's integer ids to strings.
    if len(history) == 0:
        return np.asarray(query)
    return np.concatenate([np.asarray(history), np.asarray(query)])


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
    histories = {CUSTOMER: customer_history, TERMINAL: terminal_history}
    windows = [f for f in features if isinstance(f, WindowFeature)]
    for entity in ENTITIES:
        if not any(f.entity == entity for f in windows):
            continue  # e.g. a backfill shard computing one entity's features
        hist = histories.get(entity) or empty
        key = entity.key_field
        ids = _concat(getattr(hist, key), getattr(query, key))
        tx_ids = _concat(hist.transaction_id, query.transaction_id)
        times = _concat(hist.time_us, query.time_us).astype(np.int64)
        values = amount_units(_concat(hist.value, query.value))
        if any(f.entity == entity and f.needs_labels for f in windows):
            codes, label_codes = entity_codes(ids, np.asarray(getattr(labels, key)))
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
