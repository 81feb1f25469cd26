"""Every ``Shared`` object kept for the process on the DirectRunner.

Beam's ``Shared`` (pipelines/stores/shared.py) keeps an object alive while a DoFn instance holds
it, plus the last one acquired in the process. Dataflow keeps its DoFn instances from bundle to
bundle; the DirectRunner makes a fresh instance for every bundle, so between two bundles of a step
nothing would hold its window cache, its clients or its models, and every bundle would rebuild
them (a model load, an empty cache). Locally, each handle's latest object is pinned instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pin_shared_objects"]


def pin_shared_objects() -> None:
    """Keeps each Shared handle's latest object alive for the process (idempotent)."""
    from apache_beam.utils import shared

    acquire = shared._SharedMap.acquire
    if getattr(acquire, "_rillet_pinned", False):
        return
    pins: dict[str, Any] = {}  # handle key -> its latest object

    def pinned(self: Any, key: str, constructor_fn: Any, tag: Any = None) -> Any:
        result = acquire(self, key, constructor_fn, tag)
        pins[key] = result
        return result

    pinned._rillet_pinned = True  # type: ignore[attr-defined]
    shared._SharedMap.acquire = pinned  # type: ignore[method-assign]
