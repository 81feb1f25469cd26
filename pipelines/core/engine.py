"""The feature engine: exact per-event window aggregations, shared by batch and streaming.

``compute_features`` computes the features of any definitions file (pipelines.core.declarations)
for a batch of events, equal bit for bit to tests/oracle.py; ``features_for`` is it for the
handbook's columns (EventColumns). Each window feature is answered per transaction with binary
searches over the entity's events sorted by (entity, time, tie order) and a difference of prefix
sums (or a range minimum, a distinct count, the previous event), so the cost per event is
O(log n) whatever the window length; there is no sliding-window pane to copy elements into, and
the result is the window that ends exactly at this transaction.

Amounts are summed as exact integers (micro-units), so the sum over a window does not depend on
how much history precedes it: the stream (which sees only the history it reads back from the
feature store) and the batch path (which sees everything) produce bit-identical features.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.core.declarations import Definitions, load_definitions
from pipelines.core.declarations import DerivedFeature as DeclaredDerived
from pipelines.core.declarations import Entity as DeclaredEntity
from pipelines.core.declarations import RowFeature as DeclaredRow
from pipelines.core.declarations import WindowFeature as DeclaredWindow
from pipelines.core.definitions import (
    CUSTOMER,
    DAY_US,
    ENTITIES,
    FEATURES,
    TERMINAL,
    RowFeature,
    WindowFeature,
)
from pipelines.core.predicates import TIME_PARTS, Predicate

__all__ = [
    "AMOUNT_SCALE",
    "Columns",
    "EventColumns",
    "Events",
    "aggregate",
    "amount_unit",
    "amount_units",
    "compute_features",
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


@functools.cache
def _handbook() -> Definitions:
    return load_definitions()


def _handbook_columns(columns: EventColumns, value: str) -> dict[str, np.ndarray]:
    return {
        "transaction_id": np.asarray(columns.transaction_id),
        "customer_id": np.asarray(columns.customer_id),
        "terminal_id": np.asarray(columns.terminal_id),
        "tx_datetime": np.asarray(columns.time_us, dtype=np.int64),
        value: np.asarray(columns.value, dtype=np.float64 if value == "amount" else np.int64),
    }


def features_for(
    query: EventColumns,
    *,
    labels: EventColumns,
    customer_history: EventColumns | None = None,
    terminal_history: EventColumns | None = None,
    features: Sequence[RowFeature | WindowFeature] = FEATURES,
) -> np.ndarray:
    """The handbook's features (``features``, pipelines.core.definitions) of each query
    transaction, given the history each entity needs: ``compute_features`` over the handbook's
    definitions file, for the callers of the columns of before definitions were files.

    Batch passes every transaction as the query and no history; the stream passes a batch of
    new transactions as the query and the history it read back from the feature store (which
    must not contain the query's own transactions).
    """
    defs = _handbook()
    out = np.zeros((len(query), len(features)), dtype=np.float64)
    label_columns = _handbook_columns(labels, "is_fraud")
    histories = {CUSTOMER: customer_history, TERMINAL: terminal_history}
    for entity in ENTITIES:
        cols = [
            i for i, f in enumerate(features) if isinstance(f, WindowFeature) and f.entity == entity
        ]
        if not cols:
            continue  # e.g. a backfill shard computing one entity's features
        history = _handbook_columns(histories.get(entity) or EventColumns.empty(), "amount")
        events = {
            k: _concat(v, c)
            for (k, v), c in zip(
                history.items(), _handbook_columns(query, "amount").values(), strict=True
            )
        }
        start = len(history["tx_datetime"])
        out[:, cols] = compute_features(
            defs,
            events,
            label_columns,
            names=[features[i].name for i in cols],
            query=np.arange(start, start + len(query), dtype=np.int64),
        )
    rows = [i for i, f in enumerate(features) if isinstance(f, RowFeature)]
    if rows:
        out[:, rows] = compute_features(
            defs, _handbook_columns(query, "amount"), names=[features[i].name for i in rows]
        )
    return out


# -- features from a definitions file --------------------------------------------------------
#
# ``compute_features`` answers every feature of a definitions file (pipelines.core.declarations)
# for a batch of events, equal bit for bit to tests/oracle.py (the semantics of each operation).
# Per entity, events are sorted once by (entity, time, tie order); a window is then an index
# range [lo, hi) of the sorted events that pass the feature's filter, found by binary search:
#
#   count, sum, mean, std, label_rate  prefix sums (exact integers: int64 when no sum can leave
#                                      int64, Python ints otherwise) differenced at lo and hi;
#   min, max                           a sparse table, built one level at a time;
#   distinct                           an event counts for the queries whose window starts
#                                      after the previous event with its value and contains it:
#                                      lo and hi grow with the queries' order, so those queries
#                                      are one contiguous run (a difference array);
#   last, since_previous               the event just before the query in the window.

Columns = Mapping[str, np.ndarray]


def compute_features(
    defs: Definitions,
    events: Columns,
    labels: Columns | None = None,
    *,
    names: Sequence[str] | None = None,
    query: np.ndarray | None = None,
    known: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Features of a definitions file for a batch of events, as a float64 matrix.

    Args:
      defs: the definitions (``load_definitions``).
      events: the events stream's columns by field name: the time field as int64 µs, ids and
        texts as str/object or integer arrays, numbers as float64. Event ids are unique.
      labels: the label stream's columns by field name (a transaction's later label wins);
        None: no label is known (every label rate is 0).
      names: the features wanted, in the output's column order (default: all, file order);
        derived ones read their inputs, computed alongside.
      query: which events get a row (a boolean mask or event indices, rows in that order);
        default every event. The others are history: they count in windows, get no row.
      known: features already computed (by name, one value per query), taken as they are:
        e.g. the backfill's last stage adds the row and derived features to the window
        features its entity stages computed.
    """
    wanted = list(defs.names if names is None else names)
    needed = set(defs.closure(wanted))
    ev = defs.events
    time = np.asarray(events[ev.time_field], dtype=np.int64)
    n_events = len(time)
    if query is None:
        q_index = np.arange(n_events, dtype=np.int64)
    else:
        q = np.asarray(query)
        q_index = np.flatnonzero(q) if q.dtype == bool else q.astype(np.int64)
    computed = [
        f
        for f in defs.window_features()
        if f.name in needed and (known is None or f.name not in known)
    ]
    batch = _Batch(defs, events, labels, time, q_index, computed)
    # Column-major: each feature is written in place, and a DataFrame takes it uncopied.
    out = np.empty((len(q_index), len(wanted)), dtype=np.float64, order="F")
    column = {name: col for col, name in enumerate(wanted)}
    values: dict[str, np.ndarray] = {}
    for f in defs.features:
        if f.name not in needed:
            continue
        target = out[:, column[f.name]] if f.name in column else np.empty(len(q_index))
        if known is not None and f.name in known:
            target[:] = known[f.name]
        elif isinstance(f, DeclaredRow):
            target[:] = batch.row(f)
        elif isinstance(f, DeclaredDerived):
            a, b = (values[i] for i in f.inputs)
            if f.op == "difference":
                np.subtract(a, b, out=target)
            else:
                target[:] = 0.0
                np.divide(a, b, out=target, where=b != 0)
        else:
            batch.window(f, target)
        values[f.name] = target
    for col, name in enumerate(wanted):
        if column[name] != col:  # a name asked for twice
            out[:, col] = values[name]
    return out


def _tie_rank(*id_arrays: np.ndarray) -> list[np.ndarray]:
    """Tie order ranks of transaction ids (shorter first, then by text: ``str(id)``), in one
    shared order over several arrays. Non-negative integers are their own order."""
    arrays = [np.asarray(a) for a in id_arrays]
    if all(a.dtype.kind in "iu" and (len(a) == 0 or a.min() >= 0) for a in arrays):
        return [a.astype(np.int64) for a in arrays]
    text = np.concatenate([a.astype(str) for a in arrays])
    # Dense: a label's id ranks equal to its transaction's.
    order = np.lexsort((text, np.char.str_len(text)))
    ranks = np.empty(len(text), dtype=np.int64)
    if len(text):
        ranks[order] = np.concatenate(([0], np.cumsum(text[order][1:] != text[order][:-1])))
    out, start = [], 0
    for a in arrays:
        out.append(ranks[start : start + len(a)])
        start += len(a)
    return out


def _key_codes(columns: Sequence[Columns], keys: Sequence[str]) -> list[np.ndarray]:
    """Entity codes of each side's events, shared: equal codes <=> equal ``Entity.id_of``
    (key values compared as text, as the id's parts)."""
    sizes = [len(c[keys[0]]) for c in columns]
    combined: np.ndarray | None = None
    for key in keys:
        parts = [np.asarray(c[key]) for c in columns]
        if not all(p.dtype.kind in "iu" for p in parts):
            parts = [p.astype(str) for p in parts]
        codes, uniques = pd.factorize(np.concatenate(parts) if len(parts) > 1 else parts[0])
        if combined is None:
            combined = codes
        else:  # (codes so far, this key's code) as one code
            combined, _ = pd.factorize(combined * max(len(uniques), 1) + codes)
    assert combined is not None
    combined = combined.astype(np.int64, copy=False)
    out, start = [], 0
    for size in sizes:
        out.append(combined[start : start + size])
        start += size
    return out


def _count_le(sorted_keys: Sequence[np.ndarray], probe_keys: Sequence[np.ndarray]) -> np.ndarray:
    """For each probe, how many rows of ``sorted_keys`` (lexicographically sorted, most
    significant first) are <= it: one merge of both sides, for keys that do not fit one int64."""
    n = len(sorted_keys[0])
    m = len(probe_keys[0])
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    side = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(m, dtype=np.int8)])
    columns = [np.concatenate([a, b]) for a, b in zip(sorted_keys, probe_keys, strict=True)]
    # Rows before probes on equal keys ("<="): the side is the least significant key.
    order = np.lexsort((side, *reversed(columns)))
    is_row = side[order] == 0
    before = np.cumsum(is_row)
    out = np.empty(m, dtype=np.int64)
    probes = order[~is_row] - n
    out[probes] = before[~is_row]
    return out


_UNITS_BOUND = 2**62


def _units_of(values: np.ndarray, scale: int) -> np.ndarray:
    """Exact integers of 10**-scale (the oracle's ``round(float(v) * 10**scale)``): int64, or
    Python ints when a value does not fit."""
    product = np.asarray(values, dtype=np.float64) * float(10**scale)
    rounded = np.rint(product)
    if len(rounded) == 0 or float(np.max(np.abs(rounded))) < _UNITS_BOUND:
        return rounded.astype(np.int64)
    return np.array([int(v) for v in rounded], dtype=object)


def _prefix(units: np.ndarray, square: bool = False) -> np.ndarray:
    """Prefix sums with a leading 0: int64 when no sum of up to len(units) terms can overflow,
    exact Python ints otherwise."""
    n = len(units)
    top = int(max((abs(int(u)) for u in (units.min(), units.max())), default=0)) if n else 0
    if square:
        top = top * top
    exact = units.dtype != object and top * max(n, 1) < 2**63
    terms = units.astype(np.int64 if exact else object, copy=False)
    if square:
        terms = terms * terms
    out = np.zeros(n + 1, dtype=np.int64 if exact else object)
    if n:
        out[1:] = np.cumsum(terms)
    return out


def _range_reduce(
    values: np.ndarray, lo: np.ndarray, hi: np.ndarray, reduce: np.ufunc
) -> np.ndarray:
    """``reduce`` (np.minimum / np.maximum) of values[lo:hi] per query, 0.0 when empty: a sparse
    table built one level at a time, each query answered at its level (memory O(n))."""
    out = np.zeros(len(lo), dtype=np.float64)
    length = hi - lo
    nonempty = length > 0
    if not nonempty.any():
        return out
    level_of = np.frexp(np.where(nonempty, length, 1).astype(np.float64))[1] - 1
    table = np.asarray(values, dtype=np.float64)
    for level in range(int(level_of[nonempty].max()) + 1):
        width = 1 << level
        at = np.flatnonzero(nonempty & (level_of == level))
        if len(at):
            out[at] = reduce(table[lo[at]], table[hi[at] - width])
        table = reduce(table[:-width], table[width:])
    return out


def _distinct(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distinct codes in codes[lo:hi] per query, with lo and hi non-decreasing over queries."""
    n, m = len(codes), len(lo)
    if n == 0 or m == 0:
        return np.zeros(m, dtype=np.float64)
    by_value = np.argsort(codes, kind="stable")
    previous = np.full(n, -1, dtype=np.int64)
    same = codes[by_value][1:] == codes[by_value][:-1]
    previous[by_value[1:][same]] = by_value[:-1][same]
    j = np.arange(n, dtype=np.int64)
    # Event j counts for the queries with previous[j] < lo <= j < hi: a contiguous run.
    start = np.maximum(
        np.searchsorted(lo, previous, side="right"), np.searchsorted(hi, j, side="right")
    )
    stop = np.searchsorted(lo, j, side="right")
    run = start < stop
    delta = np.bincount(start[run], minlength=m + 1) - np.bincount(stop[run], minlength=m + 1)
    return np.cumsum(delta)[:m].astype(np.float64)


class _Sorted:
    """One side's events of one entity that pass one filter, in (entity, time, tie) order:
    their indices in their columns, and the columns gathered in that order when first read."""

    def __init__(
        self,
        index: np.ndarray,
        columns: tuple[np.ndarray, np.ndarray, np.ndarray],
        key: np.ndarray | None,
        position: np.ndarray | None,
    ) -> None:
        self.index = index
        self._columns = columns  # entity codes, times, tie ranks: unsorted, all events
        self.key = key  # code * span + (time - base), when that fits int64
        self.position = position  # events: their position in the entity's full sorted order

    @functools.cached_property
    def code(self) -> np.ndarray:
        return self._columns[0][self.index]

    @functools.cached_property
    def time(self) -> np.ndarray:
        return self._columns[1][self.index]

    @functools.cached_property
    def tie(self) -> np.ndarray:
        return self._columns[2][self.index]

    def subset(self, keep: np.ndarray) -> _Sorted:
        """Those of them where ``keep`` (a mask in this order) holds."""
        return _Sorted(
            self.index[keep],
            self._columns,
            None if self.key is None else self.key[keep],
            None if self.position is None else self.position[keep],
        )


class _Entity:
    """The sorted events (and labels) of one entity and its queries, shared by its features."""

    def __init__(self, batch: _Batch, entity: DeclaredEntity) -> None:
        self.batch = batch
        self.entity = entity
        label_code: np.ndarray | None = None
        if batch.has_labels(entity):
            ev_code, label_code = _key_codes([batch.events, batch.labels], entity.keys)
        else:
            (ev_code,) = _key_codes([batch.events], entity.keys)
        self.label_code = label_code
        reach = batch.defs.lookback_us(entity)
        times = [batch.time] + ([batch.label_time] if label_code is not None else [])
        lows = [int(t.min()) for t in times if len(t)]
        highs = [int(t.max()) for t in times if len(t)]
        self.base = (min(lows) if lows else 0) - reach - 1
        self.span = (max(highs) if highs else 0) - self.base + 1
        n_codes = int(ev_code.max()) + 1 if len(ev_code) else 1
        if label_code is not None and len(label_code):
            n_codes = max(n_codes, int(label_code.max()) + 1)
        self.fits = n_codes <= _INT64_MAX // self.span
        columns = (ev_code, batch.time, batch.tie)
        if self.fits:
            key = self._key(ev_code, batch.time)
            order = np.lexsort((batch.tie, key))
            sorted_key: np.ndarray | None = key[order]
        else:
            order = np.lexsort((batch.tie, batch.time, ev_code))
            sorted_key = None
        n = len(order)
        sorted_position = np.arange(n, dtype=np.int64)
        self.all_events = _Sorted(order, columns, sorted_key, sorted_position)
        if batch.all_queries:
            # Every event is a query, in the events' sorted order: nothing more to sort.
            self.q_order = order
            self.q_events = self.all_events
        else:
            position = np.empty(n, dtype=np.int64)
            position[order] = sorted_position
            q = batch.q_index
            self.q_order = np.argsort(position[q], kind="stable")
            q_index = q[self.q_order]
            q_key = None if sorted_key is None else self._key(ev_code[q_index], batch.time[q_index])
            self.q_events = _Sorted(q_index, columns, q_key, position[q_index])
        self.sets: dict[Any, _Sorted] = {}
        self.bounds: dict[Any, np.ndarray] = {}
        self.cache: dict[Any, np.ndarray] = {}

    def _key(self, code: np.ndarray, time: np.ndarray) -> np.ndarray:
        return code * self.span + (time - self.base)

    def events(self, where: Predicate | None) -> _Sorted:
        """The entity's events that pass ``where``, sorted."""
        if where is None:
            return self.all_events
        if ("events", where) not in self.sets:
            mask = where.mask(self.batch.events, self.batch.time)
            self.sets["events", where] = self.all_events.subset(mask[self.all_events.index])
        return self.sets["events", where]

    def labels(self, where: Predicate | None) -> _Sorted:
        """The entity's labels (the later of one transaction's) that pass ``where``, sorted."""
        if ("labels", where) not in self.sets:
            b = self.batch
            assert self.label_code is not None
            keep = b.label_keep
            if where is not None:
                keep = keep & where.mask(b.labels, b.label_time)
            chosen = np.flatnonzero(keep)
            code, time = self.label_code[chosen], b.label_time[chosen]
            key = self._key(code, time) if self.fits else None
            if b.label_ties:
                sort_keys = (
                    [b.label_tie[chosen], time, code] if key is None else [b.label_tie[chosen], key]
                )
                order = np.lexsort(sort_keys)
            elif key is not None:
                order = np.argsort(key, kind="stable")
            else:
                order = np.lexsort((time, code))
            self.sets["labels", where] = _Sorted(
                chosen[order],
                (self.label_code, b.label_time, b.label_tie),
                None if key is None else key[order],
                None,
            )
        return self.sets["labels", where]

    def at_or_before(self, s: _Sorted, offset: int) -> np.ndarray:
        """Per query (sorted order): how many of ``s`` are at or before (entity, t - offset)."""
        cache = ("time", id(s), offset)
        if cache not in self.bounds:
            q = self.q_events
            if s.key is not None and q.key is not None:
                found = np.searchsorted(s.key, q.key - offset, side="right")
            else:
                found = _count_le([s.code, s.time], [q.code, q.time - offset])
            self.bounds[cache] = np.asarray(found, dtype=np.int64)
        return self.bounds[cache]

    def up_to_query(self, s: _Sorted, inclusive: bool) -> np.ndarray:
        """Per query: how many of ``s`` precede it in (entity, time, tie) order (``inclusive``:
        or are at its very place: itself, or its label)."""
        cache = ("tie", id(s), inclusive)
        if cache not in self.bounds:
            side: Literal["left", "right"] = "right" if inclusive else "left"
            q = self.q_events
            assert q.position is not None
            if s is self.all_events:
                found = q.position + (1 if inclusive else 0)
            elif s.position is not None:
                found = np.searchsorted(s.position, q.position, side=side)
            else:  # labels: only a label rate's window end, which includes the query's place
                assert inclusive
                found = _count_le([s.code, s.time, s.tie], [q.code, q.time, q.tie])
            self.bounds[cache] = np.asarray(found, dtype=np.int64)
        return self.bounds[cache]

    def window(self, s: _Sorted, f: DeclaredWindow) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each query's window in ``s`` (queries in sorted order)."""
        lo = self.at_or_before(s, f.delay_us + f.window_us)
        hi = self.up_to_query(s, True) if f.delay_us == 0 else self.at_or_before(s, f.delay_us)
        return lo, np.maximum(hi, lo)

    def memo(self, key: Any, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


class _Batch:
    """The inputs of one ``compute_features`` call and what its features share."""

    def __init__(
        self,
        defs: Definitions,
        events: Columns,
        labels: Columns | None,
        time: np.ndarray,
        q_index: np.ndarray,
        windows: Sequence[DeclaredWindow],
    ) -> None:
        """``windows``: the window features it computes (what the labels must serve)."""
        self.defs = defs
        self.windows = windows
        self.events = events
        self.time = time
        self.q_index = q_index
        self.given_labels = labels
        self.all_queries = len(q_index) == len(time) and bool(
            np.array_equal(q_index, np.arange(len(time)))
        )
        self.entities: dict[str, _Entity] = {}

    def _prepare_windows(self) -> None:
        """The tie order and the labels' columns, once, for the first window feature (a batch
        of row and derived features only needs neither)."""
        defs, events, labels = self.defs, self.events, self.given_labels
        ev = defs.events
        lb = defs.labels
        wants_labels = (
            lb is not None and labels is not None and any(f.needs_labels for f in self.windows)
        )
        self.labels: Columns = labels if wants_labels and labels is not None else {}
        if wants_labels and lb is not None:
            self.label_time = np.asarray(self.labels[lb.time_field], dtype=np.int64)
            ids = np.asarray(self.labels[lb.id_field])
            # One label per transaction: the later one in the input wins.
            text = ids if ids.dtype.kind in "iu" else ids.astype(str)
            self.label_keep = ~pd.Series(text).duplicated(keep="last").to_numpy()
            # Label ties only matter to a label rate without delay (a label delay of 0).
            self.label_ties = any(f.needs_labels and f.delay_us == 0 for f in self.windows)
            if self.label_ties:
                self.tie, self.label_tie = _tie_rank(np.asarray(events[ev.id_field]), ids)
            else:
                (self.tie,) = _tie_rank(np.asarray(events[ev.id_field]))
                self.label_tie = np.zeros(len(ids), dtype=np.int64)
        else:
            (self.tie,) = _tie_rank(np.asarray(events[ev.id_field]))

    def has_labels(self, entity: DeclaredEntity) -> bool:
        return bool(self.labels) and any(
            f.needs_labels and f.entity == entity for f in self.windows
        )

    def row(self, f: DeclaredRow) -> np.ndarray:
        if f.value is not None:
            return np.asarray(self.events[f.value])[self.q_index].astype(np.float64)
        assert f.when is not None
        fields = f.when.fields - set(TIME_PARTS)
        columns = {n: np.asarray(self.events[n])[self.q_index] for n in fields}
        return f.when.mask(columns, self.time[self.q_index]).astype(np.float64)

    def window(self, f: DeclaredWindow, out: np.ndarray) -> None:
        """Writes the feature's value of each query into ``out``."""
        if len(self.q_index) == 0:
            return
        if not self.entities:
            self._prepare_windows()
        if f.entity.name not in self.entities:
            self.entities[f.entity.name] = _Entity(self, f.entity)
        e = self.entities[f.entity.name]
        out[e.q_order] = self._sorted_values(e, f)

    def _sorted_values(self, e: _Entity, f: DeclaredWindow) -> np.ndarray:
        """The feature's values, queries in the entity's sorted order (tests/oracle.py)."""
        s = e.events(f.where)
        lo, hi = e.window(s, f)
        n = hi - lo
        count = n.astype(np.float64)
        op = f.op
        if op == "count":
            return count
        if op == "label_rate":
            if e.label_code is None:
                return np.zeros(len(n), dtype=np.float64)
            assert self.defs.labels is not None
            lb = self.defs.labels
            ls = e.labels(f.where)
            l_lo, l_hi = e.window(ls, f)
            flags = e.memo(
                ("label_prefix", id(ls)),
                lambda: _prefix(np.asarray(self.labels[lb.label_field])[ls.index].astype(np.int64)),
            )
            frauds = (flags[l_hi] - flags[l_lo]).astype(np.float64)
            return np.divide(frauds, count, out=np.zeros_like(count), where=n > 0)
        if op in ("last", "since_previous"):
            before = np.maximum(np.minimum(hi, e.up_to_query(s, False)), lo)
            found = before > lo
            prev = np.maximum(before - 1, 0)
            if op == "since_previous":
                out = np.full(len(n), f.reach_us / 1e6)
                if len(s.index):
                    gap = (e.q_events.time - s.time[prev])[found]
                    out[found] = gap.astype(np.float64) / 1e6
                return out
            assert f.field is not None
            out = np.zeros(len(n), dtype=np.float64)
            if len(s.index):
                values = np.asarray(self.events[f.field])[s.index].astype(np.float64)
                out[found] = values[prev[found]]
            return out
        assert f.field is not None
        column = np.asarray(self.events[f.field])
        if op == "distinct":
            codes = e.memo(("codes", id(s), f.field), lambda: pd.factorize(column[s.index])[0])
            return _distinct(codes, lo, hi)
        if op in ("min", "max"):
            values = e.memo(("float", id(s), f.field), lambda: column[s.index].astype(np.float64))
            return _range_reduce(values, lo, hi, np.minimum if op == "min" else np.maximum)
        field = self.defs.events.field(f.field)
        scale = field.scale if field.type == "number" else 0
        units = e.memo(("units", id(s), f.field), lambda: _units_of(column[s.index], scale))
        sums = e.memo(("sum", id(s), f.field), lambda: _prefix(units))
        total = (sums[hi] - sums[lo]).astype(np.float64) / float(10**scale)
        if op == "sum":
            return total
        if op == "mean":
            return np.divide(total, count, out=np.zeros_like(count), where=n > 0)
        if op == "std":
            squares = e.memo(("squares", id(s), f.field), lambda: _prefix(units, square=True))
            s1 = sums[hi] - sums[lo]
            s2 = squares[hi] - squares[lo]
            ends = (units.min(), units.max()) if len(units) else ()
            top = max((abs(int(u)) for u in ends), default=0)
            widest = int(n.max(initial=0))
            if squares.dtype != object and (widest * top) ** 2 < 2**63:
                spread = (n * s2 - s1 * s1).astype(np.float64)
            else:
                spread = (n.astype(object) * s2.astype(object) - s1.astype(object) ** 2).astype(
                    np.float64
                )
            root = np.sqrt(spread) / np.where(n > 0, count, 1.0) / float(10**scale)
            return np.where(n > 0, root, 0.0)
        raise ValueError(f"unknown operation {op!r}")
