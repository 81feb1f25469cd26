"""TestPipeline tests of the composite transforms that need no emulator: ParseEvents, Predict."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.app.publisher import malformed_examples
from pipelines.core.declarations import load_definitions
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.transforms.features import FeatureBatch
from pipelines.transforms.inference import (
    Predict,
    RegistryModelHandler,
    ServingConfig,
    resolve_model,
)
from pipelines.transforms.parse import ParseEvents
from tests.events import handbook_json, handbook_tx

# The BundleBasedDirectRunner is what runs the streaming job locally; it needs no download.
OPTIONS = PipelineOptions(["--runner=BundleBasedDirectRunner"])

GOOD = handbook_tx("t-1", 1_522_663_200_000_000, "7", "9", 12.5)


def test_parse_events_splits_valid_and_dead_letters() -> None:
    bad = malformed_examples()
    messages = [PubsubMessage(handbook_json(GOOD), {"k": "v"})] + [
        PubsubMessage(b, {}) for b in bad
    ]
    with TestPipeline(options=OPTIONS) as p:
        parsed = (
            p
            | beam.Create(messages)
            | ParseEvents("transaction", "subs/tx", load_definitions().events)
        )
        assert_that(
            parsed.valid | "Ids" >> beam.Map(lambda t: (t.transaction_id, t.fields["amount"])),
            equal_to([("t-1", 12.5)]),
            label="valid",
        )
        assert_that(
            parsed.dead_letters
            | "Rejects" >> beam.Map(lambda d: (d.payload, d.source, d.stage, bool(d.reason))),
            equal_to([(b, "subs/tx", "parse", True) for b in bad]),
            label="dead",
        )


def test_parse_events_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        ParseEvents("refund", "x", load_definitions().events)


def test_predict_scores_each_batch_with_the_saved_model(model_dir) -> None:
    import tensorflow as tf
    import ydf_tf  # noqa: F401  (registers the trees' op)

    model = resolve_model(str(model_dir))
    rng = np.random.default_rng(0)
    batches = [
        FeatureBatch(
            [GOOD] * n, rng.uniform(0, 5, (n, len(MODEL_INPUTS))), revision=i, names=MODEL_INPUTS
        )
        for i, n in enumerate((1, 7, 30))
    ]
    loaded = tf.saved_model.load(model.path).signatures["predict_features"]
    want = {
        b.revision: loaded(features=tf.constant(b.features.astype(np.float32)))["score"]
        .numpy()
        .reshape(-1)
        .astype(np.float64)
        .round(6)
        .tolist()
        for b in batches
    }
    with TestPipeline(options=OPTIONS) as p:
        predictions = p | beam.Create(batches) | Predict(ServingConfig(str(model_dir)))
        assert_that(
            predictions.results
            | beam.Map(
                lambda pb: (pb.batch.revision, pb.model_version, pb.scores.round(6).tolist())
            ),
            equal_to([(r, model.version, s) for r, s in want.items()]),
        )
        # No challenger in this registry: no shadow scores.
        assert_that(
            predictions.results
            | beam.Map(lambda pb: (pb.challenger_version, pb.challenger_scores)),
            equal_to([(None, None)] * len(batches)),
            label="no shadow",
        )
        assert_that(predictions.dead_letters, equal_to([]), label="no failures")


def test_a_batch_whose_inference_raises_becomes_one_dead_letter_per_transaction(
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    """RunInference's failed batches (its DLQ) become ``inference_error`` dead letters, one per
    transaction with its original message, and the batch's recovery token rides on the last one
    only (its sink releases the token once: local_runner.recovery); the other batches score."""
    from tests.linear_models import write_linear_version

    write_linear_version(tmp_path, "v1", np.full(len(MODEL_INPUTS), 0.01), check_finite=True)
    txs = [
        handbook_tx(f"t-{i}", GOOD.event_time_us + i, "7", "9", 10.0 + i, message_id=f"m-{i}")
        for i in range(3)
    ]
    rows = np.ones((3, len(MODEL_INPUTS)))
    broken = rows.copy()
    broken[1, 0] = np.nan  # one bad row fails its whole batch
    batches = [
        FeatureBatch(txs[:1], rows[:1], revision=1, token=5, names=MODEL_INPUTS),
        FeatureBatch(txs, broken, revision=2, token=41, names=MODEL_INPUTS),
        FeatureBatch(txs[1:], rows[1:], revision=3, correction=True, token=42, names=MODEL_INPUTS),
    ]
    with TestPipeline(options=OPTIONS) as p:
        predictions = p | beam.Create(batches) | Predict(ServingConfig(str(tmp_path)))
        assert_that(
            predictions.results | beam.Map(lambda pb: (pb.batch.revision, len(pb))),
            equal_to([(1, 1), (3, 2)]),
            label="the other batches",
        )
        assert_that(
            predictions.dead_letters
            | beam.Map(
                lambda d: (
                    d.payload,
                    d.reason,
                    d.source,
                    d.stage,
                    d.message_id,
                    d.token,
                    "InvalidArgumentError" in d.detail,
                )
            ),
            equal_to(
                [
                    (
                        handbook_json(tx),
                        "inference_error",
                        "transactions",
                        "predict",
                        tx.message_id,
                        0,
                        True,
                    )
                    for tx in txs[:2]
                ]
                + [
                    (
                        handbook_json(txs[2]),
                        "inference_error",
                        "transactions",
                        "predict",
                        "m-2",
                        41,
                        True,
                    )
                ]
            ),
            label="dead letters",
        )


def test_the_saved_model_is_loaded_once_per_process(model_dir, caplog) -> None:  # type: ignore[no-untyped-def]
    # The DirectRunner sets up a fresh RunInference DoFn for every bundle; each must not reload.
    config = ServingConfig(str(model_dir))
    with caplog.at_level("INFO", logger="pipelines.transforms.inference"):
        first = RegistryModelHandler(config).load_model()
        second = RegistryModelHandler(config).load_model()
    assert first is second
    assert sum("loaded model" in r.getMessage() for r in caplog.records) <= 1


def test_shared_objects_are_one_per_process_and_emulator_endpoint(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every copy of a DoFn (Beam unpickles one per thread, the DirectRunner one per bundle) gets
    the same object through its SharedResource; a client made for one emulator stack is not
    handed out once another is in use."""
    import pickle

    from pipelines.stores.shared import SharedResource

    class Client:
        pass

    handle: SharedResource[Client] = SharedResource()
    copy = pickle.loads(pickle.dumps(handle))
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", "127.0.0.1:1")
    first = handle.acquire(Client)
    assert copy.acquire(Client) is first
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", "127.0.0.1:2")
    assert copy.acquire(Client) is not first
