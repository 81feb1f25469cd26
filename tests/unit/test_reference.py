"""Reference histograms (models.reference) for drift monitoring."""

from __future__ import annotations

import numpy as np
import pytest

from models.reference import bin_counts, histogram, psi, reference_histograms


def test_continuous_values_get_quantile_bins() -> None:
    values = np.arange(1000, dtype=float)
    hist = histogram(values, bins=10)
    assert hist["kind"] == "quantile"
    assert len(hist["edges"]) == 11 and hist["edges"][0] == 0 and hist["edges"][-1] == 999
    assert hist["counts"] == [100] * 10
    # Values outside the training range fall in the first or last bin.
    assert bin_counts([-5.0, 2000.0, 150.0], hist).tolist() == [1, 1] + [0] * 7 + [1]


def test_binary_values_get_one_bin_each() -> None:
    hist = histogram([0.0, 1.0, 1.0, 0.0, 1.0, np.nan])
    assert hist == {"kind": "categorical", "edges": [0.0, 1.0], "counts": [2, 3]}
    assert bin_counts([1.0, 1.0, 0.0], hist).tolist() == [1, 2]


def test_repeated_quantiles_collapse() -> None:
    values = np.concatenate([np.zeros(900), np.arange(1, 101, dtype=float)])
    hist = histogram(values)
    assert hist["edges"] == sorted(set(hist["edges"]))
    assert sum(hist["counts"]) == 1000 and len(hist["counts"]) == len(hist["edges"]) - 1


def test_psi_is_zero_for_the_same_distribution_and_grows_with_drift() -> None:
    rng = np.random.default_rng(0)
    hist = histogram(rng.normal(size=5000))
    same = bin_counts(rng.normal(size=5000), hist)
    shifted = bin_counts(rng.normal(1.0, size=5000), hist)
    assert psi(hist["counts"], same) < 0.02
    assert psi(hist["counts"], shifted) > 0.25


def test_reference_histograms_cover_inputs_and_score() -> None:
    ref = reference_histograms({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0]}, [0.1, 0.2, 0.9])
    assert set(ref) == {"inputs", "score"} and set(ref["inputs"]) == {"a", "b"}
    assert sum(ref["score"]["counts"]) == 3


@pytest.mark.parametrize("values", [[], [np.nan]])
def test_empty(values: list[float]) -> None:
    assert histogram(values)["counts"] == []
