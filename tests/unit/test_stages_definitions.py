"""The keyed stages of another definitions file than the handbook's: the payments workload
(pipelines/workloads/payments.yaml: four entity stages, composite keys, a label-rate entity
between two others, filters, distinct, last, since_previous, std, derived ratios) on the payments
simulator's tiny preset, replayed shuffled with redeliveries on the DirectRunner. The latest
revision of every transaction's vector equals the brute-force oracle (tests/oracle.py) bit for
bit."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.app.payments_simulator import DEFINITIONS, PRESETS, simulate
from pipelines.app.publisher import replay_events
from pipelines.core.declarations import Definitions, EventStream, load_definitions
from pipelines.core.engine import compute_features
from pipelines.core.schema import EventParser, Label, Transaction
from pipelines.transforms.entity_windows import EntityWindowsFn, stage_entities
from pipelines.transforms.features import stage_labels
from tests.oracle import oracle_features
from tests.unit.test_keyed_stages import run_stages


@pytest.fixture(scope="module")
def payments() -> Definitions:
    return load_definitions(DEFINITIONS)


@pytest.fixture(scope="module")
def events(payments: Definitions) -> list[Transaction | Label]:
    """The tiny preset's events of 24 cards (half of them with frauds, so that the merchants'
    risk windows see labels), as the stream parses them, in due order."""
    frame = simulate(PRESETS["tiny"])
    fraud_cards = sorted(frame.loc[frame.is_fraud == 1, "card_id"].unique())[:12]
    clean = sorted(set(frame.card_id) - set(frame.loc[frame.is_fraud == 1, "card_id"]))[:12]
    subset = frame[frame.card_id.isin([*fraud_cards, *clean])].reset_index(drop=True)
    parsers = {
        "transactions": EventParser(payments.events),
        "labels": EventParser(payments.labels),  # type: ignore[arg-type]
    }
    out = []
    for i, e in enumerate(replay_events(subset, payments)):
        out.append(parsers[e.topic].parse(e.data, message_id=f"{e.topic[0]}{i}"))
    return out


def _rows(defs: Definitions, events: list[Transaction | Label]) -> tuple[list[Any], list[Any]]:
    """The events as the oracle reads them: field name -> value, times in µs."""
    ev, lb = defs.events, defs.labels
    assert lb is not None
    txs = [
        {**e.fields, ev.id_field: e.transaction_id, ev.time_field: e.event_time_us}
        for e in events
        if isinstance(e, Transaction)
    ]
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


def _columns(stream: EventStream, rows: list[Any]) -> dict[str, np.ndarray]:
    """Rows as the batch engine's columns (times int64, numbers float64, the rest objects)."""
    out = {}
    for f in stream.fields:
        values = [r[f.name] for r in rows]
        if f.name == stream.time_field:
            out[f.name] = np.array(values, dtype=np.int64)
        elif f.type == "number":
            out[f.name] = np.array(values, dtype=np.float64)
        else:
            out[f.name] = np.array(values, dtype=object)
    return out


def test_stage_chain_follows_the_file(payments: Definitions) -> None:
    assert [e.name for e in stage_entities(payments)] == [
        "card",
        "merchant",
        "card_category",
        "card_device",
    ]
    assert stage_labels(payments) == (
        "IndexIds",
        "CardWindows",
        "MerchantWindows",
        "CardCategoryWindows",
        "CardDeviceWindows",
    )
    assert stage_labels(load_definitions()) == ("IndexIds", "CustomerWindows", "TerminalWindows")
    stage = EntityWindowsFn(payments, 1, None, 10)  # type: ignore[arg-type]
    assert (stage.step, stage.labels, stage.first, stage.last) == (
        "MerchantWindows",
        True,
        False,
        False,
    )


@pytest.mark.parametrize("buckets", [0, 4])
def test_payments_shuffled_with_redeliveries_equal_the_oracle(
    payments: Definitions, events: list[Transaction | Label], buckets: int
) -> None:
    txs, labels = _rows(payments, events)
    want = np.array(oracle_features(payments, txs, labels), dtype=np.float64)
    assert payments.labels is not None
    engine = compute_features(
        payments, _columns(payments.events, txs), _columns(payments.labels, labels)
    )
    np.testing.assert_array_equal(engine, want)  # the batch engine and the oracle agree
    rng = random.Random(23 + buckets)
    stream = list(events)
    stream += rng.sample(events, 30)  # redeliveries of the same messages
    rng.shuffle(stream)
    rounds = [stream[i : i + 41] for i in range(0, len(stream), 41)]
    latest, dead, _, corrections = run_stages(rounds, key_buckets=buckets, definitions=payments)
    assert dead == []
    assert corrections > 0  # the shuffle made late events: corrections reached the output
    ids = [str(t[payments.events.id_field]) for t in txs]
    assert sorted(latest) == sorted(ids)
    got = np.array([latest[i][1] for i in ids])
    bad = np.argwhere(got != want)
    names = payments.names
    assert len(bad) == 0, f"{len(bad)} values differ, first: " + ", ".join(
        f"{ids[r]}/{names[c]}: {got[r, c]!r} != {want[r, c]!r}" for r, c in bad[:5]
    )
    # The comparison sees every kind of feature: the merchant's risk (labels through a middle
    # stage) and a derived ratio among them.
    frame = pd.DataFrame(got, columns=names)
    assert (frame["MERCHANT_RISK_7D"] > 0).mean() > 0.02
    assert (frame["CARD_CATEGORY_SHARE_30D"] > 0).all()


def test_a_later_stage_keeps_the_newest_carried_features_whatever_their_order() -> None:
    """Two computations of one transaction's customer features reach the terminal stage in the
    wrong order (the older one last): the vector it emits keeps the newer features, stored on
    the transaction's cell; a newer one still replaces them."""
    from pipelines.core.batches import FeatureBatch, Part
    from pipelines.stores.window_store import InMemoryStore
    from tests.events import handbook_tx
    from tests.unit.dofn_state import Harness

    defs = load_definitions()
    fn = EntityWindowsFn(defs, 1, InMemoryStore("carried-order"), 1)
    fn.setup()
    harness = Harness(fn)
    tx = handbook_tx("1", 1_522_540_800_000_000, "C1", "T1", 10.0)
    columns = [defs.names.index(f.name) for f in defs.window_features(defs.entity("customer"))]

    def carried(part: Part) -> list[float]:
        fn.start_bundle()
        out = harness.process("T1", part) + list(fn.finish_bundle())
        (batch,) = [o for o in out if isinstance(o, FeatureBatch)]
        return [float(x) for x in batch.features[0, columns]]

    newer = tuple(float(i + 1) for i in range(len(columns)))
    older = tuple(0.5 for _ in columns)
    assert carried(Part(tx, newer, 2_000)) == list(newer)
    assert carried(Part(tx, older, 1_000)) == list(newer)  # late: the stored ones win
    assert carried(Part(tx, older, 3_000)) == list(older)  # a newer computation replaces them
