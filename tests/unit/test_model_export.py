"""The exported SavedModel: both signatures and tfx-bsl's RunInference handler give the same
scores as the in-memory model, and the model card has the contract's keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.declarations import load_definitions
from pipelines.core.definitions import LABEL_DELAY_DAYS, MODEL_INPUTS

pytest.importorskip("ydf")
pytest.importorskip("ydf_tf")


def _frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.gamma(2.0, 20.0, (n, len(MODEL_INPUTS))), columns=list(MODEL_INPUTS))
    frame["TX_DURING_WEEKEND"] = rng.integers(0, 2, n).astype(float)
    frame["TX_DURING_NIGHT"] = rng.integers(0, 2, n).astype(float)
    ratio = frame["TX_AMOUNT"] / frame["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"]
    frame["TX_FRAUD"] = ((ratio > 2.5) | (frame["TX_AMOUNT"] > 120)).astype(np.int8)
    return frame


def _example(row: np.ndarray) -> bytes:
    import tensorflow as tf

    feature = {
        name: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
        for name, v in zip(MODEL_INPUTS, row, strict=True)
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return bytes(example.SerializeToString())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    from models.export import export_model
    from models.train import TrainConfig, predict, train_model

    frame = _frame()
    model, _ = train_model(frame, None, TrainConfig(num_trees=15, max_depth=4))
    card = {"validation_metrics": {"auc": 0.9, "ap": 0.8, "cp100": 0.3, "folds": []}}
    target = export_model(model, tmp_path_factory.mktemp("models"), card, version="v1")
    test = _frame(200, seed=1)
    return target, test, predict(model, test)


def test_both_signatures_score_like_the_trained_model(exported) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf
    import ydf_tf  # noqa: F401

    target, test, expected = exported
    loaded = tf.saved_model.load(str(target / "saved_model"))
    x = test[list(MODEL_INPUTS)].to_numpy(np.float32)
    fast = loaded.signatures["predict_features"](features=tf.constant(x))
    assert set(fast) == {"score"} and fast["score"].dtype == tf.float32
    examples = tf.constant([_example(row) for row in x])
    served = loaded.signatures["serving_default"](examples=examples)
    assert set(served) == {"score"} and served["score"].shape == (len(x),)
    np.testing.assert_allclose(fast["score"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(served["score"].numpy(), fast["score"].numpy(), atol=1e-6)
    # The scores separate the synthetic classes: the trees were really exported.
    assert 0.0 <= expected.min() and expected.max() <= 1.0 and expected.std() > 0.1

    from pipelines.transforms.inference import ModelInfo, load_model_version

    info = ModelInfo("v1", str(target / "saved_model"), MODEL_INPUTS)
    for backend in ("saved_model", "tfx_bsl"):  # the job's two local backends
        scores = load_model_version(info, backend).score(x)
        np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_tfx_bsl_handler_scores_like_tf2(exported) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf
    import ydf_tf  # noqa: F401
    from tfx_bsl.public.beam.run_inference import CreateModelHandler
    from tfx_bsl.public.proto import model_spec_pb2

    target, test, expected = exported
    spec = model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=str(target / "saved_model"), signature_name=["serving_default"]
        )
    )
    handler = CreateModelHandler(spec)
    x = test[list(MODEL_INPUTS)].to_numpy(np.float32)[:40]
    examples = [tf.train.Example.FromString(_example(row)) for row in x]
    logs = list(handler.run_inference(examples, handler.load_model()))
    scores = [log.predict_log.response.outputs["score"].float_val[0] for log in logs]
    np.testing.assert_allclose(scores, expected[:40], atol=1e-6)


def test_model_card(exported) -> None:  # type: ignore[no-untyped-def]
    target, _, _ = exported
    card = json.loads((target / "model_card.json").read_text())
    assert card["version"] == "v1"
    assert card["features"] == list(MODEL_INPUTS)
    assert card["framework"] == "ydf-gbt"
    handbook = load_definitions()
    assert card["feature_fingerprints"] == handbook.fingerprints(MODEL_INPUTS)
    assert card["feature_declarations"]["TX_DURING_NIGHT"] == {
        "kind": "row",
        "value": None,
        "when": "hour <= 6",
    }
    assert card["definitions"] == {"name": "handbook", "file": "handbook.yaml"}
    assert card["label_delay_days"] == LABEL_DELAY_DAYS
    assert card["offline_metrics"] == {"auc": 0.9, "ap": 0.8, "cp100": 0.3}
    assert card["parent"] is None and card["created_at"]
    assert card["config"]["num_trees"] == 15
    reference = card["reference"]
    assert set(reference["inputs"]) == set(MODEL_INPUTS)
    assert reference["inputs"]["TX_DURING_WEEKEND"]["edges"] == [0.0, 1.0]
    assert sum(reference["inputs"]["TX_AMOUNT"]["counts"]) == 600
    assert sum(reference["score"]["counts"]) == 600


def test_the_demo_model_gets_validation_metrics(tiny_frame) -> None:  # type: ignore[no-untyped-def]
    """The demo trains once, without selection: its card still carries validation metrics
    (the week after its training days and the label delay), so 'rillet models list' and
    'models show' have figures for it."""
    from models.evaluation import Protocol, rows_in
    from models.train import TrainConfig, train_model
    from pipelines.app.demo import demo_validation
    from pipelines.core.training_data import training_features

    features = training_features(tiny_frame)  # 21 days from 2018-04-01
    train = rows_in(features, ("2018-04-01", "2018-04-07"))
    model, _ = train_model(train, None, TrainConfig(num_trees=10))
    fields = demo_validation(model, tiny_frame, features, "2018-04-01", 7)
    assert fields["validation_ranges"] == [["2018-04-15", "2018-04-21"]]
    metrics = fields["validation_metrics"]
    assert set(metrics) == {"auc", "ap", "cp100", "n", "frauds"}
    assert 0.5 < metrics["auc"] <= 1 and 0 < metrics["ap"] <= 1 and metrics["frauds"] > 0
    assert Protocol.from_dict(fields["protocol"]).test_range == ("2018-04-15", "2018-04-21")
    # Training days that leave no validation week in the data: no figures rather than wrong ones.
    assert demo_validation(model, tiny_frame, features, "2018-04-01", 14) == {
        "validation_ranges": [],
        "validation_metrics": {},
    }


def test_evaluate_scores_the_demo_model_on_the_demos_dataset(tiny_frame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After 'make demo', 'rillet evaluate' needs no flags: it reads the dataset (its features
    computed by the engine) and the demo's champion, whose card carries its protocol; offline
    it finds the validation figures the demo recorded."""
    from models.evaluation import rows_in
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.demo import demo_validation
    from pipelines.app.evaluate import EvaluationConfig, evaluate
    from pipelines.app.simulator import write_dataset
    from pipelines.core.training_data import training_features

    write_dataset(tiny_frame, tmp_path / "data")
    features = training_features(tiny_frame)
    model, _ = train_model(
        rows_in(features, ("2018-04-01", "2018-04-07")), None, TrainConfig(num_trees=10)
    )
    card = demo_validation(model, tiny_frame, features, "2018-04-01", 7)
    export_model(model, tmp_path / "models", card)
    result = evaluate(
        EvaluationConfig(tmp_path / "data", tmp_path / "models", "latest", served=False)
    )
    for key in ("auc", "ap", "cp100"):
        assert result["offline"][key] == pytest.approx(card["validation_metrics"][key], abs=1e-6)


def test_a_model_of_a_subset_of_the_features(tmp_path: Path) -> None:
    """A model trained on 3 of the 15 features, in an order of its own: its card names them
    in that order; it scores the job's 15-column rows (its columns picked by name) and its own
    columns, through both signatures, as the in-memory model does; the ratio of two of its
    inputs is derived, the others (their features absent) are not; and 'rillet evaluate'
    scores it on a dataset."""
    import tensorflow as tf
    import ydf_tf  # noqa: F401

    from models.derived import derived_inputs
    from models.export import export_model
    from models.train import TrainConfig, predict, train_model
    from pipelines.transforms.model_serving import load_version

    inputs = ("CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW", "TX_DURING_NIGHT", "TX_AMOUNT")
    assert derived_inputs(inputs) == ("AMOUNT_OVER_AVG_30DAY",)
    model, _ = train_model(_frame(), None, TrainConfig(num_trees=15, max_depth=4), inputs)
    target = export_model(model, tmp_path, {}, version="v1")
    card = json.loads((target / "model_card.json").read_text())
    assert card["features"] == list(inputs)
    assert list(card["feature_fingerprints"]) == list(inputs)
    assert set(card["reference"]["inputs"]) == set(inputs)

    test = _frame(200, seed=1)
    expected = predict(model, test)
    assert expected.std() > 0.1
    rows = test[list(MODEL_INPUTS)].to_numpy()
    served = load_version(
        "v1", str(target / "saved_model"), inputs, "saved_model", None, MODEL_INPUTS
    )
    np.testing.assert_allclose(served.score(rows), expected, atol=1e-6)
    loaded = tf.saved_model.load(str(target / "saved_model"))
    own = test[list(inputs)].to_numpy(np.float32)
    examples = []
    for row in own:
        feature = {
            n: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
            for n, v in zip(inputs, row, strict=True)
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)))
    by_example = loaded.signatures["serving_default"](
        examples=tf.constant([e.SerializeToString() for e in examples])
    )
    np.testing.assert_allclose(by_example["score"].numpy(), expected, atol=1e-6)


def test_evaluate_scores_a_subset_model(tiny_frame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """'rillet evaluate' (offline) on a model of 4 features: scored on its own columns."""
    from models.evaluation import rows_in
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.demo import demo_validation
    from pipelines.app.evaluate import EvaluationConfig, evaluate
    from pipelines.app.simulator import write_dataset
    from pipelines.core.training_data import training_features

    inputs = (
        "TERMINAL_ID_RISK_7DAY_WINDOW",
        "TX_AMOUNT",
        "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    )
    write_dataset(tiny_frame, tmp_path / "data")
    features = training_features(tiny_frame)
    train = rows_in(features, ("2018-04-01", "2018-04-07"))
    model, _ = train_model(train, None, TrainConfig(num_trees=10), inputs)
    card = demo_validation(model, tiny_frame, features, "2018-04-01", 7)
    export_model(model, tmp_path / "models", card)
    result = evaluate(
        EvaluationConfig(tmp_path / "data", tmp_path / "models", "latest", served=False)
    )
    assert result["offline"]["auc"] == pytest.approx(card["validation_metrics"]["auc"], abs=1e-6)
