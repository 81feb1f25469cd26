"""Which key of a keyed stage an entity's events go to.

On Dataflow every entity is its own key (``buckets = 0``): keys are spread over the workers, and
one key runs on one thread at a time. The local DirectRunner keeps per-key bookkeeping that it
scans on every step of its scheduler and never frees, so locally the entities are hashed into
a fixed number of buckets (many entities per key; the stages work per entity either way).
"""

from __future__ import annotations

import zlib

__all__ = ["route"]


def route(entity_id: str, buckets: int) -> str:
    """The stage key of ``entity_id``: itself, or its bucket among ``buckets`` (crc32)."""
    if buckets <= 0:
        return entity_id
    return f"~{zlib.crc32(entity_id.encode()) % buckets}"
