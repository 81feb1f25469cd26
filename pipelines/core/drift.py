"""Drift of a stream against a reference histogram: binning, PSI / Jensen-Shannon, and the
sliding event-time windows of one key (:class:`DriftWindows`).

The reference is a model card's histogram (models/reference.py): ``{"kind", "edges", "counts"}``.
Serving values are binned the same way (:func:`bin_counts`: out-of-range values fall in the
first or last bin) and each window's counts are compared with the reference's.

Windows are in event time and close on the key's own event-time progress: window
``[s, s + window_s)`` closes once the key has seen an event at or after ``s + window_s +
lateness_s``. Beam's watermark is not used: a replay runs days of event time in minutes and the
local runner's Pub/Sub watermark is the wall clock, so the data's own clock is the one that means
the same thing everywhere. Values older than the oldest open window are counted as late and left
out.

A key's progress (its buckets, clock, pending windows and streak) is :class:`DriftProgress`, a
typed row: the Monitor keeps it in Beam state with a schema'd coder
(pipelines/transforms/coders.py) and rebuilds the windows from it and from the configuration
(:meth:`DriftWindows.resume`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "BucketCounts",
    "Closable",
    "ClosedWindow",
    "DriftProgress",
    "DriftWindows",
    "bin_counts",
    "bin_index",
    "episode",
    "jensen_shannon",
    "n_bins",
    "psi",
]


def n_bins(hist: Mapping[str, Any]) -> int:
    """How many bins a reference histogram has."""
    edges = hist["edges"]
    return len(edges) if hist["kind"] == "categorical" else max(len(edges) - 1, 1)


def bin_index(values: npt.ArrayLike, hist: Mapping[str, Any]) -> npt.NDArray[np.int64]:
    """The bin of every value (NaNs dropped) in the bins of a reference histogram."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    edges = np.asarray(hist["edges"], dtype=np.float64)
    if hist["kind"] == "categorical":
        # Each value counts for the nearest reference value.
        if not len(x):
            return np.zeros(0, dtype=np.int64)
        return np.abs(x[:, None] - edges[None, :]).argmin(axis=1).astype(np.int64)
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins(hist) - 1).astype(
        np.int64
    )


def bin_counts(values: npt.ArrayLike, hist: Mapping[str, Any]) -> npt.NDArray[np.int64]:
    """Counts of ``values`` in the bins of a reference histogram (NaNs ignored)."""
    return np.bincount(bin_index(values, hist), minlength=n_bins(hist)).astype(np.int64)


def _shares(counts: npt.ArrayLike, eps: float) -> npt.NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64)
    return np.maximum(c / max(c.sum(), 1.0), eps)


def psi(reference: npt.ArrayLike, actual: npt.ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index between two count vectors over the same bins."""
    p, q = _shares(reference, eps), _shares(actual, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(reference: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count vectors."""
    p, q = _shares(reference, 0.0), _shares(actual, 0.0)
    m = (p + q) / 2

    def kl(a: npt.NDArray[np.float64]) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return (kl(p) + kl(q)) / 2


def episode(
    over: bool, streak: int, under: int, armed: bool, consecutive: int
) -> tuple[int, int, bool, bool]:
    """One judged window of an alerting episode: (streak, under, armed, alert). An alert is
    raised when ``consecutive`` windows in a row are over the threshold; the next one only after
    ``consecutive`` windows in a row under it (a value flickering around the threshold during
    one shift raises one alert, not one per flicker)."""
    if over:
        streak, under = streak + 1, 0
        if armed and streak >= consecutive:
            return streak, under, False, True
        return streak, under, armed, False
    under = under + 1
    return 0, under, armed or under >= consecutive, False


@dataclass(frozen=True)
class ClosedWindow:
    """One judged (or too small to judge) window of one key."""

    start_s: int
    end_s: int
    n: int
    psi: float | None  # None: fewer than min_count values
    js: float | None
    over: bool
    streak: int
    alert: bool  # the streak reached ``consecutive`` with this window


class BucketCounts(NamedTuple):
    """The counts per reference bin of one ``period_s`` bucket of event time."""

    start_s: int
    counts: Sequence[int]


class Closable(NamedTuple):
    """A window that may close, and since when (processing time, s)."""

    start_s: int
    since_s: float


class DriftProgress(NamedTuple):
    """What a key's :class:`DriftWindows` has seen and judged (its configuration aside): the
    state a stream keeps per key. Sequences are sorted by start, so equal progress encodes to
    equal bytes."""

    buckets: Sequence[BucketCounts]
    clock_s: int
    next_start_s: int | None
    closable_since: Sequence[Closable]
    streak: int
    under: int
    armed: bool
    late: int


@dataclass
class DriftWindows:
    """The sliding windows of one key (a model version's input or score): bucket counts per
    ``period_s`` of event time, the key's event-time clock, and the over-threshold streak.

    Window ``[s, s + window_s)`` may close once the key's clock (the latest event time it has
    seen) reaches ``s + window_s + lateness_s``, and closes ``grace_s`` seconds of processing
    time after that: counts of events still in flight in the pipeline then (other workers,
    other keys' batches) still make it. In real time both waits are short; in a replay of days
    in minutes, the event-time lateness alone would be swept past in milliseconds.

    Its configuration comes from the thresholds and the model card; :meth:`progress` and
    :meth:`resume` carry the rest (a Beam state cell holds the progress, not this object)."""

    reference: list[int]
    window_s: int
    period_s: int
    lateness_s: int
    threshold: float
    consecutive: int
    min_count: int
    grace_s: float = 0.0
    buckets: dict[int, list[int]] = field(default_factory=dict)
    clock_s: int = -(2**62)  # the latest event time seen
    next_start_s: int | None = None  # the next window to close
    closable_since: dict[int, float] = field(default_factory=dict)  # window start -> wall time
    streak: int = 0
    under: int = 0  # windows in a row under the threshold (K of them end an episode)
    armed: bool = True  # False from an alert until the episode ends
    late: int = 0

    def add(
        self,
        buckets: Mapping[int, npt.ArrayLike],
        latest_event_s: int,
        now_s: float,
        is_over: Callable[[float], bool] | None = None,
    ) -> list[ClosedWindow]:
        """Adds bucket counts (bucket start, a multiple of period_s -> counts) and the latest
        event time among them; returns the windows that close now, oldest first. ``is_over(psi)``
        judges a window (default: psi >= threshold)."""
        if self.next_start_s is None and buckets:
            # Only windows wholly inside the observed stream are judged: the first bucket may
            # hold its period's end only (a job started, or restarted, in the middle of it).
            first = min(buckets)
            self.next_start_s = (first // self.period_s + 1) * self.period_s
        for bucket_s, counts in buckets.items():
            c = np.asarray(counts, dtype=np.int64)
            if self.next_start_s is not None and bucket_s < self.next_start_s:
                self.late += int(c.sum())
                continue
            held = self.buckets.get(bucket_s)
            self.buckets[bucket_s] = (c if held is None else c + np.asarray(held)).tolist()
        self.clock_s = max(self.clock_s, latest_event_s)
        return self.flush(now_s, is_over)

    def flush(
        self, now_s: float, is_over: Callable[[float], bool] | None = None
    ) -> list[ClosedWindow]:
        """Closes the windows whose grace has passed (also called by a processing-time timer, so
        that the last windows close when the stream pauses)."""
        if self.next_start_s is None:
            return []
        judge = is_over or (lambda v: v >= self.threshold)
        # Windows without any value are skipped, not closed one by one (a pause of days, or a
        # replay of another year, would otherwise close thousands of empty windows).
        first_held = (
            min(self.buckets)
            if self.buckets
            else self.clock_s - self.clock_s % self.period_s + self.period_s
        )
        skip_to = first_held - self.window_s + self.period_s
        if skip_to > self.next_start_s:
            self.next_start_s = skip_to
            self.closable_since = {s: t for s, t in self.closable_since.items() if s >= skip_to}
        start = self.next_start_s
        last_held = max(self.buckets, default=start - 1)  # later windows hold nothing yet
        while start <= last_held and start + self.window_s + self.lateness_s <= self.clock_s:
            self.closable_since.setdefault(start, now_s)
            start += self.period_s
        closed = []
        while (since := self.closable_since.get(self.next_start_s)) is not None and (
            now_s - since >= self.grace_s
        ):
            start = self.next_start_s
            counts = np.zeros(len(self.reference), dtype=np.int64)
            for b in range(start, start + self.window_s, self.period_s):
                if b in self.buckets:
                    counts += np.asarray(self.buckets[b], dtype=np.int64)
            closed.append(self._judge(start, counts, judge))
            del self.closable_since[start]
            self.next_start_s = start + self.period_s
            for b in [b for b in self.buckets if b < self.next_start_s]:
                del self.buckets[b]
        return closed

    def progress(self) -> DriftProgress:
        """What this key has seen and judged (see :class:`DriftProgress`)."""
        return DriftProgress(
            buckets=[
                BucketCounts(int(s), [int(n) for n in c]) for s, c in sorted(self.buckets.items())
            ],
            clock_s=int(self.clock_s),
            next_start_s=None if self.next_start_s is None else int(self.next_start_s),
            closable_since=[
                Closable(int(s), float(t)) for s, t in sorted(self.closable_since.items())
            ],
            streak=self.streak,
            under=self.under,
            armed=self.armed,
            late=self.late,
        )

    def resume(self, progress: DriftProgress) -> DriftWindows:
        """Takes up ``progress`` (read from state); returns self."""
        self.buckets = {int(b.start_s): [int(n) for n in b.counts] for b in progress.buckets}
        self.clock_s = int(progress.clock_s)
        self.next_start_s = None if progress.next_start_s is None else int(progress.next_start_s)
        self.closable_since = {int(c.start_s): float(c.since_s) for c in progress.closable_since}
        self.streak = int(progress.streak)
        self.under = int(progress.under)
        self.armed = bool(progress.armed)
        self.late = int(progress.late)
        return self

    @property
    def pending(self) -> bool:
        """Whether a window waits for its grace to pass."""
        return bool(self.closable_since)

    def _judge(
        self, start: int, counts: npt.NDArray[np.int64], is_over: Callable[[float], bool]
    ) -> ClosedWindow:
        n = int(counts.sum())
        end = start + self.window_s
        if n < self.min_count:  # too few values to judge: the streak stands as it is
            return ClosedWindow(start, end, n, None, None, False, self.streak, False)
        value = psi(self.reference, counts)
        over = is_over(value)
        self.streak, self.under, self.armed, alert = episode(
            over, self.streak, self.under, self.armed, self.consecutive
        )
        js = jensen_shannon(self.reference, counts)
        return ClosedWindow(start, end, n, value, js, over, self.streak, alert)
