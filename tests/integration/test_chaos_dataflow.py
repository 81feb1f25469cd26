"""A small `make chaos-dataflow` in CI: rillet's stages, inference and sinks on the Dataflow runner
model (bench/dataflow_model), 2 worker processes x 2 threads, one key per work item, 8 days of
60 customers over a warmed store (about 70 s here), with failures after every kind of side
effect, refused commits, moved keys and zombies; every store checked against the backfill
(bench/chaos_dataflow.py).

It first checks that the faults happened (each injection point struck, each failure retried,
keys moved, zombies wrote), then that nothing was lost, doubled or left stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos_dataflow import DataflowChaosConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_stages_stay_exact_on_dataflows_execution_model(tmp_path: Path) -> None:
    config = DataflowChaosConfig(
        work_dir=tmp_path,
        workers=2,
        threads=2,
        days=8,  # past the label delay: the stretch's own labels feed its terminal windows
        customers=60,
        source_batch=10,
        # Many labels well before their transaction (the label's work item commits first) and
        # many failures right after a Bigtable write: each run then retries about ten of the id
        # index's work items that released a waiting label (issue 21, item 1).
        early_labels=0.3,
        early_by=600,
        fail_after_bigtable=0.1,
        fail_after_datastore=0.04,
        fail_after_publish=0.04,
        fail_before_commit=0.03,
        zombie_rate=0.02,
        move_rate=0.05,
        label_wait_s=30.0,
        timeout_s=170.0,
    )
    result = run(config)
    print({k: v for k, v in result.items() if k != "examples"})

    # The harness did what it claims: the stream was out of order, every fault struck.
    assert result["transactions"] > 900 and result["labels"] > 900
    assert result["risk_features_nonzero"]  # the terminal windows matter
    assert result["labels_before_transactions"] > 0 and result["redeliveries"] > 0
    assert result["single_key_work_items"] and result["work_items"] > result["transactions"]
    assert all(n > 0 for n in result["injected_failures"].values()), result["injected_failures"]
    assert result["failures_retried"]  # each failed work item ran again and committed
    assert result["retries"] >= sum(result["injected_failures"].values())
    assert result["key_moves"] > 0 and result["zombies"] > 0 and result["zombie_writes"] > 0
    assert (tmp_path / "stored.parquet").exists()

    # Nothing lost, doubled or stale.
    assert result["lost"] == 0, result["examples"]
    assert result["duplicated"] == 0
    assert result["labels_uncounted"] == 0, result["examples"]
    assert result["feature_mismatches"] == 0, result["stale_by_feature"]
    assert result["stale_predictions"] == 0, result["examples"]
    assert result["valid_dead_lettered"] == 0, result["examples"]
