"""EntityWindows (bucket summaries + edge cells) against the batch engine: the same bits.

Random streams with ties and exact window edges (the engine test's grid), each entity's state
built from its cells, then answered (a) with every bucket loaded and (b) with only the edge
buckets' cells loaded and the other buckets known by their summaries alone, as a cold stage
reads them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.cells import BUCKET_US, LabelCell, Summary, TxCell, bucket_of
from pipelines.core.definitions import CUSTOMER, DAY_US, TERMINAL, max_lookback_us, window_features
from pipelines.core.engine import EventColumns, features_for
from pipelines.core.entity_index import Bucket, EntityWindows, Query, tie_key

T0 = 1522540800 * 1_000_000  # 2018-04-01T00:00:00Z

times = st.builds(
    lambda q, off: T0 + q * DAY_US // 4 + off,
    st.integers(0, 200),
    st.sampled_from([0, 0, 0, 1, -1, 1_000_000, BUCKET_US, -BUCKET_US]),
)
streams = st.lists(
    st.tuples(
        times, st.integers(0, 2), st.integers(0, 2), st.floats(0, 500).map(lambda a: round(a, 2))
    ),
    min_size=1,
    max_size=70,
)


def _engine(tx, labels, entity):
    cols = EventColumns(
        np.array([r[0] for r in tx]).astype(str),
        np.array([r[2] for r in tx]).astype(str),
        np.array([r[3] for r in tx]).astype(str),
        np.array([r[1] for r in tx], dtype=np.int64),
        np.array([r[4] for r in tx], dtype=np.float64),
    )
    label_cols = EventColumns(
        np.array([x[0] for x in labels]).astype(str),
        np.array([""] * len(labels)).astype(str),
        np.array([x[2] for x in labels]).astype(str),
        np.array([x[1] for x in labels], dtype=np.int64),
        np.array([x[3] for x in labels], dtype=np.float64),
    )
    return features_for(cols, labels=label_cols, features=window_features(entity))


def _state(rows, labels, edges_only_for=None, features=()):
    """One entity's state from its cells; with ``edges_only_for`` (query times), only the edge
    buckets of those queries keep their cells, the others are known by their summaries."""
    buckets: dict[int, Bucket] = {}
    for tx_id, t, _c, _m, amount in rows:
        buckets.setdefault(bucket_of(t), Bucket()).put_tx(tx_id, TxCell(t, amount, "x"))
    for tx_id, t, _m, flag in labels:
        buckets.setdefault(bucket_of(t), Bucket()).put_label(tx_id, LabelCell(t, flag))
    first = bucket_of(min(r[1] for r in rows) - max_lookback_us(TERMINAL)) - 1
    if edges_only_for is None:
        state = EntityWindows(first)
        for b, bucket in buckets.items():
            state.load(b, bucket)
        return state
    summaries: dict[int, Summary] = {b: c.summary() for b, c in buckets.items()}
    state = EntityWindows(first, summaries)
    for b in state.edge_buckets(edges_only_for, features):
        if b in buckets:
            state.load(b, buckets[b])
    return state


@pytest.mark.parametrize("entity", [CUSTOMER, TERMINAL])
@settings(max_examples=120, deadline=None)
@given(draw=streams, rnd=st.randoms(use_true_random=False))
def test_windows_have_the_engines_bits(entity, draw, rnd) -> None:
    tx = [(str(i), t, str(c), str(m), a) for i, (t, c, m, a) in enumerate(draw)]
    labels = [(r[0], r[1], r[3], rnd.randint(0, 1)) for r in tx if rnd.random() < 0.7]
    expected = _engine(tx, labels, entity)
    features = window_features(entity)
    key = 2 if entity == CUSTOMER else 3
    for edges_only in (False, True):
        got = np.zeros_like(expected)
        for owner in {r[key] for r in tx}:
            rows = [r for r in tx if r[key] == owner]
            own_labels = [x for x in labels if x[2] == owner] if entity == TERMINAL else []
            idx = [i for i, r in enumerate(tx) if r[key] == owner]
            queries = [Query(tx[i][1], tie_key(tx[i][0])) for i in idx]
            state = _state(
                rows, own_labels, [q.time_us for q in queries] if edges_only else None, features
            )
            got[idx] = state.features(queries, features)
        np.testing.assert_array_equal(got, expected)  # bit for bit


def test_a_window_needing_a_bucket_not_loaded_says_so() -> None:
    t = T0 + 10 * DAY_US
    summaries = {bucket_of(t - DAY_US): Summary(1, 5_000_000, t - DAY_US, t - DAY_US)}
    state = EntityWindows(bucket_of(t - 40 * DAY_US), summaries)
    state.put_tx("1", TxCell(t, 1.0, "x"))
    with pytest.raises(KeyError, match="not loaded"):
        state.features([Query(t, tie_key("1"))], window_features(CUSTOMER))
    assert state.missing(state.edge_buckets([t], window_features(CUSTOMER))) == {
        bucket_of(t - DAY_US)
    }


def test_trim_keeps_summaries_of_dropped_cells_and_forgets_old_buckets() -> None:
    state = EntityWindows(bucket_of(T0))
    for i in range(100):  # one every three buckets
        state.put_tx(str(i), TxCell(T0 + 3 * i * BUCKET_US, 1.5, "x"))
    state.take_changes()
    last = Query(T0 + 297 * BUCKET_US, tie_key("99"))
    one_day = window_features(CUSTOMER)[:2]
    before = state.features([last], one_day)
    keep = state.edge_buckets([last.time_us], one_day)
    state.trim(T0 + 150 * BUCKET_US, keep)
    assert state.covered_from == bucket_of(T0 + 150 * BUCKET_US)
    assert set(state.buckets) <= keep
    assert state.count_from(T0 + 150 * BUCKET_US + 1) == 50  # whole buckets
    assert state.newest_us() == T0 + 297 * BUCKET_US
    # The one-day window starts after the trimmed part and reads dropped cells' summaries.
    np.testing.assert_array_equal(state.features([last], one_day), before)
    assert before[0, 0] == 32  # (t - 96 buckets, t]: every third bucket


@pytest.mark.parametrize("entity", [CUSTOMER, TERMINAL])
@settings(max_examples=80, deadline=None)
@given(draw=streams, rnd=st.randoms(use_true_random=False))
def test_a_state_built_event_by_event_in_any_order_keeps_the_engines_bits(
    entity, draw, rnd
) -> None:
    """The state as the stages build it: cells put one by one in arrival order (out of order
    too), windows asked in between (so the sorted views, summaries and prefix sums are kept
    current incrementally, not rebuilt), redeliveries put again."""
    tx = [(str(i), t, str(c), str(m), a) for i, (t, c, m, a) in enumerate(draw)]
    labels = [(r[0], r[1], r[3], rnd.randint(0, 1)) for r in tx if rnd.random() < 0.7]
    expected = _engine(tx, labels, entity)
    features = window_features(entity)
    key = 2 if entity == CUSTOMER else 3
    got = np.zeros_like(expected)
    for owner in {r[key] for r in tx}:
        idx = [i for i, r in enumerate(tx) if r[key] == owner]
        arrivals = [("tx", tx[i]) for i in idx]
        if entity == TERMINAL:
            arrivals += [("label", x) for x in labels if x[2] == owner]
        rnd.shuffle(arrivals)
        arrivals += rnd.sample(arrivals, len(arrivals) // 4)  # redeliveries
        state = EntityWindows(bucket_of(min(r[1] for r in tx) - max_lookback_us(TERMINAL)) - 1)
        seen: list[int] = []
        for kind, item in arrivals:
            if kind == "tx":
                state.put_tx(item[0], TxCell(item[1], item[4], "x"))
                seen.append(int(item[0]))
            else:
                state.put_label(item[0], LabelCell(item[1], item[3]))
            if rnd.random() < 0.3:  # a window asked now: views built, then kept current
                asked = tx[rnd.choice(seen)] if seen else None
                if asked is not None:
                    state.features([Query(asked[1], tie_key(asked[0]))], features)
        queries = [Query(tx[i][1], tie_key(tx[i][0])) for i in idx]
        # A label replaced by another (the label rule records an earlier-published one), then
        # the first back: the incremental fraud counts follow both changes.
        flipped = [x for kind, x in arrivals if kind == "label"]
        for x in flipped:
            state.put_label(x[0], LabelCell(x[1], 1 - x[3]))
        state.features(queries, features)
        for x in flipped:
            state.put_label(x[0], LabelCell(x[1], x[3]))
        got[idx] = state.features(queries, features)
        assert state.newest_us() == max(tx[i][1] for i in idx)
    np.testing.assert_array_equal(got, expected)
