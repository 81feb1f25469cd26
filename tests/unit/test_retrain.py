"""pipelines.app.retrain: the labelled-day cut, the training window that fits a history (and the
message when none does), and two weekly retrains on the tiny preset."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from models.selection import GRID, QUICK_GRID
from pipelines.app.cli import app
from pipelines.app.errors import UserError
from pipelines.app.retrain import (
    MAX_TRAIN_DAYS,
    RetrainConfig,
    _check_now,
    fit_train_days,
    label_delay_days,
    labelled_days_needed,
    last_labelled_day,
    longest_train_days,
    register,
    retrain,
    training_protocol,
)
from pipelines.app.simulator import PRESETS, simulate, write_dataset
from pipelines.core.declarations import load_definitions

ROOT = Path(__file__).resolve().parents[2]
# The handbook's label delay in days (its file's labels stream): 7.
DELAY = label_delay_days(load_definitions())


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2018-09-30T23:59:59Z", "2018-09-22"),
        ("2018-10-01T00:00:00Z", "2018-09-23"),
        ("2018-10-01T00:00:01", "2018-09-23"),  # naive means UTC
        ("2018-10-01T02:00:00+02:00", "2018-09-23"),
    ],
)
def test_last_labelled_day_waits_the_label_delay(now: str, expected: str) -> None:
    assert last_labelled_day(now, DELAY).isoformat() == expected


def test_training_protocol_ends_on_the_last_labelled_day() -> None:
    protocol = training_protocol(dt.date(2018, 9, 22), train_days=14, delay_days=DELAY)
    assert protocol.train_range == ("2018-09-09", "2018-09-22")
    # Selection's validation folds never reach past the training block.
    assert all(valid[1] <= "2018-09-22" for _, valid in protocol.validation_folds())


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history")
    write_dataset(simulate(PRESETS["tiny"]), path)  # 2018-04-01 .. 2018-04-21
    return path


@pytest.mark.slow
def test_two_weekly_retrains_compare_with_the_champion(history: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    common: dict[str, Any] = {
        "history": str(history),
        "model_dir": str(models),
        "train_days": 7,
        "eval_days": 3,
        "grid": QUICK_GRID[:1],
        "shards": 2,
    }
    first = retrain(RetrainConfig(now="2018-04-18", work_dir=str(tmp_path / "w1"), **common))
    assert first["last_labelled_day"] == "2018-04-10"
    assert first["training_range"] == ["2018-04-04", "2018-04-10"]
    assert first["evaluation"]["days"] == ["2018-04-08", "2018-04-10"]
    assert first["evaluation"]["holdout_training_range"] == ["2018-04-01", "2018-04-07"]
    assert first["evaluation"]["champion"] is None
    # The backfill stopped at the end of the last labelled day.
    table = pd.read_parquet(first["feature_table"])
    assert table["TX_DATETIME"].max() < pd.Timestamp("2018-04-11", tz="UTC")

    # A week later (default now: the last transaction, 2018-04-21), the first is the champion.
    second = retrain(
        RetrainConfig(champion=first["version_dir"], work_dir=str(tmp_path / "w2"), **common)
    )
    assert second["last_labelled_day"] == "2018-04-13"
    assert second["training_range"] == ["2018-04-07", "2018-04-13"]
    evaluation = second["evaluation"]
    assert evaluation["days"] == ["2018-04-11", "2018-04-13"]
    assert evaluation["champion_version"] == first["version"]
    assert evaluation["champion_trained_on_eval_days"] is False
    for side in ("challenger", "champion"):
        assert 0.0 <= evaluation[side]["auc"] <= 1.0
        assert set(evaluation[side]) >= {"auc", "ap", "cp100"}
    assert evaluation["n"] > 0 and evaluation["frauds"] > 0
    # Only the challengers are in model_dir (the holdout fits are scratch).
    assert sorted(p.name for p in models.iterdir()) == sorted([first["version"], second["version"]])
    # One candidate, no folds: the holdout's figures are the card's validation (models list).
    card = json.loads(Path(second["version_dir"], "model_card.json").read_text())
    assert card["validation_ranges"] == [evaluation["days"]]
    assert card["validation_metrics"] == {
        k: evaluation["challenger"][k] for k in ("auc", "ap", "cp100")
    }

    # The same now from the feature table gives the same cut.
    again = retrain(
        RetrainConfig(
            **{
                **common,
                "history": str(Path(first["feature_table"]).parent),
                "model_dir": str(tmp_path / "other"),
            },
            now="2018-04-18",
        )
    )
    assert again["training_range"] == first["training_range"]
    assert again["evaluation"]["challenger"] == first["evaluation"]["challenger"]


def test_retrain_explains_a_too_short_history(history: Path, tmp_path: Path) -> None:
    # At 2018-04-14 the tiny history has 6 labelled days (04-01..04-06): 7 training days and 3
    # evaluation days need 10 (at 2018-04-18: the first weekly retrain below). Checked before
    # the backfill: nothing is written.
    with pytest.raises(UserError) as raised:
        retrain(
            RetrainConfig(
                history=str(history),
                model_dir=str(tmp_path / "models"),
                now="2018-04-14",
                train_days=7,
                eval_days=3,
                grid=QUICK_GRID[:1],
                shards=2,
                work_dir=str(tmp_path / "work"),
            )
        )
    assert raised.value.message == (
        "--train-days 7 with --eval-days 3 needs 10 labelled days; at --now 2018-04-14T00:00 the "
        "history has 6 (2018-04-01..2018-04-06; labels arrive 7 days after their transaction)"
    )
    assert raised.value.fix == (
        "pass --train-days 3 or less, or --now 2018-04-18 or later (the history ends 2018-04-21)"
    )
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("now", "expected", "fix"),
    [
        (
            "2019-01-01",
            "--now 2019-01-01 is after the history: it ends 2018-04-21, all labelled by 2018-04-29",
            "pass --now within 2018-04-01..2018-04-29 (default: the last transaction, "
            "2018-04-21T23:",
        ),
        (
            "2018-03-31T23:59:59Z",
            "--now 2018-03-31T23:59:59Z is before the history starts (2018-04-01)",
            "pass --now within 2018-04-01..2018-04-29",
        ),
        ("21/04/2018", "--now 21/04/2018: not a date; expected an ISO 8601 date", ""),
    ],
)
def test_retrain_refuses_a_now_outside_the_history(
    history: Path, tmp_path: Path, now: str, expected: str, fix: str
) -> None:
    config = RetrainConfig(
        history=str(history), model_dir=str(tmp_path / "m"), now=now, grid=QUICK_GRID[:1]
    )
    with pytest.raises(UserError) as raised:
        retrain(config)
    assert raised.value.message.startswith(expected), raised.value.message
    assert raised.value.fix.startswith(fix), raised.value.fix


def test_a_now_until_the_history_is_all_labelled_is_accepted() -> None:
    # The tiny history ends 2018-04-21: at any time on 04-29 its last day is labelled (so a
    # feature table cut there is retrained from with the same --now); on 04-30 it is too late.
    span = _span("2018-04-01T00:10", "2018-04-21T23:50")
    _check_now(pd.Timestamp("2018-04-01T00:00", tz="UTC"), span, "2018-04-01", DELAY)
    late = pd.Timestamp("2018-04-29T23:59", tz="UTC")
    _check_now(late, span, "2018-04-29T23:59", DELAY)
    assert last_labelled_day(late, DELAY).isoformat() == "2018-04-21"
    assert fit_train_days(span, late, None, 7, False, now_given=True, delay_days=DELAY) == 14
    with pytest.raises(UserError, match="it ends 2018-04-21, all labelled by 2018-04-29"):
        _check_now(pd.Timestamp("2018-04-30T00:00", tz="UTC"), span, "2018-04-30", DELAY)


# -- how long a window fits --------------------------------------------------------------------


def _span(first: str, last: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    return pd.Timestamp(first, tz="UTC"), pd.Timestamp(last, tz="UTC")


# The small preset's span (56 days from 2018-04-01) and the tiny one's (21 days).
SMALL = _span("2018-04-01T00:01", "2018-05-26T23:56")
TINY = _span("2018-04-01T00:01", "2018-04-21T23:56")


@pytest.mark.parametrize("train_days", [1, 7, 13, 21, 30])
@pytest.mark.parametrize("eval_days", [1, 3, 7])
def test_labelled_days_needed_counts_the_holdout_and_its_folds(
    train_days: int, eval_days: int
) -> None:
    # With selection the holdout fit's oldest fold trains train_days + delay (7) + one test
    # block (7) before the holdout's window, which ends eval_days before the last labelled day.
    assert (
        labelled_days_needed(train_days, eval_days, True, DELAY) == eval_days + 2 * train_days + 14
    )
    assert labelled_days_needed(train_days, eval_days, False, DELAY) == eval_days + train_days


def test_the_window_is_the_longest_that_fits_up_to_three_weeks() -> None:
    now = SMALL[1]  # the default --now: the last transaction; 48 labelled days
    assert fit_train_days(SMALL, now, None, 7, select=True, delay_days=DELAY) == 13
    assert (
        fit_train_days(SMALL, now, None, 7, select=False, delay_days=DELAY) == MAX_TRAIN_DAYS == 21
    )
    assert fit_train_days(SMALL, now, 10, 7, select=True, delay_days=DELAY) == 10
    assert fit_train_days(TINY, TINY[1], None, 7, select=False, delay_days=DELAY) == 6
    assert longest_train_days(48, 7, True, cap=48, delay_days=DELAY) == 13
    assert longest_train_days(13, 7, True, cap=21, delay_days=DELAY) == 0


def test_a_window_too_long_says_what_fits() -> None:
    with pytest.raises(UserError) as raised:
        fit_train_days(SMALL, SMALL[1], 21, 7, select=True, delay_days=DELAY)
    assert raised.value.message == (
        "--train-days 21 with --eval-days 7 and selection's validation folds needs 63 labelled "
        "days; at its last transaction (2018-05-26) the history has 48 (2018-04-01..2018-05-18; "
        "labels arrive 7 days after their transaction)"
    )
    assert raised.value.fix == (
        "pass --train-days 13 or less, or --no-select (one candidate, no validation folds: up to "
        "41 training days), or a history of 71 days or more (rillet simulate --preset handbook: "
        "183 days)"
    )


def test_a_history_too_short_for_selection_points_to_no_select() -> None:
    with pytest.raises(UserError) as raised:
        fit_train_days(TINY, TINY[1], None, 7, select=True, delay_days=DELAY)
    assert raised.value.message.startswith(
        "retraining with --eval-days 7 and selection's validation folds needs at least 23 "
        "labelled days; at its last transaction (2018-04-21) the history has 13 "
    )
    assert raised.value.fix == (
        "pass --no-select (one candidate, no validation folds: up to 6 training days), or a "
        "history of 31 days or more (rillet simulate --preset small: 56 days)"
    )


def test_a_too_early_now_says_from_when_it_fits() -> None:
    now = pd.Timestamp("2018-04-05", tz="UTC")
    with pytest.raises(UserError) as raised:
        fit_train_days(SMALL, now, None, 7, select=True, now_given=True, delay_days=DELAY)
    assert "the history has 0 (it starts 2018-04-01;" in raised.value.message
    # At 2018-05-01 the labelled days are 04-01..04-23: the 23 that one training day needs.
    assert raised.value.fix == "pass --now 2018-05-01 or later (the history ends 2018-05-26)"
    assert last_labelled_day("2018-05-01", DELAY).isoformat() == "2018-04-23"
    assert (
        fit_train_days(
            SMALL, pd.Timestamp("2018-05-01", tz="UTC"), None, 7, True, True, delay_days=DELAY
        )
        == 1
    )


def test_only_fewer_eval_days_can_fit() -> None:
    with pytest.raises(UserError) as raised:
        fit_train_days(TINY, TINY[1], None, 13, select=False, delay_days=DELAY)
    assert raised.value.fix.startswith("pass --eval-days 12 or less, or a history of 22 days")


def test_register_hands_the_version_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeRegistry:
        def __init__(self, model_dir: str, definitions: object = None) -> None:
            self.model_dir = model_dir
            self.definitions = definitions

        def register(self, version: str, as_: str) -> str:
            calls.append((self.model_dir, version, as_, self.definitions))
            return version

    module = types.ModuleType("pipelines.stores.model_registry")
    module.ModelRegistry = FakeRegistry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipelines.stores.model_registry", module)
    assert register({"version": "v1"}, "gs://b/models") == "v1"
    # The version is checked against the definitions it was trained with.
    assert register({"version": "v2"}, "gs://b/models", definitions="payments") == "v2"
    assert calls == [
        ("gs://b/models", "v1", "challenger", None),
        ("gs://b/models", "v2", "challenger", "payments"),
    ]


# -- the command -------------------------------------------------------------------------------


@pytest.mark.slow
def test_retrain_quick_works_on_the_demos_data(tmp_path: Path) -> None:
    """`rillet retrain --quick` on the small preset (what `make demo` writes), no other option:
    the window is the longest that fits with selection (13 of 48 labelled days)."""
    data = tmp_path / "data" / "small"
    write_dataset(simulate(PRESETS["small"]), data)
    command = ["retrain", "--quick", "--history", str(data), "--model-dir", str(tmp_path / "m")]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", *command],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["last_labelled_day"] == "2018-05-18"
    assert out["train_days"] == 13
    assert out["training_range"] == ["2018-05-06", "2018-05-18"]
    assert out["evaluation"]["days"] == ["2018-05-12", "2018-05-18"]
    assert out["evaluation"]["holdout_training_range"] == ["2018-04-29", "2018-05-11"]
    assert out["evaluation"]["frauds"] > 0
    assert out["registered"]["challenger"] == out["version"]
    card = json.loads(Path(out["version_dir"], "model_card.json").read_text())
    assert len(card["selection"]["candidates"]) == len(QUICK_GRID)
    # The oldest validation fold of the holdout fit starts on the history's first day.
    assert card["validation_ranges"]


@pytest.mark.parametrize(
    ("options", "grid"),
    [
        ([], GRID),
        (["--quick"], QUICK_GRID),
        (["--no-select"], GRID[:1]),
        (["--quick", "--no-select"], QUICK_GRID[:1]),
    ],
)
def test_the_command_passes_the_grid_and_the_window(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str], grid: Any
) -> None:
    seen: list[RetrainConfig] = []

    def fake_retrain(config: RetrainConfig) -> dict[str, Any]:
        seen.append(config)
        return {"version": "v1", "version_dir": str(tmp_path / "v1")}

    monkeypatch.setattr("pipelines.app.retrain.retrain", fake_retrain)
    args = ["retrain", "--history", str(history), "--model-dir", str(tmp_path / "m")]
    result = CliRunner().invoke(app, [*args, "--register", "none", *options])
    assert result.exit_code == 0, result.output
    assert tuple(seen[0].grid or ()) == tuple(grid)
    assert seen[0].train_days is None  # the longest that fits, decided on the history


def test_retrain_a_model_of_some_features(tmp_path: Path) -> None:
    """--inputs: the challenger and its holdout fit use only those features, in that order (the
    card says so); a champion from before per-input fingerprints is not compared, and the
    result says why."""
    from pipelines.app.simulator import PRESETS, simulate
    from pipelines.core.training_data import training_features

    frame = simulate(PRESETS["tiny"])
    table = training_features(frame).assign(CUSTOMER_ID=frame["CUSTOMER_ID"].to_numpy())
    (tmp_path / "features").mkdir()
    table.to_parquet(tmp_path / "features" / "part-0.parquet")
    old = tmp_path / "old" / "v0"
    (old / "saved_model").mkdir(parents=True)
    (old / "saved_model" / "saved_model.pb").write_bytes(b"fake")
    (old / "model_card.json").write_text(json.dumps({"version": "v0", "features": ["TX_AMOUNT"]}))
    inputs = ("TERMINAL_ID_RISK_7DAY_WINDOW", "TX_AMOUNT", "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW")
    out = retrain(
        RetrainConfig(
            history=str(tmp_path),
            model_dir=str(tmp_path / "models"),
            champion=str(old),
            train_days=7,
            eval_days=3,
            grid=QUICK_GRID[:1],
            inputs=inputs,
        )
    )
    card = json.loads(Path(out["version_dir"], "model_card.json").read_text())
    assert card["features"] == list(inputs) and list(card["feature_fingerprints"]) == list(inputs)
    evaluation = out["evaluation"]
    assert 0.5 < evaluation["challenger"]["auc"] <= 1.0
    assert evaluation["champion"] is None and evaluation["champion_version"] == "v0"
    assert "no fingerprint per input" in evaluation["champion_refused"]
