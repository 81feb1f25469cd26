"""ComputeFeatures: the exact window features, in three stages keyed by what they compute.

    transactions ─ KeyTransactions ─┐
    labels ─────── KeyLabels ───────┼─ IndexIds ─┬─ KeyByCustomer ─ CustomerWindows ─┐
    RestoreWaits (once, at start) ──┘  (tx id)   │                  (customer)       │
                                                 └─ labels ─────────────────────────┴─┐
                                                                                      │
      FeatureBatch (originals, corrections) ─ TerminalWindows ─ KeyByTerminal ────────┘
                                               (terminal)

No stateful step is keyed by a constant: Beam runs one key's elements one at a time, and
Dataflow spreads the keys (transaction ids, customers, terminals) over its workers. Each stage
reads and writes only its own keys' rows (pipelines/stores). See README "Ordering" for why the
stored features stay exact whatever the arrival order, and docs/specs/ for the contracts.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from pipelines.core.batches import CustomerPart, FeatureBatch, Routed
from pipelines.core.routing import route
from pipelines.core.schema import Label, StageRecord, Transaction
from pipelines.stores.bigtable import StoreConfig
from pipelines.stores.window_store import WindowStore
from pipelines.transforms.coders import StageRecordCoder
from pipelines.transforms.entity_windows import CustomerWindowsFn, TerminalWindowsFn
from pipelines.transforms.id_index import ACCEPTED_LABELS, IndexIdsFn, RestoreWaits
from pipelines.transforms.parse import DEAD_LETTER_TAG

__all__ = ["STAGE_LABELS", "ComputeFeatures", "ComputedFeatures", "FeatureBatch"]

# The keyed stages' labels inside ComputeFeatures (Dataflow --update matches them by name).
INDEX_IDS = "IndexIds"
CUSTOMER_WINDOWS = "CustomerWindows"
TERMINAL_WINDOWS = "TerminalWindows"
STAGE_LABELS = (INDEX_IDS, CUSTOMER_WINDOWS, TERMINAL_WINDOWS)

# What every stateful step's input is: a str key (deterministic) and a stage record, encoded by
# its own deterministic coder (pipelines/transforms/coders.py), never pickled.
_KEYED = tuple[str, StageRecord]
beam.coders.registry.register_coder(StageRecord, StageRecordCoder)


class ComputedFeatures(NamedTuple):
    batches: beam.PCollection
    dead_letters: beam.PCollection


def _by_id(event: Transaction | Label, buckets: int) -> tuple[str, Transaction | Label]:
    return (route(event.transaction_id, buckets), event)


def _by_customer(routed: Routed[Transaction], buckets: int) -> tuple[str, Routed[Transaction]]:
    return (route(routed.event.customer_id, buckets), routed)


def _part_by_terminal(part: CustomerPart, buckets: int) -> tuple[str, CustomerPart]:
    return (route(part.tx.terminal_id, buckets), part)


def _label_by_terminal(routed: Routed[Label], buckets: int) -> tuple[str, Routed[Label]]:
    return (route(routed.event.terminal_id, buckets), routed)


class ComputeFeatures(beam.PTransform):
    """(transactions, labels) to FeatureBatches with the exact window features of MODEL_INPUTS.

    Args:
      store: the feature store (a Bigtable table, or a WindowStore object in unit tests).
      max_batch_size: the most events one stage handles in one store round trip.
      sources: the transaction and label subscriptions (they name messages for recovery).
      label_wait_s: how long a label waits for its transaction before it is dead-lettered.
      key_buckets: 0: each stage has one key per entity; N: entities hashed into N keys
        (pipelines/core/routing.py).
      correction_horizon_s: the lateness horizon of corrections (entity_windows.py).
      window_cache_mb: the memory budget of each entity stage's window cache, per process.

    Returns:
      ComputedFeatures(batches, dead_letters).

    Example Usage::

        computed = (transactions, labels) | "ComputeFeatures" >> ComputeFeatures(store_config)
    """

    def __init__(
        self,
        store: StoreConfig | WindowStore,
        max_batch_size: int = 500,
        sources: tuple[str, str] = ("transactions", "labels"),
        label_wait_s: float = 300.0,
        key_buckets: int = 0,
        correction_horizon_s: float = 86_400.0,
        window_cache_mb: float = 512.0,
    ) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if label_wait_s < 0:
            raise ValueError("label_wait_s must be >= 0")
        self._store = store
        self._max = max_batch_size
        self._sources = sources
        self._label_wait_s = label_wait_s
        self._buckets = key_buckets
        self._entity_args = (key_buckets, correction_horizon_s, window_cache_mb)

    def expand(self, events: tuple[beam.PCollection, beam.PCollection]) -> ComputedFeatures:
        transactions, labels = events
        b = self._buckets
        by_id = (
            transactions | "KeyTransactions" >> beam.Map(_by_id, b).with_output_types(_KEYED),
            labels | "KeyLabels" >> beam.Map(_by_id, b).with_output_types(_KEYED),
            transactions.pipeline | "RestoreWaits" >> RestoreWaits(self._store, b),
        ) | "MergeById" >> beam.Flatten()
        ids = by_id | INDEX_IDS >> beam.ParDo(
            IndexIdsFn(self._store, self._max, self._sources, self._label_wait_s, b)
        ).with_outputs(ACCEPTED_LABELS, DEAD_LETTER_TAG, main="transactions")
        customers = (
            ids.transactions
            | "KeyByCustomer" >> beam.Map(_by_customer, b).with_output_types(_KEYED)
            | CUSTOMER_WINDOWS
            >> beam.ParDo(
                CustomerWindowsFn(self._store, self._max, *self._entity_args)
            ).with_outputs(DEAD_LETTER_TAG, main="parts")
        )
        by_terminal = (
            customers.parts
            | "KeyPartsByTerminal" >> beam.Map(_part_by_terminal, b).with_output_types(_KEYED),
            ids[ACCEPTED_LABELS]
            | "KeyLabelsByTerminal" >> beam.Map(_label_by_terminal, b).with_output_types(_KEYED),
        ) | "MergeByTerminal" >> beam.Flatten()
        terminals = by_terminal | TERMINAL_WINDOWS >> beam.ParDo(
            TerminalWindowsFn(self._store, self._max, *self._entity_args)
        ).with_outputs(DEAD_LETTER_TAG, main="batches")
        dead_letters = (
            ids[DEAD_LETTER_TAG],
            customers[DEAD_LETTER_TAG],
            terminals[DEAD_LETTER_TAG],
        ) | "StageDeadLetters" >> beam.Flatten()
        return ComputedFeatures(terminals.batches, dead_letters)
