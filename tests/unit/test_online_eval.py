"""The online evaluation's logic without Datastore: what a label and its stored prediction
contribute, and the per-(version, day) combine (exact, deduplicated, mergeable)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.core.quality import quality
from pipelines.core.schema import Label
from pipelines.transforms.online_eval import DayQuality, Scored, label_day, scored_from

DAY_US = 1_533_686_400_000_000  # 2018-08-08 00:00 UTC


def test_a_label_counts_for_the_champion_and_for_the_challenger_that_shadowed_it() -> None:
    label = Label("t1", DAY_US + 5, "C1", "T1", 1)
    alone = {"model_version": "v1", "score": 0.4, "challenger_version": None}
    assert scored_from(label, alone) == [Scored("v1", "2018-08-08", "t1", "C1", 1, 0.4)]
    shadowed = {**alone, "challenger_version": "v2", "challenger_score": 0.9}
    assert scored_from(label, shadowed) == [
        Scored("v1", "2018-08-08", "t1", "C1", 1, 0.4),
        Scored("v2", "2018-08-08", "t1", "C1", 1, 0.9),
    ]
    assert label_day(DAY_US - 1) == "2018-08-07"


def test_day_quality_is_exact_and_counts_a_redelivered_label_once() -> None:
    rows = [
        Scored("v1", "d", f"t{i}", f"C{i % 7}", int(i % 5 == 0), (i * 37 % 101) / 101)
        for i in range(60)
    ]
    expected = quality([r.card for r in rows], [r.label for r in rows], [r.score for r in rows])
    redelivered = rows + rows[:10]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([((r.version, r.day), [r]) for r in redelivered])
            | beam.CombinePerKey(DayQuality())
        )
        assert_that(out, equal_to([(("v1", "d"), expected)]))


def test_day_quality_merges_partial_accumulators() -> None:
    combine = DayQuality()
    rows = [Scored("v1", "d", f"t{i}", "C1", i % 2, i / 10) for i in range(10)]
    parts = [combine.create_accumulator() for _ in range(3)]
    for i, row in enumerate(rows):
        combine.add_input(parts[i % 3], [row])
    merged = combine.merge_accumulators(parts)
    assert combine.extract_output(merged) == quality(
        ["C1"] * 10, [r.label for r in rows], [r.score for r in rows]
    )


def test_the_scores_of_a_raw_stored_prediction() -> None:
    """served_scores reads the raw entity the sink writes, with and without a challenger."""
    import numpy as np
    from google.cloud.datastore_v1.types import entity as entity_pb

    from pipelines.core.batches import FeatureBatch
    from pipelines.core.definitions import MODEL_INPUTS
    from pipelines.core.schema import Transaction
    from pipelines.transforms.inference import PredictionBatch
    from pipelines.transforms.online_eval import served_scores
    from pipelines.transforms.sinks import RiskBands, _DatastoreWriteDoFn, prediction_records

    tx = Transaction("t1", DAY_US, "C1", "T1", 10.0)
    batch = FeatureBatch([tx], np.zeros((1, len(MODEL_INPUTS))), revision=1)
    sink = _DatastoreWriteDoFn("p", "Prediction", None, RiskBands())
    for shadow, version in ((None, None), (np.array([0.75]), "v2")):
        pb = PredictionBatch(batch, np.array([0.25]), "v1", 1, shadow, version)
        raw = entity_pb.Entity.pb()()
        sink._entity_pb(raw, prediction_records(pb, RiskBands())[0], "Prediction")
        assert served_scores(raw) == {
            "model_version": "v1",
            "score": 0.25,
            "challenger_version": version,
            "challenger_score": None if shadow is None else 0.75,
        }
