"""The monitoring's own logic without emulators: drift windows, PSI/JS, streaks, alerts JSON,
thresholds, data-quality rates, latency percentiles and the binning of prediction batches."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.alerts import Alert, Streaks
from pipelines.core.drift import DriftWindows, bin_counts, jensen_shannon, psi
from pipelines.core.thresholds import load_thresholds, packaged_thresholds_path
from tests.events import handbook_tx

UNIFORM = [100] * 10


def windows(**kw: object) -> DriftWindows:
    args: dict = dict(
        reference=UNIFORM,
        window_s=3600,
        period_s=900,
        lateness_s=300,
        threshold=0.25,
        consecutive=3,
        min_count=100,
        grace_s=5.0,
    )
    args.update(kw)
    return DriftWindows(**args)


def test_psi_and_js_are_zero_for_equal_shares_and_grow_with_the_shift() -> None:
    assert psi(UNIFORM, [50] * 10) == pytest.approx(0.0)
    assert jensen_shannon(UNIFORM, [50] * 10) == pytest.approx(0.0)
    mild = [150] + [95] * 9
    strong = [500] + [50] * 9
    assert 0 < psi(UNIFORM, mild) < psi(UNIFORM, strong)
    assert 0 < jensen_shannon(UNIFORM, mild) < jensen_shannon(UNIFORM, strong) <= 1


def test_bin_counts_match_the_reference_bins() -> None:
    hist = {"kind": "quantile", "edges": [0.0, 1.0, 2.0, 3.0], "counts": [1, 1, 1]}
    assert bin_counts([-5, 0.5, 1.0, 2.5, 3.0, 99, np.nan], hist).tolist() == [2, 1, 3]
    flags = {"kind": "categorical", "edges": [0.0, 1.0], "counts": [5, 5]}
    assert bin_counts([0, 1, 1, 0.9], flags).tolist() == [1, 3]


def test_a_window_closes_after_the_lateness_and_the_grace() -> None:
    w = windows()
    counts = np.full(10, 30)
    # The first bucket seen may hold only its end (a job started in its middle): windows start
    # after it. Buckets of 0..3600 s: [0, 3600) may close once an event at >= 3900 s is seen.
    first = {-900: counts, 0: counts, 900: counts, 1800: counts, 2700: counts}
    assert w.add(first, 3899, now_s=0) == []
    assert w.add({3600: counts}, 3900, now_s=1) == []  # closable, but within its grace
    assert w.pending
    closed = w.add({}, 3900, now_s=6.5)
    assert [(c.start_s, c.end_s, c.n) for c in closed] == [(0, 3600, 1200)]
    assert closed[0].psi == pytest.approx(0.0)
    # A bucket of a closed window is late: counted, left out (as the partial first one was).
    assert w.late == 300
    w.add({0: counts}, 3900, now_s=7)
    assert w.late == 600


def test_k_consecutive_windows_alert_once_per_episode() -> None:
    w = windows(consecutive=3, grace_s=0)
    quiet, shifted = np.full(10, 30), np.array([300] + [3] * 9)
    alerts, now = [], 0.0
    for i in range(40):
        start = i * 900
        counts = shifted if 10 <= i < 30 else quiet
        now += 1
        for c in w.add({start: counts}, start + 899, now):
            if c.alert:
                alerts.append(c)
    # Two episodes? No: one shift, one alert, when the third over-threshold window closes.
    assert len(alerts) == 1
    first_over = 10 * 900  # the first bucket of shifted data
    assert alerts[0].streak == 3 and alerts[0].start_s < first_over < alerts[0].end_s


def test_small_windows_are_not_judged_and_keep_the_streak() -> None:
    w = windows(consecutive=2, grace_s=0, min_count=5000)
    closed = []
    for i in range(8):
        closed += w.add({i * 900: np.array([300] + [3] * 9)}, i * 900 + 899, float(i))
    assert closed and all(c.psi is None and not c.over and c.streak == 0 for c in closed)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60))
def test_windows_sum_their_buckets(bucket_sizes: list[int]) -> None:
    """Every value lands in window_s / period_s windows (the sliding windows' coverage)."""
    w = windows(min_count=0, grace_s=0, lateness_s=0)
    closed = []
    for i, n in enumerate(bucket_sizes):
        counts = np.zeros(10, dtype=np.int64)
        counts[i % 10] = n
        closed += w.add({i * 900: counts}, i * 900 + 899, float(i))
    closed += w.add({}, 10**9, 1e6)  # the clock jumps: every window closes
    by_start = {c.start_s: c.n for c in closed}
    for start, n in by_start.items():
        first = start // 900
        assert n == sum(bucket_sizes[first : first + 4])


def test_streaks_judge_once_per_episode_and_skip_unjudged() -> None:
    s = Streaks(consecutive=2)
    assert s.judge("m", True) == (1, False)
    assert s.judge("m", None) == (1, False)
    assert s.judge("m", True) == (2, True)
    assert s.judge("m", True) == (3, False)
    # A flicker under the threshold does not end the episode ...
    assert s.judge("m", False) == (0, False)
    assert s.judge("m", True) == (1, False)
    assert s.judge("m", True) == (2, False)
    # ... two windows in a row under it do: the next streak of two alerts again.
    assert s.judge("m", False) == (0, False)
    assert s.judge("m", False) == (0, False)
    assert s.judge("m", True) == (1, False)
    assert s.judge("m", True) == (2, True)
    assert s.judge("other", True) == (1, False)


def test_a_flickering_drift_raises_one_alert() -> None:
    w = windows(consecutive=2, grace_s=0, period_s=3600)
    quiet, shifted = np.full(10, 30), np.array([300] + [3] * 9)
    pattern = [quiet] * 3 + [shifted, shifted, quiet, shifted, shifted, quiet, shifted] + [quiet]
    closed = []
    for i, counts in enumerate(pattern):
        closed += w.add({i * 3600: counts}, i * 3600 + 3599, float(i))
    assert [c.alert for c in closed].count(True) == 1


def test_alert_message_follows_the_contract() -> None:
    alert = Alert(
        kind="drift",
        metric="psi",
        value=0.41,
        threshold=0.25,
        comparison=">=",
        window_start_s=1_523_404_800,
        window_end_s=1_523_408_400,
        window_basis="event_time",
        severity="warning",
        message_text="TX_AMOUNT drifted",
        model_version="v1",
        feature="TX_AMOUNT",
        consecutive=3,
        raised_at_s=1_796_000_000.5,
    )
    data, attributes = alert.message()
    body = json.loads(data)
    assert set(body) == {
        "schema_version", "alert_id", "kind", "metric", "value", "threshold", "comparison",
        "window_start", "window_end", "window_basis", "consecutive", "severity",
        "model_version", "feature", "message", "raised_at",
    }  # fmt: skip
    assert body["window_start"] == "2018-04-11T00:00:00Z"
    assert body["raised_at"] == "2026-11-30T00:53:20.500Z"
    assert attributes == {
        "kind": "drift",
        "metric": "psi",
        "severity": "warning",
        "model_version": "v1",
        "feature": "TX_AMOUNT",
        "schema_version": "1",
    }
    # The id names the finding, not the moment it was raised: re-emissions dedupe.
    again = Alert(**{**alert.as_dict(), "raised_at_s": 0.0, "value": 0.5})
    assert again.alert_id == alert.alert_id


def test_packaged_thresholds_load_and_bad_files_say_what_is_wrong(tmp_path) -> None:
    t = load_thresholds()
    assert t.drift.for_feature("TX_AMOUNT").window_s == 3600
    assert t.drift.for_feature("TX_DURING_NIGHT").window_s == 86400
    assert not t.drift.for_feature("TX_DURING_WEEKEND").enabled
    raw = json.loads(packaged_thresholds_path().read_text())
    raw["drift"]["treshold"] = 0.1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="treshold"):
        load_thresholds(bad)
    raw = json.loads(packaged_thresholds_path().read_text())
    raw["drift"]["period_s"] = 700
    bad.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="multiple of period_s"):
        load_thresholds(bad)


def test_quality_rates_and_latency_percentiles() -> None:
    from pipelines.transforms.monitoring import Stats, latency_percentile, quality_rates

    stats = Stats()
    stats.counts.update(
        {
            "predictions": 900,
            "corrections": 100,
            "labels": 80,
            "dead_letter/not_json": 10,
            "dead_letter/unknown_transaction": 20,
            "dead_letter/duplicate_transaction_id": 10,
        }
    )
    rates = quality_rates(stats)
    assert rates["dead_letter_rate"] == pytest.approx(40 / 1020)
    assert rates["unknown_label_rate"] == pytest.approx(20 / 100)
    assert rates["duplicate_rate"] == pytest.approx(10 / 1020)
    assert rates["late_event_rate"] == pytest.approx(100 / 1000)
    assert quality_rates(Stats())["dead_letter_rate"] is None

    from pipelines.transforms.monitoring import _latency_bin

    hist: dict[int, int] = {}
    for ms in range(1, 1001):
        hist[_latency_bin(ms)] = hist.get(_latency_bin(ms), 0) + 1
    assert latency_percentile(hist, 0.5) == pytest.approx(500, rel=0.03)
    assert latency_percentile(hist, 0.99) == pytest.approx(990, rel=0.03)
    assert latency_percentile({}, 0.5) is None


def test_a_percentile_is_never_above_the_max() -> None:
    """The bin's upper edge bounds its latencies; the exact maximum bounds them more tightly
    (issue 22: p99 446 ms over a max of 444 ms)."""
    from pipelines.transforms.monitoring import _latency_bin, latency_percentile

    latencies = [120.0, 300.0, 444.0]
    hist: dict[int, int] = {}
    for ms in latencies:
        hist[_latency_bin(ms)] = hist.get(_latency_bin(ms), 0) + 1
    assert latency_percentile(hist, 0.99) > 444.0  # the edge alone: above every latency
    assert latency_percentile(hist, 0.99, max(latencies)) == 444.0
    assert latency_percentile(hist, 0.50, max(latencies)) == latency_percentile(hist, 0.50)


def test_prediction_batches_are_binned_per_version_feature_and_bucket(tmp_path) -> None:
    from pipelines.core.batches import FeatureBatch
    from pipelines.core.definitions import MODEL_INPUTS
    from pipelines.transforms.inference import PredictionBatch
    from pipelines.transforms.monitoring import SCORE, _BinInputs

    hist = {"kind": "quantile", "edges": [0.0, 0.5, 1.0], "counts": [5, 5]}
    card = {"reference": {"inputs": {"TX_AMOUNT": hist}, "score": hist}}

    class Refs:
        def histograms(self, version: str) -> dict:
            return {"TX_AMOUNT": hist, SCORE: hist} if version in ("v1", "v2") else {}

        def card(self, version: str) -> dict:
            return card

    fn = _BinInputs(str(tmp_path), load_thresholds())
    fn.setup()
    fn._refs = Refs()  # type: ignore[assignment]
    txs = [
        handbook_tx(f"t{i}", (3600 * 10 + i * 1000) * 1_000_000, "c", "t", 1.0) for i in range(3)
    ]
    features = np.zeros((3, len(MODEL_INPUTS)))
    features[:, MODEL_INPUTS.index("TX_AMOUNT")] = [0.2, 0.7, 0.9]
    pb = PredictionBatch(
        FeatureBatch(txs, features, revision=1, names=MODEL_INPUTS),
        np.array([0.1, 0.2, 0.8]),
        "v1",
        0,
        challenger_scores=np.array([0.6, 0.6, 0.6]),
        challenger_version="v2",
    )
    out = dict(fn.bin(pb))
    amount, latest = out["v1"]["TX_AMOUNT"]
    # Event times 36000, 37000, 38000 s: buckets of 900 s starting 36000, 36900, 37800.
    assert {b: c.tolist() for b, c in amount.items()} == {
        36000: [1, 0],
        36900: [0, 1],
        37800: [0, 1],
    }
    assert latest == 38000
    assert sum(c.tolist()[1] for c in out["v2"][SCORE][0].values()) == 3
    correction = PredictionBatch(
        FeatureBatch(txs, features, revision=2, correction=True, names=MODEL_INPUTS),
        pb.scores,
        "v1",
        0,
    )
    fn.start_bundle()
    fn.process(correction)
    assert list(fn.finish_bundle()) == []
    fn.process(pb)
    fn.process(pb)
    rows = dict(w.value for w in fn.finish_bundle())
    # One element per version and bundle: the two batches' counts summed, as a row; the
    # version's role is the one it served in.
    (amount_row,) = [f for f in rows["v1"].features if f.feature == "TX_AMOUNT"]
    assert (amount_row.latest_s, amount_row.buckets[0]) == (38000, (36000, [2, 0]))
    assert rows["v1"].champion and not rows["v2"].champion


def test_alert_thresholds_option_is_read_through_beam_filesystems(tmp_path, capsys) -> None:
    from pipelines.main import pipeline_options
    from pipelines.options import RilletOptions

    raw = json.loads(packaged_thresholds_path().read_text())
    raw["drift"]["threshold"] = 0.33
    path = tmp_path / "t.json"
    path.write_text(json.dumps(raw))
    options = pipeline_options(["--project=x", f"--alert_thresholds={path}"])
    assert options.view_as(RilletOptions).thresholds().drift.threshold == 0.33
    with pytest.raises(SystemExit) as info:
        pipeline_options(["--project=x", f"--alert_thresholds={tmp_path / 'missing.json'}"])
    assert info.value.code == 2
    assert "--alert_thresholds: cannot read" in capsys.readouterr().err


class FakeRefs:
    """Every version has a reference histogram for TX_AMOUNT, the score and an undeclared
    feature (a card from other definitions)."""

    hist = {"kind": "quantile", "edges": [0.0, 0.5, 1.0], "counts": [50, 50]}

    def histograms(self, version: str) -> dict:
        return {"TX_AMOUNT": self.hist, "score": self.hist, "NOT_DECLARED": self.hist}

    def card(self, version: str) -> dict:
        return {}


def judge_drift(tmp_path):  # type: ignore[no-untyped-def]
    from pipelines.core.definitions import MODEL_INPUTS
    from pipelines.transforms.monitoring import _FeatureConfigs, _JudgeDrift
    from tests.unit.dofn_state import Harness

    fn = _JudgeDrift(str(tmp_path), load_thresholds(), grace_s=0, features=MODEL_INPUTS)
    fn._refs = FakeRefs()  # type: ignore[assignment]
    fn._configs = _FeatureConfigs(load_thresholds().drift)
    return Harness(fn)


def delta(champion: bool, hour: int, counts: list[int]):  # type: ignore[no-untyped-def]
    """One flush: a quarter-hour bucket of 400 values, the clock at its end."""
    from pipelines.core.drift import BucketCounts
    from pipelines.transforms.monitoring import DriftDelta

    start = 1_533_686_400 + hour * 900
    return DriftDelta(champion, start + 899, [BucketCounts(start, counts)])


def test_drift_gauges_are_named_by_role_and_declared_feature(tmp_path, monkeypatch) -> None:
    """However many versions come and go, the gauge names are the roles times the declared
    features: the versions are in the alerts and the drift windows."""
    from pipelines.transforms import monitoring

    names: set[str] = set()
    monkeypatch.setattr(monitoring, "_gauge", lambda name, value: names.add(name))
    windows = []
    for v in range(6):  # six versions, each the champion, then shadowed by the next
        for feature in ("TX_AMOUNT", "score", "NOT_DECLARED"):
            h = judge_drift(tmp_path)
            for hour in range(12):
                champion = hour < 6
                out = h.process((f"v{v}", feature), delta(champion, hour, [200, 200]))
                windows += [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert windows and {w["model_version"] for w in windows} == {f"v{v}" for v in range(6)}
    assert names == {
        f"{gauge}/{role}/{feature}"
        for gauge in ("drift_psi_milli", "drift_n", "drift_window_end_s", "drift_streak")
        for role in ("champion", "challenger")
        for feature in ("TX_AMOUNT", "score")
    }


def test_drift_state_is_a_row_that_resumes_and_is_let_go_after_a_day(tmp_path) -> None:
    from pipelines.core.drift import DriftProgress

    h = judge_drift(tmp_path)
    key = ("v1", "TX_AMOUNT")
    for hour in range(8):
        h.process(key, delta(True, hour, [380, 20] if hour >= 4 else [200, 200]))
    progress = h.cells["windows"].read()  # decoded with the cell's RowCoder
    assert isinstance(progress, tuple) and progress._fields == DriftProgress._fields
    assert progress.next_start_s is not None and progress.buckets
    # Resumed from the row, the windows go on exactly as one object kept in memory would.
    kept = judge_drift(tmp_path).fn._windows("v1", "TX_AMOUNT", None)
    assert kept is not None
    for hour in range(8):
        kept.add(
            {1_533_686_400 + hour * 900: [380, 20] if hour >= 4 else [200, 200]},
            1_533_686_400 + hour * 900 + 899,
            0.0,
        )
    assert kept.progress()._replace(closable_since=[]) == progress._replace(closable_since=[])
    assert h.timers["expire"].at is not None
    h.fire("expire", key)
    assert h.empty


def test_window_judges_keep_their_streaks_as_rows(monkeypatch) -> None:
    from pipelines.core.alerts import StreakRow
    from pipelines.transforms import monitoring
    from pipelines.transforms.monitoring import Stats, _JudgeHealth
    from tests.unit.dofn_state import Harness

    monkeypatch.setattr(monitoring, "_gauge", lambda name, value: None)
    thresholds = load_thresholds()
    h = Harness(_JudgeHealth(thresholds))
    slow = Stats()
    slow.counts["predictions"] = 100
    slow.latency[monitoring._latency_bin(thresholds.service_health.latency_p99_ms * 2)] = 100
    alerts = []
    for _ in range(thresholds.service_health.consecutive):
        alerts += h.process("health", slow.row())
    assert [a.metric for a in alerts] == ["latency_p99_ms"]
    streaks = h.cells["streaks"].read()
    assert [tuple(r) for r in streaks] == [
        tuple(StreakRow("dead_letter_per_s", 0, thresholds.service_health.consecutive, True)),
        tuple(StreakRow("latency_p99_ms", thresholds.service_health.consecutive, 0, False)),
    ]


def test_online_quality_alerts_once_per_day_and_remembers_a_bounded_number_of_days(
    tmp_path,
) -> None:
    from pipelines.transforms.monitoring import ALERTED_DAYS, _JudgeOnlineQuality
    from pipelines.transforms.online_eval import DayFigures
    from tests.unit.dofn_state import Harness

    class Card(FakeRefs):
        def card(self, version: str) -> dict:
            return {"offline_metrics": {"ap": 0.8, "cp100": 0.3}}

    fn = _JudgeOnlineQuality(str(tmp_path), load_thresholds())
    fn._refs = Card()  # type: ignore[assignment]
    fn._champion, fn._read_at = None, float("inf")  # no registry: every version is judged
    h = Harness(fn)
    alerts = []
    days = [f"2018-05-{d:02d}" for d in range(1, 32)] + [f"2018-06-{d:02d}" for d in range(1, 10)]
    for day in days:
        for _ in range(2):  # a day's figures come again (every --eval_every_s): one alert
            figures = DayFigures("v1", day, "champion", 5000, 60, 0.9, 0.1, 0.3, False)
            alerts += h.process("v1", figures)
    assert len(alerts) == 40 and {a.metric for a in alerts} == {"online_ap"}
    kept = list(h.cells["alerted"].read())
    assert kept == sorted(kept) and len(kept) == ALERTED_DAYS + 1
    assert kept[-1] == "2018-06-09|ap"


def test_definitions_option_is_read_through_beam_filesystems(tmp_path, capsys) -> None:
    from pipelines.core.declarations import WORKLOADS
    from pipelines.main import pipeline_options
    from pipelines.options import RilletOptions
    from pipelines.streaming import job_definitions

    default = pipeline_options(["--project=x"])
    assert job_definitions(default).name == "handbook"
    payments = pipeline_options(["--project=x", f"--definitions={WORKLOADS / 'payments.yaml'}"])
    assert job_definitions(payments).name == "payments"
    assert len(payments.view_as(RilletOptions).job_definitions().entities) == 4
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (WORKLOADS / "payments.yaml").read_text().replace("window: 10m", "window: 10x")
    )
    with pytest.raises(SystemExit) as info:
        pipeline_options(["--project=x", f"--definitions={broken}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--definitions:" in err and "'10x' is not a duration" in err
