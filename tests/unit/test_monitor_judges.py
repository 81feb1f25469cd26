"""The Monitor's online-quality and service-health judges (pipelines/transforms/monitoring.py), on
the DirectRunner with TestStream, judged by the alerts they emit (the messages of the alerts
topic, docs/specs/monitoring.md) under the packaged thresholds (pipelines/core/
alert_thresholds.json):

- online quality: an alert when the champion's online AP or CP@100 of a day is below 70% of its
  model card's validation figure and the day holds at least 1,000 labels and 10 frauds; once per
  (day, metric); never for the challenger;
- service health: an alert when the p99 latency is at or above 5 s, or the dead letters at or
  above 1 per second, in 3 processing-time windows in a row (once per episode).

Each TestStream step is one element (an online-evaluation row, or one window's merged counts),
delivered in order. The health judge measures a window from its previous one by the wall clock:
here a clock that moves one window (60 s) per judged window, so the rates are what the counts say.
"""

from __future__ import annotations

import json
import time as real_time
import types
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from pipelines.core.batches import FeatureBatch
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.messages import DeadLetter
from pipelines.core.thresholds import load_thresholds
from pipelines.stores.model_registry import ModelRegistry
from pipelines.transforms import monitoring
from pipelines.transforms.inference import PredictionBatch
from pipelines.transforms.online_eval import DayFigures
from tests.cards import card_fields
from tests.events import handbook_tx

THRESHOLDS = load_thresholds()
WINDOW_S = THRESHOLDS.service_health.window_s
_ALERTS: dict[str, list[dict[str, Any]]] = {}


class _Collect(beam.DoFn):
    def __init__(self, run: str) -> None:
        self.run = run

    def process(self, alert: Any) -> None:
        _ALERTS.setdefault(self.run, []).append(alert.to_json())


def judge(steps: Sequence[Any], fn: beam.DoFn) -> list[dict[str, Any]]:
    """The alerts ``fn`` emits for ``steps`` (one keyed element per TestStream step), in order."""
    run = uuid.uuid4().hex
    stream = TestStream()
    for element in steps:
        stream = stream.add_elements([element]).advance_processing_time(WINDOW_S)
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | stream.advance_watermark_to_infinity()
            | "Judge" >> beam.ParDo(fn)
            | "Collect" >> beam.ParDo(_Collect(run))
        )
    return _ALERTS.pop(run, [])


# -- online quality ---------------------------------------------------------------------------

VALIDATION = {"auc": 0.9, "ap": 0.6, "cp100": 0.3}  # thresholds at 70%: AP 0.42, CP@100 0.21


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry with champion v1 and challenger v2, whose cards hold validation figures."""
    for version in ("v1", "v2"):
        (tmp_path / version / "saved_model").mkdir(parents=True)
        (tmp_path / version / "saved_model" / "saved_model.pb").write_bytes(b"-")
        card = {
            "version": version,
            **card_fields(MODEL_INPUTS),
            "offline_metrics": VALIDATION,
        }
        (tmp_path / version / "model_card.json").write_text(json.dumps(card))
    registry = ModelRegistry(tmp_path)
    registry.register("v1", as_="champion")
    registry.register("v2", as_="challenger")
    return tmp_path


def row(
    version: str, day: str, n: int, frauds: int, ap: float | None, cp100: float | None
) -> tuple[str, DayFigures]:
    """An online-evaluation row of (version, day), keyed by version as the Monitor keys them."""
    return version, DayFigures(version, day, "champion", n, frauds, 0.8, ap, cp100, False)


def online_alerts(registry: Path, rows: Sequence[Any]) -> list[tuple[str, str, str, float]]:
    alerts = judge(rows, monitoring._JudgeOnlineQuality(str(registry), THRESHOLDS))
    assert all(a["kind"] == "online_quality" and a["comparison"] == "<" for a in alerts)
    return [(a["model_version"], a["window_start"][:10], a["metric"], a["value"]) for a in alerts]


def test_a_day_below_70_percent_of_validation_with_enough_labels_alerts(registry: Path) -> None:
    alerts = judge(
        [row("v1", "2018-04-10", 1_000, 10, ap=0.41, cp100=0.25)],
        monitoring._JudgeOnlineQuality(str(registry), THRESHOLDS),
    )
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert["kind"], alert["metric"], alert["model_version"]) == (
        "online_quality",
        "online_ap",
        "v1",
    )
    assert alert["value"] == 0.41 and alert["threshold"] == pytest.approx(0.42)
    assert (alert["window_start"], alert["window_end"]) == (
        "2018-04-10T00:00:00Z",
        "2018-04-11T00:00:00Z",
    )
    assert alert["severity"] == THRESHOLDS.online_quality.severity


def test_online_quality_alerts_exactly_when_the_rule_says(registry: Path) -> None:
    rows = [
        # Under 70% on both, but too few labels, then too few frauds: not judged.
        row("v1", "2018-04-11", 999, 50, ap=0.1, cp100=0.1),
        row("v1", "2018-04-12", 5_000, 9, ap=0.1, cp100=0.1),
        # The challenger's figures are never judged, however bad.
        row("v2", "2018-04-10", 5_000, 100, ap=0.1, cp100=0.1),
        # Above 70% on both: nothing; then CP@100 alone under it.
        row("v1", "2018-04-13", 2_000, 30, ap=0.43, cp100=0.22),
        row("v1", "2018-04-13", 2_500, 35, ap=0.45, cp100=0.20),
        # A day's figures come again at every firing: one alert per (day, metric).
        row("v1", "2018-04-10", 1_000, 10, ap=0.41, cp100=0.25),
        row("v1", "2018-04-10", 1_200, 12, ap=0.40, cp100=0.25),
        row("v1", "2018-04-10", 1_500, 14, ap=0.39, cp100=0.20),
        # An undefined figure (no fraud scored yet, say) is not judged.
        row("v1", "2018-04-14", 3_000, 20, ap=None, cp100=0.5),
    ]
    assert online_alerts(registry, rows) == [
        ("v1", "2018-04-13", "online_cp100", 0.2),
        ("v1", "2018-04-10", "online_ap", 0.41),
        ("v1", "2018-04-10", "online_cp100", 0.2),
    ]


def test_the_challenger_is_judged_once_it_is_promoted(registry: Path) -> None:
    ModelRegistry(registry).promote("v2")
    rows = [
        row("v1", "2018-04-10", 5_000, 100, ap=0.1, cp100=0.3),
        row("v2", "2018-04-10", 5_000, 100, ap=0.1, cp100=0.3),
    ]
    assert online_alerts(registry, rows) == [("v2", "2018-04-10", "online_ap", 0.1)]


# -- service health ---------------------------------------------------------------------------


def window(latencies_ms: Sequence[float] = (), dead_letters: int = 0) -> tuple[str, Any]:
    """One processing-time window's merged counts, as the Monitor's BundleStats and merge give
    them for these predictions (event-to-prediction latencies) and dead letters."""
    fn = monitoring._BundleStats()
    fn.start_bundle()
    predicted_at = 1_800_000_000_000_000
    if latencies_ms:
        txs = [
            handbook_tx(f"t{i}", 0, "c", "k", 1.0, publish_time_us=predicted_at - int(ms * 1000))
            for i, ms in enumerate(latencies_ms)
        ]
        batch = FeatureBatch(
            txs, np.zeros((len(txs), len(MODEL_INPUTS))), revision=1, names=MODEL_INPUTS
        )
        fn.process(PredictionBatch(batch, np.zeros(len(txs)), "v1", predicted_at))
    for i in range(dead_letters):
        fn.process(DeadLetter(b"x%d" % i, "not_json", "", "transactions", "parse"))
    ((_, stats),) = [w.value for w in fn.finish_bundle()]  # (shard, the bundle's StatsRow)
    return "health", stats


FAST = [120.0] * 200  # p99 120 ms
SLOW = [120.0] * 196 + [9_000.0] * 4  # p99 9 s: 4 of 200 above the 99th percentile's rank


class _OneWindowPerCall:
    """The judge's wall clock, moved one window per reading: one reading per judged window."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        self.now += WINDOW_S
        return self.now


@pytest.fixture
def windows_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    clock = _OneWindowPerCall()
    fake = types.SimpleNamespace(
        **{n: getattr(real_time, n) for n in dir(real_time) if n[0] != "_"}
    )
    fake.time = clock.time
    monkeypatch.setattr(monitoring, "time", fake)
    yield


def health_alerts(windows: Sequence[tuple[str, Any]]) -> list[tuple[str, int, float]]:
    alerts = judge(windows, monitoring._JudgeHealth(THRESHOLDS))
    assert all(a["kind"] == "service_health" and a["comparison"] == ">=" for a in alerts)
    return [(a["metric"], a["consecutive"], a["value"]) for a in alerts]


@pytest.mark.usefixtures("windows_clock")
def test_p99_latency_over_5_s_for_3_windows_alerts_once() -> None:
    slow, fast = window(SLOW), window(FAST)
    alerts = health_alerts([fast, slow, slow, slow, slow, slow])
    assert [(m, k) for m, k, _ in alerts] == [("latency_p99_ms", 3)]
    assert alerts[0][2] == pytest.approx(9_000, rel=0.02)


@pytest.mark.usefixtures("windows_clock")
def test_one_or_two_slow_windows_in_a_row_do_not_alert() -> None:
    slow, fast = window(SLOW), window(FAST)
    assert health_alerts([slow, fast, slow, slow, fast, fast, slow, fast, slow, slow]) == []


@pytest.mark.usefixtures("windows_clock")
def test_a_window_without_predictions_neither_breaks_nor_extends_a_latency_streak() -> None:
    slow, idle = window(SLOW), window(dead_letters=1)  # 1 dead letter a minute: under 1/s
    assert [m for m, _, _ in health_alerts([slow, slow, idle, slow])] == ["latency_p99_ms"]
    assert health_alerts([slow, idle, slow]) == []


@pytest.mark.usefixtures("windows_clock")
def test_dead_letters_over_1_per_s_for_3_windows_alert() -> None:
    over = window(FAST, dead_letters=WINDOW_S + 1)  # 61 in 60 s
    under = window(FAST, dead_letters=WINDOW_S - 1)  # 59 in 60 s
    assert health_alerts([under, under, under, under]) == []
    assert health_alerts([over, over, under, over, over]) == []
    alerts = health_alerts([under, over, over, over, over])
    assert [(m, k) for m, k, _ in alerts] == [("dead_letter_per_s", 3)]
    assert alerts[0][2] == pytest.approx((WINDOW_S + 1) / WINDOW_S, abs=1e-3)
