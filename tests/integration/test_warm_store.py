"""rillet features warm on Bigtable (pipelines/backfill/warm.py): the fields old cells lack are
filled in place at each cell's own version, so a newer version a running job wrote meanwhile stays
the newest; a new entity gets its rows; a cell still lacking the field fails the read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.new_feature import without_field

pytestmark = pytest.mark.integration

TABLE = "warm-store"
T0 = 1_526_000_000_000_000  # 2018-05-11, µs
FENCE = 1_700_000_000_000_000  # a running job's fence (ms-aligned, above event times)
BUCKET_US = 900_000_000


def _event(i: int, t_us: int) -> dict[str, object]:
    return {
        "transaction_id": f"t{i}",
        "tx_time": t_us,
        "card_id": "c1",
        "card_country": "FR",
        "merchant_id": f"m{i % 2}",
        "merchant_category": "grocery",
        "country": "FR",
        "channel": "pos",
        "device_id": f"d{i % 3}",
        "amount": 10.0 + i,
    }


def test_warm_fills_in_place_and_keeps_newer_versions(emulators: dict[str, str]) -> None:
    from pipelines.app.local import environment
    from pipelines.app.payments_simulator import DEFINITIONS
    from pipelines.backfill.warm import warm_store
    from pipelines.core.declarations import load_definitions, parse_definitions
    from pipelines.core.window_cells import Layout
    from pipelines.core.window_state import Bucket
    from pipelines.stores.bigtable import FeatureStore, StoreConfig, create_table
    from pipelines.stores.window_store import (
        BucketWrite,
        EntityHead,
        StoredCell,
        UnwarmedCell,
        Writes,
    )

    new = load_definitions(DEFINITIONS)
    old = parse_definitions(
        without_field(yaml.safe_load(Path(DEFINITIONS).read_text()), "device_id")
    )
    events = [_event(i, T0 + i * BUCKET_US) for i in range(4)]  # one bucket each
    old_card = Layout.of(old, old.entity("card"))
    new_card = Layout.of(new, new.entity("card"))
    config = StoreConfig("rillet-local", "rillet", TABLE)
    with environment(emulators):
        create_table(config)
        store = FeatureStore(config)
        writes = Writes()
        for e in events:
            t = int(e["tx_time"])  # type: ignore[call-overload]
            cells = {str(e["transaction_id"]): old_card.cell(e, revision=FENCE)}
            summary = Bucket(old_card, cells, {}).summary()
            writes.buckets.append(
                BucketWrite(old_card, "c1", t // BUCKET_US, cells, {}, summary, FENCE)
            )
        # The stream's head: it wrote the entity (a warm fills its cells, never rewrites it).
        first_bucket = T0 // BUCKET_US
        writes.heads.append((old.entity("card"), "c1", EntityHead(first_bucket, 4), FENCE))
        store.apply(writes)
        last = (("c1", int(events[3]["tx_time"]) // BUCKET_US),)  # type: ignore[call-overload]
        with pytest.raises(UnwarmedCell, match="device_id"):
            store.read_buckets(new_card, list(last), labels=False)
        scanned, archives = store.scan_cells(new_card)
        assert sorted(c.tx_id for c in scanned) == ["t0", "t1", "t2", "t3"] and archives == []
        assert {c.timestamp_us for c in scanned} == {FENCE}
        assert {c.lacking for c in scanned} == {("device_id",)}
        # The running job rewrites t3 (a newer version) after the scan, before the rewrite.
        e3 = events[3]
        cells = {"t3": old_card.cell(e3, revision=FENCE + 5000)}
        store.apply(
            Writes(
                buckets=[
                    BucketWrite(
                        old_card,
                        "c1",
                        last[0][1],
                        cells,
                        {},
                        Bucket(old_card, cells, {}).summary(),
                        FENCE + 5000,
                    )
                ]
            )
        )
        device = new_card.fields.index("device_id")

        def with_device(c: StoredCell) -> StoredCell:
            values = list(c.cell.values)
            values[device] = events[int(c.tx_id[1:])]["device_id"]
            return c._replace(cell=c.cell._replace(values=tuple(values)), lacking=())

        filled = [with_device(c) for c in scanned]
        store.rewrite_cells(new_card, filled, [])
        first_three = [("c1", int(e["tx_time"]) // BUCKET_US) for e in events[:3]]  # type: ignore[call-overload]
        read = store.read_buckets(new_card, first_three, labels=False)
        got = {tx: cell for b in read.values() for tx, cell in b.tx.items()}
        assert {tx: c.values[device] for tx, c in got.items()} == {
            "t0": "d0",
            "t1": "d1",
            "t2": "d2",
        }
        assert {c.revision for c in got.values()} == {FENCE}  # the stream's revision kept
        with pytest.raises(UnwarmedCell):  # the newer version stays the newest, unwarmed
            store.read_buckets(new_card, list(last), labels=False)
        # warm_store fills what is left and creates the card x device entity.
        history = {
            f.name: np.array(
                [e[f.name] for e in events],
                dtype=np.int64
                if f.name == "tx_time"
                else (np.float64 if f.type == "number" else object),
            )
            for f in new.events.fields
        }
        report = warm_store(new, store, history, None)
        assert report.filled["card"] == 1 and report.created["card_device"] == 4
        assert (
            store.read_buckets(new_card, list(last), labels=False)[last[0]].tx["t3"].revision
            == FENCE + 5000
        )
        pair = Layout.of(new, new.entity("card_device"))
        heads = store.read_heads(pair, ["c1#d0", "c1#d1", "c1#d2"])
        assert sorted(heads) == ["c1#d0", "c1#d1", "c1#d2"]
