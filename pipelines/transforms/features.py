"""ComputeFeatures: the exact window features, with Bigtable as the window state.

Transactions and labels go through one sequenced stage (a stateful DoFn on a single key: Beam
runs a key's work one bundle at a time on every runner, so no two batches read and write the
store concurrently). Per batch it:

  1. drops exact redeliveries and dead-letters conflicting duplicates,
  2. records new labels, and finds the stored transactions whose risk windows they fall into,
  3. reads back, in two batched ReadRows calls, every event the batch's windows can need and the
     stored transactions the batch's own events fall into (the look-ahead),
  4. computes the features with the shared engine (pipelines.engine.features_for) and writes
     the batch's transactions and features in one MutateRows call,
  5. emits one FeatureBatch, and, if steps 2-3 found transactions scored before an earlier
     event reached the stage (out-of-order delivery, a label racing its consumers), recomputes
     them and emits a correction batch. Corrections carry a higher revision; the sinks keep the
     highest revision per transaction, so the stored prediction is always the exact one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.engine import EventColumns, features_for
from pipelines.feature_store import EntityHistory, FeatureStore, StoreConfig, shared_store
from pipelines.features import (
    CUSTOMER,
    FEATURES,
    MODEL_INPUTS,
    TERMINAL,
    Entity,
    WindowFeature,
    influence_span_us,
)
from pipelines.schema import Label, Transaction
from pipelines.shared import process_shared
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE, DeadLetter
from pipelines.window_cache import WindowCache

__all__ = ["ComputeFeatures", "ComputedFeatures", "FeatureBatch", "features_for_batch"]

# The one key of the sequenced stage (see the module docstring and README "Ordering").
SEQUENCE_KEY = "rillet"


@dataclass
class FeatureBatch:
    """A batch of transactions with their feature rows (MODEL_INPUTS order).

    ``revision`` orders computations of the same transaction (a correction has a higher one);
    ``correction`` marks a batch recomputed after an out-of-order event.
    """

    transactions: list[Transaction]
    features: np.ndarray
    revision: int
    correction: bool = False

    def __len__(self) -> int:
        return len(self.transactions)


class ComputedFeatures(NamedTuple):
    batches: beam.PCollection
    dead_letters: beam.PCollection


def _columns(txs: Sequence[Transaction]) -> EventColumns:
    return EventColumns(
        np.array([t.transaction_id for t in txs], dtype=object).astype(str),
        np.array([t.customer_id for t in txs], dtype=object).astype(str),
        np.array([t.terminal_id for t in txs], dtype=object).astype(str),
        np.array([t.event_time_us for t in txs], dtype=np.int64),
        np.array([t.amount for t in txs], dtype=np.float64),
    )


def _history_columns(h: EntityHistory, key: str, exclude: set[str]) -> EventColumns:
    keep = [i for i, tx_id in enumerate(h.transaction_id) if tx_id not in exclude]
    ids = np.array([h.entity_id[i] for i in keep], dtype=object).astype(str)
    none = np.full(len(keep), "", dtype=object).astype(str)
    return EventColumns(
        np.array([h.transaction_id[i] for i in keep], dtype=object).astype(str),
        ids if key == "customer_id" else none,
        ids if key == "terminal_id" else none,
        np.array([h.time_us[i] for i in keep], dtype=np.int64),
        np.array([h.value[i] for i in keep], dtype=np.float64),
    )


def _features(history: Any, txs: Sequence[Transaction]) -> np.ndarray:
    # A transaction already in the store (redelivery, resumed job) must not count twice.
    own = {t.transaction_id for t in txs}
    return features_for(
        _columns(txs),
        labels=_history_columns(history.terminal_labels, "terminal_id", set()),
        customer_history=_history_columns(history.customer_tx, "customer_id", own),
        terminal_history=_history_columns(history.terminal_tx, "terminal_id", own),
    )


def features_for_batch(store: WindowCache, txs: Sequence[Transaction]) -> np.ndarray:
    """Reads the history the batch needs and returns its feature matrix."""
    times = [t.event_time_us for t in txs]
    history = store.read_history(
        (t.customer_id for t in txs), (t.terminal_id for t in txs), min(times), max(times)
    )
    return _features(history, txs)


def _stored_transaction(h: EntityHistory, i: int, entity: Entity) -> Transaction:
    """A transaction rebuilt from one of its cells (the cell holds the other entity's id)."""
    customer, terminal = (
        (h.entity_id[i], h.other_id[i]) if entity == CUSTOMER else (h.other_id[i], h.entity_id[i])
    )
    return Transaction(h.transaction_id[i], h.time_us[i], customer, terminal, h.value[i])


def _influenced(
    h: EntityHistory,
    entity: Entity,
    events: dict[str, list[int]],
    span: tuple[int, int],
    exclude: set[str],
    into: dict[str, Transaction],
) -> None:
    """Adds to ``into`` the stored transactions (cells of ``h``) whose windows contain one of
    ``events`` (entity id -> event times)."""
    lo, hi = span
    for i, entity_id in enumerate(h.entity_id):
        times = events.get(entity_id)
        if not times or h.transaction_id[i] in exclude:
            continue
        t = h.time_us[i]
        if any(t - hi < te <= t - lo for te in times):
            into.setdefault(h.transaction_id[i], _stored_transaction(h, i, entity))


_WINDOW_COLUMNS = [
    (i, f.name, f.entity) for i, f in enumerate(FEATURES) if isinstance(f, WindowFeature)
]


# The stage's Beam state: a generation number, advanced by every bundle. Declaring state also
# makes _SequencedDoFn a stateful DoFn, so Beam processes the key one bundle at a time (the
# DirectRunner runs the whole step serially). The in-memory WindowCache records the run and
# generation it mirrors (its owner); when the runner moved the key (another worker, a retried
# bundle) or another run used the cache, the owner differs and the cache is dropped.
_GENERATION = ReadModifyWriteStateSpec("generation", VarIntCoder())
_GENERATION_PARAM = beam.DoFn.StateParam(_GENERATION)


class _SequencedDoFn(beam.DoFn):
    """Buffers a bundle of (key, event) pairs and processes it in batches of at most max."""

    def __init__(self, store: StoreConfig, max_batch_size: int) -> None:
        self._config = store
        self._max = max_batch_size
        self._cache: WindowCache | None = None
        self._run_token = uuid.uuid4().hex  # fixed when the pipeline is built
        self._generation: int | None = None
        self._buffer: list[Transaction | Label] = []
        self._last_timestamp: Any = None
        self._batches = Metrics.counter(METRICS_NAMESPACE, "feature_batches")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "feature_batch_size")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_redeliveries")
        self._labels = Metrics.counter(METRICS_NAMESPACE, "labels_written")
        self._corrections = Metrics.counter(METRICS_NAMESPACE, "feature_corrections")
        self._early_labels = Metrics.counter(METRICS_NAMESPACE, "labels_before_transaction")

    def setup(self) -> None:
        self._cache = process_shared(
            ("window_cache", self._config), lambda: WindowCache(shared_store(self._config))
        )

    def _store(self) -> FeatureStore:
        # A method, not a property: Beam reads every attribute of a DoFn when it validates it.
        assert self._cache is not None, "setup() not called"
        return self._cache.store

    def start_bundle(self) -> None:
        self._buffer = []
        self._generation = None

    def process(
        self,
        element: tuple[str, Transaction | Label],
        timestamp: Any = beam.DoFn.TimestampParam,
        generation: Any = _GENERATION_PARAM,
    ) -> Iterator[Any]:
        assert self._cache is not None
        if self._generation is None:
            current = generation.read() or 0
            if self._cache.owner != (self._run_token, current):
                self._cache.clear()
            self._generation = current + 1
            generation.write(self._generation)
        self._buffer.append(element[1])
        self._last_timestamp = timestamp
        if len(self._buffer) >= self._max:
            batch, self._buffer = self._buffer, []
            yield from self.flush(batch)

    def finish_bundle(self) -> Iterator[Any]:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            ts = self._last_timestamp if self._last_timestamp is not None else Timestamp.now()
            for out in self.flush(batch):
                # finish_bundle has no current element: outputs carry their window explicitly.
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        out.tag, WindowedValue(out.value, ts, (GlobalWindow(),))
                    )
                else:
                    yield WindowedValue(out, ts, (GlobalWindow(),))
        if self._cache is not None and self._generation is not None:
            self._cache.owner = (self._run_token, self._generation)  # the bundle completed

    # -- one batch -----------------------------------------------------------------------------

    def flush(self, batch: list[Transaction | Label]) -> Iterator[Any]:
        txs: dict[str, Transaction] = {}
        labels: dict[str, Label] = {}
        for event in batch:
            seen: dict[str, Any] = txs if isinstance(event, Transaction) else labels
            first = seen.setdefault(event.transaction_id, event)
            if first is event:
                continue
            if _same_event(first, event):
                self._duplicates.inc()  # an exact redelivery: once is enough
            else:
                yield _dead_letter(event, "a different event with this id is in the same batch")
        affected: dict[str, Transaction] = {}
        if labels:
            yield from self._record_labels(list(labels.values()), txs, affected)
        if txs:
            yield self._score(list(txs.values()), affected)
        for tx_id in txs:
            affected.pop(tx_id, None)
        if affected:
            yield self._correct(list(affected.values()))

    def _record_labels(
        self,
        labels: list[Label],
        batch_txs: dict[str, Transaction],
        affected: dict[str, Transaction],
    ) -> Iterator[Any]:
        """Writes new labels (dead-letters one that contradicts its stored transaction) and
        collects the stored transactions whose risk windows a new label falls into."""
        span = influence_span_us(TERMINAL, labels=True)
        times = [lb.event_time_us for lb in labels]
        assert self._cache is not None
        stored = self._cache.read_terminals(
            (lb.terminal_id for lb in labels), min(times), max(times) + span[1] + 1
        )
        known_tx = {
            (stored.terminal_tx.entity_id[i], tx_id): stored.terminal_tx.time_us[i]
            for i, tx_id in enumerate(stored.terminal_tx.transaction_id)
        }
        known_tx.update(
            {(t.terminal_id, t.transaction_id): t.event_time_us for t in batch_txs.values()}
        )
        known_labels = {
            (stored.terminal_labels.entity_id[i], tx_id): stored.terminal_labels.value[i]
            for i, tx_id in enumerate(stored.terminal_labels.transaction_id)
        }
        new: list[Label] = []
        for lb in labels:
            key = (lb.terminal_id, lb.transaction_id)
            tx_time = known_tx.get(key)
            if tx_time is not None and tx_time != lb.event_time_us:
                yield _dead_letter(
                    lb, "tx_datetime differs from the transaction's", "label_mismatch"
                )
            elif known_labels.get(key) == float(lb.is_fraud):
                self._duplicates.inc()
            else:
                # A label may overtake its transaction (two subscriptions, two backlogs): it is
                # recorded anyway, and the transaction's own look-ahead corrects what it changes.
                if tx_time is None:
                    self._early_labels.inc()
                new.append(lb)
        if not new:
            return
        store = self._store()
        store.write(
            store.label_rows(
                [lb.transaction_id for lb in new],
                [lb.terminal_id for lb in new],
                [lb.event_time_us for lb in new],
                [lb.is_fraud for lb in new],
            )
        )
        for lb in new:
            self._cache.add_label(lb.transaction_id, lb.terminal_id, lb.event_time_us, lb.is_fraud)
        self._labels.inc(len(new))
        events: dict[str, list[int]] = {}
        for lb in new:
            events.setdefault(lb.terminal_id, []).append(lb.event_time_us)
        _influenced(stored.terminal_tx, TERMINAL, events, span, set(), affected)

    def _score(self, txs: list[Transaction], affected: dict[str, Transaction]) -> FeatureBatch:
        assert self._cache is not None
        times = [t.event_time_us for t in txs]
        history = self._cache.read_history(
            (t.customer_id for t in txs),
            (t.terminal_id for t in txs),
            min(times),
            max(times),
            lookahead=True,
        )
        matrix = _features(history, txs)
        stored_ids = set(history.customer_tx.transaction_id)
        new = [t for t in txs if t.transaction_id not in stored_ids]
        own = {t.transaction_id for t in txs}
        for entity, cells in ((CUSTOMER, history.customer_tx), (TERMINAL, history.terminal_tx)):
            events: dict[str, list[int]] = {}
            for t in new:
                events.setdefault(getattr(t, entity.key_field), []).append(t.event_time_us)
            _influenced(cells, entity, events, influence_span_us(entity), own, affected)
        self._write(txs, matrix)
        self._batches.inc()
        self._batch_size.update(len(txs))
        return FeatureBatch(txs, matrix, _now_us())

    def _correct(self, txs: list[Transaction]) -> FeatureBatch:
        assert self._cache is not None
        matrix = features_for_batch(self._cache, txs)
        self._write(txs, matrix)
        self._corrections.inc(len(txs))
        return FeatureBatch(txs, matrix, _now_us(), correction=True)

    def _write(self, txs: list[Transaction], matrix: np.ndarray) -> None:
        cols = [c for c, _, _ in _WINDOW_COLUMNS]
        store = self._store()
        store.write(
            store.transaction_rows(
                [t.transaction_id for t in txs],
                [t.customer_id for t in txs],
                [t.terminal_id for t in txs],
                [t.event_time_us for t in txs],
                [t.amount for t in txs],
                features=matrix[:, cols],
                feature_names=[n for _, n, _ in _WINDOW_COLUMNS],
                feature_entities=[e for _, _, e in _WINDOW_COLUMNS],
            )
        )
        assert self._cache is not None
        for t in txs:
            self._cache.add_transaction(
                t.transaction_id, t.customer_id, t.terminal_id, t.event_time_us, t.amount
            )
        self._cache.evict()


_LAST_REVISION = [0]


def _now_us() -> int:
    # Strictly increasing within the process, even if the wall clock steps back.
    now = max(time.time_ns() // 1000, _LAST_REVISION[0] + 1)
    _LAST_REVISION[0] = now
    return now


def _same_event(a: Transaction | Label, b: Transaction | Label) -> bool:
    fields = ("event_time_us", "customer_id", "terminal_id", "amount", "is_fraud")
    return all(getattr(a, f, None) == getattr(b, f, None) for f in fields)


def _dead_letter(
    event: Transaction | Label, detail: str, reason: str = "duplicate_transaction_id"
) -> beam.pvalue.TaggedOutput:
    source = "transactions" if isinstance(event, Transaction) else "labels"
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG, DeadLetter(event.to_json(), reason, detail, source, "features")
    )


# A deterministic key coder (str) for the stateful step; the values are pickled events.
_KEYED = tuple[str, Any]


def _keyed(event: Transaction | Label) -> tuple[str, Transaction | Label]:
    return (SEQUENCE_KEY, event)


class ComputeFeatures(beam.PTransform):
    """(transactions, labels) to FeatureBatches with the exact window features of MODEL_INPUTS.

    Labels are recorded in the same sequenced stage as the transactions, so a label and the
    transactions whose risk windows need it are never processed concurrently.

    Args:
      store: the Bigtable feature store (window state and feature values).
      max_batch_size: the most events handled in one store round trip.

    Returns:
      ComputedFeatures(batches, dead_letters).

    Example Usage::

        computed = (transactions, labels) | "ComputeFeatures" >> ComputeFeatures(store_config)
    """

    def __init__(self, store: StoreConfig, max_batch_size: int = 500) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._store = store
        self._max = max_batch_size

    def expand(self, events: tuple[beam.PCollection, beam.PCollection]) -> ComputedFeatures:
        transactions, labels = events
        keyed = (
            transactions | "KeyTransactions" >> beam.Map(_keyed).with_output_types(_KEYED),
            labels | "KeyLabels" >> beam.Map(_keyed).with_output_types(_KEYED),
        ) | "Merge" >> beam.Flatten()
        out = keyed | "Sequenced" >> beam.ParDo(
            _SequencedDoFn(self._store, self._max)
        ).with_outputs(DEAD_LETTER_TAG, main="batches")
        return ComputedFeatures(out.batches, out[DEAD_LETTER_TAG])


assert len(MODEL_INPUTS) == len(FEATURES)
