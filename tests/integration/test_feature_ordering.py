"""The sequenced feature stage against the real Bigtable emulator: whatever order events reach it
in (out-of-order batches, labels before or long after their transactions, redeliveries), the
latest revision of every transaction's features equals the batch computation."""

from __future__ import annotations

import dataclasses
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


def _restarted(stage: _SequencedDoFn) -> _SequencedDoFn:
    """A new stage for the same table as after a restart: empty memory, waits reloaded."""
    fresh = _SequencedDoFn(stage._config, max_batch_size=10_000, label_wait_s=stage._label_wait_s)
    fresh.setup()
    assert fresh._cache is not None
    fresh._cache.clear()  # one process here: the shared cache stands for the dead one's
    fresh._restore_waiting()
    return fresh


def test_waiting_labels_and_their_deadlines_survive_a_restart(emulators, tiny_frame) -> None:
    import time

    from pipelines.transforms.label_slots import LabelSlot

    config = StoreConfig(LOCAL_PROJECT, "rillet", "ordering_waiting")
    create_table(config)
    txs, labels = events_of(tiny_frame)
    genuine = dataclasses.replace(labels[0], message_id="g", publish_time_us=20)
    contradiction = dataclasses.replace(
        labels[0], terminal_id="elsewhere", message_id="m", publish_time_us=10
    )
    ghost = dataclasses.replace(labels[1], transaction_id="ghost", message_id="x")
    stage = _SequencedDoFn(config, max_batch_size=10_000, label_wait_s=3.0)
    stage.setup()
    out = list(stage.flush([contradiction, genuine, ghost]))  # no transaction yet: all wait
    assert out == [] and set(stage._waiting()) == {txs[0].transaction_id, "ghost"}
    started = time.time()

    # The job dies; its successor knows only the store (the label messages finished).
    after = _restarted(stage)
    assert set(after._waiting()) == {txs[0].transaction_id, "ghost"}
    outputs = list(after.flush([txs[0]]))
    rejected = [o.value for o in outputs if not isinstance(o, FeatureBatch)]
    assert [(d.reason, d.message_id) for d in rejected] == [("label_mismatch", "m")]
    record = after._store().read_ids([txs[0].transaction_id])[txs[0].transaction_id]
    assert LabelSlot.from_record(txs[0].transaction_id, record.label).recorded == genuine

    # The ghost keeps its original deadline across a second restart, then is dead-lettered.
    again = _restarted(after)
    assert set(again._waiting()) == {"ghost"}
    time.sleep(max(0.0, started + 3.2 - time.time()))
    expired = [o.value for o in again.flush([txs[1]]) if not isinstance(o, FeatureBatch)]
    assert [(d.reason, d.message_id) for d in expired] == [("unknown_transaction", "x")]
    assert _restarted(again)._waiting() == {}
    assert again._store().read_waiting() == {}
