"""The pandas baseline of ``make bench-backfill`` (bench.pandas_features) against the product's
engine (training_features) and against hand-computed values: ties at the same second, exact
window edges and a terminal with known frauds in the delayed window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.backfill import compare
from bench.pandas_features import ENGINEERED_FEATURES, pandas_features
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.training_data import training_features

__all__: list[str] = []

METHODS = ("apply", "vectorised")
TOLERANCE = 1e-9


def max_abs_diff(got: pd.DataFrame, want: pd.DataFrame) -> float:
    assert got["TRANSACTION_ID"].tolist() == want["TRANSACTION_ID"].tolist()
    columns = list(ENGINEERED_FEATURES)
    return float(np.max(np.abs(got[columns].to_numpy() - want[columns].to_numpy())))


def test_engineered_features_are_the_model_inputs_but_the_amount() -> None:
    assert tuple(n for n in MODEL_INPUTS if n != "TX_AMOUNT") == ENGINEERED_FEATURES


@pytest.mark.parametrize("method", METHODS)
def test_matches_the_engine_on_the_tiny_preset(tiny_frame: pd.DataFrame, method: str) -> None:
    got = pandas_features(tiny_frame, method=method)
    want = training_features(tiny_frame)
    assert list(got.columns) == ["TRANSACTION_ID", *ENGINEERED_FEATURES]
    assert not got.isna().any().any()
    assert max_abs_diff(got, want) <= TOLERANCE


T0 = pd.Timestamp("2018-04-02 10:00:00", tz="UTC")  # a Monday
DAY = pd.Timedelta(days=1)

# id, customer, terminal, time, amount, fraud. Ids follow time; 0, 1 and 2 share a second.
HAND_ROWS = [
    (0, 1, 5, T0, 10.0, 1),
    (1, 1, 5, T0, 20.0, 0),
    (2, 2, 5, T0, 30.0, 1),
    (3, 1, 6, T0 + DAY, 40.0, 0),  # exactly 1 day after 0 and 1: outside their 1-day window
    (4, 3, 7, pd.Timestamp("2018-04-07 06:59:59", tz="UTC"), 70.0, 0),  # Saturday, night
    (5, 3, 7, pd.Timestamp("2018-04-08 07:00:00", tz="UTC"), 80.0, 0),  # Sunday, day
    (6, 1, 5, T0 + 7 * DAY, 50.0, 1),  # delayed window (t0 - 1d, t0] holds 0, 1, 2
    (7, 2, 5, T0 + 7 * DAY + pd.Timedelta(seconds=1), 60.0, 0),
    (8, 2, 5, T0 + 8 * DAY, 5.0, 0),  # delayed 1-day window (t0, t0 + 1d] is empty
]


def hand_frame() -> pd.DataFrame:
    columns = ["TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_DATETIME"]
    frame = pd.DataFrame(HAND_ROWS, columns=[*columns, "TX_AMOUNT", "TX_FRAUD"])
    frame["TX_FRAUD"] = frame["TX_FRAUD"].astype(np.int8)
    return frame


@pytest.mark.parametrize("method", METHODS)
def test_hand_built_frame(method: str) -> None:
    frame = hand_frame()
    got = pandas_features(frame, method=method).set_index("TRANSACTION_ID")
    assert max_abs_diff(got.reset_index(), training_features(frame)) <= TOLERANCE

    # Ties: of the transactions at the same second, only lower ids (and itself) are "before".
    assert got.loc[0, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert got.loc[0, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 10.0
    assert got.loc[1, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert got.loc[1, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 15.0
    # Window (t - 1 day, t] is open on the left.
    assert got.loc[3, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert got.loc[3, "CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 3
    assert got.loc[3, "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == pytest.approx(70.0 / 3, abs=1e-12)
    assert got.loc[6, "CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 2  # ids 3 and 6
    assert got.loc[6, "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 30.0  # (10 + 20 + 40 + 50) / 4
    # Terminal 5: the delayed window (t - 8 d, t - 7 d] is closed on the right (t0 is in) and
    # holds ids 0, 1, 2 (two frauds); nothing newer than t - 7 days counts.
    for tx in (6, 7):
        assert got.loc[tx, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 3
        assert got.loc[tx, "TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(2 / 3, abs=1e-15)
    assert got.loc[6, "TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 3
    assert got.loc[8, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 0
    assert got.loc[8, "TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.0
    assert got.loc[8, "TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 3
    assert got.loc[8, "TERMINAL_ID_RISK_7DAY_WINDOW"] == pytest.approx(2 / 3, abs=1e-15)
    for tx in (0, 1, 2, 3):
        assert got.loc[tx, "TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
        assert got.loc[tx, "TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.0
    # Weekend and night (hour <= 6).
    assert got["TX_DURING_WEEKEND"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert got["TX_DURING_NIGHT"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("method", METHODS)
def test_keeps_the_input_row_order_and_naive_times(method: str) -> None:
    frame = hand_frame()
    want = pandas_features(frame, method=method)
    shuffled = frame.sample(frac=1, random_state=3)
    shuffled["TX_DATETIME"] = shuffled["TX_DATETIME"].dt.tz_localize(None)  # naive = UTC
    got = pandas_features(shuffled, method=method)
    assert got["TRANSACTION_ID"].tolist() == shuffled["TRANSACTION_ID"].tolist()
    pd.testing.assert_frame_equal(
        got.set_index("TRANSACTION_ID").sort_index(), want.set_index("TRANSACTION_ID")
    )


def test_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        pandas_features(hand_frame(), method="numba")  # type: ignore[arg-type]


def test_bench_comparison_matches_rows_by_id_and_flags_differences() -> None:
    frame = hand_frame()
    reference = training_features(frame)
    got = pandas_features(frame, method="vectorised")
    diff, per_column = compare(reference.sample(frac=1, random_state=1), got)
    assert diff <= TOLERANCE and set(per_column) == set(ENGINEERED_FEATURES)
    off = got.copy()
    off.loc[4, "TERMINAL_ID_RISK_7DAY_WINDOW"] += 1e-6
    diff, per_column = compare(reference, off)
    assert diff == pytest.approx(1e-6) and per_column["TERMINAL_ID_RISK_7DAY_WINDOW"] == diff
    with pytest.raises(ValueError, match="different transactions"):
        compare(reference.iloc[:-1], got)
