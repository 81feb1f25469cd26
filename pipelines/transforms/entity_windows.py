"""CustomerWindows and TerminalWindows: the window features, each stage keyed by its entity.

    CustomerWindows (key: customer id)  Routed[Transaction] -> CustomerPart
    TerminalWindows (key: terminal id)  CustomerPart, Routed[Label] -> FeatureBatch

Each stage reads and writes only its own entities' bucket rows (pipelines/stores/window_store.py)
and keeps their state in a process-wide cache (pipelines/stores/window_cache.py). Per batch:

  1. gets each entity's state (``EntityWindows``, pipelines/core/entity_index.py): from the cache
     if it holds exactly what the key's last committed work item left, else from the store (its
     bucket summaries, then the cells of the buckets the batch needs: one read each);
  2. writes the batch's events into the state (a transaction's cell, a label's cell), whether
     or not an earlier attempt already wrote them;
  3. finds the stored transactions that the batch's events fall into the windows of
     (``influence_span_us``, from the feature definitions) and recomputes them: corrections;
  4. computes the features of the batch's transactions and of those, writes their cells and the
     changed buckets' summaries (one write, versioned by the key's fence,
     pipelines/transforms/keyed_stage.py), and emits them.

Everything a batch emits is a function of the store *after* the batch, never of whether an
event was new to it: a retried work item, whose failed attempt already wrote its events, emits
the same transactions, corrections and features as the first attempt would have.

Lateness horizon: an event that would correct more than ``max_corrections`` of its entity's
transactions (10,000 by default), or, if ``correction_horizon_s`` is set, whose affected
transactions start more than that much event time behind the entity's newest transaction, updates
the store (later transactions see it) but emits no corrections; it is counted
(``corrections_beyond_horizon``). So one late event on a hot entity costs a bounded amount of
work. (No time limit by default: a replay of history compresses days of event time into seconds,
and its stages race each other by days of event time.)

The terminal stage keeps on each transaction's cell the customer features it received (and their
revision), so a correction of either stage reaches the stored prediction with a complete vector.
Revisions are the stage key's fence: they grow per key, so per transaction.

A store write rejected for good (not an outage: those are retried) dead-letters the events of the
entities it was for (``store_rejected``) instead of failing the work item forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipelines.core.batches import CustomerPart, FeatureBatch, Routed
from pipelines.core.cells import NO_STREAM_WRITE, SPARSE_CELLS, bucket_of
from pipelines.core.definitions import (
    CUSTOMER,
    FEATURES,
    TERMINAL,
    Entity,
    RowFeature,
    WindowFeature,
    influence_span_us,
    max_delay_us,
    max_lookback_us,
    window_features,
)
from pipelines.core.engine import row_features
from pipelines.core.entity_index import Bucket, EntityWindows, Query, tie_key
from pipelines.core.messages import DeadLetter
from pipelines.core.schema import Label, Transaction
from pipelines.stores.bigtable import StoreConfig
from pipelines.stores.retry import is_transient
from pipelines.stores.shared import SharedResource
from pipelines.stores.window_cache import WindowCache
from pipelines.stores.window_store import (
    Archive,
    BucketWrite,
    EntityHead,
    LabelCell,
    TxCell,
    WindowStore,
    Writes,
)
from pipelines.transforms.id_index import open_store
from pipelines.transforms.keyed_stage import FENCE_PARAM, KeyedStageFn
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE

__all__ = [
    "CustomerWindowsFn",
    "TerminalWindowsFn",
    "assemble",
]

CUSTOMER_FEATURES = window_features(CUSTOMER)
TERMINAL_FEATURES = window_features(TERMINAL)
# Loaded buckets kept behind the entity's newest event (late events land there).
_RECENT_BUCKETS = 8


@dataclass
class _Event:
    """A transaction or label of the batch for one entity."""

    tx_id: str
    time_us: int
    span: tuple[int, int]  # which later transactions it counts for (influence_span_us)
    label: bool = False


@dataclass
class _Work:
    """One entity's part of a batch."""

    key: str  # the stage key (the entity itself, or its bucket on the DirectRunner)
    events: list[_Event] = field(default_factory=list)
    elements: list[Any] = field(default_factory=list)  # what it came from (dead letters)


class _Resources:
    """A stage's process-wide objects: its store client and its window cache."""

    def __init__(self, store: WindowStore, cache: WindowCache) -> None:
        self.store = store
        self.cache = cache


class _EntityStageFn(KeyedStageFn):
    """A keyed stage over one entity type, with its window cache (see the module docstring)."""

    entity: Entity = CUSTOMER
    labels = False

    def __init__(
        self,
        store: StoreConfig | WindowStore,
        max_batch_size: int,
        key_buckets: int = 0,
        correction_horizon_s: float | None = None,
        cache_mb: float = 512.0,
        max_corrections: int = 10_000,
    ) -> None:
        super().__init__(max_batch_size)
        if (correction_horizon_s or 0) < 0 or cache_mb <= 0 or max_corrections < 0:
            raise ValueError("need correction_horizon_s >= 0, cache_mb > 0, max_corrections >= 0")
        self._config = store
        self._buckets = key_buckets
        self._horizon_us = (
            None if correction_horizon_s is None else int(correction_horizon_s * 1_000_000)
        )
        self._max_corrections = max_corrections
        self._budget = int(cache_mb * 1024 * 1024)
        self._shared: SharedResource[_Resources] = SharedResource()
        self._resources: _Resources | None = None
        self._touched: set[str] = set()
        self._features = window_features(self.entity)
        self._beyond_horizon = Metrics.counter(METRICS_NAMESPACE, "corrections_beyond_horizon")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "store_rejected")
        self._cold = Metrics.counter(METRICS_NAMESPACE, f"{self.entity.name}_cache_misses")

    def setup(self) -> None:
        self._resources = self._shared.acquire(
            lambda: _Resources(open_store(self._config), WindowCache(self._budget)),
            tag=(self._run_token, self.entity.name),
        )

    def resources(self) -> _Resources:
        # A method, not a property: Beam reads every attribute of a DoFn when it validates it.
        assert self._resources is not None, "setup() not called"
        return self._resources

    def process(
        self,
        element: tuple[str, Any],
        timestamp: Any = beam.DoFn.TimestampParam,
        fence: Any = FENCE_PARAM,
    ) -> Any:
        yield from self.accept(element[0], element[1], fence, timestamp)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._touched = set()

    def settle(self) -> None:
        self.resources().cache.release(self.attempt, self._touched, self.fences())

    # -- the batch's entity states ---------------------------------------------------------------

    def _states(self, work: dict[str, _Work]) -> dict[str, EntityWindows]:
        """Each entity's state, read from the store when the cache does not hold exactly what its
        key's last committed work item left, extended back as far as the batch's windows reach,
        with the cells of every bucket the batch needs loaded.

        A cold entity costs at most a few batched reads: its head (does it exist, how dense is
        it, is its archive still the truth); then a sparse one is read whole (its archive, and
        one range scan of the bucket rows after it), a dense one by its bucket summaries and
        then the buckets its windows need."""
        res = self.resources()
        lookback = max_lookback_us(self.entity)
        states: dict[str, EntityWindows] = {}
        first: dict[str, int] = {}
        for entity_id, w in work.items():
            first[entity_id] = bucket_of(min(e.time_us for e in w.events) - lookback)
            committed, _ = self.fence_of(w.key)
            state = res.cache.checkout(entity_id, committed, self.attempt)
            if state is not None:
                states[entity_id] = state
        sparse: list[tuple[str, int]] = []  # (entity, first bucket) read whole
        dense: list[str] = []  # read by their summaries
        cold = [i for i in work if i not in states]
        if cold:
            self._cold.inc(len(cold))
            heads = res.store.read_heads(self.entity, cold)
            for entity_id in cold:
                f = first[entity_id]
                state = states[entity_id] = EntityWindows(f)
                head, archive = heads.get(entity_id, (None, None))
                if head is None and archive is None:
                    continue  # never written: every bucket is empty
                state.stream_from = head.stream_from if head else NO_STREAM_WRITE
                start = f
                if archive is not None and archive.from_bucket <= f:
                    usable = min(archive.to_bucket, state.stream_from)
                    if usable > f:
                        _load_archive(state, archive, f, usable)
                        start = usable
                if head is None or head.cells <= SPARSE_CELLS:
                    sparse.append((entity_id, start))
                else:
                    dense.append(entity_id)
        short = [i for i in work if i not in cold and states[i].covered_from > first[i]]
        if dense or short:
            found = res.store.read_summaries(
                self.entity, dense + short, min(first[i] for i in dense + short)
            )
            for entity_id in dense:
                states[entity_id].know(found.get(entity_id, {}))
            for entity_id in short:
                states[entity_id].cover(first[entity_id], found.get(entity_id, {}))
        if sparse:
            read = res.store.read_ranges(self.entity, sparse, self.labels)
            for (entity_id, b), whole in read.items():
                states[entity_id].load(b, Bucket(whole.tx, whole.labels))
        wanted: set[tuple[str, int]] = set()
        for entity_id, w in work.items():
            state = states[entity_id]
            wanted |= {(entity_id, b) for b in state.missing(self._needed(state, w.events))}
        if wanted:
            cells = res.store.read_buckets(self.entity, sorted(wanted), self.labels)
            for entity_id, b in wanted:
                found_cells = cells.get((entity_id, b))
                bucket = Bucket(found_cells.tx, found_cells.labels) if found_cells else Bucket()
                states[entity_id].load(b, bucket)
        return states

    def _needed(self, state: EntityWindows, events: Sequence[_Event]) -> set[int]:
        """The buckets whose cells the batch needs: its events' own, those of the transactions
        they may correct, and the edge buckets of every window those transactions ask for."""
        newest = max([state.newest_us(), *(e.time_us for e in events if not e.label)])
        out = {bucket_of(e.time_us) for e in events}
        spans: list[tuple[int, int]] = [(e.time_us, e.time_us) for e in events if not e.label]
        for e in events:
            reach = self._reach(state, e, newest)
            if reach is not None:
                out.update(state.nonempty(bucket_of(reach[0]), bucket_of(reach[1] - 1)))
                spans.append((reach[0], reach[1] - 1))
        for f in self._features:
            for shift in (f.delay_us + f.window_us, f.delay_us):
                for lo, hi in spans:
                    out.update(state.nonempty(bucket_of(lo - shift), bucket_of(hi - shift)))
                    out.add(bucket_of(lo - shift))
                    out.add(bucket_of(hi - shift))
        return out

    def _reach(self, state: EntityWindows, event: _Event, newest_us: int) -> tuple[int, int] | None:
        """The time range [start, end) of stored transactions the event corrects, or None past
        the lateness horizon (decided from summaries, the same on every attempt)."""
        lo, hi = event.span
        start = event.time_us + lo
        end = min(event.time_us + hi, newest_us + 1)
        if end <= start:
            return None
        if self._horizon_us is not None and newest_us - start > self._horizon_us:
            return None
        if state.count_from(start) > self._max_corrections:
            return None
        return start, end

    def _affected(
        self, state: EntityWindows, events: Sequence[_Event], exclude: set[str]
    ) -> dict[str, TxCell]:
        """The stored transactions the events change (in the store after the batch), already
        scored by the stream (a backfilled one has no prediction to correct)."""
        newest = state.newest_us()
        out: dict[str, TxCell] = {}
        for e in events:
            reach = self._reach(state, e, newest)
            if reach is None:
                if newest >= e.time_us + e.span[0]:
                    self._beyond_horizon.inc()
                continue
            for tx_id, cell in state.cells_between(*reach):
                if tx_id not in exclude and cell.revision:
                    out.setdefault(tx_id, cell)
        return out

    # -- writing -----------------------------------------------------------------------------------

    def _commit(
        self,
        work: dict[str, _Work],
        states: dict[str, EntityWindows],
        latest: dict[str, tuple[int, dict[str, float]]],
    ) -> set[str]:
        """Writes every entity's changed buckets (cells and summary, versioned by its key's fence)
        and its latest features in one store write; returns the entities whose writes the store
        rejected for good (their events are dead-lettered)."""
        res = self.resources()
        per_entity: dict[str, Writes] = {}
        for entity_id, state in states.items():
            _, fence = self.fence_of(work[entity_id].key)
            writes = per_entity[entity_id] = Writes()
            for b, bucket, tx_ids, label_ids in state.take_changes():
                writes.buckets.append(
                    BucketWrite(
                        self.entity,
                        entity_id,
                        b,
                        {i: bucket.tx[i] for i in tx_ids},
                        {i: bucket.labels[i] for i in label_ids},
                        bucket.summary(),
                        fence,
                    )
                )
            changed = [w.bucket for w in writes.buckets]
            if changed:
                state.stream_from = min(state.stream_from, *changed)
            head = EntityHead(state.stream_from, state.cells_total())
            writes.heads.append((self.entity, entity_id, head, fence))
            if entity_id in latest:
                time_us, values = latest[entity_id]
                writes.features.append((self.entity, entity_id, time_us, values))
        everything = Writes()
        for writes in per_entity.values():
            everything.buckets += writes.buckets
            everything.heads += writes.heads
            everything.features += writes.features
        rejected: set[str] = set()
        try:
            res.store.apply(everything)
        except Exception as error:
            if is_transient(error):
                raise
            # Find the entities whose rows the store refuses: one write each.
            for entity_id, writes in per_entity.items():
                try:
                    res.store.apply(writes)
                except Exception as again:
                    if is_transient(again):
                        raise
                    rejected.add(entity_id)
        for entity_id, state in states.items():
            if entity_id in rejected:
                res.cache.discard(entity_id)
                continue
            _, fence = self.fence_of(work[entity_id].key)
            self._trim(state)
            res.cache.checkin(entity_id, work[entity_id].key, state, fence, self.attempt)
            self._touched.add(entity_id)
        self._rejected.inc(len(rejected))
        return rejected

    def _trim(self, state: EntityWindows) -> None:
        """Drops what no window can need any more (older than the lookback plus the delays and
        the horizon behind the newest event), and the cells of buckets that are neither recent
        nor at the edge of a current window (their summaries stay)."""
        newest = state.newest_us()
        if not newest:
            return
        margin = max_lookback_us(self.entity) + max_delay_us(self.entity)
        keep: set[int] = set()
        if state.cells_total() > SPARSE_CELLS:
            keep = set(range(bucket_of(newest) - _RECENT_BUCKETS, bucket_of(newest) + 1))
            keep |= state.edge_buckets([newest], self._features)
            keep |= {b - 1 for b in keep} | {b + 1 for b in keep}
        else:
            keep = set(state.buckets)
        state.trim(newest - margin, keep)

    def _dead_letters(
        self, work: dict[str, _Work], rejected: set[str], detail: str
    ) -> list[beam.pvalue.TaggedOutput]:
        out = []
        for entity_id in sorted(rejected):
            for element in work[entity_id].elements:
                event = element.tx if isinstance(element, CustomerPart) else element.event
                source = "transactions" if isinstance(event, Transaction) else "labels"
                out.append(
                    beam.pvalue.TaggedOutput(
                        DEAD_LETTER_TAG,
                        DeadLetter(
                            event.to_json(),
                            "store_rejected",
                            detail[:500],
                            source,
                            self.step,
                            message_id=event.message_id,
                        ),
                    )
                )
        return out


def _latest(queries: Sequence[tuple[str, Transaction]]) -> dict[str, int]:
    """Per entity id, the index of its latest transaction among ``queries``."""
    latest: dict[str, int] = {}
    for i, (entity_id, t) in enumerate(queries):
        j = latest.get(entity_id)
        if j is None or (t.event_time_us, tie_key(t.transaction_id)) >= (
            queries[j][1].event_time_us,
            tie_key(queries[j][1].transaction_id),
        ):
            latest[entity_id] = i
    return latest


class CustomerWindowsFn(_EntityStageFn):
    """(customer id, Routed[Transaction]) -> CustomerPart, corrections included."""

    step = "CustomerWindows"
    entity = CUSTOMER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._corrections = Metrics.counter(METRICS_NAMESPACE, "customer_corrections")

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        span = influence_span_us(CUSTOMER)
        txs: dict[str, Transaction] = {}
        work: dict[str, _Work] = {}
        for key, routed in batch:
            tx = routed.event
            w = work.setdefault(tx.customer_id, _Work(key))
            w.elements.append(routed)
            if txs.setdefault(tx.transaction_id, tx) is tx:
                w.events.append(_Event(tx.transaction_id, tx.event_time_us, span))
        states = self._states(work)
        queries: list[tuple[str, Transaction]] = []
        for tx in txs.values():
            revision = self.revision_of(work[tx.customer_id].key)
            states[tx.customer_id].put_tx(
                tx.transaction_id, TxCell(tx.event_time_us, tx.amount, tx.terminal_id, revision)
            )
            queries.append((tx.customer_id, tx))
        n = len(queries)
        for customer, w in work.items():
            for tx_id, cell in self._affected(states[customer], w.events, set(txs)).items():
                queries.append(
                    (
                        customer,
                        _transaction(tx_id, cell.time_us, customer, cell.other_id, cell.amount),
                    )
                )
        matrix = _features_of(states, queries, CUSTOMER_FEATURES)
        for customer, tx in queries[n:]:
            revision = self.revision_of(work[customer].key)
            states[customer].put_tx(
                tx.transaction_id, TxCell(tx.event_time_us, tx.amount, tx.terminal_id, revision)
            )
        names = [f.name for f in CUSTOMER_FEATURES]
        latest = {
            customer: (
                queries[i][1].event_time_us,
                dict(zip(names, map(float, matrix[i]), strict=True)),
            )
            for customer, i in _latest(queries).items()
        }
        rejected = self._commit(work, states, latest)
        self._corrections.inc(len(queries) - n)
        out: list[Any] = self._dead_letters(work, rejected, "the feature store refused the write")
        for i, (customer, tx) in enumerate(queries):
            if customer in rejected:
                continue
            revision = self.revision_of(work[customer].key)
            out.append(CustomerPart(tx, tuple(map(float, matrix[i])), revision, correction=i >= n))
        return out


class TerminalWindowsFn(_EntityStageFn):
    """(terminal id, CustomerPart | Routed[Label]) -> FeatureBatch (originals, corrections)."""

    step = "TerminalWindows"
    entity = TERMINAL
    labels = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches = Metrics.counter(METRICS_NAMESPACE, "feature_batches")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "feature_batch_size")
        self._corrections = Metrics.counter(METRICS_NAMESPACE, "feature_corrections")
        self._labels = Metrics.counter(METRICS_NAMESPACE, "labels_written")

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        tx_span = influence_span_us(TERMINAL)
        label_span = influence_span_us(TERMINAL, labels=True)
        parts: dict[str, CustomerPart] = {}
        labels: dict[str, Label] = {}
        work: dict[str, _Work] = {}
        for key, element in batch:
            terminal = _terminal_of(element)
            w = work.setdefault(terminal, _Work(key))
            w.elements.append(element)
            if isinstance(element, CustomerPart):
                seen = parts.get(element.tx.transaction_id)
                if seen is None or element.revision > seen.revision:
                    parts[element.tx.transaction_id] = element
            else:
                labels[element.event.transaction_id] = element.event  # the later one wins
        for p in parts.values():
            work[p.tx.terminal_id].events.append(
                _Event(p.tx.transaction_id, p.tx.event_time_us, tx_span)
            )
        for lb in labels.values():
            work[lb.terminal_id].events.append(
                _Event(lb.transaction_id, lb.event_time_us, label_span, label=True)
            )
        states = self._states(work)
        for lb in labels.values():
            states[lb.terminal_id].put_label(
                lb.transaction_id, LabelCell(lb.event_time_us, int(lb.is_fraud))
            )
        # The query: the batch's transactions, with the newest customer features known...
        queries: list[tuple[str, Transaction]] = []
        carried: list[tuple[tuple[float, ...], int]] = []
        corrections: list[bool] = []
        for p in parts.values():
            state = states[p.tx.terminal_id]
            cell = state.tx(p.tx.transaction_id, p.tx.event_time_us)
            newer = cell is None or p.revision > cell.carried_revision
            carried.append((p.values, p.revision) if newer or cell is None else _carried(cell))
            queries.append((p.tx.terminal_id, p.tx))
            corrections.append(p.correction)
            values, carried_revision = carried[-1]
            state.put_tx(
                p.tx.transaction_id,
                TxCell(
                    p.tx.event_time_us,
                    p.tx.amount,
                    p.tx.customer_id,
                    self.revision_of(work[p.tx.terminal_id].key),
                    values,
                    carried_revision,
                ),
            )
        # ... and the stored ones an event changed (not those only the backfill wrote: they were
        # never predicted, so there is nothing to correct).
        for terminal, w in work.items():
            state = states[terminal]
            for tx_id, cell in self._affected(state, w.events, set(parts)).items():
                if not cell.carried_revision:
                    continue
                queries.append(
                    (
                        terminal,
                        _transaction(tx_id, cell.time_us, cell.other_id, terminal, cell.amount),
                    )
                )
                carried.append(_carried(cell))
                corrections.append(True)
        self._labels.inc(len(labels))
        terminal_matrix = _features_of(states, queries, TERMINAL_FEATURES)
        revisions = np.array([self.revision_of(work[t].key) for t, _ in queries], dtype=np.int64)
        # The batch's own transactions were stored above; the corrected ones get their revision.
        for i in range(len(parts), len(queries)):
            terminal, tx = queries[i]
            values, carried_revision = carried[i]
            states[terminal].put_tx(
                tx.transaction_id,
                TxCell(
                    tx.event_time_us,
                    tx.amount,
                    tx.customer_id,
                    int(revisions[i]),
                    values,
                    carried_revision,
                ),
            )
        names = [f.name for f in TERMINAL_FEATURES]
        latest = {
            terminal: (
                queries[i][1].event_time_us,
                dict(zip(names, map(float, terminal_matrix[i]), strict=True)),
            )
            for terminal, i in _latest(queries).items()
        }
        rejected = self._commit(work, states, latest)
        out: list[Any] = self._dead_letters(work, rejected, "the feature store refused the write")
        keep = np.array([t not in rejected for t, _ in queries], dtype=bool)
        if not keep.any():
            return out
        txs = [tx for _, tx in queries]
        matrix = assemble(txs, [c[0] for c in carried], terminal_matrix)
        flags = np.array(corrections, dtype=bool)
        for correction in (False, True):
            rows = np.flatnonzero((flags == correction) & keep)
            if len(rows):
                out.append(
                    FeatureBatch(
                        [txs[i] for i in rows],
                        matrix[rows],
                        int(revisions[rows].max()),
                        correction,
                        revisions=revisions[rows],
                    )
                )
        self._batches.inc()
        self._batch_size.update(int(keep.sum()))
        self._corrections.inc(int((flags & keep).sum()))
        return out


def _transaction(
    tx_id: str, time_us: int, customer_id: str, terminal_id: str, amount: float
) -> Transaction:
    """A stored transaction rebuilt from its cell (the handbook's fields)."""
    fields = {"customer_id": customer_id, "terminal_id": terminal_id, "amount": amount}
    return Transaction(tx_id, time_us, fields)


def _load_archive(state: EntityWindows, archive: Archive, first: int, end: int) -> None:
    """Loads the archive's buckets [first, end) into ``state`` (their cells, whole)."""
    buckets: dict[int, Bucket] = {}
    for tx_id, cell in archive.cells.tx.items():
        b = bucket_of(cell.time_us)
        if first <= b < end:
            buckets.setdefault(b, Bucket()).tx[tx_id] = cell
    for tx_id, label in archive.cells.labels.items():
        b = bucket_of(label.time_us)
        if first <= b < end:
            buckets.setdefault(b, Bucket()).labels[tx_id] = label
    for b, bucket in buckets.items():
        state.load(b, bucket)


def _terminal_of(element: CustomerPart | Routed[Label]) -> str:
    if isinstance(element, CustomerPart):
        return element.tx.terminal_id
    return str(element.event.terminal_id)


def _carried(cell: TxCell) -> tuple[tuple[float, ...], int]:
    return cell.carried, cell.carried_revision


def _features_of(
    states: dict[str, EntityWindows],
    queries: Sequence[tuple[str, Transaction]],
    features: Sequence[WindowFeature],
) -> np.ndarray:
    """The window features of each (entity id, transaction), from its entity's state."""
    out = np.zeros((len(queries), len(features)), dtype=np.float64)
    rows: dict[str, list[int]] = {}
    for i, (entity_id, _) in enumerate(queries):
        rows.setdefault(entity_id, []).append(i)
    for entity_id, idx in rows.items():
        qs = [
            Query(queries[i][1].event_time_us, tie_key(queries[i][1].transaction_id)) for i in idx
        ]
        out[idx] = states[entity_id].features(qs, features)
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
