"""The keyed feature stages against the real Bigtable emulator (the unit tests run the same
scenarios on the in-memory store): whatever order events reach them in (out-of-order batches,
labels before or long after their transactions, redeliveries), the latest revision of every
transaction's features equals the batch computation; an in-order stream needs no correction; a
restart keeps the labels waiting for their transaction.

Each test's table is first warmed with the backfill of the tiny preset's first 12 days (what a job
that had streamed them would have left, as LocalRun.warm_store does), and the stages get the 600
transactions that follow, and their labels. The terminal windows lie 7 days (the label delay)
behind each transaction, so without that history every terminal feature of a short stretch
would be 0 and the comparison could not see the terminal stage: every test checks that at least
2% of the compared rows have a non-zero terminal risk feature (33-39% here)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.app.local import LOCAL_PROJECT, environment
from pipelines.app.simulator import PRESETS, write_dataset
from pipelines.core.definitions import DAY_US, FEATURES, MODEL_INPUTS, WindowFeature
from pipelines.core.schema import Label, Transaction
from pipelines.core.training_data import training_features
from pipelines.stores.bigtable import FeatureStore, StoreConfig, create_table
from tests.events import handbook_label
from tests.unit.test_keyed_stages import events_of, pending, run_stages

pytestmark = pytest.mark.integration

WARM_DAYS = 12
RISK = [
    MODEL_INPUTS.index(f.name) for f in FEATURES if isinstance(f, WindowFeature) and f.needs_labels
]


class Stretch:
    """The tiny preset split at ``WARM_DAYS``: the history (backfilled into each test's table)
    and the 600 transactions after it (streamed through the stages)."""

    def __init__(self, frame: pd.DataFrame, data_dir: Path) -> None:
        ordered = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
        start = pd.Timestamp(PRESETS["tiny"].start_date, tz="UTC") + pd.Timedelta(days=WARM_DAYS)
        after = ordered.TX_DATETIME >= start
        self.history = ordered[~after]
        self.week = ordered[after].head(600).reset_index(drop=True)
        self.until = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.data_dir = data_dir
        write_dataset(self.history, data_dir)

    def warmed_table(self, output_dir: Path) -> StoreConfig:
        """A new table holding the backfill of the history (``--to_bigtable``)."""
        from pipelines.backfill.backfill import run_backfill

        config = StoreConfig(LOCAL_PROJECT, "rillet", f"ordering-{uuid.uuid4().hex[:8]}")
        create_table(config)
        run_backfill(
            str(self.data_dir),
            str(output_dir),
            [
                f"--until={self.until}",
                "--to_bigtable",
                f"--project={config.project}",
                f"--bigtable_instance={config.instance}",
                f"--bigtable_table={config.table}",
            ],
        )
        return config


def assert_exact(
    latest: dict[str, tuple[int, np.ndarray]], stretch: Stretch, frame: pd.DataFrame
) -> None:
    """``frame``'s transactions (some of the stretch) have exactly the batch computation's
    features over the history and the stretch, and the terminal risk windows are seen."""
    everything = pd.concat([stretch.history, stretch.week])
    expected = training_features(everything).set_index("TRANSACTION_ID")
    expected = expected.loc[frame.TRANSACTION_ID]
    assert sorted(latest) == sorted(str(i) for i in expected.index)
    got = np.array([latest[str(i)][1] for i in expected.index])
    want = expected[list(MODEL_INPUTS)].to_numpy()
    bad = np.argwhere(got != want)
    assert len(bad) == 0, f"{len(bad)} feature values differ, first {bad[:5]}"
    risky = float((got[:, RISK] != 0).any(axis=1).mean())
    assert risky >= 0.02, f"only {risky:.1%} of the rows have a non-zero terminal risk feature"


@pytest.fixture(scope="module")
def stretch(tiny_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Stretch:
    return Stretch(tiny_frame, tmp_path_factory.mktemp("ordering-history"))


@pytest.mark.parametrize("buckets", [0, 8])
def test_in_order_stream_needs_no_corrections(
    emulators: dict[str, str], stretch: Stretch, buckets: int, tmp_path: Path
) -> None:
    txs, labels = events_of(stretch.week)
    due = [(t.event_time_us, 1, t) for t in txs]
    due += [(lb.event_time_us + 7 * DAY_US, 0, lb) for lb in labels]
    ordered = [e[2] for e in sorted(due, key=lambda e: (e[0], e[1]))]
    with environment(emulators):
        run = run_stages(
            [ordered[i : i + 80] for i in range(0, len(ordered), 80)],
            key_buckets=buckets,
            store=stretch.warmed_table(tmp_path),
        )
    assert run.dead == []
    assert run.corrections == 0
    assert_exact(run.latest, stretch, stretch.week)


def test_out_of_order_batches_with_redeliveries_are_corrected(
    emulators: dict[str, str], stretch: Stretch, tmp_path: Path
) -> None:
    txs, labels = events_of(stretch.week)
    rng = random.Random(11)
    events: list[Transaction | Label] = [*txs, *labels, *rng.sample(txs, 50)]
    rng.shuffle(events)
    with environment(emulators):
        run = run_stages(
            [events[i : i + 45] for i in range(0, len(events), 45)],
            store=stretch.warmed_table(tmp_path),
        )
    assert run.dead == []
    assert run.corrections > 0
    assert_exact(run.latest, stretch, stretch.week)


@pytest.mark.parametrize("buckets", [0, 8])
def test_waiting_labels_survive_a_restart(
    emulators: dict[str, str], stretch: Stretch, buckets: int, tmp_path: Path
) -> None:
    """Labels arrive first; the job stops; the next job (same table) re-arms their timers at start
    from the ``wait#`` rows: the transactions that come get their labels recorded (exact risk
    features, over the warm history's labels and these), the label whose transaction never
    comes is dead-lettered, no ``wait#`` row is left."""
    head = stretch.week.head(300)
    txs, labels = events_of(head)
    ghost = handbook_label("999999", txs[0].event_time_us, "1", "1", 1, message_id="ghost")
    with environment(emulators):
        config = stretch.warmed_table(tmp_path)
        first = run_stages([[*labels, ghost]], label_wait_s=0.5, key_buckets=buckets, store=config)
        assert first.dead == []
        store = FeatureStore(config)
        assert len(store.read_waiting()) == len(labels) + 1
        second = run_stages([txs], label_wait_s=0.5, idle_s=5, key_buckets=buckets, store=config)
        assert pending(store.read_waiting()) == {}
    assert [(d.reason, d.message_id) for d in second.dead] == [("unknown_transaction", "ghost")]
    assert_exact(second.latest, stretch, head)
