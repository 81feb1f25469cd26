"""The feature engine against a brute-force reference on random streams (ties, window edges)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.definitions import DAY_US, MODEL_INPUTS
from pipelines.core.engine import EventColumns, features_for
from tests.reference import brute_force

T0 = 1522540800 * 1_000_000  # 2018-04-01T00:00:00Z

# Times on a coarse grid of quarter days plus small offsets make ties and exact window edges
# (t - 1 day, t - 7 days, t - 37 days, ...) common rather than improbable.
times = st.builds(
    lambda q, off: T0 + q * DAY_US // 4 + off,
    st.integers(0, 200),
    st.sampled_from([0, 0, 0, 1, -1, 1_000_000]),
)
transactions = st.lists(
    st.tuples(
        times, st.integers(0, 3), st.integers(0, 2), st.floats(0, 500).map(lambda a: round(a, 2))
    ),
    min_size=1,
    max_size=60,
)


def columns(rows, value_index):
    return EventColumns(
        np.array([r[0] for r in rows]).astype(str),
        np.array([r[2] for r in rows]).astype(str),
        np.array([r[3] for r in rows]).astype(str),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[value_index] for r in rows], dtype=np.float64),
    )


def label_columns(labels):
    """Labels (transaction id, time, terminal, is_fraud) as the engine takes them."""
    return EventColumns(
        np.array([x[0] for x in labels]),
        np.array([""] * len(labels)),
        np.array([x[2] for x in labels]),
        np.array([x[1] for x in labels], dtype=np.int64),
        np.array([x[3] for x in labels], dtype=np.float64),
    )


@settings(max_examples=150, deadline=None)
@given(transactions, st.randoms(use_true_random=False), st.integers(0, 60))
def test_engine_equals_brute_force(draw, rnd, split) -> None:
    tx = [(str(i), t, str(c), str(m), a) for i, (t, c, m, a) in enumerate(draw)]
    rnd.shuffle(tx)  # arrival order must not matter
    labels = [(r[0], r[1], r[3], rnd.randint(0, 1)) for r in tx]
    expected = np.array(brute_force(tx, labels))
    label_cols = label_columns(labels)
    batch = features_for(columns(tx, 4), labels=label_cols)
    assert batch.shape == (len(tx), len(MODEL_INPUTS))
    np.testing.assert_allclose(batch, expected, rtol=1e-12, atol=1e-9)

    # The stream's view: part of the events come back from the store as history, the rest are
    # the query batch. The result must be bit-identical to the batch computation.
    split = min(split, len(tx))
    hist, query = tx[:split], tx[split:]
    if query:
        stream = features_for(
            columns(query, 4),
            labels=label_cols,
            customer_history=columns(hist, 4),
            terminal_history=columns(hist, 4),
        )
        assert np.array_equal(stream, batch[split:])


def test_window_edges_exactly() -> None:
    # Customer 1: events at t-1day (excluded from the 1-day window), t-1day+1us (included), t.
    t = T0 + 40 * DAY_US
    tx = [
        ("1", t - DAY_US, "1", "9", 10.0),
        ("2", t - DAY_US + 1, "1", "9", 20.0),
        ("3", t, "1", "9", 30.0),
    ]
    got = features_for(columns(tx, 4), labels=EventColumns.empty())
    col = {name: i for i, name in enumerate(MODEL_INPUTS)}
    assert got[2, col["CUSTOMER_ID_NB_TX_1DAY_WINDOW"]] == 2
    assert got[2, col["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"]] == 25.0
    assert got[0, col["CUSTOMER_ID_NB_TX_1DAY_WINDOW"]] == 1


def test_ties_follow_transaction_id_order() -> None:
    t = T0 + DAY_US
    tx = [("10", t, "1", "9", 10.0), ("9", t, "1", "9", 30.0)]
    got = features_for(columns(tx, 4), labels=EventColumns.empty())
    col = MODEL_INPUTS.index("CUSTOMER_ID_NB_TX_1DAY_WINDOW")
    # "9" < "10" numerically: id 9 sees only itself, id 10 sees both.
    assert got[1, col] == 1 and got[0, col] == 2


def test_terminal_risk_uses_the_delayed_window() -> None:
    t = T0 + 20 * DAY_US
    tx = [
        ("1", t - 8 * DAY_US, "1", "5", 1.0),
        ("2", t - 7 * DAY_US, "2", "5", 1.0),
        ("3", t, "3", "5", 1.0),
    ]
    labels = EventColumns(
        np.array(["1", "2"]),
        np.array(["", ""]),
        np.array(["5", "5"]),
        np.array([t - 8 * DAY_US, t - 7 * DAY_US], dtype=np.int64),
        np.array([1.0, 0.0]),
    )
    got = features_for(columns(tx, 4), labels=labels)
    nb = MODEL_INPUTS.index("TERMINAL_ID_NB_TX_1DAY_WINDOW")
    risk = MODEL_INPUTS.index("TERMINAL_ID_RISK_1DAY_WINDOW")
    # Window (t-8d, t-7d]: only transaction 2 (t-7d exactly), not fraud.
    assert got[2, nb] == 1 and got[2, risk] == 0.0
    nb7, risk7 = (
        MODEL_INPUTS.index("TERMINAL_ID_NB_TX_7DAY_WINDOW"),
        MODEL_INPUTS.index("TERMINAL_ID_RISK_7DAY_WINDOW"),
    )
    assert got[2, nb7] == 2 and got[2, risk7] == 0.5


def test_queries_long_after_the_newest_label_stay_within_their_entity() -> None:
    """A query whose delayed window ends more than the lookback after the newest label must not
    read the next entity's labels (the key space spans up to the newest query, not label)."""
    tx = [
        ("1", T0, "c1", "A", 10.0),
        ("2", T0, "c2", "B", 20.0),
        ("3", T0 + 20 * DAY_US, "c1", "A", 30.0),
        ("4", T0 + 45 * DAY_US, "c1", "A", 40.0),
    ]
    labels = [("1", T0, "A", 0), ("2", T0, "B", 1)]
    expected = np.array(brute_force(tx, labels))
    label_cols = EventColumns(
        np.array(["1", "2"]),
        np.array(["c1", "c2"]),
        np.array(["A", "B"]),
        np.array([T0, T0], dtype=np.int64),
        np.array([0.0, 1.0]),
    )
    got = features_for(
        columns([(x[0], x[1], x[2], x[3], x[4]) for x in tx[3:]], 4),
        labels=label_cols,
        customer_history=columns(tx[:3], 4),
        terminal_history=columns(tx[:3], 4),
    )
    np.testing.assert_array_equal(got, expected[3:])


def test_queries_before_the_oldest_label_stay_within_their_entity() -> None:
    """A query earlier than every label: its delayed window starts before the labels' oldest
    time minus the lookback, so the labels' key space must start at the query's window too, or
    the window's start lands in the previous entity's range and counts its frauds (found by
    the former tests/unit/test_entity_index.py)."""
    tx = [
        ("0", T0, "c", "A", 0.0),
        ("1", T0, "c", "B", 0.0),
        ("2", T0 + 7 * DAY_US, "c", "B", 0.0),
        ("3", T0 + 7 * DAY_US + DAY_US // 4, "c", "A", 0.0),
        ("4", T0 + 7 * DAY_US + DAY_US // 4, "c", "B", 0.0),
        ("5", T0 + 7 * DAY_US + DAY_US // 4, "c", "C", 0.0),
    ]
    labels = [(x[0], x[1], x[3], int(x[3] == "A")) for x in tx[3:]]
    expected = np.array(brute_force(tx, labels))
    got = features_for(columns(tx, 4), labels=label_columns(labels))
    risk30 = MODEL_INPUTS.index("TERMINAL_ID_RISK_30DAY_WINDOW")
    assert got[2, risk30] == 0.0  # B's window (t-37d, t-7d] holds transaction 1, no fraud
    np.testing.assert_array_equal(got, expected)
