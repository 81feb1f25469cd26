"""The Monitor stage in the running job, on the emulators: a shift in the data raises a drift
alert on the alerts topic (with the contract's fields), the unshifted part raises none, the
gauges carry the figures, and a burst of malformed input raises a data-quality alert.

The tiny dataset holds about 120 transactions a day, so the test declares its own thresholds
(daily windows; the packaged ones judge hourly windows of at least 200 values)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.app.publisher import ReplayEvent, malformed_examples, replay_events
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.thresholds import packaged_thresholds_path

pytestmark = pytest.mark.integration

DAY = 86400


def _thresholds(path: Path) -> Path:
    raw = json.loads(packaged_thresholds_path().read_text())
    raw["drift"].update(
        window_s=2 * DAY, period_s=DAY, lateness_s=0, min_count=100, consecutive=2, threshold=0.5
    )
    # The test's feature store starts empty, so the counts and risks over past windows (and the
    # score, which reads them) start far below the training's: true drift, but not this test's.
    # The calendar indicators keep their packaged overrides (TX_DURING_WEEKEND is not judged).
    cold = {"enabled": False, "why": "the test's store starts empty"}
    for name in MODEL_INPUTS:
        if "_NB_TX_" in name or "_RISK_" in name:
            raw["drift"]["features"][name] = cold
    raw["drift"]["features"]["score"] = cold
    raw["data_quality"].update(window_s=2, min_events=5)
    raw["service_health"].update(window_s=2)
    path.write_text(json.dumps(raw))
    return path


def _pull_alerts(subscriber, subscription: str) -> list[dict]:  # type: ignore[no-untyped-def]
    response = subscriber.pull(
        request={"subscription": subscription, "max_messages": 100}, timeout=10
    )
    if response.received_messages:
        subscriber.acknowledge(
            request={
                "subscription": subscription,
                "ack_ids": [m.ack_id for m in response.received_messages],
            }
        )
    return [
        json.loads(m.message.data) | {"_attributes": dict(m.message.attributes)}
        for m in response.received_messages
    ]


def test_shift_raises_drift_alert_and_quiet_part_none(tmp_path, tiny_frame, model_dir) -> None:
    from apache_beam.metrics.metric import MetricsFilter
    from google.cloud import pubsub_v1

    from pipelines.app.local import create_subscription
    from pipelines.app.local_run import LocalRun, wait_until
    from pipelines.transforms.monitoring import MONITOR_NAMESPACE

    frame = tiny_frame.sort_values("TX_DATETIME").reset_index(drop=True)
    first = frame.TX_DATETIME.min().normalize()
    shift_at = first + (frame.TX_DATETIME.max() - first) / 2
    shift_at = shift_at.normalize()
    shifted = frame.copy()
    after = shifted.TX_DATETIME >= shift_at
    shifted.loc[after, "TX_AMOUNT"] = shifted.loc[after, "TX_AMOUNT"] * 6
    events = replay_events(shifted, include_labels=False)
    bad = [ReplayEvent("transactions", b, 0) for b in malformed_examples()]
    thresholds = _thresholds(tmp_path / "thresholds.json")

    with LocalRun(tmp_path / "stack") as run:
        project = run.topology.project
        alerts_sub = create_subscription(project, "alerts-test", run.topology.alerts_topic)
        result = run.start_pipeline(
            [
                f"--model_dir={model_dir}",
                f"--alert_thresholds={thresholds}",
                "--monitor_every_s=1",
            ]
        )
        run.publish(events)
        run.wait_predicted(len(frame), timeout_s=300)
        run.publish(bad * 3)  # a burst of malformed input: the dead-letter rate jumps
        subscriber = pubsub_v1.SubscriberClient()
        alerts: list[dict] = []

        def seen() -> bool:
            alerts.extend(_pull_alerts(subscriber, alerts_sub))
            kinds = {(a["kind"], a["feature"]) for a in alerts}
            # Publishing everything at once delivers some events out of order, so on a slow
            # machine the late-event rate may alert too; the burst must raise the dead-letter one.
            return ("drift", "TX_AMOUNT") in kinds and any(
                a["kind"] == "data_quality" and a["metric"] == "dead_letter_rate" for a in alerts
            )

        wait_until(seen, 120, "no drift alert on TX_AMOUNT and data-quality alert")
        metrics = result.metrics().query(MetricsFilter().with_namespace(MONITOR_NAMESPACE))
        subscriber.close()

    drift = [a for a in alerts if a["kind"] == "drift"]
    shift_s = shift_at.timestamp()
    for alert in drift:
        # Only windows holding shifted data alert; the quiet half raises nothing.
        assert alert["window_end"] > shift_at.strftime("%Y-%m-%dT%H:%M:%SZ"), alert
        assert alert["value"] >= alert["threshold"] == 0.5
        assert alert["consecutive"] == 2
        assert alert["window_basis"] == "event_time"
        assert alert["_attributes"]["kind"] == "drift"
        assert alert["_attributes"]["feature"] == alert["feature"]
        assert alert["model_version"] == alert["_attributes"]["model_version"] != ""
    amount = next(a for a in drift if a["feature"] == "TX_AMOUNT")
    end_s = pd.Timestamp(amount["window_end"]).timestamp()
    # The windows ending one and two days after the shift hold shifted data: the second is the
    # K-th (K = 2) in a row.
    assert end_s == shift_s + 2 * DAY
    quality = [
        a for a in alerts if a["kind"] == "data_quality" and a["metric"] == "dead_letter_rate"
    ]
    assert quality[0]["value"] >= quality[0]["threshold"]
    assert quality[0]["window_basis"] == "processing_time"
    gauges = {m.key.metric.name: m.committed.value for m in metrics["gauges"] if m.committed}
    # Named by role (bounded): the version is the alert's.
    assert gauges["drift_psi_milli/champion/TX_AMOUNT"] >= 500
    assert not any(amount["model_version"] in name for name in gauges)
    assert gauges["latency_p99_ms"] >= gauges["latency_p50_ms"] > 0
