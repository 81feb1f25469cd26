"""WindowCache: what it serves from memory, what it reads again, what it evicts."""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.core.definitions import (
    TERMINAL,
    Entity,
    influence_span_us,
    max_delay_us,
    max_lookback_us,
)
from pipelines.stores.window_cache import WindowCache
from pipelines.stores.window_store import EntityCells, InMemoryStore, TxCell, Writes

DAY_US = 86_400_000_000


class CountingStore(InMemoryStore):
    """The in-memory store, counting the entity reads that reach it."""

    def __init__(self) -> None:
        super().__init__("window-cache-test")
        self.reads: list[tuple[str, ...]] = []

    def read_entities(
        self,
        entity: Entity,
        ids: Sequence[str],
        start_us: int,
        end_us: int,
        labels: bool,
    ) -> dict[str, EntityCells]:
        self.reads.append(tuple(ids))
        return super().read_entities(entity, ids, start_us, end_us, labels)


def _cache() -> tuple[WindowCache, CountingStore]:
    store = CountingStore()
    return WindowCache(store, TERMINAL, labels=True, key_of=lambda entity_id: entity_id), store


def _write(cache: WindowCache, terminal: str, tx_id: str, time_us: int) -> None:
    cell = TxCell(time_us, 10.0, "c1")
    writes = Writes()
    writes.tx_cells.append((TERMINAL, terminal, tx_id, cell))
    cache.store.apply(writes)
    cache.put_tx(terminal, tx_id, cell)
    cache.evict()


def test_a_label_one_label_delay_late_is_served_from_memory_after_eviction() -> None:
    cache, store = _cache()
    lookback = max_lookback_us(TERMINAL)
    t0 = 100 * DAY_US
    cache.ensure(["t1"], t0 - lookback)
    assert len(store.reads) == 1
    for day in range(0, 20):  # transactions in order; eviction runs once per event day
        _write(cache, "t1", f"tx{day}", t0 + day * DAY_US)
    newest = t0 + 19 * DAY_US
    # The label of a transaction one label delay before the newest event: what the terminal
    # stage asks for (pipelines/transforms/entity_windows.py _load).
    label_time = newest - max_delay_us(TERMINAL)
    lo, _ = influence_span_us(TERMINAL, labels=True)
    cache.ensure(["t1"], label_time + lo - lookback)
    assert len(store.reads) == 1, "the label's terminal was read from the store again"
    # A transaction as late as the retention is still served; an older one is read again.
    cache.ensure(["t1"], newest - lookback - max_delay_us(TERMINAL) + DAY_US)
    assert len(store.reads) == 1
    cache.ensure(["t1"], newest - lookback - max_delay_us(TERMINAL) - 2 * DAY_US)
    assert len(store.reads) == 2


def test_eviction_keeps_the_retention_and_drops_what_is_older() -> None:
    cache, _ = _cache()
    retention = max_lookback_us(TERMINAL) + max_delay_us(TERMINAL)
    t0 = 100 * DAY_US
    cache.ensure(["t1"], 0)
    for day in range(0, 60):
        _write(cache, "t1", f"tx{day}", t0 + day * DAY_US)
    kept = {cell.time_us for cell in cache.cells("t1").tx.values()}
    # Eviction runs at most once per event day, so up to a day beyond the retention stays.
    assert min(kept) >= t0 + 59 * DAY_US - retention - DAY_US
    assert min(kept) <= t0 + 59 * DAY_US - retention + DAY_US
    assert max(kept) == t0 + 59 * DAY_US


def test_a_key_claimed_at_another_generation_is_read_again() -> None:
    cache, store = _cache()
    cache.claim("t1", "run", 1)
    cache.ensure(["t1"], 0)
    cache.settle("run", {"t1": 2})
    cache.claim("t1", "run", 2)  # the generation it mirrors: kept
    cache.ensure(["t1"], 0)
    assert len(store.reads) == 1
    cache.settle("run", {"t1": 3})
    cache.claim("t1", "run", 7)  # another worker had the key meanwhile: dropped
    cache.ensure(["t1"], 0)
    assert len(store.reads) == 2
