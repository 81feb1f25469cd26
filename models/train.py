"""Train the fraud model on point-in-time features and export a versioned SavedModel.

The model's inputs are pipelines.core.definitions.MODEL_INPUTS (never a second list).
Normalisation is a layer inside the model, adapted on the training rows, so serving feeds raw
feature values. Class imbalance is handled with class weights. Seeds are fixed.

Layout written: ``<model_dir>/<version>/saved_model/`` (TF2 SavedModel, ``serving_default``
signature: float32 [batch, n_features] -> score in [0, 1]) and
``<model_dir>/<version>/model_card.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.definitions import MODEL_INPUTS, definitions_version

__all__ = ["TrainConfig", "class_weights", "export_model", "predict", "train_model"]

LABEL = "TX_FRAUD"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (chosen on validation weeks only)."""

    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.2
    learning_rate: float = 1e-3
    epochs: int = 8
    batch_size: int = 256
    seed: int = 0
    # "balanced": both classes weigh the same in total; "sqrt": frauds weigh sqrt(neg/pos).
    class_balance: str = "balanced"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_seeds(seed: int) -> None:
    import keras

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(seed)


def build_model(x_train: np.ndarray, config: TrainConfig) -> Any:
    import keras

    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(x_train.astype(np.float32))
    inputs = keras.Input(shape=(len(MODEL_INPUTS),), dtype="float32", name="features")
    h = norm(inputs)
    for units in config.hidden:
        h = keras.layers.Dense(units, activation="relu")(h)
        h = keras.layers.Dropout(config.dropout)(h)
    output = keras.layers.Dense(1, activation="sigmoid", name="score")(h)
    model = keras.Model(inputs, output)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.AUC(curve="PR", name="ap")],
    )
    return model


def train_model(
    train: pd.DataFrame, valid: pd.DataFrame | None = None, config: TrainConfig = TrainConfig()
) -> tuple[Any, dict[str, float]]:
    """Fits the model on ``train`` (MODEL_INPUTS + TX_FRAUD columns); returns it and the
    validation metrics (empty without a validation frame)."""
    _set_seeds(config.seed)
    x = train[list(MODEL_INPUTS)].to_numpy(np.float32)
    y = train[LABEL].to_numpy(np.float32)
    class_weight = class_weights(y, config.class_balance)
    model = build_model(x, config)
    model.fit(
        x,
        y,
        epochs=config.epochs,
        batch_size=config.batch_size,
        class_weight=class_weight,
        verbose=0,
        shuffle=True,
    )
    metrics: dict[str, float] = {}
    if valid is not None and len(valid):
        xv = valid[list(MODEL_INPUTS)].to_numpy(np.float32)
        yv = valid[LABEL].to_numpy(np.float32)
        result = model.evaluate(xv, yv, verbose=0, return_dict=True)
        metrics = {f"valid_{k}": float(v) for k, v in result.items()}
    return model, metrics


def class_weights(y: np.ndarray, balance: str) -> dict[int, float]:
    """Per-class loss weights: frauds are ~1% of transactions, unweighted the model learns to
    say "legitimate" always."""
    positives = max(float(y.sum()), 1.0)
    negatives = max(float(len(y) - y.sum()), 1.0)
    if balance == "balanced":
        return {0: len(y) / (2 * negatives), 1: len(y) / (2 * positives)}
    if balance == "sqrt":
        return {0: 1.0, 1: float(np.sqrt(negatives / positives))}
    raise ValueError(f"class_balance must be 'balanced' or 'sqrt', not {balance!r}")


def predict(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """Scores of an in-memory Keras model on MODEL_INPUTS columns."""
    x = frame[list(MODEL_INPUTS)].to_numpy(np.float32)
    return np.asarray(model.predict(x, batch_size=4096, verbose=0), dtype=np.float64).ravel()


def new_version() -> str:
    """Versions sort chronologically by name."""
    return datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")


def export_model(
    model: Any,
    model_dir: str | os.PathLike[str],
    card: dict[str, Any],
    version: str | None = None,
) -> Path:
    """Writes ``<model_dir>/<version>/{saved_model,model_card.json}``; returns the version dir."""
    version = version or new_version()
    target = Path(model_dir) / version
    target.mkdir(parents=True, exist_ok=False)
    model.export(str(target / "saved_model"), format="tf_saved_model", verbose=False)
    full_card = {
        "version": version,
        "features": list(MODEL_INPUTS),
        "feature_definitions_version": definitions_version(),
        **card,
    }
    (target / "model_card.json").write_text(json.dumps(full_card, indent=2, default=str))
    return target
