"""Tests of the evaluation protocol and metrics (models/evaluation.py).

Expected values are worked out by hand in the comments; the slow test checks the spec's published
sizes on the regenerated handbook dataset.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from models import evaluation as ev
from models.evaluation import Protocol

HANDBOOK = Protocol.handbook()


def _frame(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    """(UTC time, card, label, score) rows -> a frame with the columns the metrics read."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": range(len(rows)),
            "TX_DATETIME": pd.to_datetime([r[0] for r in rows], utc=True, format="ISO8601").as_unit(
                "us"
            ),
            "CUSTOMER_ID": [r[1] for r in rows],
            "TX_FRAUD": pd.Series([r[2] for r in rows], dtype="int8"),
            "score": [r[3] for r in rows],
        }
    )


# -- Protocol --------------------------------------------------------------------------------


def test_handbook_dates_match_the_spec() -> None:
    assert HANDBOOK.train_start == dt.date(2018, 7, 25)
    assert HANDBOOK.train_range == ("2018-07-25", "2018-07-31")
    assert HANDBOOK.delay_range == ("2018-08-01", "2018-08-07")
    assert HANDBOOK.test_range == ("2018-08-08", "2018-08-14")
    assert HANDBOOK.test_start == dt.date(2018, 8, 8)
    assert HANDBOOK.validation_folds() == [
        (("2018-07-11", "2018-07-17"), ("2018-07-25", "2018-07-31")),
        (("2018-07-04", "2018-07-10"), ("2018-07-18", "2018-07-24")),
    ]


@pytest.mark.parametrize(
    "protocol",
    [HANDBOOK, Protocol.last_weeks("2018-04-01", 56), Protocol.last_weeks("2018-04-01", 42)],
)
def test_validation_folds_end_before_the_test_week(protocol: Protocol) -> None:
    test_first = protocol.test_range[0]
    for train, valid in protocol.validation_folds():
        # ISO strings compare like dates.
        assert train[0] <= train[1] < valid[0] <= valid[1] < test_first


def test_last_weeks_places_the_test_week_on_the_last_seven_days() -> None:
    # 56 days from 2018-04-01: last day index 55 = 2018-05-26; test = indices 49..55;
    # training = indices 35..41 (n_days-21 .. n_days-15) = 2018-05-06..05-12.
    protocol = Protocol.last_weeks("2018-04-01", 56)
    assert protocol.test_range == ("2018-05-20", "2018-05-26")
    assert protocol.train_range == ("2018-05-06", "2018-05-12")
    assert protocol.delay_range == ("2018-05-13", "2018-05-19")
    # Oldest fold trains 21 days before the training start: index 14 = 2018-04-15.
    assert protocol.validation_folds()[-1][0] == ("2018-04-15", "2018-04-21")


def test_too_short_dataset_raises() -> None:
    # The oldest fold trains 42 days before the end: 42 days fit exactly, 41 do not.
    assert Protocol.last_weeks("2018-04-01", 42).validation_folds()[-1][0][0] == "2018-04-01"
    with pytest.raises(ValueError, match="too short"):
        Protocol.last_weeks("2018-04-01", 41)


def test_for_preset() -> None:
    from pipelines.app.simulator import PRESETS, SimulatorConfig

    assert Protocol.for_preset("handbook", PRESETS["handbook"]) == HANDBOOK
    assert Protocol.for_preset("small", PRESETS["small"]) == Protocol.last_weeks("2018-04-01", 56)
    with pytest.raises(ValueError, match="too short"):
        Protocol.for_preset("tiny", PRESETS["tiny"])
    # The handbook dates need the dataset to reach the test week.
    with pytest.raises(ValueError, match="before the test week ends"):
        Protocol.for_preset("handbook", SimulatorConfig(n_days=100))


def test_to_dict_is_json_ready() -> None:
    card = json.loads(json.dumps(HANDBOOK.to_dict()))
    assert card["test_range"] == ["2018-08-08", "2018-08-14"]
    assert card["validation_folds"][0]["valid_range"] == ["2018-07-25", "2018-07-31"]


# -- day helpers -----------------------------------------------------------------------------


def test_day_of_and_rows_in_use_utc_calendar_days() -> None:
    times = pd.Series(
        pd.to_datetime(["2018-07-24 23:59:59", "2018-07-25 00:00:00", "2018-07-31 23:59:59"])
    ).dt.tz_localize("UTC")
    frame = pd.DataFrame({"TX_DATETIME": times, "x": [1, 2, 3]})
    assert ev.day_of(frame).tolist() == ["2018-07-24", "2018-07-25", "2018-07-31"]
    # 2018-07-25 01:30 in UTC+02:00 is 2018-07-24 23:30 UTC.
    other_zone = pd.Series(pd.to_datetime(["2018-07-25 01:30:00+02:00"]))
    assert ev.day_of(other_zone).tolist() == ["2018-07-24"]
    assert ev.rows_in(frame, HANDBOOK.train_range)["x"].tolist() == [2, 3]


# -- test set --------------------------------------------------------------------------------


def test_test_set_removes_known_compromised_cards() -> None:
    # Handbook protocol: training 07-25..07-31, test 08-08..08-14. Test day i (0..6) drops cards
    # with a fraud on a day in [07-25, 07-31 + i]: training week, plus cumulatively the delay days
    # 08-01 (i=1) .. 08-06 (i=6) -- the labels known 8 days before the test day.
    rows = [
        # card 1: fraud in the training week -> excluded on every test day.
        ("2018-07-27 10:00", 1, 1, 0.0),
        ("2018-08-08 10:00", 1, 0, 0.0),  # id 1: dropped
        ("2018-08-14 10:00", 1, 0, 0.0),  # id 2: dropped
        # card 2: fraud on 08-02 = 07-31 + 2 -> known from test day i=2 (08-10) on.
        ("2018-08-02 10:00", 2, 1, 0.0),
        ("2018-08-09 10:00", 2, 0, 0.0),  # id 4: i=1, cutoff 08-01 -> kept
        ("2018-08-10 10:00", 2, 0, 0.0),  # id 5: i=2, cutoff 08-02 -> dropped
        ("2018-08-12 10:00", 2, 1, 0.0),  # id 6: i=4 -> dropped
        # card 3: fraud before the training week does not count (only reading that gives the
        # spec's sizes) -> kept.
        ("2018-07-20 10:00", 3, 1, 0.0),
        ("2018-08-08 11:00", 3, 0, 0.0),  # id 8: kept
        # card 4: fraud on 08-07 (last delay day) would be known only on "day 7" -> kept on 08-14.
        ("2018-08-07 10:00", 4, 1, 0.0),
        ("2018-08-14 11:00", 4, 1, 0.0),  # id 10: kept
        # card 5: fraud on 08-06 = 07-31 + 6 -> known on 08-14 (i=6) only.
        ("2018-08-06 10:00", 5, 1, 0.0),
        ("2018-08-13 10:00", 5, 0, 0.0),  # id 12: i=5, cutoff 08-05 -> kept
        ("2018-08-14 23:59:59", 5, 0, 0.0),  # id 13: i=6 -> dropped
        # card 6: frauds inside the test week are never "known" -> kept on both days.
        ("2018-08-09 09:00", 6, 1, 0.0),  # id 14: kept
        ("2018-08-10 09:00", 6, 1, 0.0),  # id 15: kept
        # card 7: genuine; only its test-week rows are in the test set.
        ("2018-07-26 10:00", 7, 0, 0.0),  # id 16: training week -> not a test row
        ("2018-08-11 10:00", 7, 0, 0.0),  # id 17: kept
        ("2018-08-14 23:59:59", 7, 0, 0.0),  # id 18: kept (last second of the test week)
        ("2018-08-15 00:00:00", 7, 0, 0.0),  # id 19: after the test week
        # card 8: fraud on the last training day 07-31 -> excluded from 08-08 on.
        ("2018-07-31 23:00", 8, 1, 0.0),
        ("2018-08-08 00:00", 8, 0, 0.0),  # id 21: dropped
    ]
    frame = _frame(rows)
    result = ev.test_set(frame, HANDBOOK)
    assert result["TRANSACTION_ID"].tolist() == [4, 8, 10, 12, 14, 15, 17, 18]
    # Other columns (scores) and the index are kept.
    assert list(result.columns) == list(frame.columns)
    assert result.index.tolist() == [4, 8, 10, 12, 14, 15, 17, 18]


def test_test_set_is_not_collected_by_pytest() -> None:
    assert getattr(ev.test_set, "__test__", True) is False


# -- metrics ---------------------------------------------------------------------------------


def test_auc_and_ap_hand_computed() -> None:
    # Scores, sorted descending: 0.8 (fraud), 0.4 (genuine), 0.35 (fraud), 0.1 (genuine).
    # AUC = share of (fraud, genuine) pairs ranked correctly:
    #   (0.8, 0.4) yes, (0.8, 0.1) yes, (0.35, 0.4) no, (0.35, 0.1) yes -> 3/4 = 0.75.
    # AP = sum over frauds of (recall step) * precision at that fraud:
    #   at 0.8: recall 1/2, precision 1/1; at 0.35: recall 2/2, precision 2/3
    #   -> 0.5 * 1 + 0.5 * 2/3 = 5/6.
    # Card Precision@100 (one day, 4 distinct cards, 2 frauds) = 2 / 100.
    frame = _frame(
        [
            ("2018-08-08 01:00", 1, 0, 0.1),
            ("2018-08-08 02:00", 2, 0, 0.4),
            ("2018-08-08 03:00", 3, 1, 0.35),
            ("2018-08-08 04:00", 4, 1, 0.8),
        ]
    )
    metrics = ev.evaluate_scores(frame)
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["ap"] == pytest.approx(5 / 6)
    assert metrics["cp100"] == pytest.approx(0.02)
    assert metrics["cp100_per_day"] == pytest.approx([0.02])
    assert (metrics["n"], metrics["frauds"]) == (4, 2)


def test_auc_counts_a_tie_as_half() -> None:
    # Fraud 0.5 vs genuine 0.5 (tie, 1/2) and vs genuine 0.2 (correct, 1) -> 1.5 / 2 = 0.75.
    # AP: the tied block {0.5: fraud, genuine} is one threshold: recall 1, precision 1/2 -> 0.5.
    frame = _frame(
        [
            ("2018-08-08 01:00", 1, 1, 0.5),
            ("2018-08-08 02:00", 2, 0, 0.5),
            ("2018-08-08 03:00", 3, 0, 0.2),
        ]
    )
    metrics = ev.evaluate_scores(frame)
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["ap"] == pytest.approx(0.5)


def test_evaluate_scores_rejects_a_single_class_and_empty_frames() -> None:
    frame = _frame([("2018-08-08 01:00", 1, 0, 0.1), ("2018-08-08 02:00", 2, 0, 0.4)])
    with pytest.raises(ValueError, match="single-class"):
        ev.evaluate_scores(frame)
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate_scores(frame.iloc[:0])


def _three_days(fraud_card_first: bool = True) -> pd.DataFrame:
    # Card ids: the tied pair on day 2 is (c, d); c is the fraud. ``fraud_card_first`` gives c the
    # lower id (3 < 4), otherwise the higher one (5 > 4).
    c = 3 if fraud_card_first else 5
    return _frame(
        [
            # Day 1 (2018-08-08). Card 1: two rows -> max score 0.9 (genuine row), max label 1.
            ("2018-08-08 01:00", 1, 0, 0.9),
            ("2018-08-08 02:00", 1, 1, 0.2),
            ("2018-08-08 03:00", 2, 0, 0.8),
            ("2018-08-08 04:00", c, 1, 0.5),
            # Day 2. Card 1 (detected on day 1) is removed although it has the top score.
            ("2018-08-09 01:00", 1, 1, 0.95),
            ("2018-08-09 02:00", 2, 0, 0.9),
            # Card 4's row comes first, but the tie at 0.7 is broken by card id, not row order.
            ("2018-08-09 03:00", 4, 0, 0.7),
            ("2018-08-09 04:00", c, 1, 0.7),
            # Day 3.
            ("2018-08-10 01:00", c, 1, 0.99),
            ("2018-08-10 02:00", 2, 1, 0.6),
            ("2018-08-10 03:00", 6, 1, 0.3),
            ("2018-08-10 04:00", 7, 0, 0.1),
        ]
    )


def test_card_precision_at_k_hand_computed() -> None:
    # k = 2.
    # Day 1: per card (max score, max label): 1 -> (0.9, 1), 2 -> (0.8, 0), 3 -> (0.5, 1).
    #   Top 2 = cards 1, 2 -> 1 compromised -> 1/2. Detected: {1}.
    # Day 2: card 1 dropped (else top 2 = 1, 2). Cards 2 (0.9, 0), 3 (0.7, 1), 4 (0.7, 0);
    #   tie 3/4 -> lower id 3 first. Top 2 = 2, 3 -> 1/2. Detected: {1, 3}.
    # Day 3: card 3 dropped (its 0.99 would top the day). Cards 2 (0.6, 1), 6 (0.3, 1),
    #   7 (0.1, 0). Top 2 = 2, 6 -> 2/2 = 1.
    # Mean = (0.5 + 0.5 + 1) / 3 = 2/3.
    mean, per_day = ev.card_precision_at_k(_three_days(), k=2)
    assert per_day == pytest.approx([0.5, 0.5, 1.0])
    assert mean == pytest.approx(2 / 3)


def test_card_precision_ties_go_to_the_lower_card_id() -> None:
    # Same data with the fraud card renamed 5 (> 4):
    # Day 1: top 2 = cards 1 (0.9, 1), 2 (0.8, 0) -> 1/2, detected {1}.
    # Day 2: cards 2 (0.9, 0), 4 (0.7, 0), 5 (0.7, 1); the tie goes to card 4 -> 0/2; nothing
    #   detected, so card 5 stays in play.
    # Day 3: cards 5 (0.99, 1), 2 (0.6, 1), 6, 7 -> top 2 = 5, 2 -> 2/2.
    # Mean = (0.5 + 0 + 1) / 3 = 0.5.
    mean, per_day = ev.card_precision_at_k(_three_days(fraud_card_first=False), k=2)
    assert per_day == pytest.approx([0.5, 0.0, 1.0])
    assert mean == pytest.approx(0.5)


def test_card_precision_does_not_depend_on_row_order() -> None:
    frame = _three_days()
    shuffled = frame.sample(frac=1.0, random_state=3)
    assert ev.card_precision_at_k(shuffled, k=2) == ev.card_precision_at_k(frame, k=2)


def test_card_precision_divides_by_k_when_a_day_has_fewer_cards() -> None:
    # Day 3 alone with k = 3: cards 3 (0.99, 1), 2 (0.6, 1), 6 (0.3, 1), 7 -> 3/3; with k = 10
    # the same 3 frauds count 3/10 (the investigator's budget is k cards a day).
    day3 = _three_days().iloc[8:]
    assert ev.card_precision_at_k(day3, k=3)[1] == pytest.approx([1.0])
    assert ev.card_precision_at_k(day3, k=10)[1] == pytest.approx([0.3])


# -- the published dataset -------------------------------------------------------------------


@pytest.mark.slow
def test_handbook_sizes() -> None:
    from pipelines.app.simulator import PRESETS, simulate

    frame = simulate(PRESETS["handbook"])
    protocol = Protocol.for_preset("handbook", PRESETS["handbook"])
    train = ev.rows_in(frame, protocol.train_range)
    assert (len(train), int(train["TX_FRAUD"].sum())) == (67_240, 598)
    test = ev.test_set(frame, protocol)
    assert (len(test), int(test["TX_FRAUD"].sum())) == (58_264, 385)
    assert ev.day_of(test).unique().tolist() == [f"2018-08-{day:02d}" for day in range(8, 15)]
