"""The keyed feature stages (IndexIds, CustomerWindows, TerminalWindows) on the DirectRunner with
TestStream and the in-memory store: no emulator. Whatever the arrival order, batching, ties and
redeliveries, the latest revision of every transaction's features equals the brute-force batch
computation (pipelines.training_data, the engine over everything)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from pipelines.core.batches import FeatureBatch
from pipelines.features import DAY_US, MODEL_INPUTS
from pipelines.schema import Label, Transaction
from pipelines.stores.window_store import InMemoryStore
from pipelines.training_data import to_epoch_us, training_features
from pipelines.transforms.features import ComputeFeatures
from pipelines.transforms.parse import DeadLetter

_RESULTS: dict[str, list[Any]] = {}


class _Collect(beam.DoFn):
    def __init__(self, run: str, kind: str) -> None:
        self.run = run
        self.kind = kind

    def process(self, element: Any) -> None:
        _RESULTS.setdefault(f"{self.run}/{self.kind}", []).append(element)


def events_of(frame: pd.DataFrame) -> tuple[list[Transaction], list[Label]]:
    t = to_epoch_us(frame["TX_DATETIME"])
    txs, labels = [], []
    for i, row in enumerate(frame.itertuples(index=False)):
        tx_id, c, k = str(row.TRANSACTION_ID), str(row.CUSTOMER_ID), str(row.TERMINAL_ID)
        txs.append(
            Transaction(tx_id, int(t[i]), c, k, float(row.TX_AMOUNT), message_id=f"t{tx_id}")
        )
        labels.append(Label(tx_id, int(t[i]), c, k, int(row.TX_FRAUD), message_id=f"l{tx_id}"))
    return txs, labels


def run_stages(
    rounds: Sequence[Sequence[Transaction | Label]], label_wait_s: float = 300.0
) -> tuple[dict[str, tuple[int, np.ndarray]], list[DeadLetter], InMemoryStore]:
    """Runs ComputeFeatures over ``rounds`` of events (each round one TestStream step, so one
    or more bundles); returns per transaction id its latest (revision, features), the dead
    letters and the store."""
    run = uuid.uuid4().hex
    store = InMemoryStore(run)
    stream = TestStream()
    for events in rounds:
        stream = stream.add_elements(list(events)).advance_processing_time(1)
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        events = p | stream
        txs = events | "Txs" >> beam.Filter(lambda e: isinstance(e, Transaction))
        lbs = events | "Labels" >> beam.Filter(lambda e: isinstance(e, Label))
        out = (txs, lbs) | ComputeFeatures(store, max_batch_size=64, label_wait_s=label_wait_s)
        _ = out.batches | "B" >> beam.ParDo(_Collect(run, "batches"))
        _ = out.dead_letters | "D" >> beam.ParDo(_Collect(run, "dead"))
    latest: dict[str, tuple[int, np.ndarray]] = {}
    batch: FeatureBatch
    for batch in _RESULTS.pop(f"{run}/batches", []):
        for i, tx in enumerate(batch.transactions):
            seen = latest.get(tx.transaction_id)
            if seen is None or batch.revision > seen[0]:
                latest[tx.transaction_id] = (batch.revision, batch.features[i])
    return latest, _RESULTS.pop(f"{run}/dead", []), store


@pytest.fixture(scope="module")
def small(tiny_frame: pd.DataFrame) -> pd.DataFrame:
    """The first 400 transactions of the tiny preset: every kind of window, quick to run."""
    return tiny_frame.sort_values("TX_DATETIME").head(400).reset_index(drop=True)


def assert_exact(latest: dict[str, tuple[int, np.ndarray]], frame: pd.DataFrame) -> None:
    expected = training_features(frame).set_index("TRANSACTION_ID")
    assert sorted(latest) == sorted(str(i) for i in expected.index)
    got = np.array([latest[str(i)][1] for i in expected.index])
    want = expected[list(MODEL_INPUTS)].to_numpy()
    bad = np.argwhere(got != want)
    assert len(bad) == 0, f"{len(bad)} feature values differ, first {bad[:5]}"


def test_in_order_stream_is_exact(small: pd.DataFrame) -> None:
    txs, labels = events_of(small)
    stream = sorted(
        [(t.event_time_us, 1, t) for t in txs]
        + [(lb.event_time_us + 7 * DAY_US, 0, lb) for lb in labels],
        key=lambda e: (e[0], e[1]),
    )
    ordered = [e[2] for e in stream]
    rounds = [ordered[i : i + 50] for i in range(0, len(ordered), 50)]
    latest, dead, _ = run_stages(rounds)
    assert dead == []
    assert_exact(latest, small)


def test_shuffled_stream_with_redeliveries_is_exact(small: pd.DataFrame) -> None:
    txs, labels = events_of(small)
    rng = random.Random(7)
    events: list[Transaction | Label] = [*txs, *labels]
    events += rng.sample(txs, 40) + rng.sample(labels, 40)  # redeliveries of the same messages
    rng.shuffle(events)
    rounds = [events[i : i + 37] for i in range(0, len(events), 37)]
    latest, dead, _ = run_stages(rounds)
    assert dead == []
    assert_exact(latest, small)
