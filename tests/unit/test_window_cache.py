"""WindowCache: trusted only for the fence its key's runner committed, owned per attempt, safe
under concurrent attempts in one process, bounded in bytes."""

from __future__ import annotations

import sys
import threading

from pipelines.core.cells import BUCKET_US, bucket_of
from pipelines.core.window_state import EntityState
from pipelines.stores.window_cache import WindowCache
from tests.events import handbook_cell, handbook_layout

T0 = 1_522_540_800_000_000
CUSTOMER = handbook_layout("customer")


def _state(cells: int = 1) -> EntityState:
    state = EntityState(CUSTOMER, bucket_of(T0))
    for i in range(cells):
        state.put_tx(str(i), handbook_cell(CUSTOMER, T0 + i, 1.0, "x"))
    return state


def test_an_entry_is_trusted_only_for_the_committed_fence_after_its_attempt_finished() -> None:
    cache = WindowCache(10**9)
    assert cache.checkout("c1", 0, "a1") is None  # cold
    state = _state()
    cache.checkin("c1", "k", state, 1000, "a1")
    assert cache.checkout("c1", 1000, "a1") is state  # a later batch of the same attempt
    # Not before the attempt finished its bundle: it might still fail halfway.
    assert cache.checkout("c1", 1000, "a2") is None
    cache.release("a1", {"c1"}, {})
    # The runner did not commit a1 (its key's state is still at fence 0): read again.
    assert cache.checkout("c1", 0, "a2") is None
    # It did: the next work item takes it over, and while it works nobody else does.
    assert cache.checkout("c1", 1000, "a3") is state
    assert cache.checkout("c1", 1000, "a4") is None


def test_an_attempt_that_never_finishes_leaves_nothing_trusted() -> None:
    cache = WindowCache(10**9)
    cache.checkin("c1", "k", _state(), 2000, "failed")
    assert cache.checkout("c1", 2000, "retry") is None  # never released: incomplete
    cache.checkin("c1", "k", _state(2), 2000, "retry")
    cache.release("retry", {"c1"}, {})
    assert len(cache.checkout("c1", 2000, "next").buckets[bucket_of(T0)].tx) == 2


def test_a_zombie_release_does_not_complete_the_entry_another_attempt_replaced() -> None:
    cache = WindowCache(10**9)
    cache.checkin("c1", "k", _state(1), 3000, "zombie")
    cache.checkin("c1", "k", _state(2), 4000, "new-owner")
    cache.release("zombie", {"c1"}, {})
    assert cache.checkout("c1", 3000, "x") is None
    cache.release("new-owner", {"c1"}, {})
    assert cache.checkout("c1", 4000, "y") is not None


def test_a_bundle_that_advanced_a_shared_key_keeps_its_other_entities_trusted() -> None:
    """On the DirectRunner several entities share a stage key: a bundle that changed one of them
    moved the key's fence; the others, unchanged, stay valid at the new fence (and only if the
    runner commits it)."""
    cache = WindowCache(10**9)
    cache.checkin("a", "~1", _state(), 1000, "x")
    cache.checkin("b", "~1", _state(), 1000, "x")
    cache.release("x", {"a", "b"}, {"~1": (0, 1000)})
    assert cache.checkout("a", 1000, "y") is not None  # y changes a only
    cache.checkin("a", "~1", _state(2), 2000, "y")
    cache.release("y", {"a"}, {"~1": (1000, 2000)})
    assert cache.checkout("b", 1000, "z") is None  # the key is at 2000 once y committed
    assert cache.checkout("b", 2000, "z") is not None


def test_the_byte_budget_evicts_least_recently_used_entities() -> None:
    one = _state(10).nbytes()
    cache = WindowCache(3 * one + 1)
    for i in range(5):
        cache.checkin(f"c{i}", "k", _state(10), 1000, "a")
    cache.release("a", {f"c{i}" for i in range(5)}, {})
    assert len(cache) == 3 and cache.nbytes <= cache.budget_bytes
    assert cache.evictions == 2
    assert cache.checkout("c0", 1000, "b") is None  # evicted
    assert cache.checkout("c4", 1000, "b") is not None


def test_concurrent_attempts_in_one_process_never_share_a_state() -> None:
    """Threads checking entities out and in at once (Dataflow: one DoFn instance per thread):
    a cached state is never handed to two attempts at once, and the bookkeeping stays
    consistent. (A thread that gets nothing reads its own copy, as a stage reads the store.)"""
    cache = WindowCache(50 * _state(20).nbytes())
    holders: dict[int, str] = {}  # id of a state object -> the attempt holding it
    lock = threading.Lock()
    errors: list[str] = []

    def work(thread: int) -> None:
        for i in range(400):
            attempt = f"t{thread}-{i}"
            entity = f"c{i % 7}"
            state = cache.checkout(entity, 1000, attempt)
            if state is None:
                state = _state(20)
            with lock:
                if id(state) in holders:
                    errors.append(f"{entity} held by {holders[id(state)]} and {attempt}")
                holders[id(state)] = attempt
            state.put_tx(f"{attempt}", handbook_cell(CUSTOMER, T0 + BUCKET_US // 2, 2.0, "y"))
            with lock:
                holders.pop(id(state), None)
            cache.checkin(entity, "k", state, 1000, attempt)
            cache.release(attempt, {entity}, {})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert cache.nbytes == sum(e.nbytes for e in cache._entries.values())
