"""``bench/drift.py`` without the emulators: the shift, the sliding windows' replica, the figures
assembled from alert messages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import drift as bd
from models.reference import histogram
from pipelines.core.schema import format_rfc3339, parse_rfc3339
from pipelines.core.thresholds import DriftThresholds, load_thresholds

DRIFT_AT = "2018-08-16T10:00:00Z"
DRIFT_AT_US = parse_rfc3339(DRIFT_AT)
HOUR_US = 3600 * bd.S_US


def _frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2018-08-15")
    seconds = np.sort(rng.integers(0, 2 * 86400, n))
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n),
            "TX_DATETIME": start + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": rng.integers(0, 100, n),
            "TERMINAL_ID": rng.integers(0, 300, n),
            "TX_AMOUNT": np.round(rng.uniform(1, 200, n), 2),
            "TX_FRAUD": rng.integers(0, 2, n),
        }
    )


def test_shift_is_deterministic_and_only_moves_later_amounts_of_the_group() -> None:
    frame = _frame()
    original = frame.copy()
    shifted, group = bd.shift_amounts(frame, DRIFT_AT_US, 0.3, 3.0, seed=15)
    again, group_again = bd.shift_amounts(frame, DRIFT_AT_US, 0.3, 3.0, seed=15)
    pd.testing.assert_frame_equal(frame, original)  # the input is left alone
    pd.testing.assert_frame_equal(shifted, again)
    assert group == group_again == sorted(group)
    assert len(group) == 30  # 30% of the 100 customers
    assert bd.shift_amounts(frame, DRIFT_AT_US, 0.3, 3.0, seed=16)[1] != group
    for column in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"):
        pd.testing.assert_series_equal(shifted[column], frame[column])
    after = frame["TX_DATETIME"] >= pd.Timestamp(DRIFT_AT).tz_localize(None)
    in_group = frame["CUSTOMER_ID"].isin(group)
    moved = after & in_group
    assert moved.sum() > 100
    assert np.allclose(
        shifted.loc[moved, "TX_AMOUNT"], np.round(frame.loc[moved, "TX_AMOUNT"] * 3, 2)
    )
    pd.testing.assert_series_equal(shifted.loc[~moved, "TX_AMOUNT"], frame.loc[~moved, "TX_AMOUNT"])


def _alert(feature: str, window_end_us: int, kind: str = "drift", **extra: object) -> dict:
    return {
        "alert_id": f"{kind}|{feature}|{window_end_us}",
        "kind": kind,
        "metric": "psi",
        "feature": feature,
        "value": 0.9,
        "threshold": 0.25,
        "consecutive": 3,
        "window_start": format_rfc3339(window_end_us - HOUR_US),
        "window_end": format_rfc3339(window_end_us),
        "raised_at": "2026-12-02T07:00:00Z",
        **extra,
    }


def test_summarize_counts_and_delays() -> None:
    d = load_thresholds().drift
    q = 15 * 60 * bd.S_US
    amount = _alert("TX_AMOUNT", DRIFT_AT_US + 4 * q)  # window end 1 h after the shift
    shifted = [
        _alert("TERMINAL_ID_RISK_1DAY_WINDOW", DRIFT_AT_US),  # ends at the shift: "before"
        amount,
        amount,  # redelivered: one alert, two messages on the topic
        _alert("CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW", DRIFT_AT_US + 7 * q),
        _alert("score", DRIFT_AT_US + 3 * q),
        _alert("score", DRIFT_AT_US + 9 * q),  # a second episode: the first counts
        _alert("dead_letter_rate", DRIFT_AT_US - HOUR_US, kind="data_quality"),
    ]
    quiet = [_alert("latency_p99_ms", DRIFT_AT_US, kind="service_health")]
    touched = ["TX_AMOUNT", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW", "score"]
    r = bd.summarize(DRIFT_AT_US, shifted, quiet, d, touched)
    assert r["drift_at"] == DRIFT_AT
    assert r["alerts_before_drift"] == 1
    assert r["drifted_features_alerted"] == sorted(touched)
    assert r["alerts_on_topic"] == 7 and r["alerts_distinct"] == 6
    assert r["quiet_run_alerts"] == 1 and r["quiet_run_drift_alerts"] == 0
    # the first: the score's window ending 45 min after the shift, closed 5 min later
    assert r["first_alert_feature"] == "score"
    assert r["detection_delay_event_s"] == 45 * 60 + d.lateness_s
    assert r["first_alert_window_end_minus_drift_s"] == 45 * 60
    assert r["first_alert_at"] == format_rfc3339(DRIFT_AT_US + 3 * q + d.lateness_s * bd.S_US)
    assert r["per_feature"]["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"]["delay_event_s"] == 105 * 60 + 300
    assert r["touched_not_alerted_in_2h"] == []
    assert r["goal"] == {
        "detected_within_2h": True,
        "every_touched_feature_within_2h": True,
        "no_alert_before_drift": False,
        "no_alert_in_quiet_run": False,
    }
    keys = [
        "drift_at",
        "first_alert_at",
        "detection_delay_event_s",
        "alerts_before_drift",
        "drifted_features_alerted",
        "quiet_run_alerts",
        "alerts_on_topic",
    ]
    assert list(r)[: len(keys)] == keys


def test_summarize_without_alerts() -> None:
    r = bd.summarize(DRIFT_AT_US, [], [], DriftThresholds(), ["TX_AMOUNT"])
    assert r["first_alert_at"] is None and r["detection_delay_event_s"] is None
    assert r["alerts_before_drift"] == 0 and r["quiet_run_alerts"] == 0
    assert r["alerts_on_topic"] == 0 and r["drifted_features_alerted"] == []
    assert r["touched_not_alerted_in_2h"] == ["TX_AMOUNT"]
    assert r["goal"]["detected_within_2h"] is False
    assert r["goal"]["no_alert_in_quiet_run"] is True


def test_replay_windows_judges_as_the_monitor() -> None:
    rng = np.random.default_rng(1)
    hist = histogram(rng.uniform(0, 1, 5000))
    d = DriftThresholds(window_s=3600, period_s=900, lateness_s=300, min_count=300)
    # 4 hours, 400 values an hour, from DRIFT_AT - 2 h; the values move up at DRIFT_AT.
    times = DRIFT_AT_US - 2 * HOUR_US + np.sort(rng.integers(0, 4 * HOUR_US, 1600))
    values = np.where(times >= DRIFT_AT_US, rng.uniform(0.8, 1.0, 1600), rng.uniform(0, 1, 1600))
    windows = bd.replay_windows(times, values, hist, d)
    drift_at_s = DRIFT_AT_US // bd.S_US
    starts = [w.start_s for w in windows]
    assert starts == list(range(starts[0], starts[-1] + 1, 900))
    assert all(w.end_s - w.start_s == 3600 for w in windows)
    # only windows wholly inside the stream, closed once the clock is lateness_s past their end
    assert starts[0] >= drift_at_s - 7200
    assert windows[-1].end_s + 300 <= int(times.max() // bd.S_US)
    judged = [w for w in windows if w.psi is not None]
    assert all(w.n >= 300 for w in judged)
    assert max(w.psi for w in judged if w.end_s <= drift_at_s) < 0.25
    alerts = [w for w in windows if w.alert]
    assert len(alerts) == 1  # once per episode
    assert alerts[0].streak == 3 and drift_at_s < alerts[0].end_s <= drift_at_s + 3600


def test_touched_features_from_served_values() -> None:
    rng = np.random.default_rng(2)
    card = {
        "reference": {
            "inputs": {
                "TX_AMOUNT": histogram(rng.uniform(0, 100, 5000)),
                "TX_DURING_NIGHT": histogram(rng.integers(0, 2, 5000)),
            },
            "score": histogram(rng.uniform(0, 1, 5000)),
        }
    }

    def predictions(factor: float) -> list[dict]:
        out = []
        for i in range(3000):
            t = DRIFT_AT_US + (i - 1000) * 10 * bd.S_US
            amount = float(rng.uniform(0, 100)) * (factor if t >= DRIFT_AT_US else 1.0)
            out.append(
                {
                    "transaction_id": str(i),
                    "event_time": format_rfc3339(t),
                    "score": float(rng.uniform(0, 1)),
                    "features": {"TX_AMOUNT": amount, "TX_DURING_NIGHT": float(i % 2)},
                }
            )
        return out

    psis = bd.touched_features(predictions(3.0), predictions(1.0), card, DRIFT_AT_US)
    assert set(psis) == {"TX_AMOUNT", "TX_DURING_NIGHT", "score"}
    assert psis["TX_AMOUNT"] > 1.0
    assert psis["TX_DURING_NIGHT"] < 0.01 and psis["score"] < 0.05
