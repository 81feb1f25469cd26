"""Predict: TensorFlow inference inside the pipeline with Beam RunInference.

The handler's "model" is the worker's ServingModels (model_serving.py): the registry's champion
and challenger, swapped by a watcher without a restart, through one of three backends (TF2
SavedModel signature, tfx-bsl's model handler, a remote Vertex AI / AI Platform model). One call
scores one FeatureBatch (batches are formed by ComputeFeatures, so RunInference's own batching
is skipped).

One ServingModels per SDK process, shared by every RunInference DoFn instance (one per thread on
Dataflow, one per bundle on the DirectRunner) through Beam's ``apache_beam.utils.shared.Shared``,
as RunInference shares its own models: see ``serving_models_of``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.utils.shared import Shared

from pipelines.core.batches import FeatureBatch
from pipelines.core.declarations import Definitions, EventStream, load_definitions
from pipelines.core.messages import DeadLetter
from pipelines.stores.model_registry import VERSION_NAMES, ModelRegistry, check_card
from pipelines.transforms.model_serving import (
    SERVING_METRIC,
    Assignment,
    LoadedVersion,
    ServingModels,
    load_version,
)
from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = [
    "ModelInfo",
    "Predict",
    "PredictionBatch",
    "Predictions",
    "RegistryModelHandler",
    "ServingConfig",
    "load_model_version",
    "resolve_model",
    "serving_models_of",
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


def resolve_model(
    model_dir: str,
    version: str = "champion",
    definitions: Definitions | None = None,
    computed: Sequence[str] | None = None,
) -> ModelInfo:
    """Picks a version from ``model_dir`` (``<model_dir>/<version>/{saved_model,model_card.json}``).

    "champion" (or "challenger") is what the registry's pointer names (``registry.json``; without
    one the champion is the newest version), "latest" the newest version: the registry's one
    resolver, ModelRegistry.resolve (pipelines/stores/model_registry.py). The card must pass the
    registry's check_card with ``definitions`` (default: the handbook's file): each of its inputs
    declared as it was trained on and, given ``computed``, computed by the job (the scorer picks
    them by name).
    """
    if version in VERSION_NAMES:
        if not model_versions(model_dir):
            raise FileNotFoundError(
                f"no model in {model_dir!r}: expected <version>/{MODEL_CARD}; train one with "
                "'rillet train'"
            )
        version = ModelRegistry(model_dir).resolve(version)
    card_path = FileSystems.join(model_dir, version, MODEL_CARD)
    with FileSystems.open(card_path) as handle:
        card = json.loads(handle.read().decode())
    # The registry's rule (a RegistryError is a ValueError).
    check_card(card["version"], card, definitions, computed)
    features = tuple(card["features"])
    base = card_path[: -len(MODEL_CARD)].rstrip("/")
    return ModelInfo(card["version"], FileSystems.join(base, SAVED_MODEL_DIR), features)


def load_model_version(model: ModelInfo, backend: str = "saved_model") -> LoadedVersion:
    """A version loaded as the job loads it (model_serving.load_version), for offline scoring
    of rows of its own features (``model.features``, in that order): the streaming job and the
    offline evaluation score through the same code, so an offline score and a served score of
    the same features can only differ by float rounding."""
    return load_version(model.version, model.path, model.features, backend, None, model.features)


@dataclass
class PredictionBatch:
    """Scores for a FeatureBatch, in the same order: the champion's, and the challenger's when
    one shadows it (they never drive the risk band)."""

    batch: FeatureBatch
    scores: np.ndarray
    model_version: str
    predicted_at_us: int
    challenger_scores: np.ndarray | None = None
    challenger_version: str | None = None

    def __len__(self) -> int:
        return len(self.batch)


@dataclass(frozen=True)
class ServingConfig:
    """What the job serves: ``version`` "champion" follows the registry in ``model_dir`` (hot
    swap, shadow scoring by its challenger), any other value pins that version.

    ``definitions``: the job's definitions (None: the handbook's; build_pipeline always sets the
    job's own); a version is served only if each of its inputs is declared there as it was
    trained on, and its dead letters are re-serialised with its transaction stream.
    ``computed``: the features the job computes, the columns of its feature rows (None: every
    declared feature, file order).
    """

    model_dir: str
    version: str = "champion"
    poll_s: float = 10.0
    backend: str = "saved_model"
    remote: tuple[str, str] | None = None  # (project, model) of the vertex backend
    definitions: Definitions | None = None
    computed: tuple[str, ...] | None = None

    def job_definitions(self) -> Definitions:
        """The definitions served: ``definitions``, or the handbook's file."""
        return self.definitions if self.definitions is not None else load_definitions()

    @property
    def follows_registry(self) -> bool:
        return self.version == "champion"


def registry_assignment(registry: ModelRegistry) -> Assignment:
    """The registry pointer's champion and challenger."""
    pointer = registry.pointer()
    if not pointer.champion:
        raise FileNotFoundError(
            f"no champion in {registry.model_dir!r}: train one with 'rillet train'"
        )
    return Assignment(pointer.champion, pointer.challenger, pointer.generation)


def serving_models(config: ServingConfig) -> ServingModels:
    """A new ServingModels for ``config`` (model_serving.py); the job's is serving_models_of's."""

    definitions = config.job_definitions()
    layout = config.computed if config.computed is not None else definitions.names

    def load(version: str) -> LoadedVersion:
        info = resolve_model(config.model_dir, version, definitions, layout)
        loaded = load_version(
            info.version, info.path, info.features, config.backend, config.remote, layout
        )
        _LOGGER.info("loaded model %s from %s (%s)", info.version, info.path, config.backend)
        return loaded

    if config.follows_registry:
        # One registry (on gs://, one storage client) for every read of the pointer.
        source = partial(registry_assignment, ModelRegistry(config.model_dir))
        return ServingModels(source, load, config.poll_s)
    pinned = resolve_model(config.model_dir, config.version, definitions, layout).version
    return ServingModels(lambda: Assignment(pinned, None, 0), load, 0)


class _ProcessServing:
    """The SDK process's ServingModels, through a Beam ``Shared`` handle whose tag is the
    ServingConfig: made once under Shared's lock by whichever thread asks first (the others wait
    for it and get the same object), made anew when another config is asked for.

    Shared holds an object weakly, plus one strong reference to the last object acquired through
    any handle of the process. The DirectRunner makes a DoFn per bundle and drops it after the
    bundle, and RunInference's setup acquires its model status through another handle before it
    asks for the model: nothing would hold the models between two bundles, and each bundle would
    load them again (tests/unit/test_model_serving.py shows it).
    Hence ``_held``: the models served last, held for the life of the SDK process (which runs
    one job), released when another config is served.
    """

    def __init__(self) -> None:
        self._shared = Shared()
        self._lock = threading.Lock()
        self._held: ServingModels | None = None

    def acquire(self, config: ServingConfig) -> ServingModels:
        models: ServingModels = self._shared.acquire(partial(serving_models, config), tag=config)
        with self._lock:
            self._held = models
        return models


_PROCESS_SERVING = _ProcessServing()


def serving_models_of(config: ServingConfig) -> ServingModels:
    """The SDK process's ServingModels for ``config``, loaded once and shared by every thread
    and DoFn instance (see _ProcessServing). The one held for another config before is released:
    its watcher thread stops once no DoFn uses it any more."""
    return _PROCESS_SERVING.acquire(config)


class RegistryModelHandler(ModelHandler[FeatureBatch, PredictionBatch, ServingModels]):
    """ModelHandler serving the registry's champion, shadowed by its challenger (model_serving.py).

    The "model" RunInference holds is the SDK process's ServingModels (serving_models_of): it
    swaps versions itself, so RunInference's own model updates are not used.
    """

    def __init__(self, config: ServingConfig) -> None:
        super().__init__()
        self._config = config

    def load_model(self) -> ServingModels:
        return serving_models_of(self._config)

    def run_inference(
        self,
        batch: Sequence[FeatureBatch] | FeatureBatch,
        model: ServingModels,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionBatch]:
        import time

        serving = model.current()  # once per call: the whole call is scored by one pair
        # What the job serves, from the scoring thread (metrics count only in a step's context,
        # not in the watcher's thread), on every call: a set insert, and a retried work item's
        # metrics replace its failed attempt's (a "reported once" flag would lose the pair).
        # `rillet run` reads it on any runner and prints a line when the pair changes.
        Metrics.string_set(METRICS_NAMESPACE, SERVING_METRIC).add(serving.record())
        batches = [batch] if isinstance(batch, FeatureBatch) else list(batch)
        results = []
        for fb in batches:
            scores = serving.champion.score(fb.features)
            shadow = serving.challenger.score(fb.features) if serving.challenger else None
            results.append(
                PredictionBatch(
                    fb,
                    scores,
                    serving.champion.version,
                    int(time.time() * 1_000_000),
                    shadow,
                    serving.challenger.version if serving.challenger else None,
                )
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


def _inference_failures(failed: Any, stream: EventStream) -> Iterable[DeadLetter]:
    # RunInference's DLQ carries (element, exception) pairs; element is the FeatureBatch.
    element, error = failed if isinstance(failed, tuple) and len(failed) == 2 else (failed, None)
    txs = list(getattr(element, "transactions", []))
    for i, tx in enumerate(txs):
        # The batch's recovery token rides on its last dead letter (local_runner.recovery): the
        # sink releases it once that whole bundle of dead letters is published.
        token = getattr(element, "token", 0) if i == len(txs) - 1 else 0
        yield DeadLetter(
            tx.to_json(stream),
            "inference_error",
            repr(error)[:500],
            "transactions",
            "predict",
            message_id=tx.message_id,
            token=token,
        )


class Predict(beam.PTransform):
    """FeatureBatches to PredictionBatches with Beam RunInference, scored by the champion and
    shadowed by the challenger of the registry (or by one pinned version).

    Example Usage::

        predictions = batches | "Predict" >> Predict(ServingConfig("artifacts/models"))
    """

    def __init__(self, config: ServingConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, batches: beam.PCollection) -> Predictions:
        handler = RegistryModelHandler(self._config).with_no_batching()
        results, dlq = batches | "RunInference" >> RunInference(handler).with_exception_handling()
        stream = self._config.job_definitions().events
        failures = dlq.failed_inferences | "FailedInferences" >> beam.FlatMap(
            _inference_failures, stream
        )
        return Predictions(results, failures)
