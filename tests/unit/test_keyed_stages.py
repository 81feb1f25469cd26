"""The keyed feature stages (IndexIds, CustomerWindows, TerminalWindows) on the DirectRunner with
TestStream and the in-memory store: no emulator. Whatever the arrival order, batching, ties and
redeliveries, the latest revision of every transaction's features equals the brute-force batch
computation (pipelines.core.training_data, the engine over everything)."""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from pipelines.backfill.backfill import state_writes
from pipelines.core.batches import FeatureBatch
from pipelines.core.declarations import Definitions, load_definitions
from pipelines.core.definitions import DAY_US, ENTITIES, MODEL_INPUTS, window_features
from pipelines.core.engine import EventColumns, features_for
from pipelines.core.messages import DeadLetter
from pipelines.core.schema import Label, Transaction
from pipelines.core.training_data import to_epoch_us, training_features
from pipelines.stores.window_store import InMemoryStore
from pipelines.transforms.features import ComputeFeatures
from pipelines.transforms.id_index import ACCEPTED_LABELS, IndexIdsFn
from tests.events import handbook_label, handbook_tx

HANDBOOK_STREAMS = (load_definitions().events, load_definitions().labels)

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
            handbook_tx(tx_id, int(t[i]), c, k, float(row.TX_AMOUNT), message_id=f"t{tx_id}")
        )
        labels.append(
            handbook_label(tx_id, int(t[i]), c, k, int(row.TX_FRAUD), message_id=f"l{tx_id}")
        )
    return txs, labels


def pending(waiting: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """The waiting labels not yet expired: an expired one stays, marked with the timer round
    that expired it, until the key's next round deletes it (pipelines/transforms/id_index.py)."""
    out = {
        tx_id: sorted(k for k, r in entries.items() if "expired_round" not in r)
        for tx_id, entries in waiting.items()
    }
    return {tx_id: keys for tx_id, keys in out.items() if keys}


class StageRun(NamedTuple):
    latest: dict[str, tuple[int, np.ndarray]]  # per transaction id: (revision, features)
    dead: list[DeadLetter]
    store: Any
    corrections: int


def run_stages(
    rounds: Sequence[Sequence[Transaction | Label]],
    label_wait_s: float = 300.0,
    key_buckets: int = 0,
    store: Any = None,
    idle_s: float = 0.0,
    horizon_s: float | None = None,
    definitions: Definitions | None = None,
) -> StageRun:
    """Runs ComputeFeatures over ``rounds`` of events (each round one TestStream step, so one
    or more bundles)."""
    run = uuid.uuid4().hex
    store = store or InMemoryStore(run)
    stream = TestStream()
    for events in rounds:
        stream = stream.add_elements(list(events)).advance_processing_time(1)
    if idle_s:
        # Processing-time timers are set on the wall clock; the test clock starts at 0.
        stream = stream.advance_processing_time(int(time.time() + idle_s))
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        events = p | stream
        txs = events | "Txs" >> beam.Filter(lambda e: isinstance(e, Transaction))
        lbs = events | "Labels" >> beam.Filter(lambda e: isinstance(e, Label))
        out = (txs, lbs) | ComputeFeatures(
            store,
            max_batch_size=64,
            label_wait_s=label_wait_s,
            key_buckets=key_buckets,
            correction_horizon_s=horizon_s,
            definitions=definitions if definitions is not None else load_definitions(),
        )
        _ = out.batches | "B" >> beam.ParDo(_Collect(run, "batches"))
        _ = out.dead_letters | "D" >> beam.ParDo(_Collect(run, "dead"))
    latest: dict[str, tuple[int, np.ndarray]] = {}
    corrections = 0
    batch: FeatureBatch
    for batch in _RESULTS.pop(f"{run}/batches", []):
        corrections += len(batch) if batch.correction else 0
        for i, tx in enumerate(batch.transactions):
            seen = latest.get(tx.transaction_id)
            revision = batch.row_revision(i)
            assert seen is None or revision != seen[0], "two computations, one revision"
            if seen is None or revision > seen[0]:
                latest[tx.transaction_id] = (revision, batch.features[i])
    return StageRun(latest, _RESULTS.pop(f"{run}/dead", []), store, corrections)


class Warm(NamedTuple):
    """A stretch of the tiny preset streamed over a store warmed with the days before it."""

    frame: pd.DataFrame  # everything up to the stretch's end (the batch oracle's input)
    stretch: pd.DataFrame  # the transactions streamed
    until_us: int


@pytest.fixture(scope="module")
def warm(tiny_frame: pd.DataFrame) -> Warm:
    """Days 14-17 of the tiny preset (~240 transactions) over the backfilled state of days 0-14:
    the terminal risk windows (7 days late) and the labels matter (about a third of the
    stretch has a non-zero risk feature), without a long replay."""
    frame = tiny_frame.sort_values("TX_DATETIME").reset_index(drop=True)
    start = frame.TX_DATETIME.min().normalize()
    until = start + pd.Timedelta(days=14)
    frame = frame[frame.TX_DATETIME < start + pd.Timedelta(days=17)].reset_index(drop=True)
    stretch = frame[frame.TX_DATETIME >= until].reset_index(drop=True)
    return Warm(frame, stretch, int(to_epoch_us(pd.Series([until]))[0]))


def warmed_store(warm: Warm) -> InMemoryStore:
    """An in-memory store holding what the backfill writes up to the stretch's start."""
    store = InMemoryStore(uuid.uuid4().hex)
    history = warm.frame[warm.frame.TX_DATETIME < warm.stretch.TX_DATETIME.min()]
    t = to_epoch_us(history.TX_DATETIME)
    ids = history.TRANSACTION_ID.astype(str).to_numpy()
    customers = history.CUSTOMER_ID.astype(str).to_numpy()
    terminals = history.TERMINAL_ID.astype(str).to_numpy()
    tx = EventColumns(ids, customers, terminals, t, history.TX_AMOUNT.to_numpy(np.float64))
    labels = EventColumns(ids, customers, terminals, t, history.TX_FRAUD.to_numpy(np.float64))
    for entity in ENTITIES:
        features = window_features(entity)
        matrix = features_for(tx, labels=labels, features=features)
        store.apply(state_writes(entity, tx, labels, matrix, warm.until_us, features))
    return store


def assert_exact(
    latest: dict[str, tuple[int, np.ndarray]],
    frame: pd.DataFrame,
    compared: pd.DataFrame | None = None,
    min_risk_share: float = 0.0,
) -> None:
    """The latest features of every transaction of ``compared`` (default: all of ``frame``)
    equal the batch computation over ``frame``; at least ``min_risk_share`` of them have a
    non-zero terminal risk feature (so the comparison sees the terminal stage)."""
    compared = frame if compared is None else compared
    expected = training_features(frame).set_index("TRANSACTION_ID")
    expected = expected.loc[compared.TRANSACTION_ID]
    assert sorted(latest) == sorted(str(i) for i in expected.index)
    got = np.array([latest[str(i)][1] for i in expected.index])
    want = expected[list(MODEL_INPUTS)].to_numpy()
    bad = np.argwhere(got != want)
    assert len(bad) == 0, f"{len(bad)} feature values differ, first {bad[:5]}"
    risk = [i for i, name in enumerate(MODEL_INPUTS) if name.startswith("TERMINAL_ID_RISK")]
    share = float((got[:, risk] > 0).any(axis=1).mean())
    assert share >= min_risk_share, f"only {share:.1%} of the rows have a terminal risk feature"


@pytest.mark.parametrize("buckets", [0, 3])
def test_in_order_stream_is_exact(warm: Warm, buckets: int) -> None:
    txs, labels = events_of(warm.stretch)
    stream = sorted(
        [(t.event_time_us, 1, t) for t in txs]
        + [(lb.event_time_us + 7 * DAY_US, 0, lb) for lb in labels],
        key=lambda e: (e[0], e[1]),
    )
    ordered = [e[2] for e in stream]
    rounds = [ordered[i : i + 50] for i in range(0, len(ordered), 50)]
    latest, dead, _, _ = run_stages(rounds, key_buckets=buckets, store=warmed_store(warm))
    assert dead == []
    assert_exact(latest, warm.frame, warm.stretch, min_risk_share=0.02)


@pytest.mark.parametrize("buckets", [0, 5])
def test_shuffled_stream_with_redeliveries_is_exact(warm: Warm, buckets: int) -> None:
    txs, labels = events_of(warm.stretch)
    rng = random.Random(7)
    events: list[Transaction | Label] = [*txs, *labels]
    events += rng.sample(txs, 40) + rng.sample(labels, 40)  # redeliveries of the same messages
    rng.shuffle(events)
    rounds = [events[i : i + 37] for i in range(0, len(events), 37)]
    latest, dead, _, _ = run_stages(rounds, key_buckets=buckets, store=warmed_store(warm))
    assert dead == []
    assert_exact(latest, warm.frame, warm.stretch, min_risk_share=0.02)


def _frame(rows: list[tuple[int, str, str, str, float, int]]) -> pd.DataFrame:
    """A simulate()-style frame: (id, time µs, customer, terminal, amount, fraud)."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": [r[0] for r in rows],
            "TX_DATETIME": pd.to_datetime([r[1] for r in rows], unit="us"),
            "CUSTOMER_ID": [int(r[2]) for r in rows],
            "TERMINAL_ID": [int(r[3]) for r in rows],
            "TX_AMOUNT": [r[4] for r in rows],
            "TX_FRAUD": [r[5] for r in rows],
        }
    )


T0 = 1_522_540_800_000_000  # 2018-04-01


def test_ties_and_exact_window_edges_arriving_backwards() -> None:
    """Transactions at the same instant (ties broken by id), exactly one day, 7 days and 37 days
    apart (window edges), delivered newest first, one per bundle: every correction lands."""
    rows = [
        (1, T0, "1", "1", 10.0, 1),
        (2, T0, "1", "1", 20.0, 0),  # tie with 1
        (3, T0 + DAY_US, "1", "1", 30.0, 0),  # exactly one day after: 1 and 2 leave its window
        (4, T0 + 7 * DAY_US, "1", "1", 40.0, 0),  # 1 and 2 enter the delayed terminal window
        (5, T0 + 8 * DAY_US, "1", "1", 50.0, 1),
        (6, T0 + 37 * DAY_US, "1", "1", 60.0, 0),  # 1 and 2 leave the 30-day delayed window
        (7, T0 + 37 * DAY_US, "1", "1", 70.0, 0),
        (8, T0 + 38 * DAY_US, "2", "1", 80.0, 0),
    ]
    frame = _frame(rows)
    txs, labels = events_of(frame)
    events: list[Transaction | Label] = [*reversed(txs), *reversed(labels)]
    latest, dead, _, _ = run_stages([[e] for e in events])
    assert dead == []
    assert_exact(latest, frame)


def test_labels_before_their_transaction_wait_and_are_recorded() -> None:
    rows = [(i, T0 + i * 3_600_000_000, "1", "1", 10.0 + i, i % 2) for i in range(1, 6)]
    rows += [(9, T0 + 9 * DAY_US, "1", "1", 99.0, 0)]  # its terminal risk needs labels 1..5
    frame = _frame(rows)
    txs, labels = events_of(frame)
    latest, dead, store, _ = run_stages([labels, txs])
    assert dead == []
    assert_exact(latest, frame)
    assert store.waiting == {}  # every wait was settled by its transaction


def test_unknown_transaction_and_duplicates_are_dead_lettered() -> None:
    rows = [(1, T0, "1", "1", 10.0, 0), (2, T0 + 60_000_000, "1", "2", 20.0, 1)]
    frame = _frame(rows)
    txs, labels = events_of(frame)
    ghost = handbook_label("77", T0, "1", "1", 1, message_id="ghost")
    conflicting = handbook_tx("1", T0, "5", "9", 11.0, message_id="second")  # reuses id 1
    contradicting = handbook_label("2", T0, "1", "2", 0, message_id="liar")  # wrong time for tx 2
    events: list[Transaction | Label] = [ghost, *txs, conflicting, *labels, contradicting]
    latest, dead, store, _ = run_stages([events], label_wait_s=0.5, idle_s=5)
    reasons = sorted((d.reason, d.message_id) for d in dead)
    assert reasons == [
        ("duplicate_transaction_id", "second"),
        ("label_mismatch", "liar"),
        ("unknown_transaction", "ghost"),
    ]
    assert_exact(latest, frame)  # the rejected messages changed nothing
    assert pending(store.waiting) == {}
    assert store.ids["77"].label is not None and store.ids["77"].label.get("x") == ["ghost"]


def _window_rates(dead: Sequence[DeadLetter], predictions: int) -> dict[str, float | None]:
    """The data-quality rates the Monitor's BundleStats and judge compute for a window of
    ``predictions`` predictions and these dead letters."""
    from pipelines.transforms import monitoring

    fn = monitoring._BundleStats()
    fn.start_bundle()
    fn._stats.counts[monitoring.PREDICTIONS] += predictions
    for dl in dead:
        fn.process(dl)
    ((_, row),) = [w.value for w in fn.finish_bundle()]
    return monitoring.quality_rates(monitoring.Stats.from_row(row))


def test_a_restart_replay_of_rejected_messages_is_a_redelivery_in_no_rate() -> None:
    """A job dead-letters a conflicting duplicate, an exact copy (a new message with the same
    content), a label whose transaction never came, a contradicting label and a second copy of
    a label; it is restarted and its input replayed
    (the same Pub/Sub messages: same ids, same payloads). The replayed rejections are published
    again (delivery is at least once) but marked ``redelivered``, and the window of the replay
    has no duplicate or dead-letter rate from them; the first job's window counts the conflicting
    duplicate only as a duplicate (the exact copy is no id reused with another payload)."""
    rows = [(1, T0, "1", "1", 10.0, 0), (2, T0 + 60_000_000, "1", "2", 20.0, 1)]
    frame = _frame(rows)
    txs, labels = events_of(frame)
    conflicting = handbook_tx("1", T0, "5", "9", 11.0, message_id="second")
    copy = dataclasses.replace(txs[1], message_id="copy", publish_time_us=0)
    ghost = handbook_label("77", T0, "1", "1", 1, message_id="ghost")
    liar = handbook_label("2", T0, "1", "2", 0, message_id="liar")  # wrong time for transaction 2
    late = dataclasses.replace(
        labels[0], message_id="again", publish_time_us=labels[0].publish_time_us + 1
    )
    events: list[Transaction | Label] = [*txs, conflicting, copy, *labels, ghost, liar, late]
    store = InMemoryStore(uuid.uuid4().hex)
    _, first, _, _ = run_stages([events], label_wait_s=0.5, idle_s=5, store=store)
    assert sorted((d.reason, d.message_id, d.exact_copy, d.redelivered) for d in first) == [
        ("duplicate_label", "again", True, False),
        ("duplicate_transaction_id", "copy", True, False),
        ("duplicate_transaction_id", "second", False, False),
        ("label_mismatch", "liar", False, False),
        ("unknown_transaction", "ghost", False, False),
    ]
    first_rates = _window_rates(first, predictions=2)
    assert first_rates["duplicate_rate"] == pytest.approx(1 / 7)  # "second" only
    assert first_rates["dead_letter_rate"] == pytest.approx(5 / 7)

    latest, again, _, _ = run_stages([events], label_wait_s=0.5, idle_s=5, store=store)
    assert sorted((d.reason, d.message_id, d.redelivered) for d in again) == [
        ("duplicate_label", "again", True),
        ("duplicate_transaction_id", "copy", True),
        ("duplicate_transaction_id", "second", True),
        ("label_mismatch", "liar", True),
        ("unknown_transaction", "ghost", True),
    ]
    rates = _window_rates(again, predictions=2)
    assert rates["duplicate_rate"] == 0 and rates["dead_letter_rate"] == 0
    assert not rates["unknown_label_rate"]  # None: no label rejected in the window
    assert_exact(latest, frame)
    # A new message reusing the id after the restart is a new duplicate, counted.
    third = handbook_tx("1", T0, "5", "9", 12.0, message_id="third")
    _, late, _, _ = run_stages([[third]], store=store)
    assert [(d.message_id, d.redelivered) for d in late] == [("third", False)]


def test_a_retried_work_item_rejects_as_its_failed_attempt_did() -> None:
    """Dataflow runs a work item again after its side effects: the failed attempt already
    wrote the duplicate's message id on the transaction's record. The retry (same committed
    fence) must dead-letter it as the first attempt did, not as a redelivery (which no rate
    counts); only a later work item's replay of it is a redelivery."""
    from tests.unit.dofn_state import Harness

    store = InMemoryStore(uuid.uuid4().hex)
    fn = IndexIdsFn(
        store, 1, streams=HANDBOOK_STREAMS
    )  # a batch per element: its outputs come from process
    fn.setup()
    harness = Harness(fn)

    def attempt(event: Transaction) -> list[tuple[str, bool]]:
        fn.start_bundle()
        out = harness.process("k", event) + list(fn.finish_bundle())
        dead = [o.value for o in out if getattr(o, "tag", None) == "dead_letter"]
        return [(d.message_id, d.redelivered) for d in dead]

    assert attempt(handbook_tx("1", T0, "1", "1", 10.0, message_id="first")) == []
    duplicate = handbook_tx("1", T0, "5", "9", 11.0, message_id="second")
    committed = harness.cells["fence"].read()
    assert attempt(duplicate) == [("second", False)]  # its commit fails:
    harness.cells["fence"].write(committed)  # the runner keeps the committed state
    assert attempt(duplicate) == [("second", False)]  # the retry: the same output
    assert attempt(duplicate) == [("second", True)]  # a later replay: a redelivery


def test_waiting_labels_survive_a_restart() -> None:
    """A job stops while labels wait; the next job (same store) re-arms their timers at start
    (RestoreWaits): one transaction arrives and its label is recorded, the other never comes and
    its label is dead-lettered."""
    rows = [(1, T0, "1", "1", 10.0, 1), (3, T0 + 8 * DAY_US - 3_600_000_000, "1", "1", 30.0, 0)]
    frame = _frame(rows)  # transaction 3's 1-day terminal risk window holds transaction 1
    txs, labels = events_of(frame)
    ghost = handbook_label(
        "2", T0 + 1000, "1", "1", 0, message_id="l2"
    )  # its transaction never comes
    store = InMemoryStore(uuid.uuid4().hex)
    _, dead, _, _ = run_stages([[labels[0], ghost]], label_wait_s=0.5, store=store)
    assert dead == [] and len(store.waiting) == 2
    latest, dead, _, _ = run_stages([txs], label_wait_s=0.5, idle_s=5, store=store)
    assert [(d.reason, d.message_id) for d in dead] == [("unknown_transaction", "l2")]
    assert pending(store.waiting) == {}
    assert_exact(latest, frame)  # label 1, recorded after the restart, counts for transaction 3
    risk = MODEL_INPUTS.index("TERMINAL_ID_RISK_1DAY_WINDOW")
    assert latest["3"][1][risk] == 1.0


def test_a_label_recorded_by_a_failed_attempt_is_emitted_again_by_the_retry() -> None:
    """The id index's attempt wrote its rows (the waiting label recorded, its wait deleted) and
    failed before the runner committed its outputs. The retry sees the transaction as a
    redelivery: it must still send the recorded label on, or the terminal's risk windows never
    count it (issue 21, item 1)."""
    rows = [(1, T0, "1", "1", 10.0, 1), (9, T0 + 9 * DAY_US, "1", "1", 99.0, 0)]
    frame = _frame(rows)
    txs, labels = events_of(frame)
    store = InMemoryStore(uuid.uuid4().hex)
    run_stages([labels[:1]], store=store)  # label 1 waits for its transaction
    # The failed attempt: the id index alone, its outputs dropped.
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | beam.Create([(t.transaction_id, t) for t in txs])
            | beam.ParDo(IndexIdsFn(store, 64, streams=HANDBOOK_STREAMS)).with_outputs(
                ACCEPTED_LABELS, main="txs"
            )
        )
    assert store.ids["1"].label["s"] == "recorded" and store.waiting == {}
    latest, dead, _, _ = run_stages([txs], store=store)  # the retry
    assert dead == []
    risk = MODEL_INPUTS.index("TERMINAL_ID_RISK_7DAY_WINDOW")
    assert latest["9"][1][risk] == 1.0
    assert_exact(latest, frame)


def test_an_event_beyond_the_lateness_horizon_updates_the_store_without_corrections() -> None:
    """A transaction arriving two days after later ones of its customer: with a one-day horizon it
    is stored (the next transaction counts it) but the ones before it are not corrected."""
    rows = [
        (1, T0 + 3 * DAY_US, "1", "1", 10.0, 0),
        (2, T0, "1", "2", 20.0, 0),  # late by three days
        (3, T0 + 3 * DAY_US + 60_000_000, "1", "3", 30.0, 0),
    ]
    frame = _frame(rows)
    txs, _ = events_of(frame)
    latest, dead, _, corrections = run_stages([[t] for t in txs], horizon_s=86_400.0)
    assert dead == [] and corrections == 0
    count_7d = MODEL_INPUTS.index("CUSTOMER_ID_NB_TX_7DAY_WINDOW")
    assert latest["1"][1][count_7d] == 1.0  # not corrected: 2 came beyond the horizon
    assert latest["3"][1][count_7d] == 3.0  # computed after 2 was stored: counts it
    # Within the horizon the same stream is corrected.
    latest, _, _, corrections = run_stages([[t] for t in txs], horizon_s=4 * 86_400.0)
    assert corrections == 1 and latest["1"][1][count_7d] == 2.0
