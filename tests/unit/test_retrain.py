"""pipelines.app.retrain: the labelled-day cut, and two weekly retrains on the tiny preset."""

from __future__ import annotations

import datetime as dt
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from models.selection import QUICK_GRID
from pipelines.app.retrain import (
    RetrainConfig,
    last_labelled_day,
    register,
    retrain,
    training_protocol,
)
from pipelines.app.simulator import PRESETS, simulate, write_dataset


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
    assert last_labelled_day(now).isoformat() == expected


def test_training_protocol_ends_on_the_last_labelled_day() -> None:
    protocol = training_protocol(dt.date(2018, 9, 22), train_days=14)
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
    assert Path(second["version_dir"], "model_card.json").exists()

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
    with pytest.raises(ValueError, match="needs labelled history from 2018-03-"):
        retrain(
            RetrainConfig(
                history=str(history),
                model_dir=str(tmp_path / "models"),
                now="2018-04-14",
                eval_days=3,
                grid=QUICK_GRID[:1],
                shards=2,
            )
        )


def test_register_hands_the_version_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeRegistry:
        def __init__(self, model_dir: str) -> None:
            self.model_dir = model_dir

        def register(self, version: str, as_: str) -> str:
            calls.append((self.model_dir, version, as_))
            return version

    module = types.ModuleType("pipelines.stores.model_registry")
    module.ModelRegistry = FakeRegistry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipelines.stores.model_registry", module)
    assert register({"version": "v1"}, "gs://b/models") == "v1"
    assert calls == [("gs://b/models", "v1", "challenger")]
