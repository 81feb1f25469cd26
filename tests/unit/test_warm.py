"""A feature added to a running system that reads a field the stored cells do not hold
(pipelines/backfill/warm.py): the payments file without ``device_id`` runs first; the full file
adds a distinct count of the device per card (old card cells lack the field) and the card x device
entity (no stored rows). Without the warm, the new job's read fails naming the field; after it,
the stages of the full file equal the brute-force oracle bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bench.new_feature import without_field
from pipelines.app.payments_simulator import DEFINITIONS, PRESETS, simulate
from pipelines.app.publisher import replay_events
from pipelines.backfill.warm import warm_store
from pipelines.core.declarations import Definitions, load_definitions, parse_definitions
from pipelines.core.definitions import DAY_US
from pipelines.core.schema import EventParser, Label, Transaction
from pipelines.core.window_cells import Layout
from pipelines.stores.window_store import InMemoryStore, UnwarmedCell
from tests.oracle import oracle_features
from tests.unit.test_keyed_stages import run_stages
from tests.unit.test_stages_definitions import _columns, _rows


@pytest.fixture(scope="module")
def files() -> tuple[Definitions, Definitions]:
    data = yaml.safe_load(Path(DEFINITIONS).read_text())
    return parse_definitions(without_field(data, "device_id"), "before"), load_definitions(
        DEFINITIONS
    )


@pytest.fixture(scope="module")
def events(files: tuple[Definitions, Definitions]) -> list[Transaction | Label]:
    """16 cards of the tiny preset (half with frauds), as the full file's stream parses them,
    in due order (a label when its delay has passed)."""
    full = files[1]
    assert full.labels is not None
    frame = simulate(PRESETS["tiny"])
    fraud = sorted(frame.loc[frame.is_fraud == 1, "card_id"].unique())[:8]
    clean = sorted(set(frame.card_id) - set(frame.loc[frame.is_fraud == 1, "card_id"]))[:8]
    subset = frame[frame.card_id.isin([*fraud, *clean])].reset_index(drop=True)
    parsers = {"transactions": EventParser(full.events), "labels": EventParser(full.labels)}
    out = [
        parsers[e.topic].parse(e.data, message_id=f"{e.topic[0]}{i}")
        for i, e in enumerate(replay_events(subset, full))
    ]
    delay = 3 * DAY_US

    def due(e: Transaction | Label) -> int:
        return e.event_time_us + (delay if isinstance(e, Label) else 0)

    return sorted(out, key=lambda e: (due(e), isinstance(e, Transaction)))


def _strip(e: Transaction | Label) -> Transaction | Label:
    """The event as the stream of the file without device_id parses it."""
    fields = {k: v for k, v in e.fields.items() if k != "device_id"}
    if isinstance(e, Transaction):
        return Transaction(e.transaction_id, e.event_time_us, fields, 0, e.message_id)
    return Label(e.transaction_id, e.event_time_us, fields, e.is_fraud, 0, e.message_id)


def _split(events: list[Any]) -> tuple[list[Any], list[Any]]:
    txs = [e for e in events if isinstance(e, Transaction)]
    split = txs[len(txs) * 2 // 3].event_time_us
    due = [e.event_time_us + (3 * DAY_US if isinstance(e, Label) else 0) for e in events]
    before = [e for e, d in zip(events, due, strict=True) if d < split]
    after = [e for e, d in zip(events, due, strict=True) if d >= split]
    return before, after


def _rounds(events: list[Any]) -> list[list[Any]]:
    return [events[i : i + 60] for i in range(0, len(events), 60)]


def test_without_field_drops_the_field_its_entity_and_its_readers(
    files: tuple[Definitions, Definitions],
) -> None:
    before, full = files
    assert "device_id" not in before.events.names
    assert [e.name for e in before.entities] == ["card", "merchant", "card_category"]
    assert set(full.names) - set(before.names) == {"CARD_NB_DEVICES_30D", "CARD_DEVICE_NB_TX_30D"}


def test_a_new_field_is_warmed_into_the_running_store(
    files: tuple[Definitions, Definitions], events: list[Any]
) -> None:
    old_defs, new_defs = files
    before, after = _split(events)
    early, late = before[: len(before) // 2], before[len(before) // 2 :]
    old = run_stages(_rounds([_strip(e) for e in early]), definitions=old_defs)
    assert old.dead == []
    store = old.store
    assert isinstance(store, InMemoryStore)
    card = Layout.of(new_defs, new_defs.entity("card"))
    row = next(k for k in store.rows if k[0] == "card")
    # Unwarmed: the new file's read of an old cell fails, naming the field and the fix.
    with pytest.raises(
        UnwarmedCell,
        match=r"lacks the field\(s\) device_id \(read by "
        r"CARD_NB_DEVICES_30D\).*rillet features warm",
    ):
        store.read_buckets(card, [(row[1], row[2])], labels=False)
    # The warm, from the whole history (later events included: only what the job saw counts).
    assert new_defs.labels is not None
    txs, labels = _rows(new_defs, events)
    history = _columns(new_defs.events, txs), _columns(new_defs.labels, labels)
    report = warm_store(new_defs, store, *history)  # while the old job runs
    assert report.filled["card"] == sum(isinstance(e, Transaction) for e in early)
    assert report.filled["merchant"] > 0 and report.missing == {}
    assert report.created["card_device"] == sum(isinstance(e, Transaction) for e in early)
    assert store.read_buckets(card, [(row[1], row[2])], labels=False)
    # The old job goes on (its new cells lack the field), stops; the second pass warms them and
    # writes the new entity again with what the job saw since.
    old = run_stages(_rounds([_strip(e) for e in late]), store=store, definitions=old_defs)
    assert old.dead == []
    second = warm_store(new_defs, store, *history)
    assert second.filled["card"] == sum(isinstance(e, Transaction) for e in late)
    assert second.created["card_device"] == sum(isinstance(e, Transaction) for e in before)
    again = warm_store(new_defs, store, *history)  # idempotent: nothing left to fill
    assert again.filled == {"card": 0, "merchant": 0, "card_category": 0}
    # The job on the new file: every transaction after the change equals the oracle.
    new = run_stages(_rounds(after), store=store, definitions=new_defs)
    assert new.dead == []
    want = np.array(oracle_features(new_defs, txs, labels), dtype=np.float64)
    ids = [str(t["transaction_id"]) for t in txs]
    streamed = [i for i, tx_id in enumerate(ids) if tx_id in new.latest]
    assert len(streamed) == sum(isinstance(e, Transaction) for e in after)
    got = np.array([new.latest[ids[i]][1] for i in streamed])
    bad = np.argwhere(got != want[streamed])
    names = new_defs.names
    assert len(bad) == 0, f"{len(bad)} values differ: " + ", ".join(
        f"{ids[streamed[r]]}/{names[c]}: {got[r, c]!r} != {want[streamed][r, c]!r}"
        for r, c in bad[:5]
    )
    devices = got[:, names.index("CARD_NB_DEVICES_30D")]
    assert (devices > 1).any()  # the warmed history counts: a card's earlier devices
    pairs = got[:, names.index("CARD_DEVICE_NB_TX_30D")]
    assert (pairs > 0).any()


def test_rillet_features_warm_names_a_missing_history(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.app.cli import app

    args = ["features", "warm", "--input", str(tmp_path), "--definitions", str(DEFINITIONS)]
    from pipelines.app.errors import UserError

    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError)  # main() prints it, exit 2
    assert "has no transactions* file" in str(result.exception)
