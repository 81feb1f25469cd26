"""Monitor: drift, data quality, online quality and service health in the stream; alerts as data.

    predictions ─ BinInputs ─ DriftDeltas (every few s) ─ SumBuckets ─ PerFeature ─ JudgeDrift ┐
    predictions, labels, dead letters ─ BundleStats ─┬─ HealthWindows ─ MergeHealthShards ─┐   │
                                                     │  ─ KeyHealth ─ MergeHealth ─ JudgeHealth ┤
                                                     └─ QualityWindows ─ … ─ JudgeQuality ────┤
    online evaluation figures ─ KeyByVersion ─ JudgeOnlineQuality ─────────────────────────────┤
                                                                       PublishAlerts ◄─────────┘

- **Drift** (docs/specs/monitoring.md): every model input and the score of every served version
  (the champion and its shadowing challenger) is binned against the reference histogram of that
  version's model card, per ``period_s`` bucket of event time. The per-batch bucket counts are
  summed per bundle, then per version by a Beam combine (lifted: partial sums on every worker),
  and flushed every ``--monitor_every_s``; one stateful key per (version, feature) — a few
  dozen keys, each getting one small element per flush, whatever the event rate — holds its
  sliding windows
  (pipelines/core/drift.py), computes the PSI of each closed window and raises an alert when it
  stays at or above the threshold for K consecutive windows. A key that gets nothing for a day
  (a version no longer served) lets its state go. The threshold test is Beam's
  ``apache_beam.ml.anomaly`` ``FixedThreshold`` (the module's detectors score a stream against
  its own recent past; drift compares it with the training reference, so the score is PSI).
- **Data quality** and **service health**: every bundle's counts (predictions, corrections,
  labels, dead letters per reason) and its event-to-prediction latencies (a log-spaced histogram,
  2% wide bins) are pre-aggregated on the worker and merged per processing-time window, in two
  keyed levels (``_judged_windows``: no global combine).
- **Online quality**: the online evaluation's (version, day) figures against the model card's
  validation figures, for the registry's champion.

Every alert is published on the alerts topic (``Alert.message``) and counted; the latest figures
are Beam gauges (namespace ``rillet_monitor``), which Dataflow exports to Cloud Monitoring. Their
names are bounded: by role (``champion``, ``challenger``: the role the version served in) and
declared feature, never by version; the version is in the alerts and the drift windows.
Everything kept in state or shuffled is a schema'd row (pipelines/transforms/coders.py).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import BooleanCoder, FloatCoder, IterableCoder, StrUtf8Coder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.core.alerts import Alert, StreakRow, Streaks
from pipelines.core.drift import BucketCounts, DriftProgress, DriftWindows, bin_index, n_bins
from pipelines.core.messages import DeadLetter
from pipelines.core.schema import Label
from pipelines.core.thresholds import DriftThresholds, Thresholds
from pipelines.stores.model_registry import ModelRegistry
from pipelines.stores.shared import SharedResource
from pipelines.transforms.coders import row_coder
from pipelines.transforms.inference import PredictionBatch
from pipelines.transforms.online_eval import CHALLENGER, CHAMPION, DayFigures
from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = [
    "MONITOR_NAMESPACE",
    "SCORE",
    "Count",
    "DriftDelta",
    "FeatureCounts",
    "LatencyCount",
    "Monitor",
    "Stats",
    "StatsRow",
    "VersionCounts",
    "latency_percentile",
]

_LOGGER = logging.getLogger(__name__)

MONITOR_NAMESPACE = "rillet_monitor"
SCORE = "score"  # the drift key of a version's score (beside its inputs)
STATS_SHARDS = 16  # keys of the first merge of the bundles' Stats (see _judged_windows)
DRIFT_IDLE_S = 86_400.0  # a drift key that gets nothing for this long lets its state go
ALERTED_DAYS = 16  # days of online-quality alerts remembered per version (older days are done)
_LOG_BASE = math.log(1.02)  # latency histogram: bins 2% wide


def _latency_bin(ms: float) -> int:
    return int(math.log(max(ms, 1.0)) / _LOG_BASE)


def latency_percentile(
    histogram: Mapping[int, int], q: float, max_ms: float | None = None
) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, as its bin's upper edge in ms, or the
    exact maximum ``max_ms`` when that is lower: the edge bounds every latency of its bin, but
    in the top bin the observed maximum bounds them more tightly (a p99 above the max would
    be a figure no event had)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for b in sorted(histogram):
        seen += histogram[b]
        if seen >= rank:
            edge = round(math.exp((b + 1) * _LOG_BASE), 1)
            return edge if max_ms is None or max_ms <= 0 else min(edge, round(max_ms, 1))
    return None  # pragma: no cover - the loop always reaches the rank


class Count(NamedTuple):
    """One count of a StatsRow."""

    name: str
    n: int


class LatencyCount(NamedTuple):
    """One latency bin of a StatsRow (bins 2% wide: _latency_bin)."""

    bin: int
    n: int


class StatsRow(NamedTuple):
    """Stats as they are shuffled: sorted sequences (deterministic bytes), not mappings."""

    counts: Sequence[Count]
    latency: Sequence[LatencyCount]
    max_latency_ms: float


@dataclass
class Stats:
    """Counts and latencies of a bundle, or of a window once merged."""

    counts: Counter[str] = field(default_factory=Counter)
    latency: Counter[int] = field(default_factory=Counter)
    max_latency_ms: float = 0.0

    def merge(self, other: Stats) -> Stats:
        self.counts.update(other.counts)
        self.latency.update(other.latency)
        self.max_latency_ms = max(self.max_latency_ms, other.max_latency_ms)
        return self

    def row(self) -> StatsRow:
        """These stats as a row (what is shuffled)."""
        return StatsRow(
            [Count(k, int(n)) for k, n in sorted(self.counts.items())],
            [LatencyCount(int(b), int(n)) for b, n in sorted(self.latency.items())],
            float(self.max_latency_ms),
        )

    @classmethod
    def from_row(cls, row: StatsRow) -> Stats:
        """The stats of a row (read from a shuffle)."""
        return cls(
            Counter({c.name: c.n for c in row.counts}),
            Counter({b.bin: b.n for b in row.latency}),
            row.max_latency_ms,
        )


# Count names (Stats.counts): predictions (originals), corrections, labels, dead letters.
PREDICTIONS, CORRECTIONS, LABELS = "predictions", "corrections", "labels"
DEAD_LETTER_PREFIX = "dead_letter/"
DUPLICATE_REASONS = ("duplicate_transaction_id", "duplicate_label")
# Of the duplicates, those with the content of the message that counts (not in duplicate_rate).
EXACT_COPIES = "exact_copies"
# Dead letters of messages dead-lettered before (a replay after a restart): in no rate.
REDELIVERED_DEAD_LETTERS = "redelivered_dead_letters"
UNKNOWN_LABEL_REASONS = ("unknown_transaction",)


def quality_rates(stats: Stats) -> dict[str, float | None]:
    """The data-quality rates of a window (None without a denominator).

    - dead_letter_rate: dead letters (every stage, every reason) / events in (predicted
      transactions + labels + dead letters);
    - unknown_label_rate: labels whose transaction never arrived / labels (+ those);
    - duplicate_rate: duplicate ids with a different payload / events in (an exact copy of the
      message that counts is dead-lettered, and counts among the dead letters, but is no reused
      id; a message dead-lettered before and delivered again, as after a restart, is in no
      rate: ``redelivered_dead_letters``);
    - late_event_rate: predictions corrected because an earlier event of the same card or
      terminal arrived after them (out of order) / predictions.
    """
    c = stats.counts
    dead = sum(n for k, n in c.items() if k.startswith(DEAD_LETTER_PREFIX))
    events = c[PREDICTIONS] + c[LABELS] + dead
    unknown = sum(c[DEAD_LETTER_PREFIX + r] for r in UNKNOWN_LABEL_REASONS)
    duplicates = sum(c[DEAD_LETTER_PREFIX + r] for r in DUPLICATE_REASONS) - c[EXACT_COPIES]

    def rate(n: int, d: int) -> float | None:
        return n / d if d else None

    return {
        "dead_letter_rate": rate(dead, events),
        "unknown_label_rate": rate(unknown, c[LABELS] + unknown),
        "duplicate_rate": rate(duplicates, events),
        "late_event_rate": rate(c[CORRECTIONS], c[PREDICTIONS] + c[CORRECTIONS]),
    }


row_coder(StatsRow)


def _in_global_window(value: Any) -> WindowedValue:
    """A finish_bundle output: the global window, stamped now (what the monitor's processing-time
    windows go by)."""
    return WindowedValue(value, time.time(), (window.GlobalWindow(),))


class _BundleStats(beam.DoFn):
    """Counts and latencies of each bundle, emitted once at its end (the hot path's elements
    never reach a shuffle one by one), keyed by a shard the bundle draws (_judged_windows)."""

    def default_label(self) -> str:
        return "BundleStats"

    def start_bundle(self) -> None:
        self._stats = Stats()

    def process(self, element: Any) -> None:
        s = self._stats
        if isinstance(element, PredictionBatch):
            n = len(element)
            if element.batch.correction:
                s.counts[CORRECTIONS] += n
                return
            s.counts[PREDICTIONS] += n
            for tx in element.batch.transactions:
                if tx.publish_time_us:
                    ms = (element.predicted_at_us - tx.publish_time_us) / 1000
                    s.latency[_latency_bin(ms)] += 1
                    s.max_latency_ms = max(s.max_latency_ms, ms)
        elif isinstance(element, Label):
            s.counts[LABELS] += 1
        elif isinstance(element, DeadLetter):
            if element.redelivered:  # rejected before, published again: not a new rejection
                s.counts[REDELIVERED_DEAD_LETTERS] += 1
                return
            s.counts[DEAD_LETTER_PREFIX + element.reason] += 1
            if element.exact_copy:
                s.counts[EXACT_COPIES] += 1

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._stats.counts or self._stats.latency:
            # One shard per bundle, as Beam's hot-key fanout draws it: a bundle's stats go
            # whole to one of the first merge's keys.
            yield _in_global_window((random.randrange(STATS_SHARDS), self._stats.row()))


@beam.typehints.with_input_types(StatsRow)
@beam.typehints.with_output_types(StatsRow)
class _MergeStats(beam.CombineFn):
    """Merges StatsRows (accumulator: a StatsRow, so that the lifted combine's partial results
    are shuffled with the row's coder, not pickled)."""

    def create_accumulator(self) -> StatsRow:
        return Stats().row()

    def add_input(self, acc: StatsRow, row: StatsRow) -> StatsRow:
        return Stats.from_row(acc).merge(Stats.from_row(row)).row()

    def merge_accumulators(self, accs: Iterable[StatsRow]) -> StatsRow:
        out = Stats()
        for acc in accs:
            out.merge(Stats.from_row(acc))
        return out.row()

    def extract_output(self, acc: StatsRow) -> StatsRow:
        return acc

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return row_coder(StatsRow)


def _every(seconds: float) -> beam.WindowInto:
    """The global window, fired every ``seconds`` of processing time with what arrived since."""
    return beam.WindowInto(
        window.GlobalWindows(),
        trigger=trigger.Repeatedly(trigger.AfterProcessingTime(max(1, round(seconds)))),
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
    )


def _gauge(name: str, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        Metrics.gauge(MONITOR_NAMESPACE, name).set(round(value))


class _AlertCounter:
    """Counts alerts in the monitor's namespace (docs/specs/monitoring.md): once, since Dataflow
    labels user counters by name only and the dashboard sums them."""

    def __init__(self) -> None:
        self._all = Metrics.counter(MONITOR_NAMESPACE, "alerts_raised")

    def count(self, alert: Alert) -> Alert:
        self._all.inc()
        Metrics.counter(MONITOR_NAMESPACE, f"alerts_raised/{alert.kind}").inc()
        return alert


_STREAKS = ReadModifyWriteStateSpec("streaks", IterableCoder(row_coder(StreakRow)))
_LAST = ReadModifyWriteStateSpec("last_fired", FloatCoder())
_STREAKS_PARAM = beam.DoFn.StateParam(_STREAKS)
_LAST_PARAM = beam.DoFn.StateParam(_LAST)


class _WindowJudge(beam.DoFn):
    """The judge of one merged Stats per processing-time window (keyed by a constant after two
    keyed merges: one small element per window): it keeps the streaks over the windows and the
    time of the previous one (the window is what came since)."""

    def __init__(self, name: str, window_s: float, consecutive: int) -> None:
        self.name = name
        self.window_s = window_s
        self._consecutive = consecutive
        self._alerts = _AlertCounter()

    def default_label(self) -> str:
        return f"Judge{self.name}"

    def process(
        self,
        element: tuple[str, StatsRow],
        streaks_state: Any = _STREAKS_PARAM,
        last_state: Any = _LAST_PARAM,
    ) -> Iterator[Alert]:
        _, row = element
        now = time.time()
        last = last_state.read()
        start = last if last else now - self.window_s
        last_state.write(now)
        streaks = Streaks.from_rows(self._consecutive, streaks_state.read() or ())
        yield from self.judge(Stats.from_row(row), start, now, streaks)
        streaks_state.write(streaks.rows())

    def judge(self, stats: Stats, start: float, now: float, streaks: Streaks) -> Iterator[Alert]:
        raise NotImplementedError


class _JudgeHealth(_WindowJudge):
    """One element per processing-time window (keyed by a constant: one small element every
    few seconds): latency percentiles and throughput gauges; alerts when p99 latency or the
    dead-letter rate per second stays over its threshold for ``consecutive`` windows."""

    def __init__(self, thresholds: Thresholds) -> None:
        self._t = thresholds.service_health
        super().__init__("Health", self._t.window_s, self._t.consecutive)

    def judge(self, stats: Stats, start: float, now: float, streaks: Streaks) -> Iterator[Alert]:
        seconds = max(now - start, 1e-3)
        c = stats.counts
        dead = sum(n for k, n in c.items() if k.startswith(DEAD_LETTER_PREFIX))
        p50 = latency_percentile(stats.latency, 0.50, stats.max_latency_ms)
        p99 = latency_percentile(stats.latency, 0.99, stats.max_latency_ms)
        _gauge("latency_p50_ms", p50)
        _gauge("latency_p99_ms", p99)
        _gauge("latency_max_ms", stats.max_latency_ms if stats.latency else None)
        _gauge("predictions_per_s", c[PREDICTIONS] / seconds)
        _gauge("events_per_s", (c[PREDICTIONS] + c[LABELS] + dead) / seconds)
        _gauge("dead_letters_per_s_milli", 1000 * dead / seconds)
        checks = (
            ("latency_p99_ms", p99, self._t.latency_p99_ms, "ms"),
            ("dead_letter_per_s", dead / seconds, self._t.dead_letter_per_s, "/s"),
        )
        for metric, value, threshold, unit in checks:
            streak, alert = streaks.judge(metric, None if value is None else value >= threshold)
            if alert and value is not None:
                yield self._alerts.count(
                    Alert(
                        kind="service_health",
                        metric=metric,
                        value=round(value, 3),
                        threshold=threshold,
                        comparison=">=",
                        window_start_s=round(now - seconds, 3),
                        window_end_s=round(now, 3),
                        window_basis="processing_time",
                        severity=self._t.severity,
                        message_text=f"{metric} {value:,.1f}{unit} >= {threshold:g}{unit} for "
                        f"{streak} windows in a row",
                        consecutive=streak,
                        raised_at_s=now,
                    )
                )


class _JudgeQuality(_WindowJudge):
    """Data-quality rates of each processing-time window: gauges, and an alert for each rate at
    or above its threshold (once per episode) when the window holds ``min_events`` events."""

    def __init__(self, thresholds: Thresholds) -> None:
        self._t = thresholds.data_quality
        super().__init__("Quality", self._t.window_s, 1)

    def judge(self, stats: Stats, start: float, now: float, streaks: Streaks) -> Iterator[Alert]:
        rates = quality_rates(stats)
        c = stats.counts
        events = (
            c[PREDICTIONS]
            + c[LABELS]
            + sum(n for k, n in c.items() if k.startswith(DEAD_LETTER_PREFIX))
        )
        for reason in (k for k in c if k.startswith(DEAD_LETTER_PREFIX)):
            Metrics.counter(MONITOR_NAMESPACE, reason).inc(c[reason])
        # The window's size, so a view can tell a judged rate from one of too few events (a
        # rate gauge without a denominator is not set and keeps an older window's value).
        _gauge("quality_events", events)
        if c[REDELIVERED_DEAD_LETTERS]:
            Metrics.counter(MONITOR_NAMESPACE, REDELIVERED_DEAD_LETTERS).inc(
                c[REDELIVERED_DEAD_LETTERS]
            )
        for name, value in rates.items():
            _gauge(f"quality_rate_ppm/{name}", None if value is None else value * 1e6)
            threshold = self._t.rates.get(name)
            if threshold is None:
                continue
            judged = None if value is None or events < self._t.min_events else value >= threshold
            _, alert = streaks.judge(name, judged)
            if alert and value is not None:
                reasons = ", ".join(
                    f"{k.removeprefix(DEAD_LETTER_PREFIX)} {n}"
                    for k, n in sorted(c.items())
                    if k.startswith(DEAD_LETTER_PREFIX)
                )
                yield self._alerts.count(
                    Alert(
                        kind="data_quality",
                        metric=name,
                        value=round(value, 6),
                        threshold=threshold,
                        comparison=">=",
                        window_start_s=round(start, 3),
                        window_end_s=round(now, 3),
                        window_basis="processing_time",
                        severity=self._t.severity,
                        message_text=f"{name} {value:.2%} >= {threshold:.2%} over {events:,} "
                        f"events" + (f" (dead letters: {reasons})" if reasons else ""),
                        raised_at_s=now,
                    )
                )


def _judged_windows(stats: beam.PCollection, judge: _WindowJudge) -> beam.PCollection:
    """The bundles' Stats merged per processing-time window of the judge and judged (steps
    <name>Windows, Merge<name>Shards, Key<name>, Merge<name>, Judge<name>).

    Why it scales: no global combine, so no single hot key. Each bundle's stats are already
    one element (pre-aggregated on the worker) and go whole to one of ``STATS_SHARDS`` keys, the
    one the bundle drew; those keys merge in parallel (and Beam lifts each merge: partial sums
    on every worker before the shuffle). The judge's constant key then merges at most
    ``STATS_SHARDS`` partial results per window, whatever the event rate or the number of
    workers. This is Beam's hot-key fanout (``CombineGlobally(...).with_fanout``) written out
    with typed keys and values: Beam's own carries untyped ``(nonce, key)`` keys and ``(bool,
    accumulator)`` values, which would be pickled (tests/unit/test_update_compat.py)."""
    name = judge.name
    return (
        stats
        | f"{name}Windows" >> _every(judge.window_s)
        | f"Merge{name}Shards" >> beam.CombinePerKey(_MergeStats())
        | f"Key{name}"
        >> beam.Map(lambda shard_row, key: (key, shard_row[1]), name.lower()).with_output_types(
            tuple[str, StatsRow]
        )
        | f"Merge{name}" >> beam.CombinePerKey(_MergeStats())
        | f"Judge{name}" >> beam.ParDo(judge)
    )


class _References:
    """Model cards' reference histograms per version, read once per worker."""

    def __init__(self, model_dir: str) -> None:
        self._registry = ModelRegistry(model_dir)
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._hists: dict[str, dict[str, dict[str, Any]]] = {}

    def card(self, version: str) -> dict[str, Any] | None:
        if version not in self._cache:
            try:
                self._cache[version] = self._registry.card(version)
            except Exception as exc:  # a card that cannot be read: no drift for that version
                _LOGGER.warning("no model card for %s (%s): no drift monitoring", version, exc)
                self._cache[version] = None
        return self._cache[version]

    def histograms(self, version: str) -> dict[str, dict[str, Any]]:
        """feature (or SCORE) -> reference histogram; empty for a card without references."""
        if version not in self._hists:
            reference = (self.card(version) or {}).get("reference") or {}
            hists = {n: h for n, h in (reference.get("inputs") or {}).items() if h.get("edges")}
            if (reference.get("score") or {}).get("edges"):
                hists[SCORE] = reference["score"]
            self._hists[version] = hists
        return self._hists[version]


class _FeatureConfigs:
    """Each feature's drift thresholds (its overrides applied) and threshold test, resolved once
    per worker instead of once per batch or element."""

    def __init__(self, drift: DriftThresholds) -> None:
        self._drift = drift
        self._configs: dict[str, DriftThresholds] = {}
        self._tests: dict[str, Callable[[float], bool]] = {}

    def __getitem__(self, feature: str) -> DriftThresholds:
        if feature not in self._configs:
            self._configs[feature] = self._drift.for_feature(feature)
        return self._configs[feature]

    def is_over(self, feature: str) -> Callable[[float], bool]:
        """Beam's anomaly threshold: 1 (outlier) at or above the cutoff."""
        if feature not in self._tests:
            from apache_beam.ml.anomaly.thresholds import FixedThreshold

            fixed = FixedThreshold(cutoff=self[feature].threshold)
            self._tests[feature] = lambda value: fixed.apply(value) == 1
        return self._tests[feature]


_Binned = dict[str, tuple[dict[int, np.ndarray], int]]  # feature -> ({bucket: counts}, latest)


class FeatureCounts(NamedTuple):
    """One feature's bucket counts and the latest event time (s) among them."""

    feature: str
    latest_s: int
    buckets: Sequence[BucketCounts]


class VersionCounts(NamedTuple):
    """A served version's binned counts per feature, as they are shuffled; ``champion``:
    it served as champion (else as the challenger shadowing it)."""

    champion: bool
    features: Sequence[FeatureCounts]


class DriftDelta(NamedTuple):
    """What the drift key of one (version, feature) gets per flush."""

    champion: bool
    latest_s: int
    buckets: Sequence[BucketCounts]


for _row in (VersionCounts, DriftDelta):
    row_coder(_row)


def _add_binned(into: _Binned, more: _Binned) -> _Binned:
    """Sums bucket counts per feature (and keeps the latest event time)."""
    for feature, (buckets, latest) in more.items():
        held, held_latest = into.get(feature, ({}, -(2**62)))
        merged = dict(held)
        for b, counts in buckets.items():
            merged[b] = counts if b not in merged else merged[b] + counts
        into[feature] = (merged, max(held_latest, latest))
    return into


def _counts_row(champion: bool, binned: _Binned) -> VersionCounts:
    return VersionCounts(
        champion,
        [
            FeatureCounts(
                feature,
                int(latest),
                [BucketCounts(int(b), [int(n) for n in c]) for b, c in sorted(buckets.items())],
            )
            for feature, (buckets, latest) in sorted(binned.items())
        ],
    )


def _binned(row: VersionCounts) -> _Binned:
    return {
        f.feature: (
            {b.start_s: np.asarray(b.counts, dtype=np.int64) for b in f.buckets},
            f.latest_s,
        )
        for f in row.features
    }


class _BinInputs(beam.DoFn):
    """PredictionBatch -> per bundle, (version, {feature: ({bucket start: counts}, latest event
    s)}): one element per served version and bundle, whatever the number of inputs."""

    def __init__(self, model_dir: str, thresholds: Thresholds) -> None:
        self._model_dir = model_dir
        self._refs_handle: SharedResource[_References] = SharedResource()
        self._drift = thresholds.drift
        self._no_reference = Metrics.counter(MONITOR_NAMESPACE, "drift_unmonitored_rows")

    def setup(self) -> None:
        model_dir = self._model_dir
        self._refs = self._refs_handle.acquire(lambda: _References(model_dir), tag=model_dir)
        self._configs = _FeatureConfigs(self._drift)

    def default_label(self) -> str:
        return "BinInputs"

    def start_bundle(self) -> None:
        self._binned: dict[str, _Binned] = {}
        self._champions: set[str] = set()

    def process(self, pb: PredictionBatch) -> None:
        # A recomputation (correction) is left out: its transactions counted with their originals.
        if not pb.batch.correction and len(pb):
            self._champions.add(pb.model_version)
            for version, binned in self.bin(pb):
                _add_binned(self._binned.setdefault(version, {}), binned)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for version, binned in self._binned.items():
            yield _in_global_window((version, _counts_row(version in self._champions, binned)))

    def bin(self, pb: PredictionBatch) -> Iterator[tuple[str, _Binned]]:
        """(version, binned) of each version that scored the batch and has references."""
        event_s = np.fromiter(
            (tx.event_time_us // 1_000_000 for tx in pb.batch.transactions), np.int64, len(pb)
        )
        column = {name: i for i, name in enumerate(pb.batch.names)}  # the job's feature columns
        served = [(pb.model_version, pb.scores)]
        if pb.challenger_version and pb.challenger_scores is not None:
            served.append((pb.challenger_version, pb.challenger_scores))
        for version, scores in served:
            hists = self._refs.histograms(version)
            if not hists:
                self._no_reference.inc(len(pb))
                continue
            binned: _Binned = {}
            for name, hist in hists.items():
                cfg = self._configs[name]
                if not cfg.enabled:
                    continue
                if name == SCORE:
                    values = np.asarray(scores, dtype=np.float64)
                elif name in column:
                    values = pb.batch.features[:, column[name]]
                else:
                    continue
                keep = ~np.isnan(values)
                if not keep.any():
                    continue
                bins = bin_index(values[keep], hist)
                buckets = (event_s[keep] // cfg.period_s) * cfg.period_s
                width = n_bins(hist)
                binned[name] = (
                    {
                        int(b): np.bincount(bins[buckets == b], minlength=width)
                        for b in np.unique(buckets)
                    },
                    int(event_s[keep].max()),
                )
            yield version, binned


@beam.typehints.with_input_types(VersionCounts)
@beam.typehints.with_output_types(VersionCounts)
class _SumBuckets(beam.CombineFn):
    """Sums the binned counts of one version (per feature and bucket); the accumulator is a
    VersionCounts row, so that the lifted combine's partial sums are shuffled with its coder."""

    def create_accumulator(self) -> VersionCounts:
        return VersionCounts(False, [])

    def add_input(self, acc: VersionCounts, element: VersionCounts) -> VersionCounts:
        return self.merge_accumulators([acc, element])

    def merge_accumulators(self, accs: Iterable[VersionCounts]) -> VersionCounts:
        out: _Binned = {}
        champion = False
        for acc in accs:
            champion = champion or acc.champion
            _add_binned(out, _binned(acc))
        return _counts_row(champion, out)

    def extract_output(self, acc: VersionCounts) -> VersionCounts:
        return acc

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return row_coder(VersionCounts)


def _per_feature(
    element: tuple[str, VersionCounts],
) -> Iterator[tuple[tuple[str, str], DriftDelta]]:
    version, row = element
    for f in row.features:
        yield (version, f.feature), DriftDelta(row.champion, f.latest_s, f.buckets)


_WINDOWS = ReadModifyWriteStateSpec("windows", row_coder(DriftProgress))
_CHAMPION = ReadModifyWriteStateSpec("champion", BooleanCoder())
_FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)
_EXPIRE = TimerSpec("expire", TimeDomain.REAL_TIME)
_WINDOWS_PARAM = beam.DoFn.StateParam(_WINDOWS)
_CHAMPION_PARAM = beam.DoFn.StateParam(_CHAMPION)
_FLUSH_PARAM = beam.DoFn.TimerParam(_FLUSH)
_EXPIRE_PARAM = beam.DoFn.TimerParam(_EXPIRE)


def _role(champion: bool) -> str:
    return CHAMPION if champion else CHALLENGER


class _JudgeDrift(beam.DoFn):
    """Per (version, feature): the sliding windows (pipelines.core.drift.DriftWindows, whose
    progress is the state), their PSI as gauges by role, an alert when the K-th consecutive
    window is over the threshold. A processing-time timer closes the last windows when the
    stream pauses; another lets the state go after ``DRIFT_IDLE_S`` without input."""

    WINDOWS_TAG = "windows"

    def __init__(
        self,
        model_dir: str,
        thresholds: Thresholds,
        grace_s: float,
        *,
        features: Sequence[str],
    ) -> None:
        self._model_dir = model_dir
        self._refs_handle: SharedResource[_References] = SharedResource()
        self._drift = thresholds.drift
        self._grace_s = grace_s
        # The gauges are named by the job's declared features and the score: a bounded set,
        # whatever features the versions' cards name.
        self._gauged = frozenset((*features, SCORE))
        self._alerts = _AlertCounter()
        self._late = Metrics.counter(MONITOR_NAMESPACE, "drift_late_values")

    def default_label(self) -> str:
        return "JudgeDrift"

    def setup(self) -> None:
        model_dir = self._model_dir
        self._refs = self._refs_handle.acquire(lambda: _References(model_dir), tag=model_dir)
        self._configs = _FeatureConfigs(self._drift)

    def _windows(
        self, version: str, feature: str, progress: DriftProgress | None
    ) -> DriftWindows | None:
        """The key's windows: its configuration (thresholds, the card's reference) and the
        progress held in state, if any."""
        hist = self._refs.histograms(version).get(feature)
        if hist is None:
            return None
        cfg = self._configs[feature]
        windows = DriftWindows(
            reference=list(map(int, hist["counts"])),
            window_s=cfg.window_s,
            period_s=cfg.period_s,
            lateness_s=cfg.lateness_s,
            threshold=cfg.threshold,
            consecutive=cfg.consecutive,
            min_count=cfg.min_count,
            grace_s=self._grace_s,
        )
        return windows if progress is None else windows.resume(progress)

    def process(
        self,
        element: tuple[tuple[str, str], DriftDelta],
        windows_state: Any = _WINDOWS_PARAM,
        champion_state: Any = _CHAMPION_PARAM,
        flush: Any = _FLUSH_PARAM,
        expire: Any = _EXPIRE_PARAM,
    ) -> Iterator[Any]:
        (version, feature), delta = element
        windows = self._windows(version, feature, windows_state.read())
        if windows is None:
            return
        now = time.time()
        late = windows.late
        buckets = {b.start_s: b.counts for b in delta.buckets}
        closed = windows.add(buckets, delta.latest_s, now, self._configs.is_over(feature))
        self._late.inc(windows.late - late)
        champion_state.write(delta.champion)
        expire.set(now + DRIFT_IDLE_S)
        yield from self._closed(
            version, feature, delta.champion, windows, closed, windows_state, flush
        )

    @on_timer(_FLUSH)
    def on_flush(
        self,
        key: Any = beam.DoFn.KeyParam,
        windows_state: Any = _WINDOWS_PARAM,
        champion_state: Any = _CHAMPION_PARAM,
        flush: Any = _FLUSH_PARAM,
    ) -> Iterator[Any]:
        progress = windows_state.read()
        if progress is None:
            return
        version, feature = key
        windows = self._windows(version, feature, progress)
        if windows is None:
            return
        closed = windows.flush(time.time(), self._configs.is_over(feature))
        champion = bool(champion_state.read())
        yield from self._closed(version, feature, champion, windows, closed, windows_state, flush)

    @on_timer(_EXPIRE)
    def on_expire(
        self, windows_state: Any = _WINDOWS_PARAM, champion_state: Any = _CHAMPION_PARAM
    ) -> None:
        # Nothing came for a day (a version no longer served): its windows would close on no
        # data, and its streak means nothing any more.
        windows_state.clear()
        champion_state.clear()

    def _closed(
        self,
        version: str,
        feature: str,
        champion: bool,
        windows: DriftWindows,
        closed: list[Any],
        windows_state: Any,
        flush: Any,
    ) -> Iterator[Any]:
        """Reports the windows that closed, keeps the progress, re-arms the timer while a
        window waits for its grace."""
        yield from self._report(version, feature, _role(champion), closed)
        windows_state.write(windows.progress())
        if windows.pending:
            flush.set(time.time() + self._grace_s + 1)

    def _report(self, version: str, feature: str, role: str, closed: list[Any]) -> Iterator[Any]:
        cfg = self._configs[feature]
        for w in closed:
            yield beam.pvalue.TaggedOutput(
                self.WINDOWS_TAG,
                {
                    "model_version": version,
                    "role": role,
                    "feature": feature,
                    "window_start_s": w.start_s,
                    "window_end_s": w.end_s,
                    "n": w.n,
                    "psi": w.psi,
                    "js": w.js,
                    "over": w.over,
                    "streak": w.streak,
                },
            )
            if w.psi is not None and feature in self._gauged:
                suffix = f"{role}/{feature}"
                _gauge(f"drift_psi_milli/{suffix}", w.psi * 1000)
                _gauge(f"drift_n/{suffix}", w.n)
                _gauge(f"drift_window_end_s/{suffix}", w.end_s)
                _gauge(f"drift_streak/{suffix}", w.streak)
            if w.alert and w.psi is not None:
                now = time.time()
                yield self._alerts.count(
                    Alert(
                        kind="drift",
                        metric=cfg.metric,
                        value=round(w.psi, 4),
                        threshold=cfg.threshold,
                        comparison=">=",
                        window_start_s=w.start_s,
                        window_end_s=w.end_s,
                        window_basis="event_time",
                        severity=cfg.severity,
                        message_text=f"{feature} of model {version}: PSI {w.psi:.3f} >= "
                        f"{cfg.threshold:g} in {w.streak} consecutive windows of "
                        f"{cfg.window_s // 60} min (n={w.n:,}, JS {w.js:.3f})",
                        model_version=version,
                        feature=feature,
                        consecutive=w.streak,
                        raised_at_s=now,
                    )
                )


# "<day>|<metric>" of the alerts raised, sorted: one alert per (version, day, metric).
_ALERTED = ReadModifyWriteStateSpec("alerted", IterableCoder(StrUtf8Coder()))
_ALERTED_PARAM = beam.DoFn.StateParam(_ALERTED)


class _JudgeOnlineQuality(beam.DoFn):
    """The online evaluation's (version, day) figures, keyed by version: when the version is
    the registry's champion and the day holds enough labels, its AP / CP@100 against the
    fractions of its model card's validation figures. One alert per (version, day, metric);
    the days alerted are remembered for ``ALERTED_DAYS`` (a day's figures stop once its labels
    are complete: online_eval)."""

    def __init__(self, model_dir: str, thresholds: Thresholds, poll_s: float = 30.0) -> None:
        self._model_dir = model_dir
        self._refs_handle: SharedResource[_References] = SharedResource()
        self._t = thresholds.online_quality
        self._poll_s = poll_s
        self._alerts = _AlertCounter()

    def default_label(self) -> str:
        return "JudgeOnlineQuality"

    def setup(self) -> None:
        model_dir = self._model_dir
        self._refs = self._refs_handle.acquire(lambda: _References(model_dir), tag=model_dir)
        self._champion: str | None = None
        self._read_at = 0.0

    def _current_champion(self) -> str | None:
        if time.time() - self._read_at > self._poll_s:
            try:
                self._champion = ModelRegistry(self._model_dir).pointer().champion
            except Exception as exc:  # no registry (a pinned model dir): judge every version
                _LOGGER.debug("no registry pointer: %s", exc)
                self._champion = None
            self._read_at = time.time()
        return self._champion

    def process(
        self,
        element: tuple[str, DayFigures],
        alerted_state: Any = _ALERTED_PARAM,
    ) -> Iterator[Alert]:
        version, row = element
        champion = self._current_champion()
        if champion is not None and version != champion:
            return
        if row.n < self._t.min_labelled or row.frauds < self._t.min_frauds:
            return
        validation = (self._refs.card(version) or {}).get("offline_metrics") or {}
        alerted = set(alerted_state.read() or ())
        before = len(alerted)
        day = str(row.day)
        for metric, fraction in self._t.min_fraction_of_validation.items():
            online, offline = getattr(row, metric), validation.get(metric)
            if online is None or offline is None or f"{day}|{metric}" in alerted:
                continue
            threshold = fraction * float(offline)
            if online < threshold:
                alerted.add(f"{day}|{metric}")
                start = _day_start_s(day)
                yield self._alerts.count(
                    Alert(
                        kind="online_quality",
                        metric=f"online_{metric}",
                        value=round(float(online), 6),
                        threshold=round(threshold, 6),
                        comparison="<",
                        window_start_s=start,
                        window_end_s=start + 86400,
                        window_basis="event_time",
                        severity=self._t.severity,
                        message_text=f"model {version} on {day}: online {metric} {online:.3f} < "
                        f"{fraction:.0%} of its validation {metric} {offline:.3f} "
                        f"({row.n:,} labels, {row.frauds:,} frauds)",
                        model_version=version,
                        raised_at_s=time.time(),
                    )
                )
        if len(alerted) != before:
            oldest = max(alerted).split("|")[0]
            oldest = _days_before(oldest, ALERTED_DAYS)
            alerted_state.write(sorted(a for a in alerted if a.split("|")[0] >= oldest))


def _days_before(day: str, days: int) -> str:
    import datetime as dt

    start = dt.datetime.strptime(day, "%Y-%m-%d") - dt.timedelta(days=days)
    return start.strftime("%Y-%m-%d")


def _day_start_s(day: str) -> float:
    import datetime as dt

    return dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()


class _PublishAlerts(beam.DoFn):
    """Publishes every alert on the alerts topic and waits for Pub/Sub's ack."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._published = Metrics.counter(METRICS_NAMESPACE, "alerts_published")
        self._shared: SharedResource[Any] = SharedResource()

    def setup(self) -> None:
        from pipelines.transforms.sinks import publisher_client

        self._publisher = self._shared.acquire(publisher_client)

    def process(self, alert: Alert) -> Iterator[dict[str, Any]]:
        data, attributes = alert.message()
        self._publisher.publish(self._topic, data, **attributes).result(timeout=300)
        self._published.inc()
        _LOGGER.warning("alert: %s", alert.message_text)
        yield alert.to_json()


class Monitor(beam.PTransform):
    """The monitoring stage (module docstring). Input: a dict with ``predictions``
    (PredictionBatch), ``labels`` (valid Labels), ``dead_letters`` (DeadLetter) and
    ``evaluation`` (the online evaluation's rows); output: the alerts published (JSON dicts).
    ``windows`` (closed drift windows, for tests and benches) is ``self.drift_windows`` after
    expansion.

    Args:
      model_dir: the registry (model cards: reference histograms, validation figures).
      thresholds: pipelines.core.thresholds.load_thresholds().
      alerts_topic: full path of the alerts topic.
      every_s: seconds between two drift flushes (and the grace before a window closes: two of
        them).
      features: the features the job computes (drift gauges are named by them and the score;
        keyword only, required: the job's definitions' names).
    """

    def __init__(
        self,
        model_dir: str,
        thresholds: Thresholds,
        alerts_topic: str,
        every_s: float = 10.0,
        *,
        features: Sequence[str],
    ) -> None:
        super().__init__()
        self._features = tuple(features)
        self._model_dir = model_dir
        self._refs_handle: SharedResource[_References] = SharedResource()
        self._t = thresholds
        self._topic = alerts_topic
        self._every_s = every_s
        self.drift_windows: beam.PCollection | None = None

    def expand(self, inputs: Mapping[str, beam.PCollection]) -> beam.PCollection:
        predictions = inputs["predictions"]
        judged = (
            predictions
            | "BinInputs"
            >> beam.ParDo(_BinInputs(self._model_dir, self._t)).with_output_types(
                tuple[str, VersionCounts]
            )
            | "DriftDeltas" >> _every(self._every_s)
            | "SumBuckets" >> beam.CombinePerKey(_SumBuckets())
            | "PerFeature"
            >> beam.FlatMap(_per_feature).with_output_types(tuple[tuple[str, str], DriftDelta])
            | "JudgeDrift"
            >> beam.ParDo(
                _JudgeDrift(
                    self._model_dir, self._t, grace_s=2 * self._every_s, features=self._features
                )
            ).with_outputs(_JudgeDrift.WINDOWS_TAG, main="alerts")
        )
        self.drift_windows = judged[_JudgeDrift.WINDOWS_TAG]
        stats = (
            (predictions, inputs["labels"], inputs["dead_letters"])
            | "Observed" >> beam.Flatten()
            | "BundleStats" >> beam.ParDo(_BundleStats()).with_output_types(tuple[int, StatsRow])
        )
        health = _judged_windows(stats, _JudgeHealth(self._t))
        quality = _judged_windows(stats, _JudgeQuality(self._t))
        online = (
            inputs["evaluation"]
            | "KeyByVersion"
            >> beam.Map(lambda figures: (figures.version, figures)).with_output_types(
                tuple[str, DayFigures]
            )
            | "JudgeOnlineQuality" >> beam.ParDo(_JudgeOnlineQuality(self._model_dir, self._t))
        )
        # The judges after a combine carry its continuation trigger, the online judge (after a
        # Map) the global window's default, and Flatten wants one windowing (Beam warns and
        # takes the first input's). Nothing groups the alerts after here (each is published on
        # its own), so every trigger does the same: the judged alerts go back to the plain
        # global window, the online judge's windowing.
        rewindowed = [
            alerts | f"{name}Alerts" >> beam.WindowInto(window.GlobalWindows())
            for name, alerts in (("Drift", judged.alerts), ("Health", health), ("Quality", quality))
        ]
        return (
            (*rewindowed, online)
            | "Alerts" >> beam.Flatten()
            | "PublishAlerts" >> beam.ParDo(_PublishAlerts(self._topic))
        )
