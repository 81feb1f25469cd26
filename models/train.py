"""Train the fraud model on point-in-time features: YDF gradient boosted trees.

The model's raw inputs are declared features, named in its input order (default: all of
pipelines.core.definitions.MODEL_INPUTS, the handbook's 15; a subset is a model of its own); the
trees also see the ratios of models.derived, computed by the same TensorFlow function here and
inside the exported SavedModel (models.export), so serving feeds raw feature values only. Seeds
are fixed: the same rows and configuration give the same trees.

:func:`train_model` returns a :class:`TrainedModel`: the YDF model, its configuration and the
reference histograms of its training rows (inputs and scores, for the model card).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.derived import derive_frame
from models.reference import reference_histograms
from pipelines.core.definitions import MODEL_INPUTS

__all__ = ["FRAMEWORK", "TrainConfig", "TrainedModel", "predict", "train_model"]

LABEL = "TX_FRAUD"
FRAMEWORK = "ydf-gbt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (chosen on validation weeks only).

    YDF's gradient boosted trees hold out ``validation_ratio`` of the training rows (seeded) to
    stop adding trees when the held-out loss stops improving; ``num_trees`` is the cap.
    """

    num_trees: int = 300
    max_depth: int = 6
    shrinkage: float = 0.1
    validation_ratio: float = 0.1
    seed: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedModel:
    """A trained in-memory model and what its export needs; ``inputs``: its raw inputs, in
    its input order."""

    model: Any
    config: TrainConfig
    reference: dict[str, Any] = field(default_factory=dict)
    framework: str = FRAMEWORK
    inputs: tuple[str, ...] = MODEL_INPUTS


def _learner(config: TrainConfig) -> Any:
    import ydf

    ydf.verbose(0)
    return ydf.GradientBoostedTreesLearner(
        label=LABEL,
        task=ydf.Task.CLASSIFICATION,
        num_trees=config.num_trees,
        max_depth=config.max_depth,
        shrinkage=config.shrinkage,
        validation_ratio=config.validation_ratio,
        random_seed=config.seed,
    )


def train_model(
    train: pd.DataFrame,
    valid: pd.DataFrame | None = None,
    config: TrainConfig = TrainConfig(),
    inputs: Sequence[str] = MODEL_INPUTS,
) -> tuple[TrainedModel, dict[str, float]]:
    """Fits the model on ``train`` (``inputs`` + TX_FRAUD columns; other columns are ignored);
    returns it and the validation metrics (AUC and AP on ``valid``; empty without a validation
    frame)."""
    labels = train[LABEL].to_numpy()
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the training rows need frauds and genuine transactions ({len(train)})")
    missing = [name for name in inputs if name not in train.columns]
    if missing or not inputs:
        raise ValueError(
            f"the training rows have no column {', '.join(missing)}" if missing else "no inputs"
        )
    rows = derive_frame(train, inputs)
    rows[LABEL] = labels.astype(np.int64)
    model = _learner(config).train(rows)
    trained = TrainedModel(model, config, inputs=tuple(inputs))
    scores = predict(trained, train)
    trained.reference = reference_histograms(
        {name: train[name].to_numpy() for name in inputs}, scores
    )
    metrics: dict[str, float] = {}
    if valid is not None and len(valid):
        from sklearn.metrics import average_precision_score, roc_auc_score

        yv = valid[LABEL].to_numpy().astype(int)
        sv = predict(trained, valid)
        if len(np.unique(yv)) == 2:
            metrics = {
                "valid_auc": float(roc_auc_score(yv, sv)),
                "valid_ap": float(average_precision_score(yv, sv)),
            }
    return trained, metrics


def predict(model: TrainedModel, frame: pd.DataFrame) -> np.ndarray:
    """Scores (fraud probability) of an in-memory model on a frame with its inputs' columns."""
    if frame.empty:
        return np.empty(0, dtype=np.float64)
    rows = derive_frame(frame, model.inputs)
    return np.asarray(model.model.predict(rows), dtype=np.float64).ravel()
