"""WindowCache: an in-memory mirror of the feature store's event cells, bounded by the lookback.

The sequenced feature stage is the only writer of the ``tx`` and ``label`` families while a job
runs, so it can keep what it wrote (and what it read once) in memory and serve later batches
without a Bigtable round trip. An entity is cached together with ``loaded_from_us``: the cache
holds *every* event of the entity at or after that time. A batch whose windows reach further
back (a late event) reads the entity from Bigtable again. Events older than the longest
lookback behind the newest event seen are evicted: no window can need them.

Safety: the cache records its ``owner``: the run of the stage (a token fixed when the pipeline is
built) and the generation of its Beam state it mirrors. When the runner moves the key to another
worker and back, retries a bundle, or a new pipeline starts in the same process, the owner differs
and the cache starts cold (see _SequencedDoFn).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipelines.feature_store import (
    FAMILY_LABEL,
    FAMILY_TX,
    EntityHistory,
    FeatureStore,
    History,
)
from pipelines.features import CUSTOMER, TERMINAL, Entity, max_lookback_us, min_delay_us

__all__ = ["WindowCache"]

_END_OF_TIME_US = 4_102_444_800_000_000  # 2100-01-01: "no upper bound" for a read
# Eviction scans every cached cell, so it runs at most once per day of event time: with a warm
# store (1.5M cells for the handbook's 15,000 entities) an hourly scan took a third of the
# stage's time (py-spy). The cost: up to one day of events beyond the lookback stays in memory.
_EVICT_EVERY_US = 86_400_000_000


@dataclass
class _Events:
    loaded_from_us: int
    tx: dict[str, tuple[int, float, str]] = field(default_factory=dict)
    labels: dict[str, tuple[int, float]] = field(default_factory=dict)


class WindowCache:
    """The feature stage's reads of the store, served from memory when it can."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.owner: tuple[str, int] | None = None
        # The feature stage's labels waiting for their transaction (see ComputeFeatures).
        self.waiting_labels: dict[str, Any] = {}
        self._entities: dict[tuple[str, str], _Events] = {}
        self._newest_us = 0
        self._evicted_at_us = 0
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._entities.clear()
        self.waiting_labels.clear()
        self._newest_us = 0

    def __len__(self) -> int:
        return sum(len(e.tx) + len(e.labels) for e in self._entities.values())

    # -- reads ---------------------------------------------------------------------------------

    def _ensure(self, entity: Entity, ids: set[str], start_us: int) -> None:
        """Loads from Bigtable every entity not cached completely from ``start_us`` on."""
        missing = []
        for entity_id in sorted(ids):
            events = self._entities.get((entity.name, entity_id))
            if events is None or events.loaded_from_us > start_us:
                missing.append(entity_id)
        self.hits += len(ids) - len(missing)
        if not missing:
            return
        self.misses += len(missing)
        families = (FAMILY_TX, FAMILY_LABEL) if entity == TERMINAL else (FAMILY_TX,)
        tx, labels = EntityHistory(), EntityHistory()
        self.store.read_cells(
            entity,
            missing,
            families,
            start_us,
            _END_OF_TIME_US,
            {FAMILY_TX: tx, FAMILY_LABEL: labels},
        )
        for i in missing:
            self._entities[(entity.name, i)] = _Events(start_us)
        for k, entity_id in enumerate(tx.entity_id):
            self._entities[(entity.name, entity_id)].tx[tx.transaction_id[k]] = (
                tx.time_us[k],
                tx.value[k],
                tx.other_id[k],
            )
        for k, entity_id in enumerate(labels.entity_id):
            self._entities[(entity.name, entity_id)].labels[labels.transaction_id[k]] = (
                labels.time_us[k],
                labels.value[k],
            )

    def _collect(
        self,
        entity: Entity,
        ids: set[str],
        start_us: int,
        tx_end_us: int,
        into_tx: EntityHistory,
        label_end_us: int | None = None,
        into_labels: EntityHistory | None = None,
    ) -> None:
        for entity_id in sorted(ids):
            events = self._entities[(entity.name, entity_id)]
            for tx_id, (t, value, other) in events.tx.items():
                if start_us <= t < tx_end_us:
                    into_tx.add(entity_id, tx_id, t, value, other)
            if into_labels is not None and label_end_us is not None:
                for tx_id, (t, value) in events.labels.items():
                    if start_us <= t < label_end_us:
                        into_labels.add(entity_id, tx_id, t, value)

    def read_history(
        self,
        customer_ids: Iterable[str],
        terminal_ids: Iterable[str],
        min_time_us: int,
        max_time_us: int,
        lookahead: bool = False,
    ) -> History:
        """The events any window of a batch spanning [min_time, max_time] can need. With
        ``lookahead`` the transactions also cover the longest lookback *after* max_time: the
        stored transactions whose windows the batch's events fall into."""
        customers, terminals = set(customer_ids), set(terminal_ids)
        history = History(EntityHistory(), EntityHistory(), EntityHistory())
        c_start = min_time_us - max_lookback_us(CUSTOMER)
        self._ensure(CUSTOMER, customers, c_start)
        c_end = max_time_us + 1 + (max_lookback_us(CUSTOMER) if lookahead else 0)
        self._collect(CUSTOMER, customers, c_start, c_end, history.customer_tx)
        t_start = min_time_us - max_lookback_us(TERMINAL)
        self._ensure(TERMINAL, terminals, t_start)
        label_end = max_time_us - min_delay_us(TERMINAL) + 1
        t_end = max_time_us + 1 + max_lookback_us(TERMINAL) if lookahead else label_end
        self._collect(
            TERMINAL,
            terminals,
            t_start,
            t_end,
            history.terminal_tx,
            label_end,
            history.terminal_labels,
        )
        return history

    def read_terminals(self, terminal_ids: Iterable[str], start_us: int, end_us: int) -> History:
        """Transaction and label events of terminals with event time in [start_us, end_us)."""
        terminals = set(terminal_ids)
        history = History(EntityHistory(), EntityHistory(), EntityHistory())
        self._ensure(TERMINAL, terminals, start_us)
        self._collect(
            TERMINAL,
            terminals,
            start_us,
            end_us,
            history.terminal_tx,
            end_us,
            history.terminal_labels,
        )
        return history

    # -- writes (after the store accepted them) ------------------------------------------------

    def add_transaction(
        self, tx_id: str, customer: str, terminal: str, time_us: int, amount: float
    ) -> None:
        for entity, entity_id, other in (
            (CUSTOMER, customer, terminal),
            (TERMINAL, terminal, customer),
        ):
            events = self._entities.get((entity.name, entity_id))
            if events is not None and events.loaded_from_us <= time_us:
                events.tx[tx_id] = (time_us, amount, other)
            # An entity not cached (or cached from a later time) is read from the store when
            # needed: the store has the cell.
        self._newest_us = max(self._newest_us, time_us)

    def add_label(self, tx_id: str, terminal: str, time_us: int, is_fraud: int) -> None:
        events = self._entities.get((TERMINAL.name, terminal))
        if events is not None and events.loaded_from_us <= time_us:
            events.labels[tx_id] = (time_us, float(is_fraud))

    def evict(self) -> None:
        """Drops events no window can need: older than the longest lookback behind the newest
        event seen (a later, older event makes the stage read the entity again)."""
        if self._newest_us - self._evicted_at_us < _EVICT_EVERY_US:
            return
        self._evicted_at_us = self._newest_us
        horizon = self._newest_us - max(max_lookback_us(CUSTOMER), max_lookback_us(TERMINAL))
        empty = []
        for key, events in self._entities.items():
            if events.loaded_from_us >= horizon:
                continue
            events.tx = {k: v for k, v in events.tx.items() if v[0] >= horizon}
            events.labels = {k: v for k, v in events.labels.items() if v[0] >= horizon}
            events.loaded_from_us = horizon
            if not events.tx and not events.labels:
                empty.append(key)
        for key in empty:
            del self._entities[key]
