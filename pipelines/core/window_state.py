"""EntityState: one entity's window state for any definitions file, answering exact windows.

The window state of the streaming stages (pipelines/transforms/entity_windows.py), for
every window operation of the definitions file (docs/specs/definitions.md, "Operations"; the
oracle is tests/oracle.py), over the cells and summaries of pipelines/core/window_cells.py.

The state is split into time buckets (``BUCKET_US``). Every non-empty bucket from
``covered_from`` on has an ``Aggregates`` summary; some buckets also have their cells loaded
(``Bucket``). A window (t - d - w, t - d] of a feature is answered from

    the cells of its first bucket after t - d - w
  + the summaries of the buckets it covers whole
  + the cells of its last bucket up to t - d (with d = 0: up to the transaction itself in tie
    order; ``last`` and ``since_previous``: strictly before it)

Per accumulator (field, filter) a loaded bucket keeps its passing cells in tie order with prefix
sums of their exact integer units and squares; the state keeps prefix sums over the summaries. So
count, sum, mean, std and label_rate cost two binary searches per edge and a prefix difference
whatever the window's length; min, max and distinct read each covered bucket's summary once
(O(buckets), never their cells); last and since_previous walk back from the window's end to the
first bucket holding a passing event. Only the edge buckets' cells need to be in memory.

A summary written under older definitions may lack an accumulator (``Aggregates.holds``): such a
bucket is ``incomplete`` until its cells are loaded, ``missing`` and ``edge_buckets`` name it, and
a window that needs it raises KeyError rather than answer without it.

Labels: a label's time is its transaction's (the label stream's contract), so a later label of a
transaction lands in the same bucket and replaces the earlier one there.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.core.cells import BUCKET_US, NO_STREAM_WRITE, bucket_of
from pipelines.core.declarations import WindowFeature
from pipelines.core.window_cells import (
    DISTINCT,
    LATEST,
    RANGE,
    SQUARES,
    SUM,
    AccKey,
    Aggregates,
    Cell,
    LabelCell,
    LabelStat,
    Layout,
    Stat,
    acc_key,
    tie_key,
)

__all__ = ["BUCKET_US", "Bucket", "EntityState", "Query", "span_buckets", "tie_key"]

# Rough bytes per loaded cell and per summary in CPython (what a cache's byte budget counts).
CELL_BYTES = 400
SUMMARY_BYTES = 150

_Key = tuple[int, int, str]  # (time, len(id), id): tie order

_EMPTY_STAT = Stat(0)  # what a summary lacking an accumulator adds to its prefix sums
_NO_LABELS = LabelStat()


@dataclass(frozen=True)
class Query:
    """A transaction whose windows are asked for: its time and its tie key."""

    time_us: int
    tie: tuple[int, str]


class _View:
    """One accumulator's passing cells of a bucket, in tie order, with what windows read."""

    __slots__ = ("floats", "high", "keys", "low", "raw", "seen", "squares", "times", "units")

    def __init__(self) -> None:
        self.keys: list[_Key] = []
        self.times: list[int] = []
        self.units: list[int] = [0]  # prefix sums of round(value * 10**scale)
        self.squares: list[int] = [0]
        self.raw: list[Any] = []  # the values (min/max: as floats in ``floats``)
        self.floats: list[float] = []
        self.low = math.inf
        self.high = -math.inf
        self.seen: set[Any] = set()


class _LabelView:
    """One label filter's passing labels of a bucket, in tie order, with prefix sums."""

    __slots__ = ("frauds", "keys", "times")

    def __init__(self) -> None:
        self.keys: list[_Key] = []
        self.times: list[int] = []
        self.frauds: list[int] = [0]


class Bucket:
    """The cells of one bucket, with the per-accumulator views windows read and its summary,
    kept current as cells arrive (appended in tie order, the common case, at O(accumulators))."""

    __slots__ = (
        "_bounds",
        "_label_views",
        "_last_label",
        "_last_tx",
        "_summary",
        "_views",
        "labels",
        "layout",
        "tx",
    )

    def __init__(
        self,
        layout: Layout,
        tx: dict[str, Cell] | None = None,
        labels: dict[str, LabelCell] | None = None,
    ) -> None:
        self.layout = layout
        self.tx: dict[str, Cell] = tx if tx is not None else {}
        self.labels: dict[str, LabelCell] = labels if labels is not None else {}
        self._views: dict[AccKey, _View] | None = None
        self._label_views: dict[str | None, _LabelView] | None = None
        self._last_tx: _Key | None = None  # the greatest key in the views (appends after it)
        self._last_label: _Key | None = None
        self._bounds: tuple[int, int] | None = None  # first and last transaction time
        self._summary: Aggregates | None = None

    def __len__(self) -> int:
        return len(self.tx) + len(self.labels)

    # -- changing --------------------------------------------------------------------------------

    def put_tx(self, tx_id: str, cell: Cell) -> bool:
        """Stores a transaction's cell; True if it is a new one."""
        old = self.tx.get(tx_id)
        self.tx[tx_id] = cell
        if old is not None:
            if old.time_us != cell.time_us or old.values != cell.values:
                self._views = None  # the event itself changed (never, in a sane stream)
                self._bounds = self._summary = None
            return False  # the same transaction again (a new revision or carried features)
        self._summary = None
        t = cell.time_us
        if self._bounds is not None:
            self._bounds = (min(self._bounds[0], t), max(self._bounds[1], t))
        elif len(self.tx) == 1:
            self._bounds = (t, t)
        if self._views is not None:
            key = (t, len(tx_id), tx_id)
            if self._last_tx is None or key > self._last_tx:
                self._append(self._views, key, cell)
                self._last_tx = key
            else:
                self._views = None  # out of order within the bucket: sorted again
        return True

    def put_label(self, tx_id: str, cell: LabelCell) -> bool:
        """Stores a label's cell (a later label of the transaction replaces it); True if new."""
        old = self.labels.get(tx_id)
        if old == cell:
            return False
        self.labels[tx_id] = cell
        self._summary = None
        if self._label_views is not None:
            key = (cell.time_us, len(tx_id), tx_id)
            if old is None and (self._last_label is None or key > self._last_label):
                self._append_label(self._label_views, key, cell)
                self._last_label = key
            else:
                self._label_views = None
        return old is None

    # -- views -----------------------------------------------------------------------------------

    def _append(self, views: dict[AccKey, _View], key: _Key, cell: Cell) -> None:
        layout = self.layout
        row: dict[str, Any] | None = None
        for acc, parts in layout.stats:
            if acc.where is not None:
                if row is None:
                    row = layout.row(cell)
                if not layout.predicates[acc.where].holds(row, cell.time_us):
                    continue
            v = views[acc]
            v.keys.append(key)
            v.times.append(key[0])
            if acc.field is None:
                continue
            value = cell.values[layout.fields.index(acc.field)]
            if parts & (SUM | SQUARES):
                u = round(float(value) * 10 ** layout.scales[acc.field])
                v.units.append(v.units[-1] + u)
                if parts & SQUARES:
                    v.squares.append(v.squares[-1] + u * u)
            if parts & (RANGE | DISTINCT | LATEST):
                v.raw.append(value)
            if parts & RANGE:
                x = float(value)
                v.floats.append(x)
                v.low = min(v.low, x)
                v.high = max(v.high, x)
            if parts & DISTINCT:
                v.seen.add(value)

    def _append_label(
        self, views: dict[str | None, _LabelView], key: _Key, cell: LabelCell
    ) -> None:
        layout = self.layout
        row = layout.label_row(cell)
        for where in layout.label_filters:
            if where is not None and not layout.predicates[where].holds(row, cell.time_us):
                continue
            v = views[where]
            v.keys.append(key)
            v.times.append(key[0])
            v.frauds.append(v.frauds[-1] + cell.value)

    def views(self) -> dict[AccKey, _View]:
        if self._views is None:
            views = {acc: _View() for acc, _ in self.layout.stats}
            order = sorted((c.time_us, len(i), i) for i, c in self.tx.items())
            for key in order:
                self._append(views, key, self.tx[key[2]])
            self._views = views
            self._last_tx = order[-1] if order else None
        return self._views

    def label_views(self) -> dict[str | None, _LabelView]:
        if self._label_views is None:
            views = {w: _LabelView() for w in self.layout.label_filters}
            order = sorted((c.time_us, len(i), i) for i, c in self.labels.items())
            for key in order:
                self._append_label(views, key, self.labels[key[2]])
            self._label_views = views
            self._last_label = order[-1] if order else None
        return self._label_views

    def summary(self) -> Aggregates:
        """The bucket's summary, holding every accumulator of its layout."""
        if self._summary is None:
            if self._bounds is None and self.tx:
                times = [c.time_us for c in self.tx.values()]
                self._bounds = (min(times), max(times))
            first, last = self._bounds if self.tx and self._bounds else (0, 0)
            views = self.views()
            stats = {}
            for acc, parts in self.layout.stats:
                v = views[acc]
                n = len(v.keys)
                latest = None
                if parts & LATEST and n:
                    latest = (v.keys[-1][0], v.keys[-1][2], v.raw[-1] if v.raw else None)
                stats[acc] = Stat(
                    parts,
                    n,
                    v.units[-1],
                    v.squares[-1],
                    v.low if n and parts & RANGE else 0.0,
                    v.high if n and parts & RANGE else 0.0,
                    frozenset(v.seen),
                    latest,
                )
            label_stats = {
                w: LabelStat(len(v.keys), v.frauds[-1]) for w, v in self.label_views().items()
            }
            self._summary = Aggregates(
                len(self.tx), first, last, len(self.labels), stats, label_stats
            )
        return self._summary


class _Window:
    """What a window's parts add up to, for one accumulator."""

    __slots__ = ("high", "low", "n", "squares", "total", "values")

    def __init__(self) -> None:
        self.n = self.total = self.squares = 0
        self.low = math.inf
        self.high = -math.inf
        self.values: set[Any] = set()


class EntityState:
    """One entity's window state (see the module docstring).

    Args:
      layout: what its cells and summaries hold (``Layout.of(definitions, entity)``).
      covered_from: the first bucket whose summary is known (every bucket from there on either
        has one in ``summaries`` or is empty).
      summaries: the stored summaries of non-empty buckets (from ``covered_from`` on).
    """

    def __init__(
        self, layout: Layout, covered_from: int, summaries: dict[int, Aggregates] | None = None
    ) -> None:
        self.layout = layout
        self.covered_from = covered_from
        # Every non-empty bucket's summary from covered_from on (a loaded bucket's is derived
        # from its cells, refreshed from _dirty), its buckets sorted, and prefix sums over them.
        self._sums: dict[int, Aggregates] = {}
        self._keys: list[int] = []
        self._dirty: set[int] = set()
        self._incomplete: set[int] = set()  # known by a summary lacking an accumulator
        self._stale: int | None = 0
        self._counts: list[int] = [0]  # transactions
        self._cells: list[int] = [0]  # transactions + labels
        self._cum: dict[AccKey, tuple[list[int], list[int], list[int]]] = {
            acc: ([0], [0], [0]) for acc, _ in layout.stats
        }
        self._label_cum: dict[str | None, list[int]] = {w: [0] for w in layout.label_filters}
        self._parts = dict(layout.stats)
        self._newest = 0
        self.buckets: dict[int, Bucket] = {}
        # Per bucket, the transaction and label cells changed since the last take_changes().
        self.changes: dict[int, tuple[set[str], set[str]]] = {}
        # The earliest bucket the stream ever wrote (an archive is the truth only before it).
        self.stream_from = NO_STREAM_WRITE
        self._loaded_cells = 0
        self.know(summaries or {})

    # -- summaries and prefix sums -----------------------------------------------------------------

    def _place(self, b: int, nonempty: bool) -> None:
        """Keeps ``b`` in the sorted non-empty buckets or out of them; marks the prefix stale."""
        i = bisect.bisect_left(self._keys, b)
        present = i < len(self._keys) and self._keys[i] == b
        if nonempty and not present:
            self._keys.insert(i, b)
        elif not nonempty and present:
            del self._keys[i]
            self._sums.pop(b, None)
        self._stale = i if self._stale is None else min(self._stale, i)

    def _known(self, b: int, summary: Aggregates) -> None:
        """A stored summary of a bucket that is not loaded."""
        if summary.nonempty:
            self._sums[b] = summary
            if summary.transactions:
                self._newest = max(self._newest, summary.last_us)
            if summary.holds(self.layout):
                self._incomplete.discard(b)
            else:
                self._incomplete.add(b)
        else:
            self._incomplete.discard(b)
        self._place(b, summary.nonempty)

    def _touched(self, b: int) -> None:
        """Loaded bucket ``b`` changed: its summary is derived again before the next window."""
        self._incomplete.discard(b)
        nonempty = len(self.buckets[b]) > 0
        if nonempty:
            self._dirty.add(b)
        else:
            self._dirty.discard(b)
        self._place(b, nonempty)

    def _refresh(self) -> None:
        for b in self._dirty:
            s = self._sums[b] = self.buckets[b].summary()
            if s.transactions:
                self._newest = max(self._newest, s.last_us)
        self._dirty.clear()

    def _prefix(self) -> None:
        """Prefix sums over the sorted non-empty buckets, recomputed only from the first bucket
        that changed (the newest, in an ordered stream)."""
        if self._dirty:
            self._refresh()
        i = self._stale
        if i is None:
            return
        counts, cells, sums = self._counts, self._cells, self._sums
        del counts[i + 1 :]
        del cells[i + 1 :]
        cum = [(acc, *triple) for acc, triple in self._cum.items()]
        label_cum = list(self._label_cum.items())
        for _, ns, totals, squares in cum:
            del ns[i + 1 :]
            del totals[i + 1 :]
            del squares[i + 1 :]
        for _, frauds in label_cum:
            del frauds[i + 1 :]
        empty = _EMPTY_STAT
        for b in self._keys[i:]:
            s = sums[b]
            counts.append(counts[-1] + s.transactions)
            cells.append(cells[-1] + s.transactions + s.labels)
            stats = s.stats
            for acc, ns, totals, squares in cum:
                st = stats.get(acc, empty)
                ns.append(ns[-1] + st.n)
                totals.append(totals[-1] + st.total)
                squares.append(squares[-1] + st.squares)
            for w, frauds in label_cum:
                frauds.append(frauds[-1] + s.label_stats.get(w, _NO_LABELS).frauds)
        self._stale = None

    # -- what is known -----------------------------------------------------------------------------

    def summary(self, b: int) -> Aggregates | None:
        """The summary of bucket ``b`` (None: empty, or before ``covered_from``)."""
        self._refresh()
        return self._sums.get(b)

    def nonempty(self, first: int, last: int) -> list[int]:
        """The non-empty buckets in [first, last] (from ``covered_from`` on)."""
        keys = self._keys
        return keys[bisect.bisect_left(keys, first) : bisect.bisect_right(keys, last)]

    def incomplete(self) -> list[int]:
        """The buckets known only by a summary that lacks an accumulator of the layout (written
        before a feature was declared): their cells must be loaded before a window covers them."""
        return sorted(self._incomplete)

    def missing(self, buckets: Iterable[int]) -> set[int]:
        """Which of ``buckets`` must be read before their cells can be used: non-empty ones not
        loaded (an empty bucket from ``covered_from`` on is known to have no cells), incomplete
        ones included."""
        return {
            b
            for b in buckets
            if b not in self.buckets and (b < self.covered_from or b in self._sums)
        }

    def newest_us(self) -> int:
        """The latest transaction time (0 without any)."""
        if self._dirty:
            self._refresh()
        return self._newest

    def count_from(self, start_us: int) -> int:
        """How many transactions are in ``start_us``'s bucket and after it: from summaries alone,
        so the answer does not depend on which buckets happen to be loaded."""
        self._prefix()
        return self._counts[-1] - self._counts[bisect.bisect_left(self._keys, bucket_of(start_us))]

    def cells_total(self) -> int:
        """Transaction and label cells in every bucket from ``covered_from`` on."""
        self._prefix()
        return self._cells[-1]

    def nbytes(self) -> int:
        return (
            self._loaded_cells * CELL_BYTES + (len(self._sums) + len(self.buckets)) * SUMMARY_BYTES
        )

    # -- loading and changing ----------------------------------------------------------------------

    def load(self, b: int, bucket: Bucket) -> None:
        """Installs the cells read for bucket ``b`` (its summary is then derived from them)."""
        if bucket.layout is not self.layout and bucket.layout != self.layout:
            raise ValueError("the bucket was built for another layout")
        old = self.buckets.get(b)
        self._loaded_cells += len(bucket) - (len(old) if old is not None else 0)
        self.buckets[b] = bucket
        self._touched(b)

    def know(self, summaries: dict[int, Aggregates]) -> None:
        """Takes the stored summaries of buckets from ``covered_from`` on that are not loaded."""
        for b, s in summaries.items():
            if b >= self.covered_from and b not in self.buckets:
                self._known(b, s)

    def cover(self, covered_from: int, summaries: dict[int, Aggregates]) -> None:
        """Extends the known summaries back to ``covered_from`` (a read of older summaries)."""
        for b, s in summaries.items():
            if covered_from <= b < self.covered_from and b not in self.buckets:
                self._known(b, s)
        self.covered_from = min(self.covered_from, covered_from)

    def bucket(self, b: int) -> Bucket:
        """The loaded bucket ``b``, made empty if it is known to be empty."""
        found = self.buckets.get(b)
        if found is None:
            if self.missing([b]):
                raise KeyError(f"bucket {b} is not loaded")
            found = self.buckets[b] = Bucket(self.layout)
        return found

    def tx(self, tx_id: str, time_us: int) -> Cell | None:
        """The stored cell of a transaction (its bucket must be loaded)."""
        return self.bucket(bucket_of(time_us)).tx.get(tx_id)

    def put_tx(self, tx_id: str, cell: Cell) -> None:
        b = bucket_of(cell.time_us)
        self._loaded_cells += self.bucket(b).put_tx(tx_id, cell)
        self._touched(b)
        self.changes.setdefault(b, (set(), set()))[0].add(tx_id)

    def put_label(self, tx_id: str, cell: LabelCell) -> None:
        b = bucket_of(cell.time_us)
        self._loaded_cells += self.bucket(b).put_label(tx_id, cell)
        self._touched(b)
        self.changes.setdefault(b, (set(), set()))[1].add(tx_id)

    def take_changes(self) -> list[tuple[int, Bucket, set[str], set[str]]]:
        """The buckets changed since the last call, with the ids of their changed transaction and
        label cells (what to write: those cells and the bucket's summary)."""
        out = [(b, self.buckets[b], tx, labels) for b, (tx, labels) in sorted(self.changes.items())]
        self.changes = {}
        return out

    def cells_between(self, start_us: int, end_us: int) -> Iterator[tuple[str, Cell]]:
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
        stay, complete: derived from the cells)."""
        self._refresh()
        first = bucket_of(keep_from_us)
        if first > self.covered_from:
            drop = bisect.bisect_left(self._keys, first)
            for b in self._keys[:drop]:
                del self._sums[b]
            del self._keys[:drop]
            self._stale = 0
            self._incomplete = {b for b in self._incomplete if b >= first}
            for b in [b for b in self.buckets if b < first]:
                self._loaded_cells -= len(self.buckets.pop(b))
            self.covered_from = first
        kept = set(keep)
        for b in [b for b in self.buckets if b not in kept and b not in self.changes]:
            self._loaded_cells -= len(self.buckets.pop(b))

    # -- windows -----------------------------------------------------------------------------------

    def edge_buckets(self, times: Iterable[int], windows: Sequence[WindowFeature]) -> set[int]:
        """The buckets whose cells the windows of transactions at ``times`` need: their edge
        buckets, and the incomplete buckets they cover."""
        out: set[int] = set()
        spans = {(f.window_us, f.delay_us) for f in windows}
        incomplete = sorted(self._incomplete)
        for t in times:
            for w, d in spans:
                lo, hi = bucket_of(t - d - w), bucket_of(t - d)
                out.add(lo)
                out.add(hi)
                out.update(
                    incomplete[
                        bisect.bisect_left(incomplete, lo) : bisect.bisect_right(incomplete, hi)
                    ]
                )
        return out

    def _edge(self, b: int) -> Bucket | None:
        found = self.buckets.get(b)
        if found is not None:
            return found
        if b in self._sums or b < self.covered_from:
            raise KeyError(f"edge bucket {b} is not loaded")
        return None  # empty

    def _check(self, b_lo: int, b_hi: int) -> None:
        if b_lo < self.covered_from:
            raise KeyError(f"summaries cover buckets from {self.covered_from}, not {b_lo}")
        for b in self._incomplete:
            if b_lo < b < b_hi:
                raise KeyError(f"bucket {b}'s summary lacks an accumulator: load its cells")

    def _middle(self, b_lo: int, b_hi: int) -> tuple[int, int]:
        """The index range in the sorted buckets of those strictly between b_lo and b_hi."""
        return bisect.bisect_right(self._keys, b_lo), bisect.bisect_left(self._keys, b_hi)

    def _window(
        self, acc: AccKey, parts: int, lo: int, hi: int, tie: tuple[int, str] | None
    ) -> _Window:
        """What accumulator ``acc`` adds up to over (lo, hi] (at hi only up to ``tie``)."""
        out = _Window()
        b_lo, b_hi = bucket_of(lo), bucket_of(hi)
        self._check(b_lo, b_hi)
        segments: list[tuple[_View, int, int]] = []
        if b_lo == b_hi:
            edge = self._edge(b_lo)
            if edge is not None:
                v = edge.views()[acc]
                i0 = bisect.bisect_right(v.times, lo)
                segments.append((v, i0, max(i0, _upper(v.keys, v.times, hi, tie, False))))
        else:
            first, last = self._edge(b_lo), self._edge(b_hi)
            if first is not None:
                v = first.views()[acc]
                segments.append((v, bisect.bisect_right(v.times, lo), len(v.keys)))
            if last is not None:
                v = last.views()[acc]
                segments.append((v, 0, _upper(v.keys, v.times, hi, tie, False)))
            m0, m1 = self._middle(b_lo, b_hi)
            if m1 > m0:
                self._prefix()
                ns, totals, squares = self._cum[acc]
                out.n = ns[m1] - ns[m0]
                out.total = totals[m1] - totals[m0]
                out.squares = squares[m1] - squares[m0]
                if parts & (RANGE | DISTINCT):
                    for b in self._keys[m0:m1]:
                        st = self._sums[b].stats[acc]
                        if st.n and parts & RANGE:
                            out.low = min(out.low, st.low)
                            out.high = max(out.high, st.high)
                        if parts & DISTINCT:
                            out.values |= st.distinct
        for v, i0, i1 in segments:
            if i1 <= i0:
                continue
            out.n += i1 - i0
            if parts & (SUM | SQUARES):
                out.total += v.units[i1] - v.units[i0]
                out.squares += v.squares[i1] - v.squares[i0] if parts & SQUARES else 0
            if parts & RANGE:
                out.low = min(out.low, min(v.floats[i0:i1]))
                out.high = max(out.high, max(v.floats[i0:i1]))
            if parts & DISTINCT:
                out.values.update(v.raw[i0:i1])
        return out

    def _latest(
        self, acc: AccKey, lo: int, hi: int, tie: tuple[int, str] | None
    ) -> tuple[int, Any] | None:
        """The time and value of the accumulator's latest event in (lo, hi], strictly before
        ``tie`` at hi when given (the transaction's previous event)."""
        b_lo, b_hi = bucket_of(lo), bucket_of(hi)
        self._check(b_lo, b_hi)
        last = self._edge(b_hi)
        if last is not None:
            v = last.views()[acc]
            i0 = bisect.bisect_right(v.times, lo) if b_lo == b_hi else 0
            i1 = _upper(v.keys, v.times, hi, tie, True)
            if i1 > i0:
                return v.keys[i1 - 1][0], v.raw[i1 - 1] if v.raw else None
        if b_lo == b_hi:
            return None
        self._refresh()
        m0, m1 = self._middle(b_lo, b_hi)
        for b in reversed(self._keys[m0:m1]):
            st = self._sums[b].stats[acc]
            if st.latest is not None:
                return st.latest[0], st.latest[2]
        first = self._edge(b_lo)
        if first is not None:
            v = first.views()[acc]
            if v.keys and v.times[-1] > lo:
                return v.keys[-1][0], v.raw[-1] if v.raw else None
        return None

    def _frauds(self, where: str | None, lo: int, hi: int, tie: tuple[int, str] | None) -> int:
        """The sum of the passing labels' values over (lo, hi] (at hi only up to ``tie``)."""
        b_lo, b_hi = bucket_of(lo), bucket_of(hi)
        self._check(b_lo, b_hi)
        total = 0
        if b_lo == b_hi:
            edge = self._edge(b_lo)
            if edge is None:
                return 0
            v = edge.label_views()[where]
            i0 = bisect.bisect_right(v.times, lo)
            i1 = _upper(v.keys, v.times, hi, tie, False)
            return v.frauds[i1] - v.frauds[i0] if i1 > i0 else 0
        first, last = self._edge(b_lo), self._edge(b_hi)
        if first is not None:
            v = first.label_views()[where]
            total += v.frauds[-1] - v.frauds[bisect.bisect_right(v.times, lo)]
        if last is not None:
            v = last.label_views()[where]
            total += v.frauds[_upper(v.keys, v.times, hi, tie, False)]
        m0, m1 = self._middle(b_lo, b_hi)
        if m1 > m0:
            self._prefix()
            frauds = self._label_cum[where]
            total += frauds[m1] - frauds[m0]
        return total

    def value(self, query: Query, feature: WindowFeature) -> float:
        """One window feature of one transaction (already in the state: with no delay, its
        window includes it), with the bits of tests/oracle.py."""
        d, w = feature.delay_us, feature.window_us
        lo, hi = query.time_us - d - w, query.time_us - d
        tie = query.tie if d == 0 else None
        acc = acc_key(feature)
        op = feature.op
        if op in ("last", "since_previous"):
            found = self._latest(acc, lo, hi, tie)
            if found is None:
                return 0.0 if op == "last" else feature.reach_us / 1e6
            if op == "last":
                return float(found[1])
            return (query.time_us - found[0]) / 1e6
        win = self._window(acc, self._parts[acc], lo, hi, tie)
        n = win.n
        if op == "count":
            return float(n)
        if op == "label_rate":
            where = feature.where.source if feature.where is not None else None
            frauds = self._frauds(where, lo, hi, tie)
            return float(frauds) / float(n) if n else 0.0
        if op == "distinct":
            return float(len(win.values))
        if not n:
            return 0.0
        if op == "min":
            return win.low
        if op == "max":
            return win.high
        scale = float(10 ** self.layout.scales[feature.field])  # type: ignore[index]
        if op == "sum":
            return float(win.total) / scale
        if op == "mean":
            return (float(win.total) / scale) / float(n)
        if op == "std":
            return math.sqrt(n * win.squares - win.total * win.total) / float(n) / scale
        raise ValueError(op)

    def features(self, queries: Sequence[Query], features: Sequence[WindowFeature]) -> np.ndarray:
        """The window features of transactions (each already in the state: with no delay, a
        window includes the transaction itself), as a float64 matrix in ``features`` order."""
        out = np.zeros((len(queries), len(features)), dtype=np.float64)
        for col, f in enumerate(features):
            for row, q in enumerate(queries):
                out[row, col] = self.value(q, f)
        return out


def _upper(
    keys: list[_Key], times: list[int], hi: int, tie: tuple[int, str] | None, strict: bool
) -> int:
    """How many of the sorted keys are at or before ``hi`` (at ``hi`` itself: up to ``tie``,
    or strictly before it when ``strict``)."""
    if tie is None:
        return bisect.bisect_right(times, hi)
    key = (hi, tie[0], tie[1])
    return bisect.bisect_left(keys, key) if strict else bisect.bisect_right(keys, key)


def span_buckets(start_us: int, end_us: int) -> range:
    """The buckets of the time range [start_us, end_us)."""
    return range(bucket_of(start_us), bucket_of(end_us - 1) + 1)
