"""The time buckets an entity's window state is kept in.

An entity's events are kept in time buckets of ``BUCKET_US`` (one Bigtable row per entity and
bucket, docs/specs/bigtable.md), so that a row stays bounded whatever the entity's rate, and each
bucket carries a summary of its cells (``Aggregates``, pipelines/core/window_cells.py), so that a
long window reads the summaries of the buckets it covers whole plus the cells of its two edge
buckets (pipelines/core/window_state.py).

The bucket width is part of the stored format (row keys): changing it needs a new table.
"""

from __future__ import annotations

__all__ = [
    "BUCKET_US",
    "NO_STREAM_WRITE",
    "SPARSE_CELLS",
    "bucket_of",
]

# 15 minutes. The bound it gives (README "Feature store schema"): a terminal with 5% of 10,000
# events/s writes 450,000 transaction cells (~110 B) and as many labels (~25 B) per bucket: about
# 62 MB, under Bigtable's advised 100 MB a row (256 MB is the hard limit). A sparse entity (a
# card with two transactions a day) has one row per bucket it has events in.
BUCKET_US = 15 * 60 * 1_000_000


# An entity with at most this many cells in its lookback is sparse: a cold stage reads it whole
# (its archive, or one range scan of its small rows); a denser one is read by its bucket
# summaries and only the buckets its windows need.
SPARSE_CELLS = 2_000
NO_STREAM_WRITE = 2**62  # the earliest bucket the stream wrote, of an entity it never wrote


def bucket_of(time_us: int) -> int:
    """The bucket index of an event time (floor division: negative times work too)."""
    return time_us // BUCKET_US
