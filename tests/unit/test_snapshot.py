"""The local monitoring snapshot (pipelines/local_runner/snapshot.py) from fake Beam metrics, and
the pull wrapper's backlog bookkeeping (pipelines/local_runner/pubsub_pull.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from apache_beam.metrics.cells import DistributionData, DistributionResult, GaugeData, GaugeResult
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metricbase import MetricName

from pipelines.core.schema import parse_rfc3339
from pipelines.local_runner import snapshot as snap
from pipelines.local_runner.pubsub_pull import PullStats, SubscriptionPulls, pull_stats

TX = "projects/p/subscriptions/transactions-rillet"
LB = "projects/p/subscriptions/labels-rillet"


def counter(ns: str, name: str, value: int, step: str = "s1", attempted: int = 0) -> MetricResult:
    return MetricResult(MetricKey(step, MetricName(ns, name)), value, attempted)


def gauge(ns: str, name: str, value: int, ts: float = 1.0, step: str = "s1") -> MetricResult:
    result = GaugeResult(GaugeData(value, ts))
    return MetricResult(MetricKey(step, MetricName(ns, name)), result, result)


def distribution(ns: str, name: str, values: list[int], step: str = "s1") -> MetricResult:
    data = DistributionData(sum(values), len(values), min(values), max(values))
    return MetricResult(MetricKey(step, MetricName(ns, name)), DistributionResult(data), None)


class FakeResult:
    """A PipelineResult whose metrics().query() answers the given MetricResults."""

    def __init__(self, **query: list[MetricResult]) -> None:
        self.query_answer = {"counters": [], "gauges": [], "distributions": [], **query}

    def metrics(self) -> Any:
        return SimpleNamespace(query=lambda *a, **k: self.query_answer)


def full_metrics() -> dict[str, list[MetricResult]]:
    m, ev = snap.MONITOR_NAMESPACE, snap.EVAL_NAMESPACE
    return {
        "counters": [
            counter("rillet", "transactions_valid", 600, "parse_tx"),
            counter("rillet", "labels_valid", 400, "parse_lb"),
            counter("rillet", "predictions_written", 300, "sink_a"),
            counter("rillet", "predictions_written", 200, "sink_b"),  # summed over steps
            counter("rillet", "dead_letters_published", None, attempted=7),  # type: ignore[arg-type]
            counter("other", "transactions_valid", 99),  # another namespace: ignored
            counter(m, "alerts_raised", 2),
            counter(m, "alerts_raised/drift", 2),
        ],
        "gauges": [
            gauge(m, "latency_p50_ms", 250),
            gauge(m, "latency_p99_ms", 780, ts=1.0, step="a"),
            gauge(m, "latency_p99_ms", 790, ts=2.0, step="b"),  # the latest wins
            gauge(m, "latency_max_ms", 900),
            gauge(m, "drift_psi_milli/champion/TX_AMOUNT", 312),
            gauge(m, "drift_n/champion/TX_AMOUNT", 400),
            gauge(m, "drift_window_end_s/champion/TX_AMOUNT", 1_800_000_000),
            gauge(m, "drift_streak/champion/TX_AMOUNT", 3),
            gauge(m, "drift_psi_milli/champion/score", 20),
            gauge(m, "drift_psi_milli/challenger/score", 40),
            gauge(m, "quality_rate_ppm/dead_letter_rate", 1000),
            gauge(m, "quality_events", 40),
            gauge(ev, "auc_ppm/champion", 900_000),
            gauge(ev, "ap_ppm/champion", 700_000),
            gauge(ev, "cp100_ppm/champion", 300_000),
            gauge(ev, "n/champion", 9000),
            gauge(ev, "day_start_s/champion", 1_535_760_000),  # 2018-09-01
            gauge(ev, "ap_ppm/challenger", 750_000),
        ],
        "distributions": [distribution("rillet", "event_to_prediction_ms", [100, 300])],
    }


def test_the_namespaces_are_the_transforms_ones() -> None:
    from pipelines.transforms.online_eval import EVAL_NAMESPACE
    from pipelines.transforms.parse import METRICS_NAMESPACE

    assert (snap.METRICS_NAMESPACE, snap.EVAL_NAMESPACE) == (METRICS_NAMESPACE, EVAL_NAMESPACE)


def test_metric_values_sum_counters_take_the_latest_gauge_and_fall_back_to_attempted() -> None:
    values = snap.metric_values(FakeResult(**full_metrics()).metrics().query())
    assert values.counters[("rillet", "predictions_written")] == 500
    assert values.counters[("rillet", "dead_letters_published")] == 7
    assert values.gauges[("rillet_monitor", "latency_p99_ms")] == 790
    assert values.distributions[("rillet", "event_to_prediction_ms")]["count"] == 2


def test_snapshot_has_the_contract_shape() -> None:
    values = snap.metric_values(FakeResult(**full_metrics()).metrics().query())
    pulls = {
        TX: SubscriptionPulls(600, 1000.0, False, 0.4, 999.5),
        LB: SubscriptionPulls(400, 1000.0, True, 2.0, 998.0),
    }
    snapshot, sample = snap.build_snapshot(
        values,
        now_s=1000.0,
        started_s=958.0,
        interval_s=5.0,
        previous=snap.Sample(995.0, 500, 250),
        pulls=pulls,
        input_subscriptions=[TX, LB],
        process={"cpu_percent": 150.0, "rss_mb": 1400.0},
        job={"pid": 123, "runner": "DirectRunner", "project": "p", "model_dir": "m"},
        run_id="19700101T001558Z-123",
    )
    assert list(snapshot) == [
        "schema_version",
        "run_id",
        "time",
        "uptime_s",
        "interval_s",
        "job",
        "counters",
        "throughput",
        "latency_ms",
        "backlog",
        "system_lag_s",
        "data_freshness_s",
        "process",
        "drift",
        "online_quality",
        "quality_rates",
        "quality_events",
        "alerts_raised",
    ]
    assert snapshot["schema_version"] == 1 and snapshot["run_id"] == "19700101T001558Z-123"
    assert snapshot["quality_events"] == 40  # the window the rates are of
    assert parse_rfc3339(snapshot["time"]) == 1000 * 1_000_000
    assert snapshot["uptime_s"] == 42.0 and snapshot["interval_s"] == 5.0
    assert snapshot["counters"]["transactions_valid"] == 600
    assert "alerts_raised" not in snapshot["counters"]  # the monitor's namespace is apart
    # (1000 - 500) events and (500 - 250) predictions in 5 s
    assert snapshot["throughput"] == {"events_per_s": 100.0, "predictions_per_s": 50.0}
    assert sample == snap.Sample(1000.0, 1000, 500)
    assert snapshot["latency_ms"] == {"p50": 250, "p99": 790, "max": 900}
    assert snapshot["backlog"] == {
        TX: {"oldest_unacked_age_s": 0.4, "pulled": 600, "undelivered": None},
        LB: {"oldest_unacked_age_s": 0.0, "pulled": 400, "undelivered": None},  # empty pull
    }
    assert snapshot["system_lag_s"] == 0.4
    assert snapshot["data_freshness_s"] == 0.5
    assert snapshot["process"] == {"cpu_percent": 150.0, "rss_mb": 1400.0}
    # By role (the gauge names are bounded: docs/specs/monitoring.md), not by version.
    assert snapshot["drift"]["champion"]["TX_AMOUNT"] == {
        "psi": 0.312,
        "n": 400,
        "window_end": "2027-01-15T08:00:00Z",
        "streak": 3,
    }
    assert snapshot["drift"]["champion"]["score"]["psi"] == 0.02
    assert snapshot["drift"]["champion"]["score"]["n"] is None
    assert snapshot["drift"]["challenger"]["score"]["psi"] == 0.04
    assert snapshot["online_quality"] == {
        "challenger": {"day": None, "auc": None, "ap": 0.75, "cp100": None, "n": None},
        "champion": {"day": "2018-09-01", "auc": 0.9, "ap": 0.7, "cp100": 0.3, "n": 9000},
    }
    assert snapshot["quality_rates"] == {"dead_letter_rate": 0.001}
    assert snapshot["alerts_raised"] == 2
    json.dumps(snapshot)  # JSON as is


def test_snapshot_without_the_monitor_stage_has_nulls_and_counter_rates() -> None:
    values = snap.metric_values(
        FakeResult(counters=[counter("rillet", "transactions_valid", 10)]).metrics().query()
    )
    snapshot, _ = snap.build_snapshot(
        values, now_s=10.0, started_s=0.0, interval_s=5.0, previous=snap.Sample(0.0, 0, 0),
        pulls={}, input_subscriptions=[TX],
    )  # fmt: skip
    assert snapshot["throughput"] == {"events_per_s": 1.0, "predictions_per_s": 0.0}
    assert snapshot["latency_ms"] == {"p50": None, "p99": None, "max": None}
    assert snapshot["backlog"] == {
        TX: {"oldest_unacked_age_s": None, "pulled": 0, "undelivered": None}
    }
    assert snapshot["system_lag_s"] is None and snapshot["data_freshness_s"] is None
    assert snapshot["drift"] == {} and snapshot["online_quality"] == {}
    assert snapshot["alerts_raised"] is None
    assert snapshot["process"] == {"cpu_percent": None, "rss_mb": None}


def test_monitor_rate_gauges_stand_in_only_without_counters() -> None:
    m = snap.MONITOR_NAMESPACE
    values = snap.metric_values(
        FakeResult(gauges=[gauge(m, "events_per_s", 410), gauge(m, "predictions_per_s", 205)])
        .metrics()
        .query()
    )
    snapshot, _ = snap.build_snapshot(
        values, now_s=10.0, started_s=0.0, interval_s=5.0, previous=snap.Sample(5.0, 0, 0),
        pulls={},
    )  # fmt: skip
    assert snapshot["throughput"] == {"events_per_s": 410.0, "predictions_per_s": 205.0}
    values.counters[("rillet", "transactions_valid")] = 50  # counters: this interval's deltas
    snapshot, _ = snap.build_snapshot(
        values, now_s=10.0, started_s=0.0, interval_s=5.0, previous=snap.Sample(5.0, 0, 0),
        pulls={},
    )  # fmt: skip
    assert snapshot["throughput"] == {"events_per_s": 10.0, "predictions_per_s": 0.0}


def test_pull_stats_keep_the_oldest_age_of_the_last_pull() -> None:
    now = [100.0]
    stats = PullStats(clock=lambda: now[0])
    assert stats.snapshot() == {}
    stats.record(TX, [98_000_000, 99_500_000, 0])  # one message without a publish time
    s = stats.snapshot()[TX]
    assert (s.pulled, s.last_pull_s, s.last_pull_empty) == (3, 100.0, False)
    assert s.oldest_unacked_age_s == pytest.approx(2.0)
    assert s.newest_publish_s == pytest.approx(99.5)
    assert s.backlog_age_s() == pytest.approx(2.0)
    now[0] = 101.0
    stats.record(TX, [100_900_000])
    s = stats.snapshot()[TX]
    assert s.pulled == 4 and s.oldest_unacked_age_s == pytest.approx(0.1)
    now[0] = 102.0
    stats.record(TX, ())  # nothing waiting: no backlog, the figures pulled before stay
    s = stats.snapshot()[TX]
    assert (s.pulled, s.last_pull_s, s.last_pull_empty, s.backlog_age_s()) == (4, 102.0, True, 0.0)
    assert s.newest_publish_s == pytest.approx(100.9)
    assert SubscriptionPulls().backlog_age_s() is None  # never pulled
    stats.reset()
    assert stats.snapshot() == {}


def test_the_pull_wrapper_records_every_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import pubsub_v1
    from google.protobuf import timestamp_pb2

    from pipelines.local_runner import pubsub_pull

    def response(n: int) -> Any:
        r = pubsub_v1.types.PullResponse()
        for i in range(n):
            msg = pubsub_v1.types.PubsubMessage(
                data=b"x", message_id=str(i), publish_time=timestamp_pb2.Timestamp(seconds=50)
            )
            r.received_messages.append(pubsub_v1.types.ReceivedMessage(ack_id=str(i), message=msg))
        return r

    answers = [response(3), response(0), response(0)]
    client = SimpleNamespace(pull=lambda **kw: answers.pop(0))
    monkeypatch.setattr(pubsub_pull.time, "sleep", lambda s: None)
    pull_stats().reset()
    wrapper = pubsub_pull._ImmediatePullClient(client, max_messages=10, idle_sleep_s=0)
    assert len(wrapper.pull(TX).received_messages) == 3  # 3, then an empty part
    s = pull_stats().snapshot()[TX]
    assert s.pulled == 3 and not s.last_pull_empty and s.newest_publish_s == 50.0
    assert len(wrapper.pull(TX).received_messages) == 0
    assert pull_stats().snapshot()[TX].backlog_age_s() == 0.0
    pull_stats().reset()


def test_the_writer_writes_snapshot_history_and_survives_errors(tmp_path: Path) -> None:
    result = FakeResult(**full_metrics())
    options = {
        "monitor_dir": str(tmp_path / "mon"),
        "monitor_every_s": 0.05,
        "project": "p",
        "transactions_subscription": "transactions-rillet",
        "labels_subscription": "labels-rillet",
        "alerts_topic": "alerts",
        "runner": "DirectRunner",
        "model_dir": "models",
    }
    writer = snap.SnapshotWriter(result, options, follow_alerts=False)
    writer.start()
    import time

    deadline = time.monotonic() + 10
    assert writer.run_id == snap.new_run_id(writer.started_s, os.getpid())
    history = tmp_path / "mon" / "runs" / writer.run_id / "history.jsonl"
    while time.monotonic() < deadline and (
        not history.exists() or len(history.read_text().splitlines()) < 3
    ):
        time.sleep(0.05)
    result.query_answer = None  # type: ignore[assignment]  # the next queries fail: logged
    time.sleep(0.2)
    assert writer.is_alive()
    writer.stop()
    assert not writer.is_alive()
    snapshot = json.loads((tmp_path / "mon" / "snapshot.json").read_text())
    assert snapshot["job"]["pid"] > 0 and snapshot["job"]["project"] == "p"
    assert set(snapshot["backlog"]) == {TX, LB}
    assert snapshot["process"]["rss_mb"] > 0
    lines = history.read_text().splitlines()
    assert len(lines) >= 3 and all(json.loads(line)["schema_version"] == 1 for line in lines)
    assert {json.loads(line)["run_id"] for line in lines} == {writer.run_id}
    assert snapshot["run_id"] == writer.run_id
    assert not (tmp_path / "mon" / "snapshot.json.tmp").exists()
    assert snap.run_ids(tmp_path / "mon") == [writer.run_id]


def test_each_writer_is_a_run_of_its_own(tmp_path: Path) -> None:
    """Two job processes on one monitor directory: two runs, ids in start order, each history
    its own (the report of one never mixes in the other)."""
    options = {"monitor_dir": str(tmp_path / "mon"), "monitor_every_s": 60, "project": "p"}
    ids = []
    for started_s, pid in ((1_765_000_000.0, 900), (1_765_003_600.0, 12)):
        writer = snap.SnapshotWriter(FakeResult(**full_metrics()), options, follow_alerts=False)
        writer.started_s = started_s
        writer.run_id = snap.new_run_id(started_s, pid)
        writer.run_directory = snap.run_dir(writer.directory, writer.run_id)
        writer.run_directory.mkdir(parents=True)
        writer.write_once()
        writer.write_once()
        ids.append(writer.run_id)
    assert ids == ["20251206T054640Z-900", "20251206T064640Z-12"]
    assert snap.run_ids(tmp_path / "mon") == ids  # oldest first, whatever the pids
    for run_id in ids:
        lines = (tmp_path / "mon" / "runs" / run_id / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["run_id"] for line in lines] == [run_id, run_id]
    (tmp_path / "mon" / "runs" / "empty").mkdir()  # no history: not a run
    assert snap.run_ids(tmp_path / "mon") == ids
