"""Tests of the HTML evaluation report (models/report.py) on a small synthetic test set."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.evaluation import Protocol, evaluate_scores
from models.report import SCORED_ONCE, ReportData, write_report
from pipelines.core.definitions import MODEL_INPUTS

PROTOCOL = Protocol.handbook()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _offline(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """n rows spread over the 7 test days, ~10% frauds, scores that rank frauds a bit higher."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 7 * 86_400, n))
    start = pd.Timestamp(PROTOCOL.test_range[0], tz="UTC")
    fraud = (rng.random(n) < 0.1).astype("int8")
    fraud[:2] = [0, 1]  # both classes whatever the seed
    scores = np.clip(rng.random(n) * 0.7 + fraud * 0.3, 0.0, 1.0)
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n),
            "TX_DATETIME": start + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": rng.integers(0, 150, n),
            "TX_FRAUD": fraud,
            "score": scores,
        }
    )


def _full_data() -> ReportData:
    offline = _offline()
    served = offline.copy()
    served["score"] = np.clip(offline["score"] + 1e-6, 0.0, 1.0)
    consistency = pd.DataFrame(
        {
            "feature": list(MODEL_INPUTS),
            "compared": [len(offline)] * len(MODEL_INPUTS),
            "mismatches": [0] * (len(MODEL_INPUTS) - 1) + [3],
            "max_abs_diff": [0.0] * (len(MODEL_INPUTS) - 1) + [0.25],
        }
    )
    publish = 1_700_000_000_000_000 + np.arange(len(offline)) * 20_000  # 50 per second
    latency_us = np.random.default_rng(1).integers(5_000, 200_000, len(offline))
    timing = pd.DataFrame({"publish_time_us": publish, "processing_time_us": publish + latency_us})
    return ReportData(
        title="Fraud model <v1> & friends",
        protocol=PROTOCOL,
        model_card={
            "version": "20240101T000000000000Z",
            "features": list(MODEL_INPUTS),
            "protocol": PROTOCOL.to_dict(),
            "validation_metrics": {
                "auc": 0.87,
                "folds": [
                    {"valid_range": ["2018-07-25", "2018-07-31"], "auc": 0.8612},
                    {"valid_range": ["2018-07-18", "2018-07-24"], "auc": 0.8788},
                ],
            },
        },
        offline=offline,
        served=served,
        metrics={
            "offline": evaluate_scores(offline),
            "served": evaluate_scores(served),
            "n_test": len(offline),
            "n_served": len(served),
            "max_abs_score_diff": 1e-6,
        },
        consistency=consistency,
        timing=timing,
        notes=["rillet demo --preset small", "a <note> with & characters"],
    )


def _images(page: str, out_dir: Path) -> list[Path]:
    sources = re.findall(r'<img src="([^"]+)"', page)
    for src in sources:
        assert not Path(src).is_absolute() and "/" not in src  # relative, next to index.html
        path = out_dir / src
        assert path.is_file(), src
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), src
    return [out_dir / src for src in sources]


def test_full_report(tmp_path: Path) -> None:
    data = _full_data()
    out = write_report(tmp_path / "report", data)
    assert out == tmp_path / "report" / "index.html" and out.is_file()
    page = out.read_text(encoding="utf-8")

    images = _images(page, out.parent)
    assert {p.name for p in images} == {
        "roc.png",
        "pr.png",
        "card_precision.png",
        "scores.png",
        "latency.png",
        "throughput.png",
    }
    assert SCORED_ONCE in page
    for name in ("offline", "served"):
        for key in ("auc", "ap", "cp100"):
            assert f"{data.metrics[name][key]:.4f}" in page
    assert f"{len(data.offline):,}" in page
    # Features with mismatches are highlighted; the others are not.
    assert page.count('<tr class="mismatch">') == 1
    assert "3 feature values differ" in page
    # Protocol dates and the model card.
    for day in ("2018-07-25", "2018-08-08", "2018-08-14", "2018-07-11", "2018-07-04"):
        assert day in page
    assert "20240101T000000000000Z" in page and MODEL_INPUTS[0] in page
    # Nested card values (validation folds) become nested tables, not JSON text.
    assert "0.8612" in page and "0.8788" in page and "{&quot;" not in page
    # Text is escaped.
    assert "<v1>" not in page and html.escape("Fraud model <v1> & friends") in page
    assert "a &lt;note&gt; with &amp; characters" in page
    assert "not part of this run" not in page


def test_report_without_optional_parts(tmp_path: Path) -> None:
    offline = _offline(seed=2)
    data = ReportData(
        title="offline only",
        protocol=PROTOCOL,
        model_card={},
        offline=offline,
        metrics={"offline": evaluate_scores(offline), "n_test": len(offline)},
    )
    out = write_report(tmp_path, data)
    page = out.read_text(encoding="utf-8")
    images = _images(page, tmp_path)
    assert {p.name for p in images} == {"roc.png", "pr.png", "card_precision.png", "scores.png"}
    assert SCORED_ONCE in page
    assert f"{data.metrics['offline']['auc']:.4f}" in page
    # served, consistency and timing each get a sentence instead of a section.
    assert page.count("were not part of this run") == 3


@pytest.mark.parametrize("with_metrics", [True, False])
def test_report_computes_missing_metrics(tmp_path: Path, with_metrics: bool) -> None:
    offline = _offline(seed=3)
    metrics = {"offline": evaluate_scores(offline)} if with_metrics else {}
    out = write_report(
        tmp_path, ReportData("t", PROTOCOL, {"version": "x"}, offline=offline, metrics=metrics)
    )
    assert f"{evaluate_scores(offline)['auc']:.4f}" in out.read_text(encoding="utf-8")


def test_report_with_partial_served_scores(tmp_path: Path) -> None:
    # As pipelines/app/evaluate.py does when some test transactions have no served score: the served
    # metrics are withheld (None) and must not be recomputed from the partial frame; blocks
    # without n/frauds get them from the frames.
    data = _full_data()
    data.served = data.served.iloc[:300]
    data.metrics["served"] = None
    data.metrics["offline"] = {k: data.metrics["offline"][k] for k in ("auc", "ap", "cp100")}
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    _images(page, tmp_path)
    assert "Served metrics were not computed: 300 of 400 test transactions" in page
    assert f"{data.metrics['offline']['auc']:.4f}" in page
    assert "<td>Transactions</td><td>400</td>" in page
