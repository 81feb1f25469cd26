"""ServingModels: hot swap of the registry's champion/challenger pair, with fakes for the
registry pointer and the loader (the SavedModel backends are tested in test_model_export); one
ServingModels per process through Beam's Shared; swaps that collect nothing."""

from __future__ import annotations

import gc
import pickle
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest

from pipelines.core.batches import FeatureBatch
from pipelines.core.declarations import load_definitions
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.stores.model_registry import ModelRegistry, RegistryError
from pipelines.transforms import inference
from pipelines.transforms.inference import RegistryModelHandler, ServingConfig
from pipelines.transforms.model_serving import Assignment, LoadedVersion, ServingModels
from tests.cards import card_fields, feature_spec, write_variant
from tests.events import handbook_tx
from tests.unit.test_model_registry import make_version

VALUES = {"v1": 0.1, "v2": 0.2, "v3": 0.3}


class Registry:
    def __init__(self, champion: str, challenger: str | None = None) -> None:
        self.assignment = Assignment(champion, challenger, 1)
        self.loads: list[str] = []
        self.broken: set[str] = set()

    def set(self, champion: str, challenger: str | None = None) -> None:
        self.assignment = Assignment(champion, challenger, self.assignment.generation + 1)

    def load(self, version: str) -> LoadedVersion:
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"{version}: saved_model missing")
        value = VALUES[version]
        return LoadedVersion(version, MODEL_INPUTS, lambda x: np.full(len(x), value), MODEL_INPUTS)


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_promotion_is_served_without_a_restart_and_the_old_version_unloaded() -> None:
    registry = Registry("v1", "v2")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0.02)
    try:
        assert models.current().champion.version == "v1"
        assert models.current().challenger.version == "v2"
        registry.set("v2", "v3")
        wait_for(lambda: models.current().champion.version == "v2")
        serving = models.current()
        assert serving.challenger.version == "v3"
        assert serving.generation == 2
        # v2 was loaded once (as challenger) and kept; v1 is unloaded.
        assert registry.loads == ["v1", "v2", "v3"]
        assert set(models._loaded) == {"v2", "v3"}
        assert models.swaps[-1]["previous"] == ["v1", "v2"]
        registry.set("v1")  # rollback, no challenger
        wait_for(lambda: models.current().champion.version == "v1")
        assert models.current().challenger is None
    finally:
        models.close()


def test_a_version_that_fails_to_load_is_refused_and_the_pair_keeps_serving() -> None:
    registry = Registry("v1")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0)
    registry.broken.add("v2")
    registry.set("v2")
    assert models.refresh() is False
    assert models.current().champion.version == "v1"
    assert "saved_model missing" in models.failures[0]
    registry.broken.clear()  # fixed (e.g. a copy that was incomplete): the next read swaps
    assert models.refresh() is True
    assert models.current().champion.version == "v2"


def test_an_unchanged_pointer_does_not_reload() -> None:
    registry = Registry("v1", "v2")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0)
    registry.assignment = registry.assignment._replace(generation=5)  # e.g. a policy change
    assert models.refresh() is False
    assert registry.loads == ["v1", "v2"]


def test_a_version_picks_its_own_columns_and_refuses_inputs_the_job_lacks() -> None:
    features = (MODEL_INPUTS[3], MODEL_INPUTS[0])
    seen: list[np.ndarray] = []
    loaded = LoadedVersion("v1", features, lambda x: seen.append(x) or x[:, 0], MODEL_INPUTS)
    rows = np.arange(2 * len(MODEL_INPUTS), dtype=np.float64).reshape(2, -1)
    np.testing.assert_array_equal(loaded.score(rows), rows[:, 3])
    np.testing.assert_array_equal(seen[0], rows[:, [3, 0]])
    with pytest.raises(ValueError, match="does not compute"):
        LoadedVersion("v9", ("TX_AMOUNT", "NOT_A_FEATURE"), lambda x: x, MODEL_INPUTS)


def _batch(n: int) -> FeatureBatch:
    txs = [handbook_tx(str(i), 1_522_540_800_000_000 + i, "C1", "T1", 10.0) for i in range(n)]
    return FeatureBatch(txs, np.zeros((n, len(MODEL_INPUTS))), revision=1, names=MODEL_INPUTS)


def test_every_batch_is_scored_by_one_pair_while_versions_swap() -> None:
    """The handler reads the pair once per batch: no batch mixes versions, the champion's
    version names its scores and the challenger's shadow scores are its own."""
    registry = Registry("v1", "v2")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0.001)
    handler = RegistryModelHandler(ServingConfig("unused"))
    stop = threading.Event()

    def flip() -> None:
        pairs = [("v2", "v3"), ("v3", None), ("v1", "v3")]
        i = 0
        while not stop.is_set():
            registry.set(*pairs[i % len(pairs)])
            i += 1
            time.sleep(0.003)

    flipper = threading.Thread(target=flip)
    flipper.start()
    versions = set()
    try:
        # At least 300 batches, and on until the poller has swapped at least once (a loaded
        # machine may not schedule its thread during the first 300), within 30 s.
        deadline = time.monotonic() + 30
        batches = 0
        while batches < 300 or (len(versions) < 2 and time.monotonic() < deadline):
            batches += 1
            (result,) = handler.run_inference(_batch(50), models)
            versions.add(result.model_version)
            assert set(result.scores) == {VALUES[result.model_version]}
            if result.challenger_version is None:
                assert result.challenger_scores is None
            else:
                assert set(result.challenger_scores) == {VALUES[result.challenger_version]}
    finally:
        stop.set()
        flipper.join()
        models.close()
    assert len(versions) >= 2


@pytest.mark.parametrize("backend", ["saved_model", "tfx_bsl"])
def test_both_local_backends_score_the_exported_signatures_alike(tmp_path, backend) -> None:  # type: ignore[no-untyped-def]
    from pipelines.transforms.model_serving import load_version
    from tests.linear_models import linear_scores, write_linear_version

    weights = np.linspace(-0.1, 0.1, len(MODEL_INPUTS))
    write_linear_version(tmp_path, "v1", weights, 0.3)
    rows = np.random.default_rng(0).uniform(0, 3, (257, len(MODEL_INPUTS)))
    loaded = load_version(
        "v1", str(tmp_path / "v1" / "saved_model"), MODEL_INPUTS, backend, None, MODEL_INPUTS
    )
    np.testing.assert_allclose(loaded.score(rows), linear_scores(rows, weights, 0.3), atol=1e-6)


def test_the_vertex_backend_constructs_offline() -> None:
    """The remote spec builds tfx-bsl's handler without network (scoring needs Google Cloud)."""
    from apache_beam.ml.inference.base import ModelHandler

    from pipelines.transforms.model_serving import load_version, vertex_model_handler

    handler = vertex_model_handler("my-project", "fraud", "v20261202")
    assert isinstance(handler, ModelHandler)
    assert type(handler).__name__ == "_RemotePredictModelHandler"
    with pytest.raises(ValueError, match="vertex_project"):
        load_version("v1", "unused", MODEL_INPUTS, "vertex", None, MODEL_INPUTS)


def test_prediction_logs_of_the_tfx_bsl_handler_are_written_and_match(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from pipelines.app.evaluate import write_prediction_logs
    from pipelines.transforms.inference import resolve_model
    from tests.linear_models import linear_scores, write_linear_version

    weights = np.linspace(0.05, -0.05, len(MODEL_INPUTS))
    write_linear_version(tmp_path / "models", "v1", weights, -0.5)
    rows = np.random.default_rng(1).uniform(0, 4, (1203, len(MODEL_INPUTS)))
    frame = pd.DataFrame(rows, columns=list(MODEL_INPUTS))
    out = write_prediction_logs(
        resolve_model(str(tmp_path / "models"), "v1"), frame, tmp_path / "logs.tfrecord"
    )
    assert out["n"] == len(rows) and out["max_abs_diff"] <= 1e-6
    scores = []
    for record in tf.data.TFRecordDataset(str(tmp_path / "logs.tfrecord")):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        scores.append(log.predict_log.response.outputs["score"].float_val[0])
    np.testing.assert_allclose(scores, linear_scores(rows, weights, -0.5), atol=1e-6)


# One ServingModels per process, through Beam's Shared.


def fake_version(version: str) -> LoadedVersion:
    return LoadedVersion(
        version, MODEL_INPUTS, lambda x: np.full(len(x), VALUES[version]), MODEL_INPUTS
    )


@pytest.fixture
def fake_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job's loader with the SavedModel replaced by a constant score per version."""
    loads: list[str] = []

    def load_version(version: str, *args: Any) -> LoadedVersion:
        loads.append(version)
        return fake_version(version)

    monkeypatch.setattr(inference, "load_version", load_version)
    return loads


def registry_dir(root: Path) -> Path:
    for version in VALUES:
        make_version(root, version)
    ModelRegistry(str(root)).promote("v1", challenger="v2")
    return root


def watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rillet-model-watcher" and t.is_alive()]


def test_one_serving_models_per_process_for_every_dofn_and_thread(
    tmp_path: Path, fake_loads: list[str]
) -> None:
    """Handlers deserialized per thread (as a runner does with DoFns) all get one ServingModels
    with one watcher; a promotion is seen through every one of them; serving another config
    releases the first, whose watcher stops."""
    config = ServingConfig(str(registry_dir(tmp_path / "a")), poll_s=0.02)
    pickled = pickle.dumps(RegistryModelHandler(config))
    before = len(watchers())
    start = threading.Barrier(16)
    got: list[tuple[RegistryModelHandler, ServingModels]] = []

    def setup() -> None:
        handler = pickle.loads(pickled)
        start.wait()
        got.append((handler, handler.load_model()))

    threads = [threading.Thread(target=setup) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(models) for _, models in got}) == 1
    assert fake_loads == ["v1", "v2"]
    assert len(watchers()) == before + 1

    def served() -> set[str]:
        return {h.run_inference(_batch(2), m)[0].model_version for h, m in got}

    ModelRegistry(config.model_dir).promote("v3")
    wait_for(lambda: served() == {"v3"})
    assert fake_loads == ["v1", "v2", "v3"]

    watcher = got[0][1]._watcher
    models_ref = weakref.ref(got[0][1])
    got.clear()
    other = ServingConfig(str(registry_dir(tmp_path / "b")), poll_s=0.02)
    assert RegistryModelHandler(other).load_model() is not models_ref()
    wait_for(lambda: models_ref() is None and not watcher.is_alive())


def test_close_stops_the_watcher() -> None:
    registry = Registry("v1")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0.01)
    assert models.watching
    models.close()
    assert not models.watching
    registry.set("v2")
    time.sleep(0.05)
    assert models.current().champion.version == "v1"


def test_a_runner_that_drops_its_dofn_after_every_bundle_loads_the_models_once(
    tmp_path: Path, fake_loads: list[str]
) -> None:
    """The DirectRunner in streaming mode deserializes and sets up RunInference for every
    bundle and drops it afterwards; the process keeps its one ServingModels across bundles
    (with Shared's weak reference alone, they were loaded again between bundles)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to

    config = ServingConfig(str(registry_dir(tmp_path)), poll_s=0)
    stream = TestStream()
    for i in range(12):
        stream = stream.add_elements([i]).advance_processing_time(1)
    with beam.Pipeline(options=PipelineOptions(streaming=True)) as p:
        predictions = p | stream | beam.Map(lambda i: _batch(1)) | inference.Predict(config)
        assert_that(
            predictions.results | beam.Map(lambda pb: pb.model_version),
            equal_to(["v1"] * 12),
        )
    assert fake_loads == ["v1", "v2"]


# Swaps without a stop-the-world collection.


def test_a_swap_collects_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("collect", "freeze", "unfreeze"):
        monkeypatch.setattr(gc, name, lambda *a, name=name: calls.append(name) or 0)
    registry = Registry("v1", "v2")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0)
    for pair in [("v2", "v3"), ("v3", None), ("v1", "v2"), ("v3", "v1")]:
        registry.set(*pair)
        assert models.refresh()
    assert calls == []


def test_an_unloaded_version_is_ordinary_garbage_not_frozen(tmp_path: Path) -> None:
    """Real SavedModels: the runtime is frozen once, the versions never are, so a swap changes
    nothing in the permanent generation and an ordinary collection frees the version it
    unloaded (its TensorFlow objects refer to each other: reference counting alone cannot)."""
    from pipelines.transforms.model_serving import SavedModelScorer, load_version
    from tests.linear_models import write_linear_version

    for i, version in enumerate(VALUES):
        write_linear_version(tmp_path, version, np.full(len(MODEL_INPUTS), 0.01 * i))
    loaded: dict[str, weakref.ref[Any]] = {}

    def load(version: str) -> LoadedVersion:
        path = str(tmp_path / version / "saved_model")
        version_ = load_version(version, path, MODEL_INPUTS, "saved_model", None, MODEL_INPUTS)
        assert isinstance(version_.scorer, SavedModelScorer)
        loaded[version] = weakref.ref(version_.scorer._loaded)
        return version_

    registry = Registry("v1")
    models = ServingModels(lambda: registry.assignment, load, poll_s=0)
    frozen = gc.get_freeze_count()
    rows = np.ones((3, len(MODEL_INPUTS)))
    for champion in ("v2", "v3", "v1", "v2"):
        registry.set(champion)
        assert models.refresh()
        models.current().champion.score(rows)
        assert gc.get_freeze_count() == frozen
    gc.collect()
    alive = sorted(v for v, ref in loaded.items() if ref() is not None)
    assert alive == ["v2"]


_METRIC_MODELS: dict[str, Any] = {}


class _ScoreAfterSwitching(beam.DoFn):
    """Points the fake registry at the element's pair, refreshes, and scores one batch through
    the job's handler (what RunInference does with each FeatureBatch)."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._handler = RegistryModelHandler(ServingConfig("unused"))

    def process(self, pair: tuple[str, str | None]) -> None:
        registry, models = _METRIC_MODELS[self._key]
        if registry.assignment[:2] != pair:
            registry.set(*pair)
            models.refresh()
        self._handler.run_inference(_batch(3), models)


def test_the_pairs_scored_are_reported_as_a_metric_that_rillet_run_reads() -> None:
    """The scoring step reports each pair it scores with in the ``serving_models`` string set;
    the status reader turns the job's metric into the served pairs and the promotion line."""
    from apache_beam.metrics.metric import MetricsFilter

    from pipelines.app.job_status import change_lines, status_from
    from pipelines.transforms.model_serving import SERVING_METRIC, Served
    from pipelines.transforms.parse import METRICS_NAMESPACE

    registry = Registry("v1", "v2")
    models = ServingModels(lambda: registry.assignment, registry.load, poll_s=0)
    _METRIC_MODELS["swap"] = (registry, models)
    p = beam.Pipeline()
    _ = (
        p
        | beam.Create([("v1", "v2"), ("v1", "v2"), ("v2", None)], reshuffle=False)
        | beam.ParDo(_ScoreAfterSwitching("swap"))
    )
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    (metric,) = [m for m in query["string_sets"] if m.key.metric.name == SERVING_METRIC]
    status = status_from({}, None, metric.committed)
    pairs = [(s.generation, s.champion, s.challenger) for s in status.served]
    assert pairs == [(1, "v1", "v2"), (2, "v2", None)]
    lines, _ = change_lines(Served(1, 0.0, "v1", "v2"), status.served)
    assert len(lines) == 1
    assert lines[0].endswith("champion v1 -> v2 (promoted), challenger v2 -> none")
    assert status.served[1].since >= status.served[0].since > 0


def test_the_job_serves_what_its_definitions_declare_and_it_computes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of two features served by a job computing only those (its rows laid out as the
    job's, the model's columns picked by name); the same model refused by definitions that
    changed one of them; a promotion to a model needing more than the job computes refused
    at the swap, the serving pair kept."""

    def load_version(version: str, path: str, features: Any, *args: Any) -> LoadedVersion:
        layout = args[-1]
        return LoadedVersion(version, tuple(features), lambda x: x[:, 0].astype(float), layout)

    monkeypatch.setattr(inference, "load_version", load_version)
    root = tmp_path / "models"
    subset = ["CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TX_AMOUNT"]
    make_version(root, "a1", **card_fields(subset))
    make_version(root, "v1")
    ModelRegistry(str(root)).promote("a1")
    computed = ("TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW")  # the file's order
    models = inference.serving_models(ServingConfig(str(root), poll_s=0, computed=computed))
    champion = models.current().champion
    assert champion.version == "a1" and champion.layout == computed
    assert champion.score(np.array([[10.0, 3.0]])).tolist() == [3.0]  # its first input

    def longer(data: dict[str, Any]) -> None:
        feature_spec(data, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")["window"] = "2d"

    changed = load_definitions(write_variant(tmp_path / "changed.yaml", longer))
    with pytest.raises(RegistryError, match=r"'a1' cannot be served .*changed.yaml.*1d -> 2d"):
        inference.serving_models(ServingConfig(str(root), "a1", definitions=changed))

    ModelRegistry(str(root)).promote("v1")
    assert not models.refresh()
    assert models.current().champion.version == "a1"
    assert "TX_DURING_WEEKEND: declared, but the job does not compute it" in models.failures[-1]
