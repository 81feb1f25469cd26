"""backfill --to_bigtable: the feature store's state as of the end of the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.definitions import CUSTOMER, TERMINAL, max_lookback_us
from pipelines.core.training_data import to_epoch_us

pytestmark = pytest.mark.integration

TABLE = "backfill-state"
UNTIL = "2018-04-15"


def test_store_holds_every_event_within_the_lookback_and_the_latest_features(
    emulators: dict[str, str], tiny_frame: pd.DataFrame, tmp_path: Path
) -> None:
    from pipelines.app.local import environment
    from pipelines.app.simulator import write_dataset
    from pipelines.backfill.backfill import parse_until, read_feature_table, run_backfill
    from pipelines.stores.bigtable import FeatureStore, StoreConfig, create_table

    config = StoreConfig("rillet-local", "rillet", TABLE)
    write_dataset(tiny_frame, tmp_path / "in")
    with environment(emulators):
        create_table(config)
        table = read_feature_table(
            run_backfill(
                str(tmp_path / "in"),
                str(tmp_path / "out"),
                [
                    f"--until={UNTIL}",
                    "--to_bigtable",
                    "--project=rillet-local",
                    f"--bigtable_table={TABLE}",
                    "--shards=2",
                ],
            )
        )
        store = FeatureStore(config)
        end = parse_until(UNTIL)
        assert end is not None
        frame = tiny_frame.assign(t_us=to_epoch_us(tiny_frame.TX_DATETIME))
        for entity, other in ((CUSTOMER, "TERMINAL_ID"), (TERMINAL, "CUSTOMER_ID")):
            key = "CUSTOMER_ID" if entity == CUSTOMER else "TERMINAL_ID"
            since = end - max_lookback_us(entity)
            window = frame[(frame.t_us >= since) & (frame.t_us < end)]
            ids = sorted(window[key].astype(str).unique())
            found = store.read_entities(
                entity, ids, 0, 4_102_444_800_000_000, labels=entity == TERMINAL
            )
            got = sorted(
                (tx_id, c.time_us, c.amount, c.other_id)
                for cells in found.values()
                for tx_id, c in cells.tx.items()
            )
            want = sorted(
                zip(
                    window.TRANSACTION_ID.astype(str),
                    window.t_us.astype(int),
                    window.TX_AMOUNT.astype(float),
                    window[other].astype(str),
                    strict=True,
                )
            )
            # Exactly the events a window can still need: nothing older, nothing after the end.
            assert got == want
            if entity == TERMINAL:
                labels = sorted(
                    (tx_id, float(c.is_fraud))
                    for cells in found.values()
                    for tx_id, c in cells.labels.items()
                )
                assert labels == sorted(
                    zip(
                        window.TRANSACTION_ID.astype(str),
                        window.TX_FRAUD.astype(float),
                        strict=True,
                    )
                )
            # The features family holds the entity's latest transaction's features.
            latest = table[table.TX_DATETIME < pd.Timestamp(UNTIL, tz="UTC")]
            latest = latest.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).groupby(key).tail(1)
            sample = latest.iloc[:5]
            stored = store.read_features(entity, [str(v) for v in sample[key]])
            for _, row in sample.iterrows():
                values = stored[str(row[key])]
                assert values and all(
                    np.float64(row[name]) == value for name, value in values.items()
                )


@pytest.mark.parametrize("store_kind", ["bigtable", "in_memory"])
def test_single_cells_win_over_a_snapshot_whichever_was_written_first(
    emulators: dict[str, str], store_kind: str
) -> None:
    from pipelines.app.local import environment
    from pipelines.stores.bigtable import FeatureStore, StoreConfig, create_table
    from pipelines.stores.window_store import (
        EntityCells,
        InMemoryStore,
        LabelCell,
        TxCell,
        WindowStore,
        Writes,
    )

    day = 86_400_000_000
    t0 = 1_530_000_000_000_000
    snapshot = EntityCells(
        {
            "1": TxCell(t0, 10.0, "C1"),
            "2": TxCell(t0 + day, 20.0, "C2"),
            "3": TxCell(t0 + 2 * day, 30.0, "C3"),
        },
        {"1": LabelCell(t0, 0), "2": LabelCell(t0 + day, 1)},
    )
    before = TxCell(t0 + day, 20.0, "C2", revision=4, carried=(1.5,), carried_revision=3)
    after = TxCell(t0 + 2 * day, 30.0, "C3", revision=9)
    with environment(emulators):
        store: WindowStore
        if store_kind == "bigtable":
            config = StoreConfig("rillet-local", "rillet", "snapshot-merge")
            create_table(config)
            store = FeatureStore(config)
        else:
            store = InMemoryStore("snapshot-merge")
        store.apply(Writes(tx_cells=[(TERMINAL, "T1", "2", before)]))
        store.apply(Writes(snapshots=[(TERMINAL, "T1", snapshot)]))
        store.apply(
            Writes(
                tx_cells=[(TERMINAL, "T1", "3", after)],
                label_cells=[("T1", "1", LabelCell(t0, 1))],
            )
        )
        found = store.read_entities(TERMINAL, ["T1"], t0 + day, t0 + 3 * day, labels=True)
    cells = found["T1"]
    assert cells.tx == {"2": before, "3": after}  # "1" is before the range
    assert cells.labels == {"2": LabelCell(t0 + day, 1)}
    with environment(emulators):
        everything = store.read_entities(TERMINAL, ["T1"], 0, t0 + 3 * day, labels=True)["T1"]
    assert everything.tx["1"] == snapshot.tx["1"]
    assert everything.labels["1"] == LabelCell(t0, 1)  # the single label cell won
