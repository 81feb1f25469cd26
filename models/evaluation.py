"""The reference evaluation protocol and its metrics (docs/specs/reference-workload.md, §3).

Dates are calendar days (UTC) of TX_DATETIME, written as ISO strings "YYYY-MM-DD"; every range is
inclusive at both ends. The protocol is three consecutive blocks of days::

    train (train_days) | delay (delay_days, unused: labels not yet known) | test (test_days)

Model selection uses validation folds built the same way but ending before the test week; the
test week is scored once, with the chosen model.

Metrics: ROC AUC and average precision (scikit-learn's definitions) and Card Precision@k, the
handbook's per-day "how many of the k cards an investigator checks are compromised" measure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "CARD",
    "LABEL",
    "TIME",
    "DayRange",
    "Protocol",
    "card_precision_at_k",
    "day_of",
    "evaluate_scores",
    "rows_in",
    "test_set",
]

TIME = "TX_DATETIME"
CARD = "CUSTOMER_ID"
LABEL = "TX_FRAUD"

DayRange = tuple[str, str]
"""Inclusive (first day, last day), both "YYYY-MM-DD"."""

# The spec's fixed dates for the published dataset.
_HANDBOOK_TRAIN_START = dt.date(2018, 7, 25)
# Two folds as in the spec: the first validates on the protocol's training week, the second one
# test-length step earlier.
_N_FOLDS = 2


def _iso(day: dt.date) -> str:
    return day.isoformat()


def _span(first: dt.date, n_days: int) -> DayRange:
    return (_iso(first), _iso(first + dt.timedelta(days=n_days - 1)))


def _parse_start(start_date: str) -> dt.date:
    """Calendar day (UTC) of a dataset start given like SimulatorConfig.start_date."""
    stamp = pd.Timestamp(start_date)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    day: dt.date = stamp.date()
    return day


@dataclass(frozen=True)
class Protocol:
    """Train / delay / test day blocks and the validation folds that precede the test week.

    ``train_start`` is the first training day; the delay block follows the training block and the
    test block follows the delay block. All ranges are inclusive ISO day pairs.
    """

    train_start: dt.date
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    def __post_init__(self) -> None:
        if self.train_days < 1 or self.test_days < 1 or self.delay_days < 0:
            raise ValueError(
                "train_days and test_days must be >= 1 and delay_days >= 0, got "
                f"{self.train_days}, {self.test_days}, {self.delay_days}"
            )

    # -- the blocks -------------------------------------------------------------------------

    @property
    def train_range(self) -> DayRange:
        """The training days."""
        return _span(self.train_start, self.train_days)

    @property
    def delay_range(self) -> DayRange | None:
        """The delay days between training and test (None when delay_days is 0)."""
        if self.delay_days == 0:
            return None
        return _span(self.train_start + dt.timedelta(days=self.train_days), self.delay_days)

    @property
    def test_start(self) -> dt.date:
        """The first test day."""
        return self.train_start + dt.timedelta(days=self.train_days + self.delay_days)

    @property
    def test_range(self) -> DayRange:
        """The test days."""
        return _span(self.test_start, self.test_days)

    def test_day(self, i: int) -> dt.date:
        """The i-th test day (0-based)."""
        return self.test_start + dt.timedelta(days=i)

    def validation_folds(self) -> list[tuple[DayRange, DayRange]]:
        """(train_range, valid_range) pairs for model selection, latest fold first.

        Each fold mirrors the protocol (train_days, then delay_days, then test_days validated)
        shifted back so its validation block starts on the protocol's training start (fold 1) or
        ``test_days`` earlier per further fold. With the defaults every fold's validation ends
        before the test week; a protocol where that would not hold is rejected.
        """
        folds: list[tuple[DayRange, DayRange]] = []
        for k in range(_N_FOLDS):
            valid_start = self.train_start - dt.timedelta(days=k * self.test_days)
            fold_train = valid_start - dt.timedelta(days=self.delay_days + self.train_days)
            folds.append((_span(fold_train, self.train_days), _span(valid_start, self.test_days)))
        last_valid_day = dt.date.fromisoformat(folds[0][1][1])
        if last_valid_day >= self.test_start:
            # Validating on test days would leak the test week into model selection.
            raise ValueError(
                f"validation fold ends {last_valid_day}, not before the test start "
                f"{self.test_start}: test_days must be <= train_days + delay_days"
            )
        return folds

    @property
    def earliest_day(self) -> dt.date:
        """The first day any fold or block uses (the oldest fold's training start)."""
        oldest_train = self.validation_folds()[-1][0][0]
        return min(dt.date.fromisoformat(oldest_train), self.train_start)

    @property
    def last_day(self) -> dt.date:
        """The last test day."""
        return self.test_day(self.test_days - 1)

    def check_fits(self, start_date: str, n_days: int) -> None:
        """Raises ValueError unless every fold and the test week lie within the dataset days."""
        first = _parse_start(start_date)
        last = first + dt.timedelta(days=n_days - 1)
        if self.earliest_day < first:
            raise ValueError(
                f"dataset of {n_days} days from {first} is too short for this protocol: the "
                f"oldest validation fold trains from {self.earliest_day}, before the dataset "
                f"starts (need at least {self.span_days} days)"
            )
        if self.last_day > last:
            raise ValueError(
                f"dataset of {n_days} days from {first} ends {last}, before the test week ends "
                f"({self.last_day})"
            )

    @property
    def span_days(self) -> int:
        """Days from the oldest fold's training start to the last test day, inclusive."""
        return (self.last_day - self.earliest_day).days + 1

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def handbook(cls) -> Protocol:
        """The spec's dates: train 2018-07-25..31, delay 08-01..07, test 08-08..14."""
        return cls(train_start=_HANDBOOK_TRAIN_START)

    @classmethod
    def last_weeks(
        cls,
        start_date: str,
        n_days: int,
        *,
        train_days: int = 7,
        delay_days: int = 7,
        test_days: int = 7,
    ) -> Protocol:
        """A protocol whose test block is the dataset's last ``test_days`` days.

        With the defaults the training week is day indices n_days-21 .. n_days-15. Raises
        ValueError when the oldest validation fold would start before the dataset (with the
        defaults: fewer than 42 days).
        """
        first = _parse_start(start_date)
        offset = n_days - test_days - delay_days - train_days
        protocol = cls(
            train_start=first + dt.timedelta(days=offset),
            train_days=train_days,
            delay_days=delay_days,
            test_days=test_days,
        )
        protocol.check_fits(start_date, n_days)
        return protocol

    @classmethod
    def for_preset(cls, name: str, config: Any) -> Protocol:
        """The protocol for a simulator preset: the spec's dates for "handbook", otherwise the
        dataset's last weeks. ``config`` is a SimulatorConfig (start_date, n_days)."""
        if name == "handbook":
            protocol = cls.handbook()
            protocol.check_fits(config.start_date, config.n_days)
            return protocol
        return cls.last_weeks(config.start_date, config.n_days)

    @classmethod
    def from_dict(cls, described: dict[str, Any]) -> Protocol:
        """The protocol :meth:`to_dict` described (e.g. read back from a model card)."""
        return cls(
            train_start=dt.date.fromisoformat(described["train_start"]),
            train_days=described["train_days"],
            delay_days=described["delay_days"],
            test_days=described["test_days"],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for model cards and reports)."""
        return {
            "train_start": _iso(self.train_start),
            "train_days": self.train_days,
            "delay_days": self.delay_days,
            "test_days": self.test_days,
            "train_range": list(self.train_range),
            "delay_range": list(self.delay_range) if self.delay_range else None,
            "test_range": list(self.test_range),
            "validation_folds": [
                {"train_range": list(train), "valid_range": list(valid)}
                for train, valid in self.validation_folds()
            ],
        }


# -- day helpers ---------------------------------------------------------------------------


def _days(frame_or_series: pd.DataFrame | pd.Series) -> npt.NDArray[np.datetime64]:
    """Calendar days (UTC) as datetime64[D]; naive timestamps are taken as UTC."""
    times = frame_or_series[TIME] if isinstance(frame_or_series, pd.DataFrame) else frame_or_series
    times = pd.to_datetime(times)
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    days: npt.NDArray[np.datetime64] = times.to_numpy().astype("datetime64[D]")
    return days


def day_of(frame_or_series: pd.DataFrame | pd.Series) -> pd.Series:
    """Calendar day (UTC) "YYYY-MM-DD" of each TX_DATETIME (a frame's column or the series)."""
    days = _days(frame_or_series)
    if len(days) == 0:
        return pd.Series([], index=frame_or_series.index, name="day", dtype=object)
    # Format each day of the covered span once and index into it: formatting (or np.unique's
    # sort) over a million rows is slow.
    numbers = days.astype(np.int64)
    low = numbers.min()
    labels = (np.arange(numbers.max() - low + 1) + low).astype("datetime64[D]").astype(str)
    return pd.Series(labels[numbers - low], index=frame_or_series.index, name="day", dtype=object)


def _in_range(days: npt.NDArray[np.datetime64], day_range: DayRange) -> npt.NDArray[np.bool_]:
    first, last = (np.datetime64(day, "D") for day in day_range)
    mask: npt.NDArray[np.bool_] = (days >= first) & (days <= last)
    return mask


def rows_in(frame: pd.DataFrame, day_range: DayRange) -> pd.DataFrame:
    """Rows of ``frame`` whose calendar day lies in the inclusive ``day_range``."""
    return frame[_in_range(_days(frame), day_range)]


# -- the test set --------------------------------------------------------------------------


def test_set(frame: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """The protocol's test set: each test day's transactions minus known-compromised cards.

    A card is known compromised on test day i (0-based) when it has a fraud on any day from the
    training start up to ``train_start + train_days - 1 + i`` (i.e. ``delay_days + 1`` days before
    the test day; with the defaults, training start + 6 + i). That is the training week's frauds
    plus, cumulatively, the delay-period frauds whose labels have arrived. Frauds before the
    training start do not count: only this reading reproduces the spec's sizes (58,264 / 385;
    counting all earlier history gives 22,369 / 119).

    ``frame`` must cover the training, delay and test days and have TX_DATETIME, CUSTOMER_ID and
    TX_FRAUD; all columns are kept, rows keep their index and their order in ``frame``.
    """
    days = _days(frame)
    cards = frame[CARD].to_numpy()
    fraud = frame[LABEL].to_numpy() == 1
    train_start = np.datetime64(protocol.train_start, "D")
    # First day on which each card had a fraud within [train_start, last cutoff]; a card is known
    # on test day i iff that day <= its cutoff, which covers the training-week and cumulative rules.
    last_cutoff = train_start + np.timedelta64(protocol.train_days - 1 + protocol.test_days - 1)
    relevant = fraud & (days >= train_start) & (days <= last_cutoff)
    first_fraud = (
        pd.Series(days[relevant], index=cards[relevant]).groupby(level=0).min()
        if relevant.any()
        else pd.Series(dtype="datetime64[s]")
    )
    keep = np.zeros(len(frame), dtype=bool)
    for i in range(protocol.test_days):
        test_day = np.datetime64(protocol.test_day(i), "D")
        cutoff = train_start + np.timedelta64(protocol.train_days - 1 + i)
        known = first_fraud.index[first_fraud.to_numpy() <= cutoff]
        on_day = days == test_day
        keep |= on_day & ~np.isin(cards, known.to_numpy())
    return frame[keep]


# The name starts with "test": stop pytest from collecting it when a test module imports it.
test_set.__test__ = False  # type: ignore[attr-defined]


# -- metrics -------------------------------------------------------------------------------


def card_precision_at_k(
    frame: pd.DataFrame, score_column: str = "score", k: int = 100
) -> tuple[float, list[float]]:
    """Card Precision@k: (mean over days, per-day list), days in calendar order.

    For each calendar day present in ``frame`` (a test set): drop cards detected on earlier
    days; reduce to one row per card (maximum score, maximum label); take the ``k`` cards with
    the highest scores; precision = compromised cards among them / k (k even when the day has
    fewer cards). The compromised cards among the top k are "detected" and dropped from later
    days.

    Ties in score are broken by card id, ascending (a stable sort on the card-id ordered
    per-card table), so the result does not depend on row order.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if frame.empty:
        raise ValueError("card_precision_at_k needs a non-empty frame")
    days = _days(frame)
    detected: set[Any] = set()
    per_day: list[float] = []
    for day in np.unique(days):
        rows = frame[days == day]
        rows = rows[~rows[CARD].isin(detected)]
        # groupby sorts by card id, and the stable sort keeps that order among equal scores.
        per_card = rows.groupby(CARD)[[score_column, LABEL]].max()
        top = per_card.sort_values(score_column, ascending=False, kind="stable").head(k)
        hits = top.index[top[LABEL].to_numpy() == 1]
        per_day.append(len(hits) / k)
        detected.update(hits.tolist())
    return float(np.mean(per_day)), per_day


def evaluate_scores(frame: pd.DataFrame, score_column: str = "score") -> dict[str, Any]:
    """ROC AUC, average precision and Card Precision@100 of ``score_column`` on a test set.

    Returns {"auc", "ap", "cp100", "cp100_per_day", "n", "frauds"}. Raises ValueError when the
    frame is empty, has missing scores or holds a single class (AUC is undefined).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if frame.empty:
        raise ValueError("cannot evaluate an empty frame")
    labels = frame[LABEL].to_numpy().astype(int)
    scores = frame[score_column].to_numpy().astype(float)
    if np.isnan(scores).any():
        raise ValueError(f"column {score_column!r} has {int(np.isnan(scores).sum())} NaN scores")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(
            f"cannot compute AUC/AP on a single-class frame ({len(frame)} rows, all "
            f"{LABEL}={classes[0]}): the test set needs both frauds and genuine transactions"
        )
    cp100, cp100_per_day = card_precision_at_k(frame, score_column, k=100)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "cp100": cp100,
        "cp100_per_day": cp100_per_day,
        "n": len(frame),
        "frauds": int(labels.sum()),
    }
