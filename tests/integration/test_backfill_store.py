"""backfill --to_bigtable: the feature store's state as of the end of the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.cells import bucket_of
from pipelines.core.definitions import CUSTOMER, TERMINAL, max_lookback_us
from pipelines.core.training_data import to_epoch_us
from tests.events import handbook_cell, handbook_layout, summary_of

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
            layout = handbook_layout(entity.name)
            since = end - max_lookback_us(entity)
            window = frame[(frame.t_us >= since) & (frame.t_us < end)]
            ids = sorted(window[key].astype(str).unique())
            summaries = store.read_summaries(layout, ids, 0)
            found = store.read_buckets(
                layout,
                [(i, b) for i, buckets in summaries.items() for b in buckets],
                labels=entity == TERMINAL,
            )
            # Each bucket's summary is what its cells add up to.
            for (i, b), cells in found.items():
                assert summaries[i][b] == summary_of(layout, cells.tx, cells.labels)
            assert len(found) == sum(len(v) for v in summaries.values())
            other_field = other.lower()
            got = sorted(
                (tx_id, e["tx_datetime"], e["amount"], e[other_field])
                for (entity_id, _), cells in found.items()
                for tx_id, c in cells.tx.items()
                for e in [layout.event(entity_id, tx_id, c)]
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
                    (tx_id, float(c.value))
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
def test_a_cells_newest_version_wins_whatever_order_the_writes_come_in(
    emulators: dict[str, str], store_kind: str
) -> None:
    """A work item whose key moved on (a zombie) writes with an older fence after the key's new
    owner wrote: the store keeps the new owner's cells and summary. The backfill's versions
    (event times) are below every fence."""
    from pipelines.app.local import environment
    from pipelines.stores.bigtable import FeatureStore, StoreConfig, create_table
    from pipelines.stores.window_store import (
        BucketWrite,
        Cell,
        InMemoryStore,
        LabelCell,
        WindowStore,
        Writes,
    )

    t0 = 1_530_000_000_000_000
    b = bucket_of(t0)
    terminal = handbook_layout("terminal")
    backfill = {
        "1": handbook_cell(terminal, t0, 10.0, "C1"),
        "2": handbook_cell(terminal, t0 + 1, 20.0, "C2"),
    }
    newer = {"2": handbook_cell(terminal, t0 + 1, 20.0, "C2", 2_000_000_000_000_002, (1.5,))}
    stale = {"2": handbook_cell(terminal, t0 + 1, 20.0, "C2", 1_000_000_000_000_001)}
    labels = {"1": LabelCell(t0, 1)}

    def write(cells: dict[str, Cell], fence: int | None, with_labels: bool = False) -> Writes:
        lab = labels if with_labels else {}
        summary = summary_of(terminal, {**backfill, **cells}, lab)
        return Writes([BucketWrite(terminal, "T1", b, cells, lab, summary, fence)])

    with environment(emulators):
        store: WindowStore
        if store_kind == "bigtable":
            config = StoreConfig("rillet-local", "rillet", "version-order")
            create_table(config)
            store = FeatureStore(config)
        else:
            store = InMemoryStore("version-order")
        store.apply(write(backfill, None))
        store.apply(write(newer, 2_000_000_000_000_000, with_labels=True))
        store.apply(write(stale, 1_000_000_000_000_000))  # the zombie, after the new owner
        found = store.read_buckets(terminal, [("T1", b)], labels=True)[("T1", b)]
        summaries = store.read_summaries(terminal, ["T1"], b)["T1"]
    assert found.tx == {**backfill, **newer}
    assert found.labels == labels
    assert summaries == {b: summary_of(terminal, {**backfill, **newer}, labels)}
