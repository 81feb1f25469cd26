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

from pipelines.core.drift import bin_counts, psi

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


def reference_histograms(
    inputs: Mapping[str, npt.ArrayLike], scores: npt.ArrayLike, bins: int = 10
) -> dict[str, Any]:
    """The model card's ``reference``: ``{"inputs": {name: histogram}, "score": histogram}``."""
    return {
        "inputs": {name: histogram(values, bins) for name, values in inputs.items()},
        "score": histogram(scores, bins),
    }
