"""The streaming job on another definitions file: pipelines/workloads/payments.yaml (four
entities, two of them composite; 10-minute windows; filters; distinct; label rates behind a
3-day delay) on the DirectRunner against the real emulators.

The job is started with ``--definitions=pipelines/workloads/payments.yaml`` and nothing else
about the workload: every stage must take the file from there. The served features of every
transaction equal the batch engine's (core.engine.compute_features through training_features)
bit for bit, and rejected events come out re-serialised with the payments streams.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.app.local import Topology
from pipelines.app.publisher import ReplayEvent, malformed_examples, replay_events
from pipelines.core.declarations import WORKLOADS, load_definitions
from pipelines.core.schema import EventParser, InvalidEvent
from pipelines.core.training_data import training_features
from pipelines.transforms.sinks import latest_per_transaction

pytestmark = pytest.mark.integration
PAYMENTS = WORKLOADS / "payments.yaml"
LABEL_WAIT_S = 20.0
TOPICS_AND_SUBSCRIPTIONS = (
    "transactions_topic",
    "labels_topic",
    "predictions_topic",
    "dead_letter_topic",
    "alerts_topic",
    "transactions_subscription",
    "labels_subscription",
    "predictions_subscription",
    "dead_letter_subscription",
    "alerts_subscription",
)


@pytest.fixture(scope="module")
def payments_frame():  # type: ignore[no-untyped-def]
    from pipelines.app.payments_simulator import PRESETS, simulate

    return simulate(PRESETS["tiny"])


@pytest.fixture(scope="module")
def payments_models(tmp_path_factory: pytest.TempPathFactory, payments_frame) -> Path:  # type: ignore[no-untyped-def]
    """A small model of the payments file's 30 inputs, registered as the champion."""
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.features import training_roles

    defs = load_definitions(PAYMENTS)
    rows = training_features(payments_frame, defs)
    rows["card_id"] = payments_frame["card_id"].to_numpy()  # the card entity's key (its CP@k)
    table = training_roles(rows, defs)
    model, _ = train_model(table, None, TrainConfig(num_trees=10), inputs=defs.names)
    directory = tmp_path_factory.mktemp("payments-models")
    export_model(model, directory, {"purpose": "tests"}, definitions=defs)
    return directory


def _reason(parser: EventParser, data: bytes) -> str:
    try:
        parser.parse(data)
    except InvalidEvent as exc:
        return exc.reason
    raise AssertionError(f"{data!r} parses")


def test_the_job_computes_and_serves_the_payments_file(
    local_run, payments_frame, payments_models
) -> None:
    from pipelines.app.local_run import LocalRun

    defs = load_definitions(PAYMENTS)
    assert defs.labels is not None
    events = replay_events(payments_frame, definitions=defs)
    transactions = [e for e in events if e.topic == "transactions"]
    labels = [e for e in events if e.topic == "labels"]
    bad = malformed_examples(defs.events)
    # A payments label whose transaction never comes: dead-lettered after LABEL_WAIT_S,
    # re-serialised with the payments labels stream.
    unknown = json.loads(labels[0].data) | {"transaction_id": "never-published-1"}
    mixed = [ReplayEvent("labels", json.dumps(unknown).encode(), 0)]
    mixed += [ReplayEvent("transactions", b, 0) for b in bad]
    # The first transaction again, as a second message: a duplicate, re-serialised by IndexIds.
    duplicate = transactions[0]
    n = len(payments_frame)
    # Topics, subscriptions, table and kind of its own: the payments events and predictions
    # reach no other test's subscriptions on the session's stack.
    tag = f"payments-{uuid.uuid4().hex[:6]}"
    topo = dataclasses.replace(
        Topology(),
        **{f: f"{tag}-{f}" for f in TOPICS_AND_SUBSCRIPTIONS},
        bigtable_table=tag.replace("-", "_"),
    )
    run = LocalRun(stack=local_run.stack)
    run.topology = topo
    with run:
        run.start_pipeline(
            [
                f"--transactions_subscription={topo.transactions_subscription}",
                f"--labels_subscription={topo.labels_subscription}",
                f"--predictions_topic={topo.predictions_topic}",
                f"--dead_letter_topic={topo.dead_letter_topic}",
                f"--alerts_topic={topo.alerts_topic}",
                f"--bigtable_table={topo.bigtable_table}",
                f"--datastore_kind=Run_{topo.bigtable_table}",
                f"--definitions={PAYMENTS}",
                f"--model_dir={payments_models}",
                "--max_batch_size=200",
                f"--label_wait_s={LABEL_WAIT_S}",
            ]
        )
        run.publish(mixed + events)
        run.wait_predicted(n, timeout_s=600)
        run.publish([duplicate])
        want_dead = len(bad) + 2
        dead = run.dead_letters.raw
        run.wait_for(
            lambda: len(dead) >= want_dead,
            LABEL_WAIT_S + 120,
            "not every dead letter came out",
        )
        time.sleep(3)
    predictions = run.predictions.raw
    bodies = [json.loads(m.data) for m in predictions]
    latest = latest_per_transaction(bodies)
    assert sorted(latest, key=int) == [str(i) for i in payments_frame.transaction_id]

    # Every served feature of the file equals the batch engine's, exactly.
    expected = training_features(payments_frame, defs).set_index("transaction_id")
    ids = sorted(latest, key=int)
    assert all(set(latest[i]["features"]) == set(defs.names) for i in ids)
    served = np.array([[latest[i]["features"][f] for f in defs.names] for i in ids])
    want = expected.loc[[int(i) for i in ids], list(defs.names)].to_numpy()
    assert np.array_equal(served, want), dict(
        zip(defs.names, np.abs(served - want).max(axis=0), strict=True)
    )
    # Predictions name the transaction's entities by the payments file's key fields.
    first = latest[ids[0]]
    row = payments_frame.iloc[0]
    for key in ("card_id", "merchant_id", "merchant_category", "device_id"):
        assert first[key] == str(row[key])

    # Dead letters: the malformed payments messages with their bytes and the payments
    # parser's reasons; the duplicate and the unknown label re-serialised with the payments
    # streams (their declared fields, in order), equal to what was published.
    parser = EventParser(defs.events)
    parsed = [m for m in dead if m.attributes["stage"] == "parse"]
    assert sorted(m.data for m in parsed) == sorted(bad)
    want = Counter(("parse", _reason(parser, b)) for b in bad)
    want.update([("features", "duplicate_transaction_id"), ("features", "unknown_transaction")])
    got = Counter((m.attributes["stage"], m.attributes["reason"]) for m in dead)
    assert got == want, [(m.attributes["stage"], m.attributes["reason"], m.data) for m in dead]
    rejected = {m.attributes["reason"]: m for m in dead if m.attributes["stage"] == "features"}
    again = rejected["duplicate_transaction_id"]
    assert again.data == duplicate.data
    assert list(json.loads(again.data)) == ["schema_version", *defs.events.names]
    orphan = rejected["unknown_transaction"]
    assert json.loads(orphan.data) == unknown
    assert list(json.loads(orphan.data)) == ["schema_version", *defs.labels.names]
