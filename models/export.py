"""Export a trained model as a versioned TF2 SavedModel with its model card.

Layout: ``<model_dir>/<version>/saved_model/`` and ``<model_dir>/<version>/model_card.json``.

The SavedModel is a ``tf.Module`` with two signatures, both returning ``{"score": float32
[None]}`` (the fraud probability):

* ``serving_default``: ``examples``, tf.string [None] of serialized ``tf.train.Example`` with one
  float feature per name of the card's ``features`` (TF Serving, Vertex AI, tfx-bsl's
  RunInference);
* ``predict_features``: ``features``, float32 [None, n], the card's ``features`` as columns (the
  pipeline's fast path).

Both compute the derived inputs with models.derived.derive, then run the YDF trees through the
ydf-tf inference op: ``import ydf_tf`` before loading (``tf.saved_model.load`` or TF1 loaders) so
the op is registered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.derived import derive, derived_inputs
from models.train import TrainedModel
from pipelines.core.declarations import Definitions, load_definitions
from pipelines.core.definitions import LABEL_DELAY_DAYS
from pipelines.core.model_inputs import card_inputs

__all__ = ["SIGNATURES", "export_model", "new_version", "serving_module"]

SIGNATURES = ("serving_default", "predict_features")


def new_version() -> str:
    """Versions sort chronologically by name."""
    return datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")


def serving_module(model: TrainedModel) -> Any:
    """A tf.Module whose ``serving_default`` and ``predict_features`` functions score rows."""
    import tensorflow as tf

    inputs = model.inputs
    n = len(inputs)
    tree_inputs = (*inputs, *derived_inputs(inputs))

    class FraudModel(tf.Module):
        def __init__(self, trees: Any) -> None:
            super().__init__(name="fraud_model")
            self.trees = trees

        @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32, name="features")])
        def predict_features(self, features: Any) -> dict[str, Any]:
            x = derive(features, inputs)
            columns = {name: x[:, i] for i, name in enumerate(tree_inputs)}
            score = tf.reshape(tf.cast(self.trees(columns), tf.float32), [-1])
            return {"score": score}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serving_default(self, examples: Any) -> dict[str, Any]:
            spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in inputs}
            parsed = tf.io.parse_example(examples, spec)
            return self.predict_features(tf.stack([parsed[n] for n in inputs], axis=1))

    return FraudModel(model.model.to_tensorflow_function())


@contextmanager
def _native_logs_silenced() -> Iterator[None]:
    """Sends the process's stderr to /dev/null meanwhile: YDF's C++ loader logs its engine
    choice there (absl INFO lines, whatever the log level), noise in the user's terminal.
    Python exceptions still propagate."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def export_model(
    model: TrainedModel,
    model_dir: str | os.PathLike[str],
    card: dict[str, Any],
    version: str | None = None,
    parent: str | None = None,
    definitions: Definitions | None = None,
) -> Path:
    """Writes ``<model_dir>/<version>/{saved_model,model_card.json}``; returns the version dir.

    The card is ``card`` plus: version, what the model reads (pipelines/core/model_inputs.py:
    features, feature_fingerprints, feature_declarations, definitions; from ``definitions``,
    default the handbook's file), framework, label_delay_days, offline_metrics
    (``card["validation_metrics"]``' auc/ap/cp100 when given), parent, created_at, config and
    reference (training histograms). A ValueError before anything is written when an input is
    not declared in ``definitions``.
    """
    import tensorflow as tf

    inputs = card_inputs(definitions or load_definitions(), model.inputs)
    version = version or new_version()
    target = Path(model_dir) / version
    target.mkdir(parents=True, exist_ok=False)
    with _native_logs_silenced():
        module = serving_module(model)
        tf.saved_model.save(
            module,
            str(target / "saved_model"),
            signatures={name: getattr(module, name) for name in SIGNATURES},
        )
    validation = card.get("validation_metrics") or {}
    full_card = {
        "version": version,
        **inputs,
        "framework": model.framework,
        "label_delay_days": LABEL_DELAY_DAYS,
        "offline_metrics": {k: validation[k] for k in ("auc", "ap", "cp100") if k in validation},
        "parent": parent,
        "created_at": datetime.now(tz=UTC).isoformat(),
        "config": model.config.to_dict(),
        **card,
        "reference": model.reference,
    }
    (target / "model_card.json").write_text(json.dumps(full_card, indent=2, default=str))
    return target
