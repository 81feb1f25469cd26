"""The replay writes the definitions file's streams: any workload's dataset becomes messages its
declared parsers accept, labels due after the declared delay."""

from __future__ import annotations

import json

from pipelines.app import payments_simulator
from pipelines.app.publisher import replay_events
from pipelines.app.simulator import PRESETS, simulate
from pipelines.core.declarations import WORKLOADS, load_definitions
from pipelines.core.schema import EventParser, Label, Transaction

FAR_FUTURE_US = 2**62


def test_the_handbook_replay_is_the_handbook_message_contract() -> None:
    frame = simulate(PRESETS["tiny"]).head(3)
    events = replay_events(frame)
    row = frame.iloc[0]
    expected = {
        "schema_version": 1,
        "transaction_id": str(row.TRANSACTION_ID),
        "tx_datetime": row.TX_DATETIME.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "customer_id": str(row.CUSTOMER_ID),
        "terminal_id": str(row.TERMINAL_ID),
        "amount": float(row.TX_AMOUNT),
    }
    assert events[0].data == json.dumps(expected, separators=(",", ":")).encode()
    labels = [e for e in events if e.topic == "labels"]
    txs = [e for e in events if e.topic == "transactions"]
    assert len(labels) == len(txs) == 3
    assert {lb.due_us - tx.due_us for lb, tx in zip(labels, txs, strict=True)} == {
        7 * 86_400_000_000
    }


def test_a_second_workload_replays_as_its_declared_streams() -> None:
    defs = load_definitions(WORKLOADS / "payments.yaml")
    assert defs.labels is not None
    frame = payments_simulator.simulate(payments_simulator.PRESETS["tiny"])
    events = replay_events(frame, defs)
    parsers = {"transactions": EventParser(defs.events), "labels": EventParser(defs.labels)}
    parsed = [parsers[e.topic].parse(e.data, now_us=FAR_FUTURE_US) for e in events]
    txs = {p.transaction_id: p for p in parsed if isinstance(p, Transaction)}
    labels = [p for p in parsed if isinstance(p, Label)]
    assert len(txs) == len(labels) == len(frame)
    for e, p in zip(events, parsed, strict=True):
        delay = defs.labels.delay_us if isinstance(p, Label) else 0
        assert e.due_us == p.event_time_us + delay
    frauds = sum(lb.is_fraud for lb in labels)
    assert frauds == int(frame[defs.labels.field(defs.labels.label_field).dataset_column].sum())
    # The fields a label shares with its transaction agree (the label rule's check).
    for lb in labels:
        tx = txs[lb.transaction_id]
        assert all(tx.fields[k] == v for k, v in lb.fields.items() if k in tx.fields)
    assert [e.due_us for e in events] == sorted(e.due_us for e in events)
