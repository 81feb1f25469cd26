"""The streaming pipeline on the DirectRunner against the real emulators (no mocks).

Publishes the tiny dataset's replay (transactions and labels interleaved, in one burst) mixed
with malformed messages, an exact duplicate and a label for an unknown transaction, and asserts
on what lands in Bigtable, Datastore and the two output topics. The job runs with a short
``--label_wait_s``, so the label of the unknown transaction is dead-lettered
(``unknown_transaction``) within the test.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from pipelines.app.local import Topology
from pipelines.app.publisher import malformed_examples, replay_events
from pipelines.core.definitions import CUSTOMER, MODEL_INPUTS
from pipelines.core.schema import InvalidEvent, parse_transaction
from pipelines.core.training_data import training_features
from pipelines.stores.bigtable import FeatureStore, StoreConfig
from pipelines.transforms.sinks import latest_per_transaction

pytestmark = pytest.mark.integration
TOPO = Topology()
# Long enough for every genuine label to meet its transaction in the burst, short enough for the
# label of a transaction that never comes to be dead-lettered within the test.
LABEL_WAIT_S = 30.0


def _parse_reason(data: bytes) -> str:
    """Why the parser rejects a malformed transaction message (its dead letter's reason)."""
    try:
        parse_transaction(data)
    except InvalidEvent as exc:
        return exc.reason
    raise AssertionError(f"{data!r} parses")


def test_streaming_pipeline_end_to_end(local_run, tiny_frame, model_dir) -> None:
    from google.cloud import datastore

    from pipelines.app.local_run import LocalRun
    from pipelines.app.publisher import ReplayEvent

    events = replay_events(tiny_frame)
    transactions = [e for e in events if e.topic == "transactions"]
    labels = [e for e in events if e.topic == "labels"]
    bad = malformed_examples()
    # A well-formed label whose transaction never comes: it waits LABEL_WAIT_S, then is
    # dead-lettered as unknown_transaction.
    unknown = json.loads(labels[0].data) | {"transaction_id": "never-published-1"}
    unknown_label = ReplayEvent("labels", json.dumps(unknown).encode(), 0)
    n = len(tiny_frame)
    # The job in this process, on the session's stack and resources.
    with LocalRun(stack=local_run.stack) as run:
        run.start_pipeline(
            [f"--model_dir={model_dir}", "--max_batch_size=200", f"--label_wait_s={LABEL_WAIT_S}"]
        )
        # The whole replay in one burst: the two streams race each other and the runner's
        # bundles, the hardest case for ordering.
        mixed = [unknown_label] + [ReplayEvent("transactions", b, 0) for b in bad]
        run.publish(mixed + events + transactions[:1])
        run.wait_predicted(n, timeout_s=240)
        time.sleep(5)  # stragglers such as redeliveries
        # + 2: the first transaction published a second time is a duplicate, not a redelivery;
        # the label of the unknown transaction comes out once its wait is over.
        dead, want = run.dead_letters.raw, len(bad) + 2
        run.wait_for(
            lambda: len({m.attributes.get("transaction_id") or m.data for m in dead}) >= want,
            LABEL_WAIT_S + 60,
            "not every dead letter came out",
        )
        time.sleep(3)
    predictions = run.predictions.raw

    # Prediction topic: every transaction, with the filterable attributes. The topic is
    # at-least-once (a redelivery, or a correction after an out-of-order event, is published
    # again); the contract: keep the highest revision per transaction_id.
    bodies = [json.loads(m.data) for m in predictions]
    latest = latest_per_transaction(bodies)
    assert sorted(latest) == sorted(tiny_frame.TRANSACTION_ID.astype(str))
    corrections = sum(b["correction"] for b in bodies)
    print(f"{len(bodies)} prediction messages for {n} transactions, {corrections} corrections")
    for m, b in zip(predictions, bodies, strict=True):
        assert m.attributes["risk_band"] in {"low", "medium", "high"}
        assert m.attributes["model_version"] == b["model_version"]
        assert m.attributes["revision"] == str(b["revision"])
        assert 0.0 <= b["score"] <= 1.0

    # Served features (the latest revision) equal the batch (training) computation, exactly.
    expected = training_features(tiny_frame).set_index("TRANSACTION_ID")
    ids = sorted(latest)
    served = np.array([[latest[i]["features"][f] for f in MODEL_INPUTS] for i in ids])
    want = expected.loc[[int(i) for i in ids], list(MODEL_INPUTS)].to_numpy()
    assert np.array_equal(served, want), np.abs(served - want).max(axis=0)

    # Datastore: one entity per transaction, keyed by transaction_id, holding the latest
    # revision, whose features are exact.
    client = datastore.Client(project=TOPO.project)
    entities = client.get_multi([client.key("Prediction", i) for i in ids])
    assert len(entities) == n
    for e in entities:
        b = latest[e.key.name]
        assert e["revision"] == b["revision"]
        assert e["score"] == pytest.approx(b["score"])
        assert json.loads(e["features"]) == b["features"]
    query = client.query(kind="Prediction")
    query.keys_only()
    assert sum(1 for _ in query.fetch()) == n

    # Bigtable: the latest customer features are the features of the customer's last transaction.
    store = FeatureStore(StoreConfig(TOPO.project, TOPO.bigtable_instance, TOPO.bigtable_table))
    last = tiny_frame.sort_values("TRANSACTION_ID").groupby("CUSTOMER_ID").tail(1).iloc[0]
    stored = store.read_features(CUSTOMER, [str(last.CUSTOMER_ID)])[str(last.CUSTOMER_ID)]
    for name in ("CUSTOMER_ID_NB_TX_30DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"):
        assert stored[name] == expected.loc[int(last.TRANSACTION_ID), name]

    # Dead letters, every message counted (nothing was redelivered in this run, so each rejected
    # message is dead-lettered exactly once): every malformed message, with its original bytes
    # and a reason, the second message carrying the first transaction's id (the original was
    # scored, above) and the label of the unknown transaction. Nothing else: no genuine label
    # waited out LABEL_WAIT_S, no stage after the features rejected anything.
    parsed = [m for m in dead if m.attributes["stage"] == "parse"]
    assert sorted(m.data for m in parsed) == sorted(bad)
    want = Counter(("parse", _parse_reason(b)) for b in bad)  # several share a reason
    want.update([("features", "duplicate_transaction_id"), ("features", "unknown_transaction")])
    got = Counter((m.attributes["stage"], m.attributes["reason"]) for m in dead)
    assert got == want, [(m.attributes["stage"], m.attributes["reason"], m.data) for m in dead]
    rejected = {m.attributes["reason"]: m for m in dead if m.attributes["stage"] == "features"}
    duplicate = rejected["duplicate_transaction_id"]
    assert json.loads(duplicate.data)["transaction_id"] == str(tiny_frame.TRANSACTION_ID.iloc[0])
    assert duplicate.attributes["original_message_id"]
    # The label of the unknown transaction, from the labels stream.
    orphan = rejected["unknown_transaction"]
    assert json.loads(orphan.data) == unknown
    assert orphan.attributes["source"] == "labels"
    assert orphan.attributes["original_message_id"]
