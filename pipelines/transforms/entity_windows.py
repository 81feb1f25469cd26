"""CustomerWindows and TerminalWindows: the window features, each stage keyed by its entity.

    CustomerWindows (key: customer id)  Routed[Transaction] -> CustomerPart
    TerminalWindows (key: terminal id)  CustomerPart, Routed[Label] -> FeatureBatch

Each stage reads and writes only its own entities' cells (pipelines/stores/window_store.py),
through an in-memory mirror (pipelines/stores/window_cache.py). Per batch it:

  1. loads (one batched read) the entities of the batch not cached back to the earliest window
     the batch can need;
  2. finds the stored transactions that the batch's *new* events fall into the windows of
     (``influence_span_us``, from the feature definitions): they were computed before this event
     reached the stage (out-of-order delivery, a label racing its consumers);
  3. computes the features of the batch's transactions and of those, with the shared engine
     (pipelines.core.engine.features_for), and writes their cells in one write;
  4. emits the batch's transactions and, marked as corrections, the recomputed ones.

The terminal stage keeps on each transaction's cell the customer features it received (and their
revision), so a correction of either stage reaches the stored prediction with a complete
vector: a customer correction flows through the terminal stage, a terminal correction reuses the
carried customer features. Revisions: a stage gives a transaction a revision above every one it
gave it before (stored on its cell), so per transaction the revision order is total.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipelines.core.batches import CustomerPart, FeatureBatch
from pipelines.core.definitions import (
    CUSTOMER,
    FEATURES,
    TERMINAL,
    Entity,
    RowFeature,
    WindowFeature,
    influence_span_us,
    max_lookback_us,
    window_features,
)
from pipelines.core.engine import EventColumns, features_for, row_features
from pipelines.core.routing import route
from pipelines.core.schema import Label, Transaction
from pipelines.stores.bigtable import StoreConfig
from pipelines.stores.shared import process_shared
from pipelines.stores.window_cache import WindowCache
from pipelines.stores.window_store import LabelCell, TxCell, WindowStore, Writes
from pipelines.transforms.id_index import open_store
from pipelines.transforms.keyed_stage import GENERATION_PARAM, KeyedStageFn, monotonic_us
from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = ["CustomerWindowsFn", "TerminalWindowsFn", "assemble"]

CUSTOMER_FEATURES = window_features(CUSTOMER)
TERMINAL_FEATURES = window_features(TERMINAL)


class _EntityStageFn(KeyedStageFn):
    """A keyed stage over one entity type, with its window cache."""

    entity: Entity = CUSTOMER
    labels = False

    def __init__(
        self, store: StoreConfig | WindowStore, max_batch_size: int, key_buckets: int = 0
    ) -> None:
        super().__init__(max_batch_size)
        self._config = store
        self._buckets = key_buckets
        self._cache: WindowCache | None = None

    def setup(self) -> None:
        store = open_store(self._config)
        # One cache per process, run and entity type: the runner may give every bundle a fresh
        # DoFn instance (the DirectRunner does).
        self._cache = process_shared(
            ("window_cache", self.entity.name, self._run_token, id(store)),
            lambda: WindowCache(
                store, self.entity, self.labels, functools.partial(route, buckets=self._buckets)
            ),
        )

    def cache(self) -> WindowCache:
        # A method, not a property: Beam reads every attribute of a DoFn when it validates it.
        assert self._cache is not None, "setup() not called"
        return self._cache

    def process(
        self,
        element: tuple[str, Any],
        timestamp: Any = beam.DoFn.TimestampParam,
        generation: Any = GENERATION_PARAM,
    ) -> Iterator[Any]:
        yield from self.accept(element[0], element[1], generation, timestamp)

    def claim(self, key: str, generation: int) -> None:
        self.cache().claim(key, self._run_token, generation)

    def settle(self, generations: dict[str, int]) -> None:
        self.cache().settle(self._run_token, generations)

    def _load(
        self, ids: Iterable[str], times: Sequence[int], label_times: Sequence[int] = ()
    ) -> None:
        """Caches the entities back to the earliest window of any of ``times`` (transactions)
        or of the transactions ``label_times`` count for (one read). A label at t changes only
        transactions from t + the label span's start on, so it needs less history than a
        transaction at t."""
        lookback = max_lookback_us(self.entity)
        starts = [min(times) - lookback] if times else []
        if label_times:
            lo, _ = influence_span_us(self.entity, labels=True)
            starts.append(min(label_times) + lo - lookback)
        if starts:
            self.cache().ensure(ids, min(starts))

    def _commit(
        self,
        writes: Writes,
        query: Sequence[Transaction],
        cells: Sequence[TxCell],
        matrix: np.ndarray,
        features: Sequence[WindowFeature],
    ) -> None:
        """Writes the batch's cells and each entity's latest ``features`` (rows of ``matrix``)
        with ``writes`` in one store write, then mirrors the cells in the cache."""
        key = self.entity.key_field
        names = [f.name for f in features]
        writes.tx_cells += [
            (self.entity, getattr(t, key), t.transaction_id, c)
            for t, c in zip(query, cells, strict=True)
        ]
        writes.features += [
            (
                self.entity,
                entity_id,
                query[i].event_time_us,
                dict(zip(names, map(float, matrix[i]), strict=True)),
            )
            for entity_id, i in _latest(query, key).items()
        ]
        cache = self.cache()
        cache.store.apply(writes)
        for t, c in zip(query, cells, strict=True):
            cache.put_tx(getattr(t, key), t.transaction_id, c)
        cache.evict()

    def _influenced(
        self,
        events: dict[str, list[int]],
        span: tuple[int, int],
        exclude: Iterable[str],
        into: dict[str, tuple[str, TxCell]],
    ) -> None:
        """Adds to ``into`` (tx id -> (entity id, cell)) the stored transactions whose windows
        contain one of ``events`` (entity id -> event times): those at [t + lo, t + hi)."""
        lo, hi = span
        skip = set(exclude)
        for entity_id, times in events.items():
            first = min(times) + lo
            for tx_id, cell in self.cache().cells(entity_id).tx.items():
                if cell.time_us < first or tx_id in skip:
                    continue
                if any(t + lo <= cell.time_us < t + hi for t in times):
                    into.setdefault(tx_id, (entity_id, cell))


def _columns(txs: Sequence[Transaction]) -> EventColumns:
    return EventColumns(
        np.array([t.transaction_id for t in txs], dtype=object).astype(str),
        np.array([t.customer_id for t in txs], dtype=object).astype(str),
        np.array([t.terminal_id for t in txs], dtype=object).astype(str),
        np.array([t.event_time_us for t in txs], dtype=np.int64),
        np.array([t.amount for t in txs], dtype=np.float64),
    )


def _cell_columns(
    entity: Entity,
    cells_by_entity: Iterable[tuple[str, Mapping[str, TxCell] | Mapping[str, LabelCell]]],
    exclude: set[str],
) -> EventColumns:
    """The cells of each (entity id, transaction id -> cell) as engine columns: time and the
    cell's value (a transaction's amount, a label's is_fraud), the entity's id column filled and
    the other empty, without the ``exclude`` transaction ids. Column-wise (``zip(*cells)``): it
    runs over every cached cell of a batch's entities, per batch."""
    tx_ids: list[str] = []
    times: list[int] = []
    values: list[float] = []
    owners: list[str] = []
    counts: list[int] = []
    for entity_id, cells in cells_by_entity:
        if not cells:
            continue
        tx_ids.extend(cells)
        columns = list(zip(*cells.values(), strict=True))
        times.extend(columns[0])
        values.extend(columns[1])
        owners.append(entity_id)
        counts.append(len(cells))
    tx = np.array(tx_ids, dtype=str)
    ids = np.repeat(np.array(owners, dtype=str), counts)
    t = np.array(times, dtype=np.int64)
    v = np.array(values, dtype=np.float64)
    if exclude and len(tx):
        keep = ~np.isin(tx, np.array(sorted(exclude), dtype=str))
        tx, ids, t, v = tx[keep], ids[keep], t[keep], v[keep]
    none = np.full(len(tx), "", dtype=str)
    return EventColumns(
        tx,
        ids if entity == CUSTOMER else none,
        ids if entity == TERMINAL else none,
        t,
        v,
    )


def _latest(txs: Sequence[Transaction], key: str) -> dict[str, int]:
    """Per entity id, the index of its latest transaction in ``txs``."""
    latest: dict[str, int] = {}
    for i, t in enumerate(txs):
        entity_id = getattr(t, key)
        j = latest.get(entity_id)
        if j is None or (t.event_time_us, t.transaction_id) >= (
            txs[j].event_time_us,
            txs[j].transaction_id,
        ):
            latest[entity_id] = i
    return latest


class CustomerWindowsFn(_EntityStageFn):
    """(customer id, Routed[Transaction]) -> CustomerPart, corrections included."""

    step = "CustomerWindows"
    entity = CUSTOMER

    def __init__(
        self, store: StoreConfig | WindowStore, max_batch_size: int, key_buckets: int = 0
    ) -> None:
        super().__init__(store, max_batch_size, key_buckets)
        self._corrections = Metrics.counter(METRICS_NAMESPACE, "customer_corrections")

    def entity_of(self, element: Any) -> str:
        return str(element.event.customer_id)

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        cache = self.cache()
        txs: dict[str, Transaction] = {}
        for _, routed in batch:
            txs.setdefault(routed.event.transaction_id, routed.event)
        self._load((t.customer_id for t in txs.values()), [t.event_time_us for t in txs.values()])
        events: dict[str, list[int]] = {}
        for t in txs.values():
            if t.transaction_id not in cache.cells(t.customer_id).tx:
                events.setdefault(t.customer_id, []).append(t.event_time_us)
        affected: dict[str, tuple[str, TxCell]] = {}
        self._influenced(events, influence_span_us(CUSTOMER), txs, affected)
        query = list(txs.values()) + [
            Transaction(tx_id, c.time_us, customer, c.other_id, c.amount)
            for tx_id, (customer, c) in affected.items()
        ]
        customers = {t.customer_id for t in query}
        history = _cell_columns(
            CUSTOMER,
            ((cid, cache.cells(cid).tx) for cid in customers),
            {t.transaction_id for t in query},
        )
        matrix = features_for(
            _columns(query),
            labels=EventColumns.empty(),
            customer_history=history,
            features=CUSTOMER_FEATURES,
        )
        stored = [cache.cells(t.customer_id).tx.get(t.transaction_id) for t in query]
        revision = max([monotonic_us(), *((c.revision + 1) for c in stored if c)])
        cells = [TxCell(t.event_time_us, t.amount, t.terminal_id, revision) for t in query]
        self._commit(Writes(), query, cells, matrix, CUSTOMER_FEATURES)
        n = len(txs)
        self._corrections.inc(len(query) - n)
        return [
            CustomerPart(t, tuple(map(float, matrix[i])), revision, correction=i >= n)
            for i, t in enumerate(query)
        ]


class TerminalWindowsFn(_EntityStageFn):
    """(terminal id, CustomerPart | Routed[Label]) -> FeatureBatch (originals, corrections)."""

    step = "TerminalWindows"
    entity = TERMINAL
    labels = True

    def __init__(
        self, store: StoreConfig | WindowStore, max_batch_size: int, key_buckets: int = 0
    ) -> None:
        super().__init__(store, max_batch_size, key_buckets)
        self._batches = Metrics.counter(METRICS_NAMESPACE, "feature_batches")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "feature_batch_size")
        self._corrections = Metrics.counter(METRICS_NAMESPACE, "feature_corrections")
        self._labels = Metrics.counter(METRICS_NAMESPACE, "labels_written")

    def entity_of(self, element: Any) -> str:
        if isinstance(element, CustomerPart):
            return element.tx.terminal_id
        return str(element.event.terminal_id)

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        cache = self.cache()
        parts: dict[str, CustomerPart] = {}
        labels: dict[str, Label] = {}
        for _, element in batch:
            if isinstance(element, CustomerPart):
                seen = parts.get(element.tx.transaction_id)
                if seen is None or element.revision > seen.revision:
                    parts[element.tx.transaction_id] = element
            else:
                labels[element.event.transaction_id] = element.event  # the later one wins
        terminals = {p.tx.terminal_id for p in parts.values()}
        terminals |= {lb.terminal_id for lb in labels.values()}
        self._load(
            terminals,
            [p.tx.event_time_us for p in parts.values()],
            [lb.event_time_us for lb in labels.values()],
        )
        writes = Writes()
        for lb in labels.values():
            label = LabelCell(lb.event_time_us, int(lb.is_fraud))
            writes.label_cells.append((lb.terminal_id, lb.transaction_id, label))
            cache.put_label(lb.terminal_id, lb.transaction_id, label)
        affected: dict[str, tuple[str, TxCell]] = {}
        label_events: dict[str, list[int]] = {}
        for lb in labels.values():
            label_events.setdefault(lb.terminal_id, []).append(lb.event_time_us)
        self._influenced(label_events, influence_span_us(TERMINAL, labels=True), parts, affected)
        new_events: dict[str, list[int]] = {}
        for p in parts.values():
            if p.tx.transaction_id not in cache.cells(p.tx.terminal_id).tx:
                new_events.setdefault(p.tx.terminal_id, []).append(p.tx.event_time_us)
        self._influenced(new_events, influence_span_us(TERMINAL), parts, affected)
        # The query: the batch's transactions, with the newest customer features known...
        query: list[Transaction] = []
        carried: list[tuple[float, ...]] = []
        carried_rev: list[int] = []
        corrections: list[bool] = []
        stored: list[TxCell | None] = []
        for p in parts.values():
            cell = cache.cells(p.tx.terminal_id).tx.get(p.tx.transaction_id)
            newer = cell is None or p.revision > cell.carried_revision
            query.append(p.tx)
            carried.append(p.values if newer or cell is None else cell.carried)
            carried_rev.append(p.revision if newer or cell is None else cell.carried_revision)
            corrections.append(p.correction)
            stored.append(cell)
        # ... and the stored ones an event changed (not those only the backfill wrote: they were
        # never predicted, so there is nothing to correct).
        for tx_id, (terminal, cell) in affected.items():
            if not cell.carried_revision:
                continue
            query.append(Transaction(tx_id, cell.time_us, cell.other_id, terminal, cell.amount))
            carried.append(cell.carried)
            carried_rev.append(cell.carried_revision)
            corrections.append(True)
            stored.append(cell)
        if not query:
            cache.store.apply(writes)
            self._labels.inc(len(labels))
            return []
        own = {t.transaction_id for t in query}
        cells_of = [(tid, cache.cells(tid)) for tid in {t.terminal_id for t in query} | terminals]
        history = _cell_columns(TERMINAL, ((tid, cs.tx) for tid, cs in cells_of), own)
        label_columns = _cell_columns(TERMINAL, ((tid, cs.labels) for tid, cs in cells_of), set())
        terminal_matrix = features_for(
            _columns(query),
            labels=label_columns,
            terminal_history=history,
            features=TERMINAL_FEATURES,
        )
        revision = max([monotonic_us(), *((c.revision + 1) for c in stored if c)])
        new_cells = [
            TxCell(t.event_time_us, t.amount, t.customer_id, revision, carried[i], carried_rev[i])
            for i, t in enumerate(query)
        ]
        self._commit(writes, query, new_cells, terminal_matrix, TERMINAL_FEATURES)
        self._labels.inc(len(labels))
        matrix = assemble(query, carried, terminal_matrix)
        out: list[Any] = []
        flags = np.array(corrections, dtype=bool)
        for correction in (False, True):
            rows = np.flatnonzero(flags == correction)
            if len(rows):
                out.append(
                    FeatureBatch([query[i] for i in rows], matrix[rows], revision, correction)
                )
        self._batches.inc()
        self._batch_size.update(len(query))
        self._corrections.inc(int(flags.sum()))
        return out


def assemble(
    txs: Sequence[Transaction], customer: Sequence[tuple[float, ...]], terminal: np.ndarray
) -> np.ndarray:
    """The model's input matrix (FEATURES order) from the row features, the customer stage's
    features (``window_features(CUSTOMER)`` order) and the terminal stage's."""
    times = np.array([t.event_time_us for t in txs], dtype=np.int64)
    amounts = np.array([t.amount for t in txs], dtype=np.float64)
    rows = row_features(times, amounts)
    customer_matrix = np.array(customer, dtype=np.float64).reshape(len(txs), len(CUSTOMER_FEATURES))
    out = np.empty((len(txs), len(FEATURES)), dtype=np.float64)
    c = t = 0
    for col, feature in enumerate(FEATURES):
        if isinstance(feature, RowFeature):
            out[:, col] = rows[feature.transform]
        elif isinstance(feature, WindowFeature) and feature.entity == CUSTOMER:
            out[:, col] = customer_matrix[:, c]
            c += 1
        else:
            out[:, col] = terminal[:, t]
            t += 1
    return out
