"""The 14 engineered model inputs, the way a data scientist writes them in pandas.

This is the baseline ``make bench-backfill`` compares the Beam backfill with: per entity, sort by
time, and take time-based ``rolling(f"{n}D")`` counts and sums on the transaction time
(docs/specs/reference-workload.md section 2, pipelines/core/definitions.py for names and order):

* TX_DURING_WEEKEND, TX_DURING_NIGHT: from the transaction's UTC time (Saturday/Sunday; hour <= 6).
* CUSTOMER_ID_NB_TX_{n}DAY_WINDOW, CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW: count and mean amount of
  the customer's transactions in (t - n days, t], the current one included.
* TERMINAL_ID_NB_TX_{n}DAY_WINDOW, TERMINAL_ID_RISK_{n}DAY_WINDOW: count and fraud fraction of the
  terminal's transactions in the delayed window (t - (n + 7) days, t - 7 days], computed as
  rolling(n + 7 days) minus rolling(7 days), of the count and of the fraud sum; risk is 0 when the
  count is 0.

Ties ("before" = earlier, or at the same time with a lower transaction id): the rows are sorted by
(time, transaction id) first. A time-based pandas rolling window ends at the current row, in row
order, so of several transactions at the same second it counts only those up to the current one,
which is exactly the tie rule. The delayed window ends 7 days before t, so it never contains the
current row and ties at t do not matter there (ties at t - 7 days are in, by the right-closed
window, as the spec's "]" says).

Two variants, selected by ``method``:

* ``"apply"``: ``groupby(entity).apply(f)`` where ``f`` does the rollings on one entity's rows
  (the common per-group style; one Python call per customer and per terminal).
* ``"vectorised"``: pandas' ``groupby(entity).rolling(window, on=time)``, which runs each rolling
  aggregation once over all groups.

Both sum floats (pandas' rolling sum uses compensated add/remove), where the product's engine
sums exact integer micro-units; the means agree to ~1e-12 (the bench and the unit tests check
<= 1e-9).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from pipelines.core.definitions import MODEL_INPUTS

__all__ = [
    "ENGINEERED_FEATURES",
    "LABEL_DELAY_DAYS",
    "WINDOW_DAYS",
    "pandas_features",
]

WINDOW_DAYS: tuple[int, ...] = (1, 7, 30)
"""The window lengths of the customer and terminal features, in days."""

LABEL_DELAY_DAYS = 7
"""The terminal features' delay: a label is known 7 days after its transaction."""

ENGINEERED_FEATURES: tuple[str, ...] = tuple(name for name in MODEL_INPUTS if name != "TX_AMOUNT")
"""The 14 engineered inputs (every model input except TX_AMOUNT), in MODEL_INPUTS order."""

Method = Literal["apply", "vectorised"]

_TIME = "TX_DATETIME"


def pandas_features(frame: pd.DataFrame, method: Method = "apply") -> pd.DataFrame:
    """TRANSACTION_ID and the 14 engineered features of every transaction of ``frame``.

    ``frame`` is a simulate()-style frame: TRANSACTION_ID, TX_DATETIME (naive = UTC, or
    tz-aware), CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT and TX_FRAUD (every label known 7 days after
    its transaction). The result has one row per input row, in the input's row order, with a
    fresh RangeIndex; the feature columns are float64 in :data:`ENGINEERED_FEATURES` order.
    ``method`` is ``"apply"`` (per-group apply) or ``"vectorised"`` (groupby-rolling).
    """
    if method not in ("apply", "vectorised"):
        raise ValueError(f"method must be 'apply' or 'vectorised', not {method!r}")
    missing = [
        c
        for c in ("TRANSACTION_ID", _TIME, "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")
        if c not in frame.columns
    ]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")

    times = pd.to_datetime(frame[_TIME])
    times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
    df = pd.DataFrame(
        {
            "TRANSACTION_ID": frame["TRANSACTION_ID"].to_numpy(),
            _TIME: times.array,  # to_numpy() would box tz-aware times as objects
            "CUSTOMER_ID": frame["CUSTOMER_ID"].to_numpy(),
            "TERMINAL_ID": frame["TERMINAL_ID"].to_numpy(),
            "TX_AMOUNT": frame["TX_AMOUNT"].to_numpy(np.float64),
            "TX_FRAUD": frame["TX_FRAUD"].to_numpy(np.float64),
        }
    )
    # Time order with the tie rule: rolling windows end at the current row, so of transactions
    # at the same second only the lower ids precede it. The index keeps the input position.
    df = df.sort_values([_TIME, "TRANSACTION_ID"], kind="stable")

    out = pd.DataFrame(index=df.index)
    out["TRANSACTION_ID"] = df["TRANSACTION_ID"]
    out["TX_DURING_WEEKEND"] = (df[_TIME].dt.day_of_week >= 5).astype(np.float64)
    out["TX_DURING_NIGHT"] = (df[_TIME].dt.hour <= 6).astype(np.float64)
    if method == "apply":
        customer = df.groupby("CUSTOMER_ID", group_keys=False)[[_TIME, "TX_AMOUNT"]].apply(
            _customer_windows
        )
        terminal = df.groupby("TERMINAL_ID", group_keys=False)[[_TIME, "TX_FRAUD"]].apply(
            _terminal_windows
        )
    else:
        customer = _customer_windows_vectorised(df)
        terminal = _terminal_windows_vectorised(df)
    out = out.join(customer).join(terminal)
    out = out.sort_index()  # back to the input's row order
    return out.loc[:, ["TRANSACTION_ID", *ENGINEERED_FEATURES]].reset_index(drop=True)


# -- method="apply": one call per entity ------------------------------------------------------


def _customer_windows(group: pd.DataFrame) -> pd.DataFrame:
    """One customer's rows (in time order): count and mean amount over (t - n days, t]."""
    amount = group.set_index(_TIME)["TX_AMOUNT"]
    result = {}
    for n in WINDOW_DAYS:
        window = amount.rolling(f"{n}D")
        count = window.count().to_numpy()
        total = window.sum().to_numpy()
        result[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = count
        result[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = total / count  # count >= 1
    return pd.DataFrame(result, index=group.index)


def _terminal_windows(group: pd.DataFrame) -> pd.DataFrame:
    """One terminal's rows (in time order): count and fraud rate over the delayed windows."""
    fraud = group.set_index(_TIME)["TX_FRAUD"]
    delay = fraud.rolling(f"{LABEL_DELAY_DAYS}D")
    delay_count = delay.count().to_numpy()
    delay_frauds = delay.sum().to_numpy()
    result = {}
    for n in WINDOW_DAYS:
        window = fraud.rolling(f"{n + LABEL_DELAY_DAYS}D")
        count = window.count().to_numpy() - delay_count
        frauds = window.sum().to_numpy() - delay_frauds
        result[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = count
        result[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = _rate(frauds, count)
    return pd.DataFrame(result, index=group.index)


# -- method="vectorised": groupby().rolling() -------------------------------------------------


def _grouped_rolling(
    df: pd.DataFrame, key: str, column: str, days: int
) -> tuple[pd.Series, pd.Series]:
    """Count and sum of ``column`` over each row's (t - days, t] among its ``key`` group's rows,
    indexed like ``df`` (groupby-rolling returns (key, row) order; drop the key level)."""
    # Aggregate the frame, then pick the column: selecting it on the Rolling object first would
    # index the result by time instead of by row.
    window = df.groupby(key)[[_TIME, column]].rolling(f"{days}D", on=_TIME)
    count = window.count()[column].droplevel(0)
    total = window.sum()[column].droplevel(0)
    return count, total


def _customer_windows_vectorised(df: pd.DataFrame) -> pd.DataFrame:
    result = {}
    for n in WINDOW_DAYS:
        count, total = _grouped_rolling(df, "CUSTOMER_ID", "TX_AMOUNT", n)
        result[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = count
        result[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = total / count
    return pd.DataFrame(result)


def _terminal_windows_vectorised(df: pd.DataFrame) -> pd.DataFrame:
    delay_count, delay_frauds = _grouped_rolling(df, "TERMINAL_ID", "TX_FRAUD", LABEL_DELAY_DAYS)
    result = {}
    for n in WINDOW_DAYS:
        count, frauds = _grouped_rolling(df, "TERMINAL_ID", "TX_FRAUD", n + LABEL_DELAY_DAYS)
        count = count - delay_count
        frauds = frauds - delay_frauds
        result[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = count
        result[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = pd.Series(
            _rate(frauds.to_numpy(), count.to_numpy()), index=count.index
        )
    return pd.DataFrame(result)


def _rate(frauds: np.ndarray, count: np.ndarray) -> np.ndarray:
    """frauds / count, 0 where count is 0."""
    return np.divide(frauds, count, out=np.zeros_like(frauds, dtype=np.float64), where=count > 0)
