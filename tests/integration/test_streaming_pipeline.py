"""The streaming pipeline on the DirectRunner against the real emulators (no mocks).

Publishes the tiny dataset's labels, then its transactions mixed with malformed messages and
an exact duplicate, and asserts on what lands in Bigtable, Datastore and the two output topics.
Labels go first so that every label a window needs is known before the transaction arrives:
this test isolates feature exactness from the label/transaction race (measured separately).
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

from pipelines.feature_store import FeatureStore, StoreConfig
from pipelines.features import CUSTOMER, MODEL_INPUTS
from pipelines.local import Topology
from pipelines.publisher import malformed_examples, publish_events, replay_events
from pipelines.training_data import training_features

pytestmark = pytest.mark.integration
TOPO = Topology()


def drain(subscription: str, want: int, timeout_s: float, settle_s: float = 3.0) -> list:
    """Pulls until ``want`` distinct messages (by transaction_id attribute, else data) have
    arrived, then ``settle_s`` longer for stragglers such as redeliveries."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(TOPO.project, subscription)
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            distinct = {m.attributes.get("transaction_id") or m.data for m in got}
            if len(distinct) >= want:
                deadline = min(deadline, time.monotonic() + settle_s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                response = subscriber.pull(
                    subscription=path, max_messages=1000, return_immediately=True
                )
            if not response.received_messages:
                time.sleep(0.3)
                continue
            got.extend(m.message for m in response.received_messages)
            subscriber.acknowledge(
                subscription=path, ack_ids=[m.ack_id for m in response.received_messages]
            )
    finally:
        subscriber.close()
    return got


def transactions_first_id(frame) -> str:
    return str(frame.sort_values("TRANSACTION_ID").TRANSACTION_ID.iloc[0])


def test_streaming_pipeline_end_to_end(emulators, tiny_frame, model_dir) -> None:
    from google.cloud import datastore

    from pipelines.pipeline import run

    result = run(
        [
            "--runner=DirectRunner",
            f"--project={TOPO.project}",
            f"--model_dir={model_dir}",
            "--max_batch_size=200",
        ],
        wait=False,
    )
    try:
        events = replay_events(tiny_frame)
        labels = [e for e in events if e.topic == "labels"]
        transactions = [e for e in events if e.topic == "transactions"]
        topics = {
            "transactions": f"projects/{TOPO.project}/topics/{TOPO.transactions_topic}",
            "labels": f"projects/{TOPO.project}/topics/{TOPO.labels_topic}",
        }
        publish_events(labels, topics, rate=0)
        store = FeatureStore(StoreConfig(TOPO.project, TOPO.bigtable_instance, TOPO.bigtable_table))
        terminals = sorted(tiny_frame.TERMINAL_ID.astype(str).unique())
        # A query time after every transaction (+8 days) reads back every label cell.
        probe = int(tiny_frame.TX_DATETIME.max().timestamp() * 1e6) + 8 * 86_400_000_000
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            h = store.read_history([], terminals, probe, probe)
            if len(h.terminal_labels) >= len(labels):
                break
            time.sleep(0.5)
        bad = malformed_examples()
        mixed = [type(transactions[0])("transactions", b, 0) for b in bad]
        publish_events(mixed + transactions + transactions[:1], topics, rate=0)

        n = len(tiny_frame)
        predictions = drain(TOPO.predictions_subscription, n, timeout_s=180)
        dead = drain(TOPO.dead_letter_subscription, len(bad), timeout_s=60)
    finally:
        result.cancel()

    # Prediction topic: every transaction, with the filterable attributes. The topic is
    # at-least-once: the redelivered transaction may be published twice, but then with the
    # same score and features (the store ignores a transaction it already holds).
    bodies = [json.loads(m.data) for m in predictions]
    ids = [b["transaction_id"] for b in bodies]
    assert sorted(set(ids)) == sorted(tiny_frame.TRANSACTION_ID.astype(str))
    assert len(ids) in (n, n + 1)
    copies = [b for b in bodies if b["transaction_id"] == transactions_first_id(tiny_frame)]
    assert all(
        (c["score"], c["features"]) == (copies[0]["score"], copies[0]["features"]) for c in copies
    )
    for m, b in zip(predictions, bodies, strict=True):
        assert m.attributes["risk_band"] in {"low", "medium", "high"}
        assert m.attributes["model_version"] == b["model_version"]
        assert 0.0 <= b["score"] <= 1.0

    # Served features equal the batch (training) computation, exactly.
    expected = training_features(tiny_frame).set_index("TRANSACTION_ID")
    served = np.array([[b["features"][f] for f in MODEL_INPUTS] for b in bodies])
    want = expected.loc[[int(i) for i in ids], list(MODEL_INPUTS)].to_numpy()
    assert np.array_equal(served, want), np.abs(served - want).max(axis=0)

    # Datastore: one entity per transaction, keyed by transaction_id, with the features.
    client = datastore.Client(project=TOPO.project)
    keys = [client.key("Prediction", i) for i in ids[:50]]
    entities = client.get_multi(keys)
    assert len(entities) == 50
    by_id = {b["transaction_id"]: b for b in bodies}
    for e in entities:
        b = by_id[e.key.name]
        assert e["score"] == pytest.approx(b["score"])
        assert dict(e["features"]) == b["features"]
    query = client.query(kind="Prediction")
    query.keys_only()
    assert sum(1 for _ in query.fetch()) == n

    # Bigtable: the latest customer features are the features of the customer's last transaction.
    last = tiny_frame.sort_values("TRANSACTION_ID").groupby("CUSTOMER_ID").tail(1).iloc[0]
    stored = store.read_features(CUSTOMER, [str(last.CUSTOMER_ID)])[str(last.CUSTOMER_ID)]
    for name in ("CUSTOMER_ID_NB_TX_30DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"):
        assert stored[name] == expected.loc[int(last.TRANSACTION_ID), name]

    # Dead letters: every malformed message, with its original bytes and a reason.
    assert sorted(m.data for m in dead) == sorted(bad)
    assert all(m.attributes["reason"] and m.attributes["stage"] == "parse" for m in dead)
