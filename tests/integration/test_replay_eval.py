"""The offline-to-online chain on the small preset: backfill, warm store, train, stream the test
week through the emulators, evaluate offline vs served (rillet replay-eval)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_replay_eval_chain_serves_exactly_the_offline_scores(tmp_path: Path) -> None:
    from pipelines.app.replay_eval import ReplayEvalConfig, run_replay_eval

    result = run_replay_eval(
        ReplayEvalConfig(preset="small", work_dir=tmp_path, rate=1000, quick=True, timeout_s=600)
    )
    # Every test transaction was served, with the offline score.
    assert result["n_served"] == result["n_test"] > 1000
    assert result["max_abs_score_diff"] <= 1e-5
    assert result["served"] is not None
    for metric in ("auc", "ap", "cp100"):
        assert abs(result["served"][metric] - result["offline"][metric]) <= 1e-4
    # Every replayed transaction's served features equal the backfill's, feature by feature.
    consistency = result["consistency"]
    assert consistency["replayed"] == consistency["with_prediction"]
    assert consistency["mismatches"] == 0 and consistency["max_abs_diff"] == 0.0
    assert result["ok"]
    # The model learned something (it is not a constant).
    assert result["offline"]["auc"] > 0.6
    report = Path(result["report"])
    html = report.read_text()
    for png in ("roc.png", "pr.png", "card_precision.png", "scores.png", "latency.png"):
        assert (report.parent / png).stat().st_size > 0 and png in html
    assert (tmp_path / "result.json").exists()
