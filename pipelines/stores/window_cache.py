"""WindowCache: one keyed stage's in-memory mirror of its entities' cells, bounded by the lookback.

An entity's stage (customer windows, terminal windows) is the only writer of that entity's cells
while a job runs: Beam runs a key's elements one at a time, on one worker. So the stage keeps what
it wrote (and what it read once) in memory and serves later batches without a store round trip.
An entity is cached together with ``loaded_from_us``: the cache holds *every* cell of the entity
at or after that time. A batch whose windows reach further back (a late event) reads the entity
again. Cells older than the entity's retention (its longest lookback plus its longest delay)
behind the newest event seen are evicted: the extra delay keeps what a label arriving one label
delay after its transaction needs (measured: with the lookback alone, every batch of labels
re-read its terminals from the store, and the demo's latency grew with the run).

Safety: the cache records, per stage key, its ``owner``: the run of the stage (a token fixed when
the pipeline is built) and the generation of the key's Beam state it mirrors. When the runner
moves the key to another worker and back, retries a bundle, or a new pipeline starts in the same
process, the generations differ and the key's entities are read again (transforms/keyed_stage.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipelines.core.definitions import Entity, max_delay_us, max_lookback_us
from pipelines.stores.window_store import EntityCells, LabelCell, TxCell, WindowStore

__all__ = ["WindowCache"]

END_OF_TIME_US = 4_102_444_800_000_000  # 2100-01-01: "no upper bound" for a read
# Eviction scans every cached cell, so it runs at most once per day of event time (an hourly
# scan took a third of the stage's time with a warm store, py-spy). The cost: up to one day of
# events beyond the lookback stays in memory.
_EVICT_EVERY_US = 86_400_000_000


@dataclass
class _Cached:
    loaded_from_us: int
    cells: EntityCells = field(default_factory=EntityCells)


class WindowCache:
    """The reads of one entity type's cells, served from memory when it can."""

    def __init__(
        self, store: WindowStore, entity: Entity, labels: bool, key_of: Callable[[str], str]
    ) -> None:
        self.store = store
        self.entity = entity
        self.labels = labels  # whether this entity's cells include labels (terminals)
        self._key_of = key_of  # entity id -> the stage key it is routed to
        self._entities: dict[str, _Cached] = {}
        self._by_key: dict[str, set[str]] = {}  # stage key -> its cached entity ids
        self._owners: dict[str, tuple[str, int] | None] = {}  # stage key -> (run, generation)
        self._newest_us = 0
        self._evicted_at_us = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(e.cells.tx) + len(e.cells.labels) for e in self._entities.values())

    # -- ownership -----------------------------------------------------------------------------

    def claim(self, key: str, run: str, generation: int) -> None:
        """A bundle is about to work on stage key ``key``, whose Beam state is at
        ``generation``: drops the key's entities unless the cache mirrors exactly that
        generation of this run, and marks the key in flight (a bundle that fails leaves it
        unowned, so its changes are read again)."""
        if self._owners.get(key) != (run, generation):
            for entity_id in self._by_key.pop(key, ()):
                self._entities.pop(entity_id, None)
        self._owners[key] = None

    def settle(self, run: str, generations: dict[str, int]) -> None:
        """The bundle completed: its keys now mirror these generations of ``run``."""
        for key, generation in generations.items():
            self._owners[key] = (run, generation)

    # -- reads ---------------------------------------------------------------------------------

    def ensure(self, ids: Iterable[str], start_us: int) -> None:
        """Loads from the store every entity not cached completely from ``start_us`` on (one
        batched read for all of them)."""
        ids = set(ids)
        missing = sorted(
            i
            for i in ids
            if (cached := self._entities.get(i)) is None or cached.loaded_from_us > start_us
        )
        self.hits += len(ids) - len(missing)
        if not missing:
            return
        self.misses += len(missing)
        found = self.store.read_entities(
            self.entity, missing, start_us, END_OF_TIME_US, self.labels
        )
        for entity_id in missing:
            self._entities[entity_id] = _Cached(start_us, found.get(entity_id, EntityCells()))
            self._by_key.setdefault(self._key_of(entity_id), set()).add(entity_id)

    def cells(self, entity_id: str) -> EntityCells:
        """The cached cells of an entity (ensure() first)."""
        return self._entities[entity_id].cells

    # -- writes (after the store accepted them) ------------------------------------------------

    def put_tx(self, entity_id: str, tx_id: str, cell: TxCell) -> None:
        cached = self._entities.get(entity_id)
        if cached is not None and cached.loaded_from_us <= cell.time_us:
            cached.cells.tx[tx_id] = cell
        # An entity not cached (or cached from a later time) is read when needed: the store has
        # the cell.
        self._newest_us = max(self._newest_us, cell.time_us)

    def put_label(self, entity_id: str, tx_id: str, cell: LabelCell) -> None:
        cached = self._entities.get(entity_id)
        if cached is not None and cached.loaded_from_us <= cell.time_us:
            cached.cells.labels[tx_id] = cell

    def evict(self) -> None:
        """Drops cells no window can need: older than the retention behind the newest event seen
        (a later, older event makes the stage read that entity again)."""
        if self._newest_us - self._evicted_at_us < _EVICT_EVERY_US:
            return
        self._evicted_at_us = self._newest_us
        horizon = self._newest_us - max_lookback_us(self.entity) - max_delay_us(self.entity)
        empty = []
        for entity_id, cached in self._entities.items():
            if cached.loaded_from_us >= horizon:
                continue
            cells = cached.cells
            cells.tx = {k: v for k, v in cells.tx.items() if v.time_us >= horizon}
            cells.labels = {k: v for k, v in cells.labels.items() if v.time_us >= horizon}
            cached.loaded_from_us = horizon
            if not cells.tx and not cells.labels:
                empty.append(entity_id)
        for entity_id in empty:
            del self._entities[entity_id]
            self._by_key.get(self._key_of(entity_id), set()).discard(entity_id)
