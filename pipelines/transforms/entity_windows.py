"""EntityWindows: the window features of one entity of the definitions file, keyed by it.

The stages are the file's entities that have window features, chained in the file's order
(pipelines/transforms/features.py); with the handbook's file:

    CustomerWindows (key: customer id)  Routed[Transaction] -> Part
    TerminalWindows (key: terminal id)  Part, Routed[Label] -> FeatureBatch

The first stage takes the transactions the id index accepted, a later one the ``Part``s of the
stage before (the transaction and the window features of every stage before it); a stage whose
entity has label features takes the accepted labels too. Every stage but the last emits Parts;
the last assembles the whole vector in the file's order (row features, every stage's window
features, derived features) and emits FeatureBatches.

Each stage reads and writes only its own entities' bucket rows (pipelines/stores/window_store.py)
and keeps their state in a process-wide cache (pipelines/stores/window_cache.py). Per batch:

  1. gets each entity's state (``EntityState``, pipelines/core/window_state.py, over the cells
     of pipelines/core/window_cells.py): from the cache if it holds exactly what the key's last
     committed work item left, else from the store (its bucket summaries, then the cells of the
     buckets the batch needs: one read each);
  2. writes the batch's events into the state (a transaction's cell, a label's cell), whether
     or not an earlier attempt already wrote them;
  3. finds the stored transactions that the batch's events fall into the windows of
     (``Definitions.influence_span_us``) and recomputes them: corrections;
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

A later stage keeps on each transaction's cell the features it received from the stages before
(``carried``, and their revision), so a correction of any stage reaches the stored prediction
with a complete vector. Revisions are the stage key's fence: they grow per key, so per
transaction. Only transactions the stream already scored are corrected (the first stage: a cell
with a revision; a later one: with a carried revision): the backfill's were never predicted.

A store write rejected for good (not an outage: those are retried) dead-letters the events of the
entities it was for (``store_rejected``) instead of failing the work item forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipelines.core.batches import FeatureBatch, Part
from pipelines.core.cells import NO_STREAM_WRITE, SPARSE_CELLS, bucket_of
from pipelines.core.declarations import (
    Definitions,
    DerivedFeature,
    Entity,
    RowFeature,
    WindowFeature,
)
from pipelines.core.messages import DeadLetter
from pipelines.core.schema import Label, Transaction
from pipelines.core.window_cells import Cell, Layout, tie_key
from pipelines.core.window_state import Bucket, EntityState, Query
from pipelines.stores.bigtable import StoreConfig
from pipelines.stores.retry import is_transient
from pipelines.stores.shared import SharedResource
from pipelines.stores.window_cache import WindowCache
from pipelines.stores.window_store import Archive, BucketWrite, EntityHead, WindowStore, Writes
from pipelines.transforms.id_index import open_store
from pipelines.transforms.keyed_stage import FENCE_PARAM, KeyedStageFn
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE

__all__ = ["EntityWindowsFn", "assemble", "stage_entities", "stage_name"]

# Loaded buckets kept behind the entity's newest event (late events land there).
_RECENT_BUCKETS = 8


def stage_entities(defs: Definitions) -> tuple[Entity, ...]:
    """The entities with window features, in the file's order: one stage each."""
    return tuple(e for e in defs.entities if defs.window_features(e))


def stage_name(entity: Entity) -> str:
    """The stage's step label: CamelCase(entity name) + "Windows" (customer: CustomerWindows)."""
    return "".join(part[:1].upper() + part[1:] for part in entity.name.split("_")) + "Windows"


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


class EntityWindowsFn(KeyedStageFn):
    """(entity id, Routed[Transaction] | Part | Routed[Label]) -> Part, or FeatureBatch from the
    last stage (originals and corrections); see the module docstring.

    Args:
      definitions: the definitions file.
      position: which of ``stage_entities(definitions)`` this stage computes.
      store: the feature store (a Bigtable table, or a WindowStore object in unit tests).
      max_batch_size: the most events one batch handles in one store round trip.
      key_buckets: 0: one key per entity; N: entities hashed into N keys.
      correction_horizon_s, max_corrections: the lateness horizon (module docstring).
      cache_mb: the window cache's memory budget, per process.
    """

    def __init__(
        self,
        definitions: Definitions,
        position: int,
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
        entities = stage_entities(definitions)
        if not 0 <= position < len(entities):
            raise ValueError(f"no entity stage {position}: the file has {len(entities)}")
        self.defs = definitions
        self.entity = entities[position]
        self.step = stage_name(self.entity)
        self.first = position == 0
        self.last = position == len(entities) - 1
        self.layout = Layout.of(definitions, self.entity)
        self._features = definitions.window_features(self.entity)
        self.labels = any(f.needs_labels for f in self._features)
        # Every stage with label features gets every label: the first of them counts them.
        self._counts_labels = self.labels and not any(
            f.needs_labels for e in entities[:position] for f in definitions.window_features(e)
        )
        # What the parts reaching this stage carry: the stages before, in turn.
        self._carried = tuple(
            f for e in entities[:position] for f in definitions.window_features(e)
        )
        self._tx_span = definitions.influence_span_us(self.entity)
        self._label_span = definitions.influence_span_us(self.entity, labels=True)
        self._lookback = definitions.lookback_us(self.entity)
        self._max_delay = max((f.delay_us for f in self._features), default=0)
        # How far back of a transaction its windows' edges lie (features share most of them).
        self._shifts = sorted(
            {s for f in self._features for s in (f.delay_us + f.window_us, f.delay_us)}
        )
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
        name = self.entity.name
        self._beyond_horizon = Metrics.counter(METRICS_NAMESPACE, "corrections_beyond_horizon")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "store_rejected")
        self._cold = Metrics.counter(METRICS_NAMESPACE, f"{name}_cache_misses")
        self._corrections = Metrics.counter(METRICS_NAMESPACE, f"{name}_corrections")
        self._batches = Metrics.counter(METRICS_NAMESPACE, "feature_batches")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "feature_batch_size")
        self._feature_corrections = Metrics.counter(METRICS_NAMESPACE, "feature_corrections")
        self._labels_written = Metrics.counter(METRICS_NAMESPACE, "labels_written")

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

    # -- the batch -------------------------------------------------------------------------------

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        layout = self.layout
        parts: dict[str, Part] = {}  # the batch's transactions, as parts (carrying nothing first)
        labels: dict[str, Label] = {}
        work: dict[str, _Work] = {}
        # Each event's entity id, computed once (transaction id -> entity id, per stream).
        tx_entity: dict[str, str] = {}
        label_entity: dict[str, str] = {}
        id_of = self.entity.id_of
        for key, element in batch:
            if isinstance(element, Part):
                tx: Transaction | Label = element.tx
            else:
                tx = element.event
            entity_id = id_of(_fields(tx))
            w = work.get(entity_id)
            if w is None:
                w = work[entity_id] = _Work(key)
            w.elements.append(element)
            if isinstance(tx, Label):
                labels[tx.transaction_id] = tx  # the later one wins
                label_entity[tx.transaction_id] = entity_id
                continue
            part = element if isinstance(element, Part) else Part(tx, (), 0)
            seen = parts.get(tx.transaction_id)
            if seen is None or part.revision > seen.revision:
                parts[tx.transaction_id] = part
                tx_entity[tx.transaction_id] = entity_id
        for tx_id, p in parts.items():
            work[tx_entity[tx_id]].events.append(_Event(tx_id, p.tx.event_time_us, self._tx_span))
        for tx_id, lb in labels.items():
            work[label_entity[tx_id]].events.append(
                _Event(tx_id, lb.event_time_us, self._label_span, label=True)
            )
        states = self._states(work)
        for tx_id, lb in labels.items():
            states[label_entity[tx_id]].put_label(tx_id, layout.label_cell(self._label_row(lb)))
        # The query: the batch's transactions (a later stage: with the newest features of the
        # stages before it known) ...
        queries: list[tuple[str, Transaction]] = []
        carried: list[tuple[tuple[float, ...], int]] = []
        corrections: list[bool] = []
        for tx_id, p in parts.items():
            entity_id = tx_entity[tx_id]
            state = states[entity_id]
            if self.first:
                carried.append(((), 0))
            else:
                cell = state.tx(p.tx.transaction_id, p.tx.event_time_us)
                newer = cell is None or p.revision > cell.carried_revision
                carried.append((p.values, p.revision) if newer or cell is None else _carried(cell))
            queries.append((entity_id, p.tx))
            corrections.append(p.correction)
            values, carried_revision = carried[-1]
            state.put_tx(
                p.tx.transaction_id,
                layout.cell(
                    _row(p.tx, layout.id_field, layout.time_field),
                    self.revision_of(work[entity_id].key),
                    values,
                    carried_revision,
                ),
            )
        n = len(queries)
        # ... and the stored ones an event changed (not those only the backfill wrote: they were
        # never predicted, so there is nothing to correct).
        for entity_id, w in work.items():
            state = states[entity_id]
            for tx_id, cell in self._affected(state, w.events, set(parts)).items():
                queries.append((entity_id, _transaction(layout, entity_id, tx_id, cell)))
                carried.append(_carried(cell))
                corrections.append(True)
        own = _features_of(states, queries, self._features)
        revisions = np.array([self.revision_of(work[i].key) for i, _ in queries], dtype=np.int64)
        # The batch's own transactions were stored above; the corrected ones get their revision.
        for i in range(n, len(queries)):
            entity_id, tx = queries[i]
            values, carried_revision = carried[i]
            states[entity_id].put_tx(
                tx.transaction_id,
                layout.cell(
                    _row(tx, layout.id_field, layout.time_field),
                    int(revisions[i]),
                    values,
                    carried_revision,
                ),
            )
        names = [f.name for f in self._features]
        latest = {
            entity_id: (
                queries[i][1].event_time_us,
                dict(zip(names, map(float, own[i]), strict=True)),
            )
            for entity_id, i in _latest(queries).items()
        }
        rejected = self._commit(work, states, latest)
        self._corrections.inc(len(queries) - n)
        out: list[Any] = self._dead_letters(work, rejected, "the feature store refused the write")
        keep = [entity_id not in rejected for entity_id, _ in queries]
        if self._counts_labels:
            self._labels_written.inc(len(labels))
        if self.last:
            out += self._batches_of(queries, carried, own, revisions, corrections, keep)
            return out
        for i, (_, tx) in enumerate(queries):
            if keep[i]:
                values = carried[i][0] + tuple(map(float, own[i]))
                out.append(Part(tx, values, int(revisions[i]), correction=corrections[i]))
        return out

    def _batches_of(
        self,
        queries: Sequence[tuple[str, Transaction]],
        carried: Sequence[tuple[tuple[float, ...], int]],
        own: np.ndarray,
        revisions: np.ndarray,
        corrections: Sequence[bool],
        keep: Sequence[bool],
    ) -> list[FeatureBatch]:
        """The last stage's output: the originals and the corrections, each one FeatureBatch."""
        kept = np.array(keep, dtype=bool)
        if not kept.any():
            return []
        txs = [tx for _, tx in queries]
        windows = np.hstack(
            [
                np.array([c[0] for c in carried], dtype=np.float64).reshape(
                    len(txs), len(self._carried)
                ),
                own,
            ]
        )
        matrix = assemble(self.defs, txs, self._carried + self._features, windows)
        flags = np.array(corrections, dtype=bool)
        out = []
        for correction in (False, True):
            rows = np.flatnonzero((flags == correction) & kept)
            if len(rows):
                out.append(
                    FeatureBatch(
                        [txs[i] for i in rows],
                        matrix[rows],
                        int(revisions[rows].max()),
                        correction,
                        revisions=revisions[rows],
                        names=self.defs.names,
                    )
                )
        self._batches.inc()
        self._batch_size.update(int(kept.sum()))
        self._feature_corrections.inc(int((flags & kept).sum()))
        return out

    def _label_row(self, label: Label) -> dict[str, Any]:
        lb = self.defs.labels
        assert lb is not None, "labels reach a stage only when the file declares them"
        return {
            **label.fields,
            lb.id_field: label.transaction_id,
            lb.time_field: label.event_time_us,
            lb.label_field: label.is_fraud,
        }

    # -- the batch's entity states ---------------------------------------------------------------

    def _states(self, work: dict[str, _Work]) -> dict[str, EntityState]:
        """Each entity's state, read from the store when the cache does not hold exactly what its
        key's last committed work item left, extended back as far as the batch's windows reach,
        with the cells of every bucket the batch needs loaded.

        A cold entity costs at most a few batched reads: its head (does it exist, how dense is
        it, is its archive still the truth); then a sparse one is read whole (its archive, and
        one range scan of the bucket rows after it), a dense one by its bucket summaries and
        then the buckets its windows need."""
        res = self.resources()
        lookback = self._lookback
        states: dict[str, EntityState] = {}
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
            heads = res.store.read_heads(self.layout, cold)
            for entity_id in cold:
                f = first[entity_id]
                state = states[entity_id] = EntityState(self.layout, f)
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
                self.layout, dense + short, min(first[i] for i in dense + short)
            )
            for entity_id in dense:
                states[entity_id].know(found.get(entity_id, {}))
            for entity_id in short:
                states[entity_id].cover(first[entity_id], found.get(entity_id, {}))
        if sparse:
            read = res.store.read_ranges(self.layout, sparse, self.labels)
            for (entity_id, b), whole in read.items():
                states[entity_id].load(b, Bucket(self.layout, whole.tx, whole.labels))
        wanted: set[tuple[str, int]] = set()
        for entity_id, w in work.items():
            state = states[entity_id]
            wanted |= {(entity_id, b) for b in state.missing(self._needed(state, w.events))}
        if wanted:
            cells = res.store.read_buckets(self.layout, sorted(wanted), self.labels)
            for entity_id, b in wanted:
                found_cells = cells.get((entity_id, b))
                bucket = (
                    Bucket(self.layout, found_cells.tx, found_cells.labels)
                    if found_cells
                    else Bucket(self.layout)
                )
                states[entity_id].load(b, bucket)
        return states

    def _needed(self, state: EntityState, events: Sequence[_Event]) -> set[int]:
        """The buckets whose cells the batch needs: its events' own, those of the transactions
        they may correct, the edge buckets of every window those transactions ask for, and the
        buckets those windows cover whose summaries lack an accumulator (``incomplete``: written
        before a feature was declared)."""
        newest = max([state.newest_us(), *(e.time_us for e in events if not e.label)])
        out = {bucket_of(e.time_us) for e in events}
        spans: list[tuple[int, int]] = [(e.time_us, e.time_us) for e in events if not e.label]
        for e in events:
            reach = self._reach(state, e, newest)
            if reach is not None:
                out.update(state.nonempty(bucket_of(reach[0]), bucket_of(reach[1] - 1)))
                spans.append((reach[0], reach[1] - 1))
        for shift in self._shifts:
            for lo, hi in spans:
                lo_b, hi_b = bucket_of(lo - shift), bucket_of(hi - shift)
                out.add(lo_b)
                out.add(hi_b)
                if hi_b > lo_b + 1:  # only buckets strictly between the edges can add to them
                    out.update(state.nonempty(lo_b, hi_b))
        incomplete = state.incomplete()
        if incomplete:
            for lo, hi in spans:
                lo_b = min(bucket_of(lo - f.reach_us) for f in self._features)
                hi_b = max(bucket_of(hi - f.delay_us) for f in self._features)
                out.update(b for b in incomplete if lo_b <= b <= hi_b)
        return out

    def _reach(self, state: EntityState, event: _Event, newest_us: int) -> tuple[int, int] | None:
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
        self, state: EntityState, events: Sequence[_Event], exclude: set[str]
    ) -> dict[str, Cell]:
        """The stored transactions the events change (in the store after the batch), already
        scored by the stream (a backfilled one has no prediction to correct)."""
        newest = state.newest_us()
        out: dict[str, Cell] = {}
        for e in events:
            reach = self._reach(state, e, newest)
            if reach is None:
                if newest >= e.time_us + e.span[0]:
                    self._beyond_horizon.inc()
                continue
            for tx_id, cell in state.cells_between(*reach):
                scored = cell.revision if self.first else cell.carried_revision
                if tx_id not in exclude and scored:
                    out.setdefault(tx_id, cell)
        return out

    # -- writing -----------------------------------------------------------------------------------

    def _commit(
        self,
        work: dict[str, _Work],
        states: dict[str, EntityState],
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
                        self.layout,
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

    def _trim(self, state: EntityState) -> None:
        """Drops what no window can need any more (older than the lookback plus the delays and
        the horizon behind the newest event), and the cells of buckets that are neither recent
        nor at the edge of a current window (their summaries stay)."""
        newest = state.newest_us()
        if not newest:
            return
        margin = self._lookback + self._max_delay
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
                event = element.tx if isinstance(element, Part) else element.event
                stream = self.defs.labels if isinstance(event, Label) else self.defs.events
                assert stream is not None, "a label without a declared labels stream"
                source = "transactions" if isinstance(event, Transaction) else "labels"
                out.append(
                    beam.pvalue.TaggedOutput(
                        DEAD_LETTER_TAG,
                        DeadLetter(
                            event.to_json(stream),
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


def _fields(event: Transaction | Label) -> Mapping[str, Any]:
    """What an event's entity id is read from (its declared fields but the id and the time)."""
    return event.fields


def _row(tx: Transaction, id_field: str, time_field: str) -> dict[str, Any]:
    """The transaction as field name -> value, its time in µs (what cells and filters read)."""
    return {**tx.fields, id_field: tx.transaction_id, time_field: tx.event_time_us}


def _transaction(layout: Layout, entity_id: str, tx_id: str, cell: Cell) -> Transaction:
    """A stored transaction rebuilt from its cell (for a correction)."""
    event = layout.event(entity_id, tx_id, cell)
    fields = {k: v for k, v in event.items() if k not in (layout.id_field, layout.time_field)}
    return Transaction(tx_id, cell.time_us, fields)


def _load_archive(state: EntityState, archive: Archive, first: int, end: int) -> None:
    """Loads the archive's buckets [first, end) into ``state`` (their cells, whole)."""
    buckets: dict[int, Bucket] = {}
    for tx_id, cell in archive.cells.tx.items():
        b = bucket_of(cell.time_us)
        if first <= b < end:
            buckets.setdefault(b, Bucket(state.layout)).tx[tx_id] = cell
    for tx_id, label in archive.cells.labels.items():
        b = bucket_of(label.time_us)
        if first <= b < end:
            buckets.setdefault(b, Bucket(state.layout)).labels[tx_id] = label
    for b, bucket in buckets.items():
        state.load(b, bucket)


def _carried(cell: Cell) -> tuple[tuple[float, ...], int]:
    return cell.carried, cell.carried_revision


def _features_of(
    states: dict[str, EntityState],
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
    defs: Definitions,
    txs: Sequence[Transaction],
    windows: Sequence[WindowFeature],
    window_matrix: np.ndarray,
) -> np.ndarray:
    """The feature vectors of ``txs`` in the file's order (``defs.names``): the row features
    (``value``: the field as a float; ``when``: 1.0 if the predicate holds, else 0.0), the window
    features (``window_matrix``'s columns, named by ``windows``) and the derived ones (ratio: 0
    when the denominator is 0; difference), as tests/oracle.py computes them."""
    ev = defs.events
    rows = [_row(t, ev.id_field, ev.time_field) for t in txs]
    columns: dict[str, np.ndarray] = {f.name: window_matrix[:, i] for i, f in enumerate(windows)}
    for f in defs.features:
        if isinstance(f, RowFeature):
            if f.value is not None:
                values = [float(r[f.value]) for r in rows]
            else:
                when = f.when
                assert when is not None, "a row feature is a value or a predicate"
                values = [1.0 if when.holds(r, r[ev.time_field]) else 0.0 for r in rows]
            columns[f.name] = np.array(values, dtype=np.float64)
        elif isinstance(f, DerivedFeature):
            a, b = (columns[i] for i in f.inputs)
            if f.op == "difference":
                columns[f.name] = a - b
            else:
                safe = np.where(b != 0, b, 1.0)
                columns[f.name] = np.where(b != 0, a / safe, 0.0)
    out = np.empty((len(txs), len(defs.names)), dtype=np.float64)
    for col, name in enumerate(defs.names):
        out[:, col] = columns[name]
    return out
