"""rillet plan: the estimate's arithmetic against hand-computed values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.app.capacity import Assumptions, plan


def test_plan_by_hand() -> None:
    a = Assumptions(
        events_per_core_s=1000.0,
        target_utilisation=0.5,
        vcpus_per_worker=4,
        key_ceiling_events_per_s=2000.0,
        single_key_events_per_thread_s=80.0,
    )
    out = plan(10_000, a)
    # 10,000 / (1,000 x 0.5) = 20 vCPUs = 5 workers of 4; 10,000 / (80 x 0.5) = 250 threads.
    assert out["dataflow"] == {"vcpus": 20.0, "workers": 5, "single_key_threads": 250}
    # 5,000 transactions x 5 rows + 5,000 labels x 3 rows = 40,000 writes;
    # 5,000 x 5 + 5,000 x 1 = 30,000 reads.
    assert out["bigtable"]["rows_written_per_second"] == 40_000
    assert out["bigtable"]["rows_read_per_second_worst_case"] == 30_000
    # 30,000 / 17,000 + 40,000 / 14,000 = 4.62 node-loads, / 0.5 = 9.2 -> 10 nodes.
    assert out["bigtable"]["ssd_nodes"] == 10
    # 5,000 writes/s from 500: 1.5^6 = 11.4 >= 10, so 6 steps of 5 minutes.
    assert out["datastore"] == {"writes_per_second": 5000, "ramp_up_minutes_from_500": 30}
    assert not out["warnings"]  # no key is near one thread's rate


def test_a_hot_key_caps_the_rate_by_hand() -> None:
    a = Assumptions(target_utilisation=0.5, hottest_key_share=0.05, key_ceiling_events_per_s=2000.0)
    # One key at 50% of its 2,000 events/s ceiling = 1,000 events/s for a key with 5% of the
    # input: the input can reach 1,000 / 0.05 = 20,000 events/s.
    out = plan(10_000, a)
    assert out["keyed_stages"] == {
        "hottest_key_events_per_second": 500.0,
        "max_events_per_second": 20_000.0,
    }
    assert out["hot_entity"]["key_utilisation"] == 0.25
    assert not plan(20_000, a)["warnings"]
    (warning,) = plan(25_000, a)["warnings"]
    assert "1,250 events/s" in warning and "20,000" in warning and "62%" in warning


def test_the_hot_entitys_largest_row_is_reported_and_warned_about() -> None:
    a = Assumptions(hottest_key_share=0.05, key_ceiling_events_per_s=1e9)
    row = plan(10_000, a)["hot_entity"]["largest_row_bytes"]
    # 500 events/s: 250 transactions and 250 labels a second, 900 s a bucket, ~138 and ~31 bytes.
    assert 25e6 < row < 40e6
    assert plan(10_000, a)["warnings"] == []
    big = plan(40_000, a)
    assert big["hot_entity"]["largest_row_bytes"] > 100e6
    assert any("advised 100 MB" in w for w in big["warnings"])


def test_small_rates_need_the_minimum_and_no_warning() -> None:
    out = plan(100)
    assert out["dataflow"]["workers"] == 1 and out["bigtable"]["ssd_nodes"] == 1
    assert out["datastore"]["ramp_up_minutes_from_500"] == 0 and not out["warnings"]


def test_cli_prints_json_and_rejects_a_non_positive_rate() -> None:
    from pipelines.app.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--events-per-second", "2000"])
    assert ok.exit_code == 0 and json.loads(ok.output)["events_per_second"] == 2000
    hot = runner.invoke(app, ["plan", "--events-per-second", "10000", "--hot-share", "0.05"])
    assert hot.exit_code == 0, hot.output
    assert json.loads(hot.output)["hot_entity"]["share"] == 0.05
    bad_share = runner.invoke(app, ["plan", "--events-per-second", "10", "--hot-share", "2"])
    assert bad_share.exit_code == 2
    bad = runner.invoke(app, ["plan", "--events-per-second", "0"])
    assert bad.exit_code == 2
    with pytest.raises(ValueError):
        plan(0)


def test_plan_sizes_the_job_of_its_definitions_file() -> None:
    """The payments file's job has four entity stages (a bucket row and a head row each per
    transaction, plus the id index), and only the stages whose features read labels write a
    label's rows; the handbook's numbers are the defaults."""
    from pipelines.core.declarations import WORKLOADS, load_definitions

    payments = load_definitions(WORKLOADS / "payments.yaml")
    labelled = [
        e for e in payments.entities if any(f.needs_labels for f in payments.window_features(e))
    ]
    a = Assumptions.of(payments)
    assert a.bigtable_rows_written_per_transaction == 1 + 2 * 4
    assert a.bigtable_rows_written_per_label == 1 + 2 * len(labelled) and labelled
    assert Assumptions.of(load_definitions()) == Assumptions()
    out = plan(2000, definitions=payments)
    assert out["definitions"] == "payments"
    assert out["bigtable"]["rows_written_per_second"] == 1000 * 9 + 1000 * (1 + 2 * len(labelled))
    assert out["hot_entity"]["largest_row_bytes"] != plan(2000)["hot_entity"]["largest_row_bytes"]


def test_cli_plans_with_definitions() -> None:
    from pipelines.app.cli import app

    ok = CliRunner().invoke(
        app,
        [
            "plan",
            "--events-per-second",
            "2000",
            "--definitions",
            "pipelines/workloads/payments.yaml",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["definitions"] == "payments"
