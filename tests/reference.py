"""Brute-force reference implementation of the feature definitions (for tests only).

Deliberately naive: for every transaction, scans every other event and applies the definition
from the spec literally. Slow, obviously correct, independent of the engine's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pipelines.core.definitions import FEATURES, RowFeature, WindowFeature


def brute_force(
    transactions: Sequence[tuple[str, int, str, str, float]],
    labels: Sequence[tuple[str, int, str, int]],
) -> list[list[float]]:
    """transactions: (id, time_us, customer, terminal, amount); labels: (id, time_us, terminal,
    is_fraud). Returns one feature row per transaction in FEATURES order."""

    def before_or_equal(a: tuple[str, int], b: tuple[str, int]) -> bool:
        # "before": earlier in time, or the same time and a lower id (numeric for decimal ids).
        (ida, ta), (idb, tb) = a, b
        return ta < tb or (ta == tb and (len(ida), ida) <= (len(idb), idb))

    out = []
    for tx_id, t, customer, terminal, amount in transactions:
        dt = datetime.fromtimestamp(t / 1e6, tz=UTC)
        row: list[float] = []
        for f in FEATURES:
            if isinstance(f, RowFeature):
                row.append(
                    {
                        "amount": amount,
                        "is_weekend": float(dt.weekday() >= 5),
                        "is_night": float(dt.hour <= 6),
                    }[f.transform]
                )
                continue
            assert isinstance(f, WindowFeature)
            lo, hi = t - f.delay_us - f.window_us, t - f.delay_us
            if f.entity.name == "customer":
                window = [
                    o
                    for o in transactions
                    if o[2] == customer
                    and lo < o[1] <= hi
                    and (f.delay_us > 0 or before_or_equal((o[0], o[1]), (tx_id, t)))
                ]
            else:
                window = [o for o in transactions if o[3] == terminal and lo < o[1] <= hi]
            n = len(window)
            if f.aggregation == "count":
                row.append(float(n))
            elif f.aggregation == "mean_amount":
                row.append(sum(o[4] for o in window) / n if n else 0.0)
            else:
                frauds = sum(lab[3] for lab in labels if lab[2] == terminal and lo < lab[1] <= hi)
                row.append(frauds / n if n else 0.0)
        out.append(row)
    return out
