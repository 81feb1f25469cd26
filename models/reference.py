"""Reference histograms of a model's training inputs and scores, for drift monitoring.

The model card keeps, for every input and for the score, a histogram of the training rows:
``{"edges": [...], "counts": [...]}``. A continuous value gets up to ``bins`` quantile bins (the
edges are training quantiles, so each bin holds about the same share of training rows; bin i is
[edges[i], edges[i+1]), the last bin closed); a value with at most two distinct values (e.g.
TX_DURING_WEEKEND) gets one "bin" per value: ``edges`` are the values and ``kind`` is
"categorical". Serving values are binned the same way (:func:`bin_counts`, out-of-range values
fall in the first or last bin) and compared with the population stability index (:func:`psi`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["bin_counts", "histogram", "psi", "reference_histograms"]


def histogram(values: npt.ArrayLike, bins: int = 10) -> dict[str, Any]:
    """``{"kind", "edges", "counts"}`` of ``values`` (NaNs ignored); see the module docstring."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"kind": "quantile", "edges": [], "counts": []}
    distinct = np.unique(x)
    if len(distinct) <= 2:
        counts = [int((x == v).sum()) for v in distinct]
        return {"kind": "categorical", "edges": distinct.tolist(), "counts": counts}
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
    hist = {"kind": "quantile", "edges": edges.tolist(), "counts": []}
    hist["counts"] = bin_counts(x, hist).tolist()
    return hist


def bin_counts(values: npt.ArrayLike, hist: Mapping[str, Any]) -> npt.NDArray[np.int64]:
    """Counts of ``values`` in the bins of a :func:`histogram` (NaNs ignored)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    edges = np.asarray(hist["edges"], dtype=np.float64)
    if hist["kind"] == "categorical":
        # Each value counts for the nearest reference value.
        nearest = np.abs(x[:, None] - edges[None, :]).argmin(axis=1) if len(x) else x
        return np.bincount(nearest.astype(np.int64), minlength=len(edges)).astype(np.int64)
    n_bins = max(len(edges) - 1, 1)
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    return np.bincount(index, minlength=n_bins).astype(np.int64)


def psi(reference: npt.ArrayLike, actual: npt.ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index between two count vectors over the same bins."""
    ref = np.asarray(reference, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    p = np.maximum(ref / max(ref.sum(), 1.0), eps)
    q = np.maximum(act / max(act.sum(), 1.0), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def reference_histograms(
    inputs: Mapping[str, npt.ArrayLike], scores: npt.ArrayLike, bins: int = 10
) -> dict[str, Any]:
    """The model card's ``reference``: ``{"inputs": {name: histogram}, "score": histogram}``."""
    return {
        "inputs": {name: histogram(values, bins) for name, values in inputs.items()},
        "score": histogram(scores, bins),
    }
