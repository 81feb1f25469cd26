"""The workers' NumPy metrics against scikit-learn and models/evaluation.py's Card Precision."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from models.evaluation import card_precision_at_k as offline_card_precision
from pipelines.core.quality import average_precision, card_precision_at_k, quality, roc_auc

rows = st.lists(
    st.tuples(
        st.integers(0, 30),  # card
        st.integers(0, 1),  # label
        # few distinct scores, so that ties are common
        st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5000001, 0.9, 1.0]),
    ),
    min_size=2,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(rows)
def test_auc_and_ap_equal_scikit_learn(data: list[tuple[int, int, float]]) -> None:
    labels = np.array([r[1] for r in data])
    scores = np.array([r[2] for r in data])
    if 0 < labels.sum() < len(labels):
        assert abs(roc_auc(labels, scores) - roc_auc_score(labels, scores)) <= 1e-12
    else:
        assert np.isnan(roc_auc(labels, scores))
    if labels.sum() > 0:
        expected = average_precision_score(labels, scores)
        assert abs(average_precision(labels, scores) - expected) <= 1e-12
    else:
        assert np.isnan(average_precision(labels, scores))


@settings(max_examples=200, deadline=None)
@given(rows, st.integers(1, 40))
def test_card_precision_equals_the_offline_one_for_a_day(
    data: list[tuple[int, int, float]], k: int
) -> None:
    frame = pd.DataFrame(
        {
            "CUSTOMER_ID": [f"c{r[0]:03d}" for r in data],
            "TX_FRAUD": [r[1] for r in data],
            "score": [r[2] for r in data],
            "TX_DATETIME": pd.Timestamp("2018-08-08 10:00"),
        }
    )
    expected, _ = offline_card_precision(frame, k=k)
    got = card_precision_at_k(frame["CUSTOMER_ID"], frame["TX_FRAUD"], frame["score"], k)
    assert got == expected


def test_quality_reports_undefined_metrics_as_none() -> None:
    result = quality(["a", "b"], [0, 0], [0.2, 0.9])
    assert result == {"n": 2, "frauds": 0, "auc": None, "ap": None, "cp100": 0.0}
    assert quality(["a", "b"], [0, 1], [0.2, 0.9])["auc"] == 1.0
