"""WindowCache: one keyed stage's process-wide mirror of its entities' window state.

A stage reads an entity's buckets from the store once and keeps its state (an ``EntityState``:
bucket summaries and the cells of the buckets its windows need) for the next work items of the
same key. On Dataflow many work items run at once in one SDK process (one DoFn instance per
thread), an attempt may fail after its writes, and a key may move to another worker and back
while an old attempt still runs; so an entry is trusted only when it is exactly the state that
the key's last *committed* work item left:

- Every entry is tagged with the fence of the attempt that produced it (the per-key counter in
  Beam state, pipelines/transforms/keyed_stage.py). A work item starts from the fence the
  runner committed; an entry tagged with another fence (an attempt that failed to commit, a
  zombie of an earlier work item, a key that was away) is read again from the store.
- An entry is handed to one attempt at a time (``checkout``) and is incomplete until that
  attempt has finished its bundle (``release``): an attempt that fails midway leaves an entry
  that no one will trust. Attempts are identified by a token drawn per bundle, not by a counter
  that two attempts of the same work item would share.
- Every access holds the cache's lock; the states themselves are only touched by the attempt that
  checked them out.
- Memory is bounded: entries are evicted least recently used beyond ``budget_bytes`` (an entity
  evicted is read again when its key comes back).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from pipelines.core.window_state import EntityState

__all__ = ["WindowCache"]


@dataclass
class _Entry:
    state: EntityState
    key: str  # the stage key the entity is routed to
    fence: int
    attempt: Hashable | None  # the attempt working on it (None: complete)
    nbytes: int


class WindowCache:
    """The entity states of one stage in one process (see the module docstring)."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError("the window cache needs a positive budget")
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_key: dict[str, set[str]] = {}  # stage key -> its cached entity ids
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def checkout(self, entity_id: str, fence: int, attempt: Hashable) -> EntityState | None:
        """The entity's state for ``attempt``, whose key's committed fence is ``fence``; None
        when the cache does not hold exactly that state (read it from the store, then
        ``checkin``)."""
        with self._lock:
            entry = self._entries.get(entity_id)
            if entry is not None and entry.attempt == attempt:
                return entry.state  # a later batch of the same bundle
            if entry is None or entry.attempt is not None or entry.fence != fence:
                self.misses += 1
                return None
            entry.attempt = attempt  # incomplete until this attempt finishes its bundle
            self._entries.move_to_end(entity_id)
            self.hits += 1
            return entry.state

    def checkin(
        self, entity_id: str, key: str, state: EntityState, fence: int, attempt: Hashable
    ) -> None:
        """Records ``state`` as what ``attempt`` (at ``fence`` of stage key ``key``) made of the
        entity so far."""
        with self._lock:
            self._drop(entity_id)
            entry = _Entry(state, key, fence, attempt, state.nbytes())
            self._entries[entity_id] = entry
            self._by_key.setdefault(key, set()).add(entity_id)
            self._bytes += entry.nbytes
            self._evict()

    def release(
        self, attempt: Hashable, entity_ids: set[str], fences: dict[str, tuple[int, int]]
    ) -> None:
        """``attempt`` finished its bundle, which moved each of its stage keys from one fence to
        the next (``fences``: key -> (committed, its own)): its entries are complete, and the
        complete entries of the keys' other entities, which it did not change, are tagged with
        its fence too (several entities share a key on the DirectRunner). Either is trusted by
        the key's next work item if the runner commits this attempt's fence."""
        with self._lock:
            for entity_id in entity_ids:
                entry = self._entries.get(entity_id)
                if entry is not None and entry.attempt == attempt:
                    entry.attempt = None
                    self._bytes += entry.state.nbytes() - entry.nbytes
                    entry.nbytes = entry.state.nbytes()
            for key, (committed, mine) in fences.items():
                for entity_id in self._by_key.get(key, ()):
                    entry = self._entries[entity_id]
                    if entry.attempt is None and entry.fence == committed:
                        entry.fence = mine
            self._evict()

    def discard(self, entity_id: str) -> None:
        """Forgets an entity (its state no longer matches the store)."""
        with self._lock:
            self._drop(entity_id)

    def _drop(self, entity_id: str) -> None:
        entry = self._entries.pop(entity_id, None)
        if entry is not None:
            self._bytes -= entry.nbytes
            self._by_key[entry.key].discard(entity_id)
            if not self._by_key[entry.key]:
                del self._by_key[entry.key]

    def _evict(self) -> None:
        # Any entry may go, even one an attempt works on: that attempt holds its state and
        # checks it in again.
        while self._bytes > self.budget_bytes and len(self._entries) > 1:
            entity_id = next(iter(self._entries))
            self._drop(entity_id)
            self.evictions += 1
