"""Model quality metrics in NumPy: ROC AUC, average precision, Card Precision@k.

The online evaluation (transforms/online_eval.py) runs them on Beam workers, which do not carry
scikit-learn; they follow scikit-learn's definitions (``roc_auc_score``: ties count half;
``average_precision_score``: sum over distinct thresholds of (R_n - R_{n-1}) * P_n) and
models/evaluation.py's Card Precision@k for one day, and tests/unit/test_quality.py holds them to
scikit-learn and to models/evaluation.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["average_precision", "card_precision_at_k", "quality", "roc_auc"]


def _threshold_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64)


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids between distinct thresholds: ties count half).
    NaN when one class is absent."""
    y = np.asarray(labels, dtype=np.int64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    tps, fps = _threshold_counts(y, np.asarray(scores, dtype=np.float64))
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    return float(np.trapezoid(tpr, fpr))


def average_precision(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """Average precision: sum over distinct thresholds of the recall step times the precision.
    NaN without a positive."""
    y = np.asarray(labels, dtype=np.int64)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    tps, fps = _threshold_counts(y, np.asarray(scores, dtype=np.float64))
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.r_[0.0, tps / positives])
    return float(np.sum(recall_steps * precision))


def card_precision_at_k(
    cards: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    k: int = 100,
) -> float:
    """Card Precision@k of one day: one row per card (its maximum score and maximum label), the
    k cards with the highest scores (ties by card id, ascending), compromised ones among them / k
    (k even when the day has fewer cards)."""
    per_card: dict[str, tuple[float, int]] = {}
    for card, label, score in zip(cards, labels, scores, strict=True):
        seen = per_card.get(card)
        if seen is None:
            per_card[card] = (float(score), int(label))
        else:
            per_card[card] = (max(seen[0], float(score)), max(seen[1], int(label)))
    ranked = sorted(per_card.items(), key=lambda item: (-item[1][0], item[0]))
    return sum(label for _, (_, label) in ranked[:k]) / k


def quality(
    cards: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
) -> dict[str, float | int | None]:
    """{n, frauds, auc, ap, cp100} of one set of labelled scores (None where undefined)."""
    y = np.asarray(labels, dtype=np.int64)
    auc = roc_auc(y, scores)
    ap = average_precision(y, scores)
    return {
        "n": len(y),
        "frauds": int(y.sum()),
        "auc": None if np.isnan(auc) else auc,
        "ap": None if np.isnan(ap) else ap,
        "cp100": card_precision_at_k(cards, y, scores, 100) if len(y) else None,
    }
