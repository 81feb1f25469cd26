"""Predict: TensorFlow inference inside the pipeline with Beam RunInference.

Keras 3 cannot reload a SavedModel directory with ``tf.keras.models.load_model`` and tfx-bsl's
TF1 session loader fails on Keras 3 exports, so the handler loads the SavedModel with TF2's
``tf.saved_model.load`` and calls its ``predict_features`` signature once per FeatureBatch (batches
are formed by ComputeFeatures, so RunInference's own batching is skipped).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, RunInference

from pipelines.core.batches import FeatureBatch
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.messages import DeadLetter
from pipelines.stores.shared import process_shared

__all__ = [
    "ModelInfo",
    "Predict",
    "PredictionBatch",
    "Predictions",
    "SavedModelHandler",
    "load_saved_model",
    "resolve_model",
    "score_features",
]

_LOGGER = logging.getLogger(__name__)
MODEL_CARD = "model_card.json"
SAVED_MODEL_DIR = "saved_model"


@dataclass(frozen=True)
class ModelInfo:
    """A model version picked from a model directory."""

    version: str
    path: str
    features: tuple[str, ...]


def model_versions(model_dir: str) -> list[str]:
    """The versions in ``model_dir`` (those with a model card), oldest first."""
    match = FileSystems.match([FileSystems.join(model_dir, "*", MODEL_CARD)])[0]
    return sorted(m.path.rstrip("/").split("/")[-2] for m in match.metadata_list)


def resolve_model(model_dir: str, version: str = "latest") -> ModelInfo:
    """Picks a version from ``model_dir`` (``<model_dir>/<version>/{saved_model,model_card.json}``).

    Versions sort chronologically by name; "latest" takes the last. The model card's feature
    list must equal the pipeline's MODEL_INPUTS, or the model would be fed the wrong columns.
    """
    if version == "latest":
        versions = model_versions(model_dir)
        if not versions:
            raise FileNotFoundError(
                f"no model in {model_dir!r}: expected <version>/{MODEL_CARD}; train one with "
                "'rillet train'"
            )
        card_path = FileSystems.join(model_dir, versions[-1], MODEL_CARD)
    else:
        card_path = FileSystems.join(model_dir, version, MODEL_CARD)
    with FileSystems.open(card_path) as handle:
        card = json.loads(handle.read().decode())
    features = tuple(card["features"])
    if features != MODEL_INPUTS:
        raise ValueError(
            f"model {card_path} expects features {features}, the pipeline computes {MODEL_INPUTS}"
        )
    base = card_path[: -len(MODEL_CARD)].rstrip("/")
    return ModelInfo(card["version"], FileSystems.join(base, SAVED_MODEL_DIR), features)


def load_saved_model(model: ModelInfo) -> Any:
    """The SavedModel of a version, loaded with TF2's loader (see the module docstring).

    Everything allocated until then (TensorFlow, Beam, the model: half a million objects) lives
    as long as the worker, so it is moved out of the garbage collector's reach: a full collection
    over it took ~275 ms, a stall of every step on the local runner's one thread (measured)."""
    import gc

    import tensorflow as tf
    import ydf_tf  # noqa: F401  (registers the YDF inference op the SavedModel calls)

    loaded = tf.saved_model.load(model.path)
    gc.freeze()
    return loaded


def score_features(loaded: Any, features: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Scores of a loaded SavedModel's ``predict_features`` signature for rows of MODEL_INPUTS
    (the columns of the model card's ``features``, which resolve_model checks equal them).

    The one scoring path: the streaming pipeline and the offline evaluation both call it, so an
    offline score and a served score of the same features can only differ by float rounding.
    """
    import tensorflow as tf

    signature = loaded.signatures["predict_features"]
    x = np.asarray(features, dtype=np.float32)
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), chunk):
        outputs = signature(features=tf.constant(x[start : start + chunk]))
        out[start : start + chunk] = outputs["score"].numpy().reshape(-1)
    return out


@dataclass
class PredictionBatch:
    """Scores for a FeatureBatch, in the same order."""

    batch: FeatureBatch
    scores: np.ndarray
    model_version: str
    predicted_at_us: int

    def __len__(self) -> int:
        return len(self.batch)


class SavedModelHandler(ModelHandler[FeatureBatch, PredictionBatch, Any]):
    """ModelHandler for a TF2 SavedModel with a ``serving_default`` signature of one float input.

    Args:
      model: the version to serve (see resolve_model).
    """

    def __init__(self, model: ModelInfo) -> None:
        super().__init__()
        self._model = model

    def load_model(self) -> Any:
        # RunInference loads in setup, and the DirectRunner sets up a fresh DoFn for every
        # bundle: without the process-wide copy, every bundle would pay a SavedModel load.
        # A version's directory never changes, so its path names the model.
        return process_shared(("saved_model", self._model.path), self._load)

    def _load(self) -> Any:
        loaded = load_saved_model(self._model)
        _LOGGER.info("loaded model %s from %s", self._model.version, self._model.path)
        return loaded

    def run_inference(
        self,
        batch: Sequence[FeatureBatch] | FeatureBatch,
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionBatch]:
        import time

        batches = [batch] if isinstance(batch, FeatureBatch) else list(batch)
        results = []
        for fb in batches:
            scores = score_features(model, fb.features)
            results.append(
                PredictionBatch(fb, scores, self._model.version, int(time.time() * 1_000_000))
            )
        return results

    def get_num_bytes(self, batch: Sequence[FeatureBatch] | FeatureBatch) -> int:
        batches = [batch] if isinstance(batch, FeatureBatch) else list(batch)
        return sum(int(b.features.nbytes) for b in batches)

    def get_metrics_namespace(self) -> str:
        return "rillet_inference"


class Predictions(NamedTuple):
    results: beam.PCollection
    dead_letters: beam.PCollection


def _inference_failures(failed: Any) -> Iterable[DeadLetter]:
    # RunInference's DLQ carries (element, exception) pairs; element is the FeatureBatch.
    element, error = failed if isinstance(failed, tuple) and len(failed) == 2 else (failed, None)
    txs = list(getattr(element, "transactions", []))
    for i, tx in enumerate(txs):
        # The batch's recovery token rides on its last dead letter (local_runner.recovery): the
        # sink releases it once that whole bundle of dead letters is published.
        token = getattr(element, "token", 0) if i == len(txs) - 1 else 0
        yield DeadLetter(
            tx.to_json(),
            "inference_error",
            repr(error)[:500],
            "transactions",
            "predict",
            message_id=tx.message_id,
            token=token,
        )


class Predict(beam.PTransform):
    """FeatureBatches to PredictionBatches with Beam RunInference.

    Example Usage::

        predictions = batches | "Predict" >> Predict(resolve_model("artifacts/models"))
    """

    def __init__(self, model: ModelInfo) -> None:
        super().__init__()
        self._model = model

    def expand(self, batches: beam.PCollection) -> Predictions:
        handler = SavedModelHandler(self._model).with_no_batching()
        results, dlq = batches | "RunInference" >> RunInference(handler).with_exception_handling()
        failures = dlq.failed_inferences | "FailedInferences" >> beam.FlatMap(_inference_failures)
        return Predictions(results, failures)
