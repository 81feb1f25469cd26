"""Model selection on validation weeks only, then one final fit on the training week.

The evaluation protocol (models.evaluation.Protocol, docs/specs/reference-workload.md
section 3) reserves the test week: it is scored once, by ``rillet evaluate``, with the model
chosen here. Selection uses the protocol's validation folds, which mirror its layout (a training
week, a delay week, a validation week) shifted back so that every fold ends before the test week
starts. Each candidate configuration is trained on every fold's training week and scored on its
validation set (known-compromised cards removed, like the test set); the candidate with the best
mean average precision wins, ties going to the earlier (simpler) candidate.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.evaluation import Protocol, evaluate_scores, rows_in, test_set
from models.export import export_model
from models.train import TrainConfig, predict, train_model
from pipelines.core.declarations import Definitions
from pipelines.core.definitions import MODEL_INPUTS

__all__ = ["GRID", "QUICK_GRID", "Selection", "select_and_train"]

GRID: tuple[TrainConfig, ...] = (
    TrainConfig(max_depth=6),
    TrainConfig(max_depth=4),
    TrainConfig(max_depth=4, num_trees=600, shrinkage=0.05),
)
"""The candidates ``rillet train --select`` compares (YDF gradient boosted trees; a deliberately
small grid: each candidate trains on every fold)."""

QUICK_GRID: tuple[TrainConfig, ...] = (
    TrainConfig(max_depth=4, num_trees=100),
    TrainConfig(max_depth=6, num_trees=100),
)
"""A two-candidate grid for CI and small presets."""


@dataclass
class Selection:
    """The chosen configuration and every candidate's validation scores."""

    config: TrainConfig
    candidates: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.config.to_dict(), "candidates": self.candidates}


def _fold_protocol(protocol: Protocol, fold_train_start: str) -> Protocol:
    return replace(protocol, train_start=dt.date.fromisoformat(fold_train_start))


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ("auc", "ap", "cp100")}


def select_config(
    table: pd.DataFrame,
    protocol: Protocol,
    grid: tuple[TrainConfig, ...] = GRID,
    inputs: Sequence[str] = MODEL_INPUTS,
) -> Selection:
    """Trains every candidate (a model of ``inputs``) on every validation fold; picks the best
    mean AP."""
    candidates = []
    for config in grid:
        folds = []
        for train_range, valid_range in protocol.validation_folds():
            fold = _fold_protocol(protocol, train_range[0])
            train = rows_in(table, train_range)
            valid = test_set(table, fold).copy()
            model, _ = train_model(train, None, config, inputs)
            valid["score"] = predict(model, valid)
            folds.append(
                {
                    "train_range": list(train_range),
                    "valid_range": list(valid_range),
                    **_scores(evaluate_scores(valid)),
                }
            )
        candidates.append(
            {
                "config": config.to_dict(),
                "folds": folds,
                "mean_ap": float(np.mean([f["ap"] for f in folds])),
                "mean_auc": float(np.mean([f["auc"] for f in folds])),
                "mean_cp100": float(np.mean([f["cp100"] for f in folds])),
            }
        )
    best = max(range(len(grid)), key=lambda i: (candidates[i]["mean_ap"], -i))
    return Selection(grid[best], candidates)


def select_and_train(
    table: pd.DataFrame,
    protocol: Protocol,
    model_dir: str | Path,
    grid: tuple[TrainConfig, ...] = GRID,
    card: dict[str, Any] | None = None,
    validate: bool = False,
    inputs: Sequence[str] = MODEL_INPUTS,
    definitions: Definitions | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Selects a configuration on the validation folds, fits it on the protocol's training week
    (the handbook's one week: more history did not score better on the folds) and exports it
    with a model card; returns the version directory and the card as written. One candidate
    is scored on the folds too with ``validate`` (its card then has validation metrics).
    ``inputs``: the model's inputs, in its input order, declared in ``definitions`` (default:
    the handbook's file), whose fingerprints the card records."""
    selection = select_config(table, protocol, grid, inputs) if len(grid) > 1 or validate else None
    config = selection.config if selection else grid[0]
    train = rows_in(table, protocol.train_range)
    if train.empty:
        raise ValueError(f"no transactions in the training range {protocol.train_range}")
    model, _ = train_model(train, None, config, inputs)
    # Validation metrics of the chosen configuration: mean over the folds, and each fold.
    chosen = selection.candidates[grid.index(config)] if selection else None
    full_card = {
        "training_range": list(protocol.train_range),
        "training_rows": len(train),
        "training_frauds": int(train["TX_FRAUD"].sum()),
        "validation_ranges": [f["valid_range"] for f in chosen["folds"]] if chosen else [],
        "validation_metrics": (
            {
                "auc": chosen["mean_auc"],
                "ap": chosen["mean_ap"],
                "cp100": chosen["mean_cp100"],
                "folds": chosen["folds"],
            }
            if chosen
            else {}
        ),
        "protocol": protocol.to_dict(),
        "config": config.to_dict(),
        "selection": selection.to_dict() if selection else None,
        **(card or {}),
    }
    version_dir = export_model(model, model_dir, full_card, definitions=definitions)
    # The card as written (export adds the framework, reference histograms, ...).
    written: dict[str, Any] = json.loads((version_dir / "model_card.json").read_text())
    return version_dir, written
