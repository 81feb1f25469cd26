"""ComputeFeatures: the exact window features, in keyed stages: one per entity of the
definitions file that has window features, chained in the file's order. The handbook's file:

    transactions ─ KeyTransactions ─┐
    labels ─────── KeyLabels ───────┼─ IndexIds ─┬─ KeyByCustomer ─ CustomerWindows ─┐
    RestoreWaits (once, at start) ──┘  (tx id)   │                  (customer)       │
                                                 └─ labels ─────────────────────────┴─┐
                                                                                      │
      FeatureBatch (originals, corrections) ─ TerminalWindows ─ KeyByTerminal ────────┘
                                               (terminal)

A stage is labelled CamelCase(entity) + "Windows"; its input is keyed by "KeyBy<Entity>" (the
first stage: the accepted transactions) or "KeyPartsBy<Entity>" (a later one: the parts of the
stage before), and where the entity has label features the accepted labels join it through
"KeyLabelsBy<Entity>" and "MergeBy<Entity>" (every such entity gets every label, keyed by
``entity.id_of(label.fields)``). The last stage emits the FeatureBatches.

No stateful step is keyed by a constant: Beam runs one key's elements one at a time, and
Dataflow spreads the keys (transaction ids, entity ids) over its workers. Each stage reads and
writes only its own keys' rows (pipelines/stores). See README "Ordering" for why the stored
features stay exact whatever the arrival order, and docs/specs/ for the contracts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import apache_beam as beam

from pipelines.core.batches import FeatureBatch, Part
from pipelines.core.declarations import Definitions, Entity
from pipelines.core.routing import route
from pipelines.core.schema import Label, StageRecord, Transaction
from pipelines.stores.bigtable import StoreConfig
from pipelines.stores.window_store import WindowStore
from pipelines.transforms.coders import StageRecordCoder
from pipelines.transforms.entity_windows import EntityWindowsFn, stage_entities, stage_name
from pipelines.transforms.id_index import ACCEPTED_LABELS, IndexIdsFn, RestoreWaits
from pipelines.transforms.parse import DEAD_LETTER_TAG

__all__ = ["ComputeFeatures", "ComputedFeatures", "FeatureBatch", "stage_labels"]

# The keyed stages' labels inside ComputeFeatures (Dataflow --update matches them by name).
INDEX_IDS = "IndexIds"


def stage_labels(definitions: Definitions) -> tuple[str, ...]:
    """The keyed stages' labels inside ComputeFeatures for a definitions file (the handbook's:
    IndexIds, CustomerWindows, TerminalWindows)."""
    return (INDEX_IDS, *(stage_name(e) for e in stage_entities(definitions)))


# What every stateful step's input is: a str key (deterministic) and a stage record, encoded by
# its own deterministic coder (pipelines/transforms/coders.py), never pickled.
_KEYED = tuple[str, StageRecord]
beam.coders.registry.register_coder(StageRecord, StageRecordCoder)


class ComputedFeatures(NamedTuple):
    batches: beam.PCollection
    dead_letters: beam.PCollection


def _by_id(event: Transaction | Label, buckets: int) -> tuple[str, Transaction | Label]:
    return (route(event.transaction_id, buckets), event)


class _ByEntity:
    """Keys a stage's input by its entity (its id read from the event's fields)."""

    def __init__(self, entity: Entity, buckets: int) -> None:
        self.entity = entity
        self.buckets = buckets

    def __call__(self, element: Any) -> tuple[str, Any]:
        event = element.tx if isinstance(element, Part) else element.event
        return (route(self.entity.id_of(event.fields), self.buckets), element)


def _camel(entity: Entity) -> str:
    return stage_name(entity).removesuffix("Windows")


class ComputeFeatures(beam.PTransform):
    """(transactions, labels) to FeatureBatches with the exact features of a definitions file.

    Args:
      store: the feature store (a Bigtable table, or a WindowStore object in unit tests).
      max_batch_size: the most events one stage handles in one store round trip.
      sources: the transaction and label subscriptions (they name messages for recovery).
      label_wait_s: how long a label waits for its transaction before it is dead-lettered.
      key_buckets: 0: each stage has one key per entity; N: entities hashed into N keys
        (pipelines/core/routing.py).
      correction_horizon_s: the lateness horizon of corrections in event time (None: none).
      max_corrections_per_event: the most transactions one late event corrects
        (entity_windows.py).
      window_cache_mb: the memory budget of each entity stage's window cache, per process.
      definitions: the job's definitions file (keyword only, required: the job passes its own,
        so that a stage never computes another file by default).

    Returns:
      ComputedFeatures(batches, dead_letters).

    Example Usage::

        computed = (transactions, labels) | "ComputeFeatures" >> ComputeFeatures(
            store_config, definitions=defs
        )
    """

    def __init__(
        self,
        store: StoreConfig | WindowStore,
        max_batch_size: int = 500,
        sources: tuple[str, str] = ("transactions", "labels"),
        label_wait_s: float = 300.0,
        key_buckets: int = 0,
        correction_horizon_s: float | None = None,
        window_cache_mb: float = 512.0,
        max_corrections_per_event: int = 10_000,
        *,
        definitions: Definitions,
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
        self._defs = definitions
        if not stage_entities(self._defs):
            raise ValueError(f"{self._defs.name}: no entity has window features")
        self._entity_args = (
            key_buckets,
            correction_horizon_s,
            window_cache_mb,
            max_corrections_per_event,
        )

    def expand(self, events: tuple[beam.PCollection, beam.PCollection]) -> ComputedFeatures:
        transactions, labels = events
        b = self._buckets
        by_id = (
            transactions | "KeyTransactions" >> beam.Map(_by_id, b).with_output_types(_KEYED),
            labels | "KeyLabels" >> beam.Map(_by_id, b).with_output_types(_KEYED),
            transactions.pipeline | "RestoreWaits" >> RestoreWaits(self._store, b),
        ) | "MergeById" >> beam.Flatten()
        ids = by_id | INDEX_IDS >> beam.ParDo(
            IndexIdsFn(
                self._store,
                self._max,
                self._sources,
                self._label_wait_s,
                b,
                streams=(self._defs.events, self._defs.labels),
            )
        ).with_outputs(ACCEPTED_LABELS, DEAD_LETTER_TAG, main="transactions")
        dead = [ids[DEAD_LETTER_TAG]]
        previous: beam.PCollection | None = None
        entities = stage_entities(self._defs)
        for position, entity in enumerate(entities):
            camel = _camel(entity)
            by_entity = _ByEntity(entity, b)
            if previous is None:
                keyed = ids.transactions | f"KeyBy{camel}" >> beam.Map(by_entity).with_output_types(
                    _KEYED
                )
            else:
                keyed = previous | f"KeyPartsBy{camel}" >> beam.Map(by_entity).with_output_types(
                    _KEYED
                )
            if any(f.needs_labels for f in self._defs.window_features(entity)):
                keyed = (
                    keyed,
                    ids[ACCEPTED_LABELS]
                    | f"KeyLabelsBy{camel}" >> beam.Map(by_entity).with_output_types(_KEYED),
                ) | f"MergeBy{camel}" >> beam.Flatten()
            last = position == len(entities) - 1
            stage = keyed | stage_name(entity) >> beam.ParDo(
                EntityWindowsFn(self._defs, position, self._store, self._max, *self._entity_args)
            ).with_outputs(DEAD_LETTER_TAG, main="batches" if last else "parts")
            dead.append(stage[DEAD_LETTER_TAG])
            previous = stage.batches if last else stage.parts
        assert previous is not None
        dead_letters = tuple(dead) | "StageDeadLetters" >> beam.Flatten()
        return ComputedFeatures(previous, dead_letters)
