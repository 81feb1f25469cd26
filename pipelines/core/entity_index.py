"""EntityWindows: one entity's window state in memory, answering exact windows per event.

The state is split into time buckets (pipelines/core/cells.py ``BUCKET_US``). Every non-empty
bucket from ``covered_from`` on has a ``Summary``; some buckets also have their cells loaded
(``Bucket``). A window (t - d - w, t - d] is answered as

    the cells of its first bucket after t - d - w
  + the summaries of the buckets it covers whole
  + the cells of its last bucket up to t - d (with d = 0: up to the transaction itself in tie
    order, pipelines/core/definitions.py)

with two binary searches in the edge buckets and a prefix-sum difference over the summaries: the
cost per event does not grow with the window or the entity's rate, and only the edge buckets'
cells need to be in memory. The integer aggregates go through ``pipelines.core.engine.aggregate``,
so the values have the bits the batch engine gives (tests/unit/test_entity_index.py checks it
against the engine on random streams, with every edge case the engine's tests have).

Who may change what: the keyed stage that owns the entity (one key at a time) mutates it; the
process-wide cache (pipelines/stores/window_cache.py) hands it to one attempt at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.core.cells import (
    BUCKET_US,
    NO_STREAM_WRITE,
    LabelCell,
    Summary,
    TxCell,
    bucket_of,
    summarize,
)
from pipelines.core.definitions import WindowFeature
from pipelines.core.engine import aggregate, amount_unit

__all__ = ["BUCKET_US", "Bucket", "EntityWindows", "Query", "span_buckets", "tie_key"]

# Rough bytes per loaded cell and per summary in CPython (a named tuple, its dict entry, the
# sorted views): what the cache's byte budget counts (pipelines/stores/window_cache.py).
CELL_BYTES = 400
SUMMARY_BYTES = 150


def tie_key(transaction_id: str) -> tuple[int, str]:
    """The tie order of transactions at the same instant: shorter id first, then by text
    (pipelines.core.engine.order_rank: numeric order for decimal ids)."""
    return (len(transaction_id), transaction_id)


@dataclass(frozen=True)
class Query:
    """A transaction whose windows are asked for: its time and its tie key."""

    time_us: int
    tie: tuple[int, str]


class Bucket:
    """The cells of one bucket, with its summary and the sorted views a window needs, kept
    current as cells arrive (appended in time order, the common case, at O(1))."""

    __slots__ = ("_labels_sorted", "_summary", "_tx_sorted", "labels", "tx")

    def __init__(
        self, tx: dict[str, TxCell] | None = None, labels: dict[str, LabelCell] | None = None
    ) -> None:
        self.tx: dict[str, TxCell] = tx if tx is not None else {}
        self.labels: dict[str, LabelCell] = labels if labels is not None else {}
        # (keys (time, len, id) ascending, their times, prefix sums of their amount units)
        self._tx_sorted: tuple[list[tuple[int, int, str]], list[int], list[int]] | None = None
        self._labels_sorted: tuple[list[int], list[int]] | None = None  # times, fraud prefix
        self._summary: Summary | None = None

    def put_tx(self, tx_id: str, cell: TxCell) -> bool:
        """Stores a transaction's cell; True if it is a new one."""
        old = self.tx.get(tx_id)
        self.tx[tx_id] = cell
        if old is not None:
            if old.time_us != cell.time_us or old.amount != cell.amount:
                self._tx_sorted = self._summary = None  # never happens: recount
            return False  # the same transaction again (a new revision or carried features)
        units = amount_unit(cell.amount)
        t = cell.time_us
        if self._summary is not None:
            s = self._summary
            first = min(s.first_us, t) if s.transactions else t
            self._summary = s._replace(
                transactions=s.transactions + 1,
                units=s.units + units,
                first_us=first,
                last_us=max(s.last_us, t),
            )
        if self._tx_sorted is not None:
            keys, times, cum = self._tx_sorted
            key = (t, len(tx_id), tx_id)
            if not keys or key > keys[-1]:
                keys.append(key)
                times.append(t)
                cum.append(cum[-1] + units)
            else:
                self._tx_sorted = None  # out of order within the bucket: sorted again
        return True

    def put_label(self, tx_id: str, cell: LabelCell) -> bool:
        """Stores a label's cell; True if it is a new one."""
        old = self.labels.get(tx_id)
        if old == cell:
            return False
        self.labels[tx_id] = cell
        if self._summary is not None:
            s = self._summary
            self._summary = s._replace(
                labels=s.labels + (old is None),
                frauds=s.frauds + int(cell.is_fraud) - (int(old.is_fraud) if old else 0),
            )
        if self._labels_sorted is not None:
            times, cum = self._labels_sorted
            if old is None and (not times or cell.time_us >= times[-1]):
                times.append(cell.time_us)
                cum.append(cum[-1] + int(cell.is_fraud))
            else:
                self._labels_sorted = None
        return old is None

    def summary(self) -> Summary:
        if self._summary is None:
            self._summary = summarize(self.tx, self.labels)
        return self._summary

    def __len__(self) -> int:
        return len(self.tx) + len(self.labels)

    def _tx_views(self) -> tuple[list[tuple[int, int, str]], list[int], list[int]]:
        if self._tx_sorted is None:
            order = sorted(self.tx, key=lambda i: (self.tx[i].time_us, len(i), i))
            keys = [(self.tx[i].time_us, len(i), i) for i in order]
            cum = [0]
            for i in order:
                cum.append(cum[-1] + amount_unit(self.tx[i].amount))
            self._tx_sorted = (keys, [k[0] for k in keys], cum)
        return self._tx_sorted

    def _label_views(self) -> tuple[list[int], list[int]]:
        if self._labels_sorted is None:
            cells = sorted(self.labels.values())
            cum = [0]
            for c in cells:
                cum.append(cum[-1] + int(c.is_fraud))
            self._labels_sorted = ([c.time_us for c in cells], cum)
        return self._labels_sorted

    def tx_upto(self, hi_us: int, tie: tuple[int, str] | None) -> tuple[int, int]:
        """Count and amount units of the transactions at or before ``hi_us`` (at ``hi_us`` itself
        only those up to ``tie`` in tie order, when given)."""
        keys, times, cum = self._tx_views()
        if tie is None:
            n = bisect.bisect_right(times, hi_us)
        else:
            n = bisect.bisect_right(keys, (hi_us, tie[0], tie[1]))
        return n, cum[n]

    def tx_after(self, lo_us: int) -> tuple[int, int]:
        """Count and amount units of the transactions after ``lo_us``."""
        _, times, cum = self._tx_views()
        n = bisect.bisect_right(times, lo_us)
        return len(times) - n, cum[-1] - cum[n]

    def frauds_upto(self, hi_us: int) -> int:
        times, cum = self._label_views()
        return cum[bisect.bisect_right(times, hi_us)]

    def frauds_after(self, lo_us: int) -> int:
        times, cum = self._label_views()
        return cum[-1] - cum[bisect.bisect_right(times, lo_us)]


class EntityWindows:
    """One entity's window state (see the module docstring).

    Args:
      covered_from: the first bucket whose summary is known (every bucket from there on either
        has one in ``summaries`` or is empty).
      summaries: the stored summaries of non-empty buckets (from ``covered_from`` on).
    """

    def __init__(self, covered_from: int, summaries: dict[int, Summary] | None = None) -> None:
        self.covered_from = covered_from
        # Every non-empty bucket's summary from covered_from on (a loaded bucket's is derived
        # from its cells), its buckets sorted, and prefix sums over them (valid up to _stale).
        self._sums: dict[int, Summary] = {
            b: s for b, s in (summaries or {}).items() if b >= covered_from and _nonempty(s)
        }
        self._keys: list[int] = sorted(self._sums)
        self._cum: tuple[list[int], list[int], list[int], list[int]] = ([0], [0], [0], [0])
        self._stale: int | None = 0  # the first key index whose prefix sums are out of date
        self._newest = max((s.last_us for s in self._sums.values() if s.transactions), default=0)
        self.buckets: dict[int, Bucket] = {}
        # Per bucket, the transaction and label cells changed since the last take_changes().
        self.changes: dict[int, tuple[set[str], set[str]]] = {}
        # The earliest bucket the stream ever wrote (an archive is the truth only before it).
        self.stream_from = NO_STREAM_WRITE
        self._loaded_cells = 0  # cells of the loaded buckets (what the cache budget counts)

    # -- summaries and prefix sums -------------------------------------------------------------

    def _set(self, b: int, summary: Summary | None) -> None:
        """Bucket ``b``'s summary is now ``summary`` (None or empty: the bucket is empty)."""
        known = b in self._sums
        if summary is None or not _nonempty(summary):
            if known:
                i = bisect.bisect_left(self._keys, b)
                del self._keys[i]
                del self._sums[b]
                self._mark(i)
            return
        if known and self._sums[b] == summary:
            return
        self._sums[b] = summary
        i = bisect.bisect_left(self._keys, b)
        if not known:
            self._keys.insert(i, b)
        self._mark(i)
        if summary.transactions:
            self._newest = max(self._newest, summary.last_us)

    def _mark(self, i: int) -> None:
        self._stale = i if self._stale is None else min(self._stale, i)

    def _prefix(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """Prefix sums (transactions, units, frauds, labels) over the sorted non-empty buckets,
        recomputed only from the first bucket that changed (the newest, in an ordered stream)."""
        if self._stale is not None:
            i = self._stale
            for cum in self._cum:
                del cum[i + 1 :]
            count, units, frauds, labels = self._cum
            for b in self._keys[i:]:
                s = self._sums[b]
                count.append(count[-1] + s.transactions)
                units.append(units[-1] + s.units)
                frauds.append(frauds[-1] + s.frauds)
                labels.append(labels[-1] + s.labels)
            self._stale = None
        return self._cum

    # -- what is known -------------------------------------------------------------------------

    def summary(self, b: int) -> Summary | None:
        """The summary of bucket ``b`` (None: empty, or before ``covered_from``)."""
        return self._sums.get(b)

    def nonempty(self, first: int, last: int) -> list[int]:
        """The non-empty buckets in [first, last] (from ``covered_from`` on)."""
        keys = self._keys
        return keys[bisect.bisect_left(keys, first) : bisect.bisect_right(keys, last)]

    def missing(self, buckets: Iterable[int]) -> set[int]:
        """Which of ``buckets`` must be read before their cells can be used: non-empty ones not
        loaded (an empty bucket from ``covered_from`` on is known to have no cells)."""
        return {
            b
            for b in buckets
            if b not in self.buckets and (b < self.covered_from or b in self._sums)
        }

    def newest_us(self) -> int:
        """The latest transaction time (0 without any)."""
        return self._newest

    def count_from(self, start_us: int) -> int:
        """How many transactions are in ``start_us``'s bucket and after it: from summaries alone,
        so the answer does not depend on which buckets happen to be loaded."""
        counts = self._prefix()[0]
        return counts[-1] - counts[bisect.bisect_left(self._keys, bucket_of(start_us))]

    def cells_total(self) -> int:
        """Transaction and label cells in every bucket from ``covered_from`` on."""
        counts, _, _, labels = self._prefix()
        return counts[-1] + labels[-1]

    def nbytes(self) -> int:
        return (
            self._loaded_cells * CELL_BYTES + (len(self._sums) + len(self.buckets)) * SUMMARY_BYTES
        )

    # -- loading and changing ------------------------------------------------------------------

    def load(self, b: int, bucket: Bucket) -> None:
        """Installs the cells read for bucket ``b`` (its summary is then derived from them)."""
        old = self.buckets.get(b)
        self._loaded_cells += len(bucket) - (len(old) if old is not None else 0)
        self.buckets[b] = bucket
        self._set(b, bucket.summary() if len(bucket) else None)

    def know(self, summaries: dict[int, Summary]) -> None:
        """Takes the stored summaries of buckets from ``covered_from`` on that are not loaded."""
        for b, s in summaries.items():
            if b >= self.covered_from and b not in self.buckets and _nonempty(s):
                self._set(b, s)

    def cover(self, covered_from: int, summaries: dict[int, Summary]) -> None:
        """Extends the known summaries back to ``covered_from`` (a read of older summaries)."""
        for b, s in summaries.items():
            if covered_from <= b < self.covered_from and _nonempty(s):
                self._set(b, s)
        self.covered_from = min(self.covered_from, covered_from)

    def bucket(self, b: int) -> Bucket:
        """The loaded bucket ``b``, made empty if it is known to be empty."""
        found = self.buckets.get(b)
        if found is None:
            if self.missing([b]):
                raise KeyError(f"bucket {b} is not loaded")
            found = self.buckets[b] = Bucket()
        return found

    def tx(self, tx_id: str, time_us: int) -> TxCell | None:
        """The stored cell of a transaction (its bucket must be loaded)."""
        return self.bucket(bucket_of(time_us)).tx.get(tx_id)

    def put_tx(self, tx_id: str, cell: TxCell) -> None:
        b = bucket_of(cell.time_us)
        bucket = self.bucket(b)
        self._loaded_cells += bucket.put_tx(tx_id, cell)
        self._set(b, bucket.summary())
        self.changes.setdefault(b, (set(), set()))[0].add(tx_id)

    def put_label(self, tx_id: str, cell: LabelCell) -> None:
        b = bucket_of(cell.time_us)
        bucket = self.bucket(b)
        self._loaded_cells += bucket.put_label(tx_id, cell)
        self._set(b, bucket.summary())
        self.changes.setdefault(b, (set(), set()))[1].add(tx_id)

    def take_changes(self) -> list[tuple[int, Bucket, set[str], set[str]]]:
        """The buckets changed since the last call, with the ids of their changed transaction and
        label cells (what to write: those cells and the bucket's summary)."""
        out = [(b, self.buckets[b], tx, labels) for b, (tx, labels) in sorted(self.changes.items())]
        self.changes = {}
        return out

    def cells_between(self, start_us: int, end_us: int) -> Iterator[tuple[str, TxCell]]:
        """The transaction cells with time in [start_us, end_us) (their buckets loaded)."""
        for b in range(bucket_of(start_us), bucket_of(end_us - 1) + 1):
            found = self.buckets.get(b)
            if found is None:
                if self.missing([b]):
                    raise KeyError(f"bucket {b} is not loaded")
                continue
            for tx_id, cell in found.tx.items():
                if start_us <= cell.time_us < end_us:
                    yield tx_id, cell

    def trim(self, keep_from_us: int, keep: Iterable[int] = ()) -> None:
        """Forgets what no window can need any more: buckets before ``keep_from_us``'s
        (summaries and cells), and the cells of loaded buckets not in ``keep`` (their summaries
        stay)."""
        first = bucket_of(keep_from_us)
        if first > self.covered_from:
            drop = bisect.bisect_left(self._keys, first)
            for b in self._keys[:drop]:
                del self._sums[b]
            del self._keys[:drop]
            self._mark(0)
            for b in [b for b in self.buckets if b < first]:
                self._loaded_cells -= len(self.buckets.pop(b))
            self.covered_from = first
        kept = set(keep)
        for b in [b for b in self.buckets if b not in kept and b not in self.changes]:
            self._loaded_cells -= len(self.buckets.pop(b))

    # -- windows -------------------------------------------------------------------------------

    def edge_buckets(self, times: Iterable[int], windows: Sequence[WindowFeature]) -> set[int]:
        """The buckets whose cells the windows of transactions at ``times`` need."""
        out: set[int] = set()
        spans = {(f.window_us, f.delay_us) for f in windows}
        for t in times:
            for w, d in spans:
                out.add(bucket_of(t - d - w))
                out.add(bucket_of(t - d))
        return out

    def window(
        self, lo_us: int, hi_us: int, tie: tuple[int, str] | None, labels: bool
    ) -> tuple[int, int, int]:
        """Count, amount units and frauds of the window (lo_us, hi_us] (at ``hi_us`` only up to
        ``tie`` when given). Needs summaries from lo_us's bucket on and its two edge buckets'
        cells."""
        b_lo, b_hi = bucket_of(lo_us), bucket_of(hi_us)
        if b_lo < self.covered_from:
            raise KeyError(f"summaries cover buckets from {self.covered_from}, not {b_lo}")
        if b_lo == b_hi:
            edge = self._edge(b_lo)
            if edge is None:
                return 0, 0, 0
            n_hi, u_hi = edge.tx_upto(hi_us, tie)
            n_lo, u_lo = edge.tx_upto(lo_us, None)
            frauds = edge.frauds_upto(hi_us) - edge.frauds_upto(lo_us) if labels else 0
            return max(n_hi - n_lo, 0), u_hi - u_lo if n_hi > n_lo else 0, frauds
        counts, units, frauds_cum, _ = self._prefix()
        i0 = bisect.bisect_right(self._keys, b_lo)
        i1 = bisect.bisect_left(self._keys, b_hi)
        count = counts[i1] - counts[i0] if i1 > i0 else 0
        total = units[i1] - units[i0] if i1 > i0 else 0
        frauds = frauds_cum[i1] - frauds_cum[i0] if i1 > i0 else 0
        first, last = self._edge(b_lo), self._edge(b_hi)
        if first is not None:
            n, u = first.tx_after(lo_us)
            count, total = count + n, total + u
            if labels:
                frauds += first.frauds_after(lo_us)
        if last is not None:
            n, u = last.tx_upto(hi_us, tie)
            count, total = count + n, total + u
            if labels:
                frauds += last.frauds_upto(hi_us)
        return count, total, frauds

    def _edge(self, b: int) -> Bucket | None:
        found = self.buckets.get(b)
        if found is not None:
            return found
        if b in self._sums:
            raise KeyError(f"edge bucket {b} is not loaded")
        return None  # empty

    def features(self, queries: Sequence[Query], features: Sequence[WindowFeature]) -> np.ndarray:
        """The window features of transactions (each already in the state: with no delay, a
        window includes the transaction itself), as a float64 matrix in ``features`` order."""
        out = np.zeros((len(queries), len(features)), dtype=np.float64)
        if not queries:
            return out
        cache: dict[tuple[int, int, bool], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for col, f in enumerate(features):
            key = (f.window_us, f.delay_us, f.needs_labels)
            if key not in cache:
                rows = [
                    self.window(
                        q.time_us - f.delay_us - f.window_us,
                        q.time_us - f.delay_us,
                        q.tie if f.delay_us == 0 else None,
                        f.needs_labels,
                    )
                    for q in queries
                ]
                count, units, frauds = (
                    np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)
                )
                cache[key] = (count, units, frauds)
            count, units, frauds = cache[key]
            out[:, col] = aggregate(f.aggregation, count, units, frauds)
        return out


def _nonempty(summary: Summary) -> bool:
    return bool(summary.transactions + summary.labels)


def span_buckets(start_us: int, end_us: int) -> range:
    """The buckets of the time range [start_us, end_us)."""
    return range(bucket_of(start_us), bucket_of(end_us - 1) + 1)
