"""A small `make chaos` in CI: a SIGKILL mid-stream with resume, an outage of each store, bad
input of every kind, then every store checked (bench/chaos.py; the full run is `make chaos`).

The store is warmed with the 30 days before the replay (the backfill), so the replayed
transactions' terminal windows (7 days behind them: the label delay) hold transactions and
labels, and the comparison with the batch computation sees the terminal stage: at least 2% of
the compared predictions must have a non-zero terminal risk feature (~38% here; 0 without the
warm store, since the replay is shorter than the label delay).

The faults are timed from the job's first prediction; the test checks that each one hit the job
at work: it had predicted before, predicted nothing while a store was stopped, retried the calls
that ran into their deadline, and predicted again afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, logged_retries, run_chaos
from pipelines.stores.retry import CALL_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_nothing_lost_nothing_doubled_through_a_kill_and_outages(tmp_path: Path) -> None:
    config = ChaosConfig(
        work_dir=tmp_path,
        warm_days=30,  # the store holds the 30 days before the replay (backfilled)
        min_transactions=2_500,
        malformed=120,
        duplicates=40,
        unknown_labels=10,
        mismatched_labels=10,
        kills=1,
        # Longer than a call's deadline, so the calls the job has in flight fail and are retried.
        outage_s=CALL_TIMEOUT_S + 4.0,
        outages=("bigtable", "datastore"),
        # The 2,500 transactions come first (then their labels, 7 days of event time later):
        # at this rate they take ~65 s, room after the job's first prediction (10-25 s) for the
        # three faults in turn (a restart takes 10-30 s; the whole replay ~130 s).
        rate=40.0,
        label_wait_s=8.0,
        timeout_s=600.0,
    )
    result = run_chaos(config)
    print({k: v for k, v in result.items() if k != "timeline"})
    assert result["kills"] == 1 and result["outages"] == 2

    # Every fault hit the job at work, and the job came through it.
    faults = {f["what"]: f for f in result["faults"]}
    assert sorted(faults) == ["bigtable", "datastore", "kill"], result["faults"]
    for fault in faults.values():
        assert fault["at_s"] >= result["first_prediction_s"]
        assert fault["predictions_before"] > 0, fault
        assert fault["resumed_after_s"] is not None, fault  # predicted again afterwards
    for store in ("bigtable", "datastore"):
        assert faults[store]["predictions_while_down"] == 0, faults[store]  # stalled
    # The sink's Datastore calls ran into their deadline and were retried (the job's log).
    assert any(
        r.startswith("Datastore") and r.endswith(": DeadlineExceeded")
        for r in faults["datastore"]["retries"]
    ), faults["datastore"]
    # The Bigtable calls in flight ran into their deadline and were retried, and only those.
    assert faults["bigtable"]["retries"], faults["bigtable"]
    assert all(r.startswith("Bigtable") for r in faults["bigtable"]["retries"]), faults["bigtable"]
    assert result["faults_hit"]
    assert len(logged_retries(tmp_path / "pipeline.log")) >= 1

    assert result["duplicated"] == 0
    assert result["feature_mismatches"] == 0
    # ... and the comparison saw the terminal stage: labels and terminal windows matter.
    assert result["risk_features_nonzero_share"] >= 0.02, result["risk_features_nonzero_share"]
    assert result["ok"], {k: v for k, v in result.items() if k != "timeline"}
    assert result["predictions_stored"] == result["valid_transactions"] == 2_500
    assert result["lost"] == 0, result["valid_dead_lettered_details"]
    assert result["valid_dead_lettered"] == 0, result["valid_dead_lettered_details"]
    assert result["dead_lettered"] == result["malformed"] == 180
    reasons = result["dead_letter_reasons"]
    for reason in (
        "duplicate_transaction_id",
        "duplicate_label",
        "unknown_transaction",
        "label_mismatch",
        "not_json",
        "invalid_amount",
    ):
        assert reasons.get(reason, 0) > 0, reason
