"""The sequenced feature stage against the real Bigtable emulator: whatever order events reach it
in (out-of-order batches, labels before or long after their transactions, redeliveries), the
latest revision of every transaction's features equals the batch computation."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from pipelines.feature_store import StoreConfig, create_table
from pipelines.features import MODEL_INPUTS
from pipelines.local import LOCAL_PROJECT
from pipelines.schema import Label, Transaction
from pipelines.training_data import to_epoch_us, training_features
from pipelines.transforms.features import FeatureBatch, _SequencedDoFn

pytestmark = pytest.mark.integration


def events_of(frame: Any) -> tuple[list[Transaction], list[Label]]:
    times = to_epoch_us(frame.TX_DATETIME)
    txs, labels = [], []
    for i, row in enumerate(frame.itertuples(index=False)):
        tx_id, c, t = str(row.TRANSACTION_ID), str(row.CUSTOMER_ID), str(row.TERMINAL_ID)
        txs.append(Transaction(tx_id, int(times[i]), c, t, float(row.TX_AMOUNT)))
        labels.append(Label(tx_id, int(times[i]), c, t, int(row.TX_FRAUD)))
    return txs, labels


def run_stage(table: str, batches: list[list[Any]]) -> tuple[dict[str, FeatureBatch], int, list]:
    config = StoreConfig(LOCAL_PROJECT, "rillet", table)
    create_table(config)
    stage = _SequencedDoFn(config, max_batch_size=10_000)
    stage.setup()
    latest: dict[str, tuple[int, np.ndarray]] = {}
    corrections, dead = 0, []
    for batch in batches:
        for out in stage.flush(batch):
            if not isinstance(out, FeatureBatch):
                dead.append(out.value)
                continue
            corrections += len(out) if out.correction else 0
            for i, tx in enumerate(out.transactions):
                seen = latest.get(tx.transaction_id)
                if seen is None or out.revision > seen[0]:
                    latest[tx.transaction_id] = (out.revision, out.features[i])
    return {k: v[1] for k, v in latest.items()}, corrections, dead


def assert_exact(frame: Any, latest: dict[str, np.ndarray]) -> None:
    expected = training_features(frame).set_index("TRANSACTION_ID")
    ids = sorted(latest, key=int)
    assert ids == sorted(frame.TRANSACTION_ID.astype(str), key=int)
    served = np.array([latest[i] for i in ids])
    want = expected.loc[[int(i) for i in ids], list(MODEL_INPUTS)].to_numpy()
    assert np.array_equal(served, want), np.abs(served - want).max(axis=0)


def test_in_order_stream_needs_no_corrections(emulators, tiny_frame) -> None:
    txs, labels = events_of(tiny_frame)
    # Labels 7 days after their transactions, in event order, in batches of 50.
    stream = sorted(
        [(t.event_time_us, 1, t) for t in txs]
        + [(lb.event_time_us + 7 * 86_400_000_000, 0, lb) for lb in labels],
        key=lambda x: (x[0], x[1]),
    )
    events = [e for _, _, e in stream]
    batches = [events[i : i + 50] for i in range(0, len(events), 50)]
    latest, corrections, dead = run_stage("ordering_in_order", batches)
    assert_exact(tiny_frame, latest)
    assert corrections == 0 and dead == []


def test_out_of_order_batches_are_corrected(emulators, tiny_frame) -> None:
    txs, labels = events_of(tiny_frame)
    rng = random.Random(7)
    events: list[Any] = [*txs, *labels]
    rng.shuffle(events)  # labels before their transactions, late events, everything
    batches = [events[i : i + 97] for i in range(0, len(events), 97)]
    batches.append(rng.sample(txs, 40) + rng.sample(labels, 40))  # redeliveries
    latest, corrections, dead = run_stage("ordering_shuffled", batches)
    assert_exact(tiny_frame, latest)
    assert corrections > 0 and dead == []


def test_compute_features_composite_in_a_test_pipeline(emulators, tiny_frame) -> None:
    """The ComputeFeatures composite on the BundleBasedDirectRunner (bundles of arbitrary
    order and size): the latest revision per transaction equals the batch computation."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.transforms.features import ComputeFeatures

    config = StoreConfig(LOCAL_PROJECT, "rillet", "ordering_composite")
    create_table(config)
    txs, labels = events_of(tiny_frame)

    def check(batches: list[FeatureBatch]) -> None:
        latest: dict[str, tuple[int, np.ndarray]] = {}
        for b in batches:
            for i, tx in enumerate(b.transactions):
                if tx.transaction_id not in latest or b.revision > latest[tx.transaction_id][0]:
                    latest[tx.transaction_id] = (b.revision, b.features[i])
        assert_exact(tiny_frame, {k: v[1] for k, v in latest.items()})

    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    with TestPipeline(options=options) as p:
        computed = (
            p | "Txs" >> beam.Create(txs),
            p | "Labels" >> beam.Create(labels),
        ) | ComputeFeatures(config, max_batch_size=300)
        assert_that(computed.batches, check)
        assert_that(computed.dead_letters, equal_to([]), label="no rejects")
