"""The rows the online evaluation and the Monitor keep in state and shuffle: each one's RowCoder
round-trips it, is deterministic (equal values, equal bytes, whatever order they were built in)
and pickles nothing (pipelines/transforms/coders.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.alerts import StreakRow, Streaks
from pipelines.core.drift import BucketCounts, Closable, DriftProgress, DriftWindows
from pipelines.transforms.coders import row_coder
from pipelines.transforms.monitoring import (
    Count,
    DriftDelta,
    FeatureCounts,
    LatencyCount,
    Stats,
    StatsRow,
    VersionCounts,
)
from pipelines.transforms.online_eval import (
    DayFigures,
    DayRow,
    DayRows,
    PendingLabel,
)

SAMPLES: list[Any] = [
    PendingLabel("t1", 1_533_686_400_000_005, "C1", 0, 3),
    DayRow("t1", "C1", 1, 0.75, False),
    DayRows([DayRow("t1", "C1", 1, 0.75, True), DayRow("t2", "C2", 0, 0.5, False)], 10**18),
    DayRows([], 0),
    DayFigures("v1", "2018-08-08", "challenger", 3, 1, 0.5, None, 0.01, True),
    DayFigures("v1", "2018-08-08", "champion", 0, 0, None, None, None, False),
    StatsRow([Count("labels", 3), Count("predictions", 9)], [LatencyCount(300, 9)], 812.5),
    VersionCounts(True, [FeatureCounts("TX_AMOUNT", 38_000, [BucketCounts(36_000, [1, 0])])]),
    DriftDelta(False, 38_000, [BucketCounts(36_000, [0, 4, 1])]),
    DriftProgress(
        [BucketCounts(-900, [1, 2]), BucketCounts(0, [3, 4])],
        -(2**62),
        None,
        [Closable(0, 1_700_000_000.25)],
        2,
        0,
        False,
        17,
    ),
    StreakRow("latency_p99_ms", 3, 0, False),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_rows_round_trip_through_a_deterministic_row_coder(value: Any) -> None:
    coder = row_coder(type(value))
    assert type(coder).__name__ == "RowCoder" and coder.is_deterministic()
    encoded = coder.encode(value)
    decoded = coder.decode(encoded)
    assert decoded == value and decoded._fields == value._fields
    assert coder.encode(decoded) == encoded
    # The class itself is not in the bytes (a pickle would name its module and class).
    assert type(value).__name__.encode() not in encoded and b"pipelines" not in encoded


def test_a_row_with_an_untyped_field_is_refused() -> None:
    class Loose(NamedTuple):
        name: str
        payload: Any

    with pytest.raises(TypeError, match="Loose"):
        row_coder(Loose)


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["predictions", "labels", "dead_letter/x"]), st.integers(0, 99)
    ),
    st.dictionaries(st.integers(0, 500), st.integers(1, 99)),
)
def test_equal_stats_encode_to_equal_bytes_whatever_their_order(counts, latency) -> None:
    coder = row_coder(StatsRow)
    forward = Stats(Counter(counts), Counter(latency), 1.5).row()
    backward = Stats(
        Counter(dict(reversed(list(counts.items())))),
        Counter(dict(reversed(list(latency.items())))),
        1.5,
    ).row()
    assert coder.encode(forward) == coder.encode(backward)
    assert Stats.from_row(coder.decode(coder.encode(forward))) == Stats(
        Counter(counts), Counter(latency), 1.5
    )


def test_drift_windows_resume_from_their_decoded_progress() -> None:
    def windows() -> DriftWindows:
        return DriftWindows([100] * 4, 3600, 900, 300, 0.2, 2, 10, grace_s=5.0)

    live = windows()
    coder = row_coder(DriftProgress)
    stored = coder.encode(live.progress())
    quiet, shifted = np.array([30, 30, 30, 30]), np.array([100, 5, 5, 10])
    closed_live, closed_resumed = [], []
    for i in range(24):
        counts = shifted if i >= 8 else quiet
        start = i * 900
        closed_live += live.add({start: counts}, start + 899, float(i) * 10)
        # The same windows, taken up from state at every flush as a runner would.
        resumed = windows().resume(coder.decode(stored))
        closed_resumed += resumed.add({start: counts}, start + 899, float(i) * 10)
        stored = coder.encode(resumed.progress())
    assert closed_resumed == closed_live and any(c.alert for c in closed_live)
    assert coder.decode(stored) == live.progress()


def test_streaks_resume_from_their_rows() -> None:
    s = Streaks(consecutive=2)
    s.judge("b", True)
    s.judge("a", False)
    coder = row_coder(StreakRow)
    rows = [coder.decode(coder.encode(r)) for r in s.rows()]
    assert [r.metric for r in rows] == ["a", "b"]
    again = Streaks.from_rows(2, rows)
    assert again == s and again.judge("b", True) == (2, True)
