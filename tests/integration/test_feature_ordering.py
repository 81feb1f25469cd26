"""The keyed feature stages against the real Bigtable emulator (the unit tests run the same
scenarios on the in-memory store): whatever order events reach them in (out-of-order batches,
labels before or long after their transactions, redeliveries), the latest revision of every
transaction's features equals the batch computation; an in-order stream needs no correction; a
restart keeps the labels waiting for their transaction."""

from __future__ import annotations

import random
import uuid

import pandas as pd
import pytest

from pipelines.app.local import LOCAL_PROJECT, environment
from pipelines.core.definitions import DAY_US
from pipelines.core.schema import Label, Transaction
from pipelines.stores.bigtable import FeatureStore, StoreConfig, create_table
from tests.unit.test_keyed_stages import assert_exact, events_of, run_stages

pytestmark = pytest.mark.integration


def fresh_table() -> StoreConfig:
    config = StoreConfig(LOCAL_PROJECT, "rillet", f"ordering-{uuid.uuid4().hex[:8]}")
    create_table(config)
    return config


@pytest.fixture(scope="module")
def week(tiny_frame: pd.DataFrame) -> pd.DataFrame:
    return tiny_frame.sort_values("TX_DATETIME").head(600).reset_index(drop=True)


@pytest.mark.parametrize("buckets", [0, 8])
def test_in_order_stream_needs_no_corrections(
    emulators: dict[str, str], week: pd.DataFrame, buckets: int
) -> None:
    txs, labels = events_of(week)
    due = [(t.event_time_us, 1, t) for t in txs]
    due += [(lb.event_time_us + 7 * DAY_US, 0, lb) for lb in labels]
    ordered = [e[2] for e in sorted(due, key=lambda e: (e[0], e[1]))]
    with environment(emulators):
        run = run_stages(
            [ordered[i : i + 80] for i in range(0, len(ordered), 80)],
            key_buckets=buckets,
            store=fresh_table(),
        )
    assert run.dead == []
    assert run.corrections == 0
    assert_exact(run.latest, week)


def test_out_of_order_batches_with_redeliveries_are_corrected(
    emulators: dict[str, str], week: pd.DataFrame
) -> None:
    txs, labels = events_of(week)
    rng = random.Random(11)
    events: list[Transaction | Label] = [*txs, *labels, *rng.sample(txs, 50)]
    rng.shuffle(events)
    with environment(emulators):
        run = run_stages(
            [events[i : i + 45] for i in range(0, len(events), 45)], store=fresh_table()
        )
    assert run.dead == []
    assert run.corrections > 0
    assert_exact(run.latest, week)


def test_waiting_labels_survive_a_restart(emulators: dict[str, str], week: pd.DataFrame) -> None:
    """Labels arrive first; the job stops; the next job (same table) re-arms their timers at start
    from the ``wait#`` rows: the transactions that come get their labels recorded (exact risk
    features), the label whose transaction never comes is dead-lettered, no ``wait#`` row is
    left."""
    head = week.head(300)
    txs, labels = events_of(head)
    ghost = Label("999999", txs[0].event_time_us, "1", "1", 1, message_id="ghost")
    with environment(emulators):
        config = fresh_table()
        first = run_stages([[*labels, ghost]], label_wait_s=0.5, store=config)
        assert first.dead == []
        store = FeatureStore(config)
        assert len(store.read_waiting()) == len(labels) + 1
        second = run_stages([txs], label_wait_s=0.5, idle_s=5, store=config)
        assert store.read_waiting() == {}
    assert [(d.reason, d.message_id) for d in second.dead] == [("unknown_transaction", "ghost")]
    assert_exact(second.latest, head)
