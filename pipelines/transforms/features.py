"""ComputeFeatures and WriteLabels: the exact window features, with Bigtable as the window state.

Per bundle (the DirectRunner's and Dataflow's unit of work), ComputeFeatures:
  1. drops exact redeliveries and dead-letters conflicting duplicates of a transaction id,
  2. reads back, in two batched ReadRows calls, the events every window of the batch can need,
  3. computes the features with the shared engine (pipelines.engine.features_for),
  4. writes the batch's transactions and their features to the store in one MutateRows call,
  5. emits one FeatureBatch for the whole batch (later stages work on batches, not elements).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.engine import EventColumns, features_for
from pipelines.feature_store import EntityHistory, FeatureStore, StoreConfig
from pipelines.features import FEATURES, MODEL_INPUTS, WindowFeature
from pipelines.schema import Label, Transaction
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE, DeadLetter

__all__ = ["ComputeFeatures", "ComputedFeatures", "FeatureBatch", "WriteLabels"]


@dataclass
class FeatureBatch:
    """A batch of transactions with their feature rows (MODEL_INPUTS order)."""

    transactions: list[Transaction]
    features: np.ndarray
    computed_at_us: int

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


def features_for_batch(store: FeatureStore, txs: Sequence[Transaction]) -> np.ndarray:
    """Reads the history the batch needs and returns its feature matrix."""
    times = [t.event_time_us for t in txs]
    history = store.read_history(
        (t.customer_id for t in txs), (t.terminal_id for t in txs), min(times), max(times)
    )
    # A transaction already in the store (redelivery, resumed job) must not count twice.
    own = {t.transaction_id for t in txs}
    return features_for(
        _columns(txs),
        labels=_history_columns(history.terminal_labels, "terminal_id", set()),
        customer_history=_history_columns(history.customer_tx, "customer_id", own),
        terminal_history=_history_columns(history.terminal_tx, "terminal_id", own),
    )


_WINDOW_COLUMNS = [
    (i, f.name, f.entity) for i, f in enumerate(FEATURES) if isinstance(f, WindowFeature)
]


class _BufferedDoFn(beam.DoFn):
    """Buffers a bundle's elements and processes them in batches of at most max_batch_size."""

    def __init__(self, max_batch_size: int) -> None:
        self._max = max_batch_size
        self._buffer: list[Any] = []
        self._last_timestamp: Any = None

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, element: Any, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        self._buffer.append(element)
        self._last_timestamp = timestamp
        if len(self._buffer) >= self._max:
            batch, self._buffer = self._buffer, []
            yield from self.flush(batch)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            ts = self._last_timestamp if self._last_timestamp is not None else Timestamp.now()
            for out in self.flush(batch):
                # finish_bundle has no current element: outputs carry their window explicitly.
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        out.tag, WindowedValue(out.value, ts, [GlobalWindow()])
                    )
                else:
                    yield WindowedValue(out, ts, [GlobalWindow()])

    def flush(self, batch: list[Any]) -> Iterator[Any]:
        raise NotImplementedError


class _ComputeFeaturesDoFn(_BufferedDoFn):
    def __init__(self, store: StoreConfig, max_batch_size: int) -> None:
        super().__init__(max_batch_size)
        self._config = store
        self._store: FeatureStore | None = None
        self._batches = Metrics.counter(METRICS_NAMESPACE, "feature_batches")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "feature_batch_size")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_redeliveries")

    def setup(self) -> None:
        self._store = FeatureStore(self._config)

    def flush(self, batch: list[Transaction]) -> Iterator[Any]:
        assert self._store is not None
        unique: dict[str, Transaction] = {}
        for tx in batch:
            seen = unique.get(tx.transaction_id)
            if seen is None:
                unique[tx.transaction_id] = tx
            elif _same_event(seen, tx):
                self._duplicates.inc()  # an exact redelivery: scoring it once is enough
            else:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER_TAG,
                    DeadLetter(
                        tx.to_json(),
                        "duplicate_transaction_id",
                        "a different transaction with this id is in the same batch",
                        "transactions",
                        "features",
                    ),
                )
        txs = list(unique.values())
        if not txs:
            return
        matrix = features_for_batch(self._store, txs)
        cols = [c for c, _, _ in _WINDOW_COLUMNS]
        rows = self._store.transaction_rows(
            [t.transaction_id for t in txs],
            [t.customer_id for t in txs],
            [t.terminal_id for t in txs],
            [t.event_time_us for t in txs],
            [t.amount for t in txs],
            features=matrix[:, cols],
            feature_names=[n for _, n, _ in _WINDOW_COLUMNS],
            feature_entities=[e for _, _, e in _WINDOW_COLUMNS],
        )
        self._store.write(rows)
        self._batches.inc()
        self._batch_size.update(len(txs))
        yield FeatureBatch(txs, matrix, int(time.time() * 1_000_000))


def _same_event(a: Transaction, b: Transaction) -> bool:
    return (a.event_time_us, a.customer_id, a.terminal_id, a.amount) == (
        b.event_time_us,
        b.customer_id,
        b.terminal_id,
        b.amount,
    )


class ComputeFeatures(beam.PTransform):
    """Transactions to FeatureBatches with the exact window features of MODEL_INPUTS.

    Args:
      store: the Bigtable feature store (window state and feature values).
      max_batch_size: the most transactions handled in one store round trip.

    Returns:
      ComputedFeatures(batches, dead_letters).

    Example Usage::

        computed = transactions | "ComputeFeatures" >> ComputeFeatures(store_config)
    """

    def __init__(self, store: StoreConfig, max_batch_size: int = 500) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._store = store
        self._max = max_batch_size

    def expand(self, transactions: beam.PCollection) -> ComputedFeatures:
        out = transactions | "FeaturesFromStore" >> beam.ParDo(
            _ComputeFeaturesDoFn(self._store, self._max)
        ).with_outputs(DEAD_LETTER_TAG, main="batches")
        return ComputedFeatures(out.batches, out[DEAD_LETTER_TAG])


class _WriteLabelsDoFn(_BufferedDoFn):
    def __init__(self, store: StoreConfig, max_batch_size: int) -> None:
        super().__init__(max_batch_size)
        self._config = store
        self._store: FeatureStore | None = None
        self._written = Metrics.counter(METRICS_NAMESPACE, "labels_written")

    def setup(self) -> None:
        self._store = FeatureStore(self._config)

    def flush(self, batch: list[Label]) -> Iterator[Any]:
        assert self._store is not None
        rows = self._store.label_rows(
            [lb.transaction_id for lb in batch],
            [lb.terminal_id for lb in batch],
            [lb.event_time_us for lb in batch],
            [lb.is_fraud for lb in batch],
        )
        self._store.write(rows)
        self._written.inc(len(batch))
        yield len(batch)


class WriteLabels(beam.PTransform):
    """Records fraud labels on the terminals' rows of the feature store (idempotent).

    Returns a PCollection of the number of labels written per batch.
    """

    def __init__(self, store: StoreConfig, max_batch_size: int = 500) -> None:
        super().__init__()
        self._store = store
        self._max = max_batch_size

    def expand(self, labels: beam.PCollection) -> beam.PCollection:
        return labels | "LabelsToStore" >> beam.ParDo(_WriteLabelsDoFn(self._store, self._max))


assert len(MODEL_INPUTS) == len(FEATURES)
