"""A feature declared on a running system: the store holds bucket summaries written under the
old definitions, which lack the new feature's accumulator. The stages then read those buckets'
cells (``EntityState.incomplete``, loaded by the stage's ``_needed``) instead of answering
without them: the new vectors equal the brute-force oracle of the new file bit for bit.

Dense entities read summaries (sparse ones are read whole, cells and all), so the sparse limit
is lowered here to make every entity of the small stream dense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.core.declarations import DEFAULT_DEFINITIONS, Definitions, parse_definitions
from pipelines.core.definitions import DAY_US
from pipelines.core.schema import Label, Transaction
from pipelines.core.window_state import EntityState
from pipelines.transforms import entity_windows
from pipelines.transforms.entity_windows import EntityWindowsFn
from tests.oracle import oracle_features
from tests.unit.test_keyed_stages import events_of, run_stages

NEW = {"name": "CUSTOMER_ID_MAX_AMOUNT_7DAY_WINDOW", "entity": "customer", "op": "max"}


def _with_new_feature() -> Definitions:
    """The handbook's file with a customer max of the amount (a field its cells already hold,
    so old cells serve; an accumulator part old summaries lack)."""
    data = yaml.safe_load(Path(DEFAULT_DEFINITIONS).read_text())
    data["features"].insert(9, {**NEW, "field": "amount", "window": "7d"})
    return parse_definitions(data, "handbook+max")


def _due(e: Transaction | Label) -> int:
    return e.event_time_us + (7 * DAY_US if isinstance(e, Label) else 0)


def _rows(events: list[Any], defs: Definitions) -> tuple[list[Any], list[Any]]:
    ev = defs.events
    txs = [
        {**e.fields, ev.id_field: e.transaction_id, ev.time_field: e.event_time_us}
        for e in events
        if isinstance(e, Transaction)
    ]
    lb = defs.labels
    assert lb is not None
    labels = [
        {
            **e.fields,
            lb.id_field: e.transaction_id,
            lb.time_field: e.event_time_us,
            lb.label_field: e.is_fraud,
        }
        for e in events
        if isinstance(e, Label)
    ]
    return txs, labels


def test_a_new_feature_reads_the_cells_of_summaries_that_lack_it(
    tiny_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(entity_windows, "SPARSE_CELLS", 4)
    frame = tiny_frame[tiny_frame.CUSTOMER_ID.isin(sorted(tiny_frame.CUSTOMER_ID.unique())[:14])]
    txs, labels = events_of(frame.sort_values("TX_DATETIME").reset_index(drop=True))
    events = sorted([*txs, *labels], key=lambda e: (_due(e), isinstance(e, Transaction)))
    split = min(e.event_time_us for e in txs) + 12 * DAY_US
    before = [e for e in events if _due(e) < split]
    after = [e for e in events if _due(e) >= split]
    old = run_stages([before[i : i + 50] for i in range(0, len(before), 50)])
    assert old.dead == []
    new_defs = _with_new_feature()
    new = run_stages(
        [after[i : i + 50] for i in range(0, len(after), 50)],
        store=old.store,
        definitions=new_defs,
    )
    assert new.dead == []
    tx_rows, label_rows = _rows(events, new_defs)
    want = np.array(oracle_features(new_defs, tx_rows, label_rows), dtype=np.float64)
    ids = [str(r["transaction_id"]) for r in tx_rows]
    streamed = [i for i, tx_id in enumerate(ids) if tx_id in new.latest]
    assert len(streamed) == sum(isinstance(e, Transaction) for e in after)
    got = np.array([new.latest[ids[i]][1] for i in streamed])
    bad = np.argwhere(got != want[streamed])
    assert len(bad) == 0, f"{len(bad)} values differ, first {bad[:5]}"
    col = new_defs.names.index(NEW["name"])
    assert (got[:, col] > 0).all()


def test_the_states_of_the_new_file_see_the_old_summaries_as_incomplete() -> None:
    """What the test above relies on: a summary of the old layout does not hold the new one."""
    from pipelines.core.declarations import load_definitions
    from pipelines.core.window_cells import Layout
    from tests.events import handbook_cell, handbook_layout

    old = handbook_layout("customer")
    new_defs = _with_new_feature()
    new = Layout.of(new_defs, new_defs.entity("customer"))
    state = EntityState(old, 0)
    state.put_tx("1", handbook_cell(old, DAY_US, 5.0, "T1"))
    summary = state.summary(DAY_US // 900_000_000)
    assert summary is not None and summary.holds(old) and not summary.holds(new)
    fresh = EntityState(new, 0, {DAY_US // 900_000_000: summary})
    assert fresh.incomplete() == [DAY_US // 900_000_000]
    assert EntityWindowsFn(new_defs, 0, None, 10).layout == new  # type: ignore[arg-type]
    assert load_definitions().names != new_defs.names
