"""What a worker serves: the registry's champion and challenger, loaded, swapped without a restart.

TensorFlow Serving's way, in one process: a watcher thread reads the registry pointer every
``poll_s`` seconds; when it names other versions, it loads them beside the ones serving, then
switches the pair in one assignment (the scoring thread reads it once per batch, so a batch is
scored by one pair, never half and half), and unloads what no longer serves. A version that fails
to load, or whose inputs the job does not compute, is refused and the serving pair stays.
One ServingModels per SDK process (pipelines/transforms/inference.py holds it through Beam's
``Shared``), one watcher thread per ServingModels: it holds the models weakly and stops when they
are closed or collected.

Memory and the garbage collector: the first load of a process freezes what exists then (``gc``'s
permanent generation: TensorFlow, Beam and the job's modules, half a million objects that live as
long as the process), after one full collection, so that the collector never scans them again (a
full collection over them took ~275 ms, a stall of every step on the local runner's one thread).
The versions are loaded after that freeze and are never frozen: an unloaded version is ordinary
cyclic garbage (~3,000 objects: TensorFlow's trackables and function graphs refer to each other)
that the collector frees in its next full collection, which scans only what was allocated since
the freeze. No swap collects or unfreezes anything itself (docs/specs/registry.md, "Serving").

Why not Beam's own model updates: RunInference's ``model_metadata_pcoll`` side input stays
blocked on the local runner (Beam's own streaming test of it is skipped on the DirectRunner),
``ModelHandler.update_model_path`` is a no-op in the base class, and ``WatchFilePattern`` needs new
file names; a watcher works the same on every runner.

Backends (``--inference_backend``), one scorer per loaded version:
- ``saved_model``: TF2 ``tf.saved_model.load`` and the ``predict_features`` signature (a float
  matrix of the card's features): the fast path, the default.
- ``tfx_bsl``: tfx-bsl's RunInference model handler (``CreateModelHandler`` with a
  ``saved_model_spec``): the TF1 session loader and the ``serving_default`` signature on
  serialized ``tf.Example``s, the signature TF Serving and Vertex AI serve. Returns PredictionLogs.
- ``vertex``: tfx-bsl's remote ``ai_platform_prediction_model_spec`` (the reference
  architecture's "AI Platform models"): the registry version names the model version of the
  endpoint. It constructs offline; it needs Google Cloud to score.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BACKENDS",
    "SERVING_METRIC",
    "Assignment",
    "LoadedVersion",
    "SavedModelScorer",
    "Scorer",
    "Served",
    "Serving",
    "ServingModels",
    "TfxBslScorer",
    "freeze_runtime",
    "load_version",
    "parse_served",
    "served_record",
    "to_examples",
    "vertex_model_handler",
]

_LOGGER = logging.getLogger(__name__)
BACKENDS = ("saved_model", "tfx_bsl", "vertex")
# The Beam string set (namespace "rillet") of every pair the scoring step used (served_record).
SERVING_METRIC = "serving_models"
SCORE_OUTPUT = "score"
FEATURES_SIGNATURE = "predict_features"
EXAMPLES_SIGNATURE = "serving_default"


class Assignment(NamedTuple):
    """Which versions should serve: the registry pointer's champion and challenger."""

    champion: str
    challenger: str | None
    generation: int


Scorer = Callable[[np.ndarray], np.ndarray]
"""Scores of rows of a version's own features (its card's order)."""


@dataclass(frozen=True)
class LoadedVersion:
    """A model version ready to score the job's feature rows: ``layout`` names their columns
    (what the job computes, in its definitions' order), and the version's own ``features`` (its
    card's, in its input order) are picked from them by name."""

    version: str
    features: tuple[str, ...]
    scorer: Scorer
    layout: tuple[str, ...]
    columns: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        missing = [f for f in self.features if f not in self.layout]
        if missing:
            raise ValueError(
                f"model {self.version} needs features the job does not compute: {missing}"
            )
        index = {name: i for i, name in enumerate(self.layout)}
        object.__setattr__(self, "columns", np.array([index[f] for f in self.features]))

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Scores of rows laid out as ``layout``."""
        return self.scorer(np.ascontiguousarray(rows[:, self.columns], dtype=np.float32))


class Serving(NamedTuple):
    """The pair serving now; one batch reads it once. ``since``: when it started serving
    (epoch seconds)."""

    champion: LoadedVersion
    challenger: LoadedVersion | None
    generation: int
    since: float = 0.0

    def record(self) -> str:
        """This pair as one string (what the job reports in its ``serving_models`` metric)."""
        return served_record(
            self.generation, self.since, self.champion.version, _version(self.challenger)
        )


class Served(NamedTuple):
    """A pair the job served, read back from its ``serving_models`` metric."""

    generation: int
    since: float
    champion: str
    challenger: str | None


def served_record(generation: int, since: float, champion: str, challenger: str | None) -> str:
    """The metric string of a served pair (JSON: version names are free-form)."""
    return json.dumps([generation, round(since, 3), champion, challenger])


def parse_served(record: str) -> Served | None:
    """A served pair from its metric string; None for a string of another shape."""
    try:
        generation, since, champion, challenger = json.loads(record)
        return Served(int(generation), float(since), str(champion), challenger and str(challenger))
    except (ValueError, TypeError):
        return None


class ServingModels:
    """The serving pair of one worker process, following ``source`` (see the module docstring).

    Thread-safe: the scoring threads read ``current()`` (one attribute), the watcher and
    ``refresh()`` change it under a lock. The watcher thread holds this object weakly, so it stops
    when ``close()`` is called or when nothing else holds the object.

    Args:
      source: reads the registry pointer (raises on an unreadable registry: the pair stays).
      load: loads one version.
      poll_s: how often the watcher reads ``source``; 0 serves the first pair for good.
    """

    def __init__(
        self,
        source: Callable[[], Assignment],
        load: Callable[[str], LoadedVersion],
        poll_s: float,
    ) -> None:
        self._source = source
        self._load = load
        self._loaded: dict[str, LoadedVersion] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.swaps: list[dict[str, Any]] = []
        self.failures: list[str] = []
        assignment = source()
        self._serving = self._pair(assignment)
        self._assigned = assignment
        self._watcher: threading.Thread | None = None
        if poll_s > 0:
            self._watcher = threading.Thread(
                target=_watch,
                args=(weakref.ref(self), self._stop, poll_s),
                name="rillet-model-watcher",
                daemon=True,
            )
            self._watcher.start()
            weakref.finalize(self, self._stop.set)  # collected without close(): the thread ends

    def current(self) -> Serving:
        return self._serving

    @property
    def watching(self) -> bool:
        """Whether the watcher thread runs."""
        return self._watcher is not None and self._watcher.is_alive()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the watcher (waits for a refresh under way); the pair keeps serving."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout_s)

    def refresh(self) -> bool:
        """Reads the pointer once; loads and switches if it changed. True when it switched."""
        with self._lock:
            seen = time.time()
            assignment = self._source()
            if assignment[:2] == self._assigned[:2]:
                self._assigned = assignment
                return False
            try:
                pair = self._pair(assignment)
            except Exception as error:
                # Keep serving what works; retry at the next poll (the registry may be mid-copy).
                self.failures.append(f"{assignment}: {error!r}")
                _LOGGER.error(
                    "model swap to %s refused, still serving %s: %r",
                    assignment,
                    self._serving[:2],
                    error,
                )
                return False
            previous = self._serving
            pair = pair._replace(since=time.time())
            event = {
                "generation": assignment.generation,
                "champion": assignment.champion,
                "challenger": assignment.challenger,
                "previous": [previous.champion.version, _version(previous.challenger)],
                "seen_at": seen,
                "load_s": round(time.time() - seen, 3),
            }
            self.swaps.append(event)
            self._serving = pair  # the switch: one assignment, read once per batch
            self._assigned = assignment
            self._unload(pair)
            # The worker's own record of the swap (on Dataflow: Cloud Logging, INFO is kept);
            # `rillet run` prints the swap from the serving_models metric (inference.py).
            _LOGGER.info(
                "now serving champion %s -> %s, challenger %s -> %s (registry generation %d, "
                "loaded in %.2f s)",
                previous.champion.version,
                assignment.champion,
                _version(previous.challenger) or "none",
                assignment.challenger or "none",
                assignment.generation,
                event["load_s"],
            )
            return True

    def _pair(self, assignment: Assignment) -> Serving:
        champion = self._get(assignment.champion)
        challenger = self._get(assignment.challenger) if assignment.challenger else None
        return Serving(champion, challenger, assignment.generation, time.time())

    def _get(self, version: str) -> LoadedVersion:
        loaded = self._loaded.get(version)
        if loaded is None:
            loaded = self._loaded[version] = self._load(version)
        return loaded

    def _unload(self, keep: Serving) -> None:
        # Dropping the references is all: the version was loaded after the runtime was frozen,
        # so the collector's next full collection frees it (see the module docstring).
        keep_versions = {keep.champion.version, _version(keep.challenger)}
        for version in [v for v in self._loaded if v not in keep_versions]:
            del self._loaded[version]


def _watch(models_ref: weakref.ref[ServingModels], stop: threading.Event, poll_s: float) -> None:
    """The watcher thread: refreshes the models every ``poll_s`` while they exist."""
    while not stop.wait(poll_s):
        models = models_ref()
        if models is None:
            return
        try:
            models.refresh()
        except Exception as error:  # an unreadable pointer: keep serving, read it again
            _LOGGER.warning("model registry unreadable, still serving: %r", error)
        del models  # between polls the thread holds no reference


def _version(loaded: LoadedVersion | None) -> str | None:
    return loaded.version if loaded else None


_FREEZE_LOCK = threading.Lock()
_frozen = False


def freeze_runtime() -> None:
    """Once per process, before its first model load: one full collection, then everything
    alive moves to the collector's permanent generation (see the module docstring). Later calls
    do nothing."""
    global _frozen
    with _FREEZE_LOCK:
        if _frozen:
            return
        gc.collect()  # what is garbage now must not be frozen with the rest
        gc.freeze()
        # A full collection sets the size that the next automatic one waits for (a quarter of it
        # promoted to the oldest generation); left at the half million just frozen, no automatic
        # full collection would come before ~125,000 new long-lived objects (~30 unloaded
        # versions, ~110 MB). Over what is not frozen (nothing yet) this one takes a millisecond.
        gc.collect()
        _frozen = True


# -- backends --------------------------------------------------------------------------------


def _import_tensorflow() -> Any:
    # ydf-tf registers the decision-forest ops: it must be imported before a SavedModel of a
    # ydf model is loaded.
    import tensorflow as tf
    import ydf_tf  # noqa: F401

    return tf


class SavedModelScorer:
    """TF2 loader, ``predict_features`` signature (float32 [n, k] -> score)."""

    def __init__(self, path: str) -> None:
        self._tf = _import_tensorflow()
        freeze_runtime()
        self._loaded = self._tf.saved_model.load(path)
        self._signature = self._loaded.signatures[FEATURES_SIGNATURE]

    def __call__(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk):
            outputs = self._signature(features=self._tf.constant(x[start : start + chunk]))
            out[start : start + chunk] = outputs[SCORE_OUTPUT].numpy().reshape(-1)
        return out


def to_examples(x: np.ndarray, features: Sequence[str]) -> list[Any]:
    """Rows as ``tf.train.Example``s with one float feature per input name."""
    tf = _import_tensorflow()
    examples = []
    for row in x.tolist():
        example = tf.train.Example()
        fmap = example.features.feature
        for name, value in zip(features, row, strict=True):
            fmap[name].float_list.value.append(value)
        examples.append(example)
    return examples


def _tfx_bsl_handler(spec: Any) -> Any:
    from tfx_bsl.public.beam.run_inference import CreateModelHandler

    return CreateModelHandler(spec)


class TfxBslScorer:
    """tfx-bsl's RunInference model handler on ``serving_default`` (serialized tf.Example ->
    score): the SavedModel as TF Serving and Vertex AI serve it. ``prediction_logs`` gives the
    PredictionLogs themselves (request and response, what TFMA and TF Serving's logs hold)."""

    def __init__(self, handler: Any, features: Sequence[str]) -> None:
        _import_tensorflow()
        freeze_runtime()
        self._handler = handler
        self._features = tuple(features)
        self._model = handler.load_model()

    @classmethod
    def local(cls, path: str, features: Sequence[str]) -> TfxBslScorer:
        from tfx_bsl.public.proto import model_spec_pb2

        spec = model_spec_pb2.InferenceSpecType(
            saved_model_spec=model_spec_pb2.SavedModelSpec(
                model_path=path, signature_name=[EXAMPLES_SIGNATURE]
            )
        )
        return cls(_tfx_bsl_handler(spec), features)

    def prediction_logs(self, x: np.ndarray) -> list[Any]:
        return list(self._handler.run_inference(to_examples(x, self._features), self._model))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.array([_log_score(log) for log in self.prediction_logs(x)], dtype=np.float64)


def _log_score(log: Any) -> float:
    """The score of one PredictionLog (a predict log of the ``score`` output)."""
    outputs = log.predict_log.response.outputs
    return float(outputs[SCORE_OUTPUT].float_val[0])


def vertex_model_handler(project: str, model: str, version: str) -> Any:
    """tfx-bsl's handler for a remote model version (AI Platform / Vertex AI prediction)."""
    from tfx_bsl.public.proto import model_spec_pb2

    return _tfx_bsl_handler(
        model_spec_pb2.InferenceSpecType(
            ai_platform_prediction_model_spec=model_spec_pb2.AIPlatformPredictionModelSpec(
                project_id=project, model_name=model, version_name=version
            )
        )
    )


def load_version(
    version: str,
    path: str,
    features: Sequence[str],
    backend: str,
    remote: tuple[str, str] | None,
    layout: Sequence[str],
) -> LoadedVersion:
    """One version through ``backend`` (see the module docstring), scoring rows laid out as
    ``layout``."""
    scorer: Scorer
    if backend == "saved_model":
        scorer = SavedModelScorer(path)
    elif backend == "tfx_bsl":
        scorer = TfxBslScorer.local(path, features)
    elif backend == "vertex":
        if remote is None:
            raise ValueError("the vertex backend needs --vertex_project and --vertex_model")
        scorer = TfxBslScorer(vertex_model_handler(remote[0], remote[1], version), features)
    else:
        raise ValueError(f"--inference_backend must be one of {', '.join(BACKENDS)}: {backend!r}")
    return LoadedVersion(version, tuple(features), scorer, tuple(layout))
