"""The window store interface, its record types and an in-memory implementation.

A keyed stage reads and writes only its own keys' records (README "Ordering"):

  entity cells   per (entity type, entity id): one ``TxCell`` per transaction of the entity and,
                 on terminals, one label cell per labelled transaction; plus the entity's latest
                 feature values (for online lookups).
  id index       per transaction id: the first transaction message seen (``IdRecord.tx``) and
                 the label slot (``IdRecord.label``, pipelines/core/label_slots.py).
  waiting labels per (stage key, transaction id): label messages waiting for their transaction,
                 with their wall-clock deadlines; read per stage key when its timer fires.

Everything is keyed by transaction id, so writing a record twice changes nothing: a redelivered
event, a resumed job or a backfill over a range the stream already saw is idempotent.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from pipelines.core.definitions import Entity

__all__ = [
    "EntityCells",
    "IdRecord",
    "InMemoryStore",
    "LabelCell",
    "TxCell",
    "WindowStore",
    "Writes",
]


class TxCell(NamedTuple):
    """One transaction in an entity's window state (a named tuple: a cold read builds one per
    stored transaction, 3x faster than a frozen dataclass).

    ``other_id`` is the other entity's id (the terminal on a customer cell, the customer on a
    terminal cell), so a transaction can be rebuilt from one cell. ``revision`` is the revision
    of the last output this entity's stage computed for the transaction (0: never scored by the
    stream, e.g. written by the backfill). ``carried`` are features an upstream stage computed
    for it (on terminal cells: the customer features), with their revision.
    """

    time_us: int
    amount: float
    other_id: str
    revision: int = 0
    carried: tuple[float, ...] = ()
    carried_revision: int = 0


class LabelCell(NamedTuple):
    """A fraud label on the terminal whose risk windows it feeds (time = the transaction's)."""

    time_us: int
    is_fraud: int


@dataclass
class EntityCells:
    """What the store holds for one entity with event time in the range that was read."""

    tx: dict[str, TxCell] = field(default_factory=dict)
    labels: dict[str, LabelCell] = field(default_factory=dict)


@dataclass
class IdRecord:
    """What the id index holds for one transaction id (see pipelines.stores.bigtable)."""

    tx: dict[str, Any] | None = None
    label: dict[str, Any] | None = None


@dataclass
class Writes:
    """The mutations of one stage's batch, applied together (one MutateRows on Bigtable)."""

    # (entity, entity id, transaction id, cell)
    tx_cells: list[tuple[Entity, str, str, TxCell]] = field(default_factory=list)
    # (terminal id, transaction id, cell)
    label_cells: list[tuple[str, str, LabelCell]] = field(default_factory=list)
    # (entity, entity id, event time µs, feature name -> value): the latest features
    features: list[tuple[Entity, str, int, dict[str, float]]] = field(default_factory=list)
    # (transaction id, family "tx" or "label", record, event time µs)
    ids: list[tuple[str, str, dict[str, Any], int]] = field(default_factory=list)
    # (stage key, transaction id, message key, record with its "deadline", event time µs)
    waits_add: list[tuple[str, str, str, dict[str, Any], int]] = field(default_factory=list)
    # (stage key, transaction id, message keys, or None for all of the id's)
    waits_remove: list[tuple[str, str, Sequence[str] | None]] = field(default_factory=list)
    # (entity, entity id, cells): a bulk load of many cells as one record (the backfill's).
    # Reads merge it under the entity's single cells: a single cell with the same transaction
    # id wins, whichever was written first.
    snapshots: list[tuple[Entity, str, EntityCells]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.snapshots,
                self.tx_cells,
                self.label_cells,
                self.features,
                self.ids,
                self.waits_add,
                self.waits_remove,
            )
        )


class WindowStore(Protocol):
    """What the keyed stages need from a store. Every call is batched over many keys."""

    def read_entities(
        self, entity: Entity, ids: Sequence[str], start_us: int, end_us: int, labels: bool
    ) -> dict[str, EntityCells]:
        """The cells of these entities with event time in [start_us, end_us) (label cells too
        when ``labels``). Entities with no cell there are absent."""
        ...

    def read_ids(self, transaction_ids: Sequence[str]) -> dict[str, IdRecord]:
        """The id-index records of these transaction ids (absent: never seen)."""
        ...

    def read_waiting(
        self, keys: Sequence[str] | None = None
    ) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Labels waiting under these stage keys (None: all): (stage key, transaction id) ->
        message key -> record."""
        ...

    def apply(self, writes: Writes) -> None:
        """Applies a batch's mutations; retried until they are all durable."""
        ...


_IN_MEMORY: dict[str, InMemoryStore] = {}


class InMemoryStore:
    """A WindowStore in a dict, for unit tests of the stages' logic (no emulator).

    Stores are registered by name in the process: a pipeline's DoFns are pickled, and each
    unpickled copy must reach the same store (``__reduce__``)."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        _IN_MEMORY[name] = self
        self.entities: dict[tuple[str, str], EntityCells] = {}
        self.features: dict[tuple[str, str], tuple[int, dict[str, float]]] = {}
        self.ids: dict[str, IdRecord] = {}
        self.waiting: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    @staticmethod
    def named(name: str) -> InMemoryStore:
        return _IN_MEMORY.get(name) or InMemoryStore(name)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (InMemoryStore.named, (self.name,))

    def read_entities(
        self, entity: Entity, ids: Sequence[str], start_us: int, end_us: int, labels: bool
    ) -> dict[str, EntityCells]:
        out: dict[str, EntityCells] = {}
        for entity_id in ids:
            cells = self.entities.get((entity.name, entity_id))
            if cells is None:
                continue
            found = EntityCells(
                {k: c for k, c in cells.tx.items() if start_us <= c.time_us < end_us},
                (
                    {k: c for k, c in cells.labels.items() if start_us <= c.time_us < end_us}
                    if labels
                    else {}
                ),
            )
            if found.tx or found.labels:
                out[entity_id] = found
        return out

    def read_ids(self, transaction_ids: Sequence[str]) -> dict[str, IdRecord]:
        return {i: copy.deepcopy(self.ids[i]) for i in set(transaction_ids) if i in self.ids}

    def read_waiting(
        self, keys: Sequence[str] | None = None
    ) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        wanted = None if keys is None else set(keys)
        return {
            k: copy.deepcopy(v)
            for k, v in self.waiting.items()
            if v and (wanted is None or k[0] in wanted)
        }

    def apply(self, writes: Writes) -> None:
        if not writes:
            return
        for entity, entity_id, snapshot in writes.snapshots:
            cells = self.entities.setdefault((entity.name, entity_id), EntityCells())
            for tx_id, cell in snapshot.tx.items():
                cells.tx.setdefault(tx_id, cell)
            for tx_id, label in snapshot.labels.items():
                cells.labels.setdefault(tx_id, label)
        for entity, entity_id, tx_id, cell in writes.tx_cells:
            self.entities.setdefault((entity.name, entity_id), EntityCells()).tx[tx_id] = cell
        for terminal_id, tx_id, label in writes.label_cells:
            self.entities.setdefault(("terminal", terminal_id), EntityCells()).labels[tx_id] = label
        for entity, entity_id, time_us, values in writes.features:
            self.features[(entity.name, entity_id)] = (time_us, dict(values))
        for tx_id, family, record, _ in writes.ids:
            setattr(self.ids.setdefault(tx_id, IdRecord()), family, copy.deepcopy(record))
        for stage_key, tx_id, keys in writes.waits_remove:
            if keys is None:
                self.waiting.pop((stage_key, tx_id), None)
                continue
            entries = self.waiting.get((stage_key, tx_id), {})
            for key in keys:
                entries.pop(key, None)
            if not entries:
                self.waiting.pop((stage_key, tx_id), None)
        for stage_key, tx_id, key, record, _ in writes.waits_add:
            self.waiting.setdefault((stage_key, tx_id), {})[key] = copy.deepcopy(record)
