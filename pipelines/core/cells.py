"""What an entity's window state is made of: transaction cells, label cells, bucket summaries.

An entity's events are kept in time buckets of ``BUCKET_US`` (one Bigtable row per entity and
bucket, docs/specs/bigtable.md), so that a row stays bounded whatever the entity's rate, and each
bucket carries a ``Summary`` of its cells, so that a long window reads the summaries of the
buckets it covers whole plus the cells of its two edge buckets (pipelines/core/entity_index.py).

The bucket width is part of the stored format (row keys): changing it needs a new table.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pipelines.core.engine import amount_unit, amount_units

__all__ = [
    "BUCKET_US",
    "NO_STREAM_WRITE",
    "SPARSE_CELLS",
    "LabelCell",
    "Summary",
    "TxCell",
    "bucket_of",
    "summarize",
]

# 15 minutes. The bound it gives (README "Feature store schema"): a terminal with 5% of 10,000
# events/s writes 450,000 transaction cells (~110 B) and as many labels (~30 B) per bucket: about
# 65 MB, under Bigtable's advised 100 MB a row (256 MB is the hard limit). A sparse entity (a
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


class Summary(NamedTuple):
    """What a bucket's cells add up to: every window that covers the bucket whole reads this
    instead of its cells. Exact integers (amounts in micro-units, pipelines.core.engine), so a
    window summed from summaries and edge cells has the same bits as one summed from cells.

    The operations of later feature declarations extend it (a sum of squares as a big integer,
    minimum, maximum, the last value, the distinct values of a field); the stored encoding is
    versioned for that (pipelines/stores/bigtable.py ``encode_summary``).
    """

    transactions: int  # transaction cells
    units: int  # the sum of their amounts, micro-units
    first_us: int  # the earliest transaction time (0 without transactions)
    last_us: int  # the latest transaction time (0 without transactions)
    labels: int = 0  # label cells (terminals)
    frauds: int = 0  # of which frauds


def summarize(tx: dict[str, TxCell], labels: dict[str, LabelCell]) -> Summary:
    """The summary of a bucket's cells."""
    times = [c.time_us for c in tx.values()]
    if len(tx) > 64:
        units = int(amount_units(np.fromiter((c.amount for c in tx.values()), np.float64)).sum())
    else:  # most buckets hold a few cells: NumPy's call costs more than the sum
        units = sum(amount_unit(c.amount) for c in tx.values())
    return Summary(
        len(times),
        units if times else 0,
        min(times, default=0),
        max(times, default=0),
        len(labels),
        sum(int(c.is_fraud) for c in labels.values()),
    )
