"""bench.continual's week layout: dates, no training data after now minus the label delay,
consecutive test weeks."""

from __future__ import annotations

import datetime as dt

import pytest

from bench.continual import week_layout
from pipelines.app.simulator import PRESETS
from pipelines.core.definitions import LABEL_DELAY_DAYS


def _day(value: str) -> dt.date:
    return dt.date.fromisoformat(value)


def test_handbook_layout_dates() -> None:
    sim = PRESETS["handbook"]
    layout = week_layout(sim.start_date, sim.n_days, n_weeks=8, window_weeks=3)
    assert layout.static_train == ("2018-07-23", "2018-07-29")
    assert [w.test_range[0] for w in layout.weeks] == [
        "2018-08-06",
        "2018-08-13",
        "2018-08-20",
        "2018-08-27",
        "2018-09-03",
        "2018-09-10",
        "2018-09-17",
        "2018-09-24",
    ]
    # The last test week ends on the dataset's last day (183 days from 2018-04-01).
    assert layout.weeks[-1].test_range[1] == "2018-09-30"
    # Week 0's continual model has the static week as its latest labelled week.
    assert layout.weeks[0].continual_train == ("2018-07-09", "2018-07-29")
    assert layout.weeks[-1].continual_train == ("2018-08-27", "2018-09-16")


@pytest.mark.parametrize("window_weeks", [1, 2, 3, 4])
def test_no_training_data_after_now_minus_the_delay(window_weeks: int) -> None:
    sim = PRESETS["handbook"]
    layout = week_layout(sim.start_date, sim.n_days, n_weeks=8, window_weeks=window_weeks)
    for week in layout.weeks:
        first, last = (_day(d) for d in week.continual_train)
        # The last training day ends (midnight after it) no later than now - delay.
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        assert end <= week.now - dt.timedelta(days=LABEL_DELAY_DAYS)
        # ... and it is the latest such day: the window is as fresh as the labels allow.
        assert end + dt.timedelta(days=1) > week.now - dt.timedelta(days=LABEL_DELAY_DAYS)
        assert (last - first).days + 1 == 7 * window_weeks
        # Retrained at the start of its test week.
        assert week.now.date() == _day(week.test_range[0])
    # The static model's week is labelled before the first test week too.
    static_end = _day(layout.static_train[1]) + dt.timedelta(days=1)
    assert static_end <= layout.weeks[0].now.date() - dt.timedelta(days=LABEL_DELAY_DAYS)
    assert (_day(layout.static_train[1]) - _day(layout.static_train[0])).days == 6


def test_test_weeks_are_consecutive_and_follow_the_protocol_layout() -> None:
    layout = week_layout("2018-04-01", 183, n_weeks=8)
    assert _day(layout.weeks[0].test_range[0]) - _day(layout.static_train[0]) == dt.timedelta(14)
    for previous, week in zip(layout.weeks, layout.weeks[1:], strict=False):
        assert _day(week.test_range[0]) == _day(previous.test_range[1]) + dt.timedelta(days=1)
    for week in layout.weeks:
        first, last = (_day(d) for d in week.test_range)
        assert (last - first).days == 6
        # test_set's protocol: train | delay | this test week.
        assert week.test_protocol.train_start == first - dt.timedelta(days=14)
        assert (week.test_protocol.train_days, week.test_protocol.delay_days) == (7, 7)


def test_layout_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(ValueError, match="need 77 days; the dataset has 56"):
        week_layout("2018-04-01", 56, n_weeks=8, window_weeks=2)
    # 6 weeks after a training week fit in the small preset's 56 days only with a 1-week window.
    layout = week_layout("2018-04-01", 56, n_weeks=6, window_weeks=1)
    assert layout.static_train[0] == "2018-04-01"
