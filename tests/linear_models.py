"""Tiny SavedModels in the registry's format for tests: a logistic score of a weighted sum of the
inputs, with both signatures of the export contract (``serving_default`` on serialized
tf.Examples, ``predict_features`` on a float matrix). Known weights make every score predictable,
so a test can tell which version scored a prediction from the score alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.core.definitions import MODEL_INPUTS
from tests.cards import card_fields


def write_linear_version(
    model_dir: Path,
    version: str,
    weights: np.ndarray,
    bias: float = 0.0,
    check_finite: bool = False,
) -> Path:
    """``check_finite``: the model refuses a NaN or infinite input (TensorFlow raises
    InvalidArgumentError), so a test can make one batch's inference fail."""
    import tensorflow as tf

    w = tf.constant(np.asarray(weights, dtype=np.float32).reshape(-1, 1))
    b = tf.constant(np.float32(bias))
    spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in MODEL_INPUTS}

    class Linear(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, len(MODEL_INPUTS)], tf.float32)])
        def predict_features(self, features):  # type: ignore[no-untyped-def]
            if check_finite:
                features = tf.debugging.assert_all_finite(features, "non-finite model input")
            return {"score": tf.reshape(tf.sigmoid(tf.matmul(features, w) + b), [-1])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve_examples(self, examples):  # type: ignore[no-untyped-def]
            parsed = tf.io.parse_example(examples, spec)
            x = tf.stack([parsed[name] for name in MODEL_INPUTS], axis=1)
            return self.predict_features(x)

    module = Linear()
    target = model_dir / version
    target.mkdir(parents=True)
    tf.saved_model.save(
        module,
        str(target / "saved_model"),
        signatures={
            "serving_default": module.serve_examples,
            "predict_features": module.predict_features,
        },
    )
    card = {
        "version": version,
        **card_fields(MODEL_INPUTS),
        "framework": "linear-test",
    }
    (target / "model_card.json").write_text(json.dumps(card))
    return target


def linear_scores(rows: np.ndarray, weights: np.ndarray, bias: float = 0.0) -> np.ndarray:
    z = rows.astype(np.float32) @ np.asarray(weights, dtype=np.float32) + np.float32(bias)
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
