"""A small `make chaos` in CI: a SIGKILL mid-stream with resume, an outage of each store, bad
input of every kind, then every store checked (bench/chaos.py; the full run is `make chaos`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_nothing_lost_nothing_doubled_through_a_kill_and_outages(tmp_path: Path) -> None:
    config = ChaosConfig(
        work_dir=tmp_path,
        min_transactions=2_500,
        malformed=120,
        duplicates=40,
        unknown_labels=10,
        mismatched_labels=10,
        kills=1,
        outage_s=6.0,
        outages=("bigtable", "datastore"),
        rate=300.0,
        label_wait_s=8.0,
        timeout_s=600.0,
    )
    result = run_chaos(config)
    print(result)
    assert result["kills"] == 1 and result["outages"] == 2
    assert result["duplicated"] == 0
    assert result["feature_mismatches"] == 0
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
