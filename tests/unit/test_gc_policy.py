"""gc_policy: after a slow full collection, what is alive is frozen at the next bundle boundary,
and frozen objects are still freed by reference counting."""

from __future__ import annotations

import gc
import weakref

from pipelines.transforms import gc_policy


class _Cell:
    pass


def test_a_slow_full_collection_freezes_what_is_alive_once(monkeypatch) -> None:
    monkeypatch.setattr(gc_policy, "SLOW_S", 0.0)  # every full collection counts as slow
    gc_policy.install()
    gc_policy.install()  # once per process
    assert gc.callbacks.count(gc_policy._callback) == 1
    held = [_Cell() for _ in range(50_000)]
    probe = weakref.ref(held[0])
    try:
        gc_policy.settle()  # clears what an earlier collection left
        gc.collect(1)  # not a full collection: nothing to freeze
        assert not gc_policy.settle()
        gc.collect()
        assert gc_policy.settle()
        assert gc.get_freeze_count() >= len(held)
        assert not gc_policy.settle()  # one freeze per slow collection
        del held
        assert probe() is None  # frozen, yet freed by reference counting
    finally:
        gc.unfreeze()


def test_a_fast_full_collection_freezes_nothing(monkeypatch) -> None:
    monkeypatch.setattr(gc_policy, "SLOW_S", 3600.0)
    gc_policy.install()
    gc_policy.settle()
    gc.collect()
    assert not gc_policy.settle()
