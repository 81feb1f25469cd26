"""WritePredictions against the real Datastore and Pub/Sub emulators."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.app.local import LOCAL_PROJECT, Topology
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.transforms.features import FeatureBatch
from pipelines.transforms.inference import PredictionBatch
from pipelines.transforms.sinks import RiskBands, WritePredictions, _DatastoreWriteDoFn
from tests.events import HANDBOOK_KEYS, handbook_tx

pytestmark = pytest.mark.integration
TOPO = Topology()


def batch(ids: list[str], revision: int, score: float, correction: bool = False) -> PredictionBatch:
    txs = [
        handbook_tx(i, 1_522_663_200_000_000, "7", "9", 10.0, 1_700_000_000_000_000) for i in ids
    ]
    features = np.full((len(ids), len(MODEL_INPUTS)), float(revision))
    fb = FeatureBatch(txs, features, revision, correction, names=MODEL_INPUTS)
    return PredictionBatch(fb, np.full(len(ids), score), "v1", 1_700_000_000_100_000)


def test_highest_revision_wins_in_either_order(emulators) -> None:
    from google.cloud import datastore

    sink = _DatastoreWriteDoFn(LOCAL_PROJECT, "SinkOrder", None, RiskBands(), HANDBOOK_KEYS)
    sink.setup()
    ids = [f"order-{i}" for i in range(60)]  # more than one 25-entity transaction
    # A correction lands first, then the original it replaces (the race the sink must win) ...
    list(sink.process(batch(ids[:30], revision=20, score=0.9, correction=True)))
    list(sink.process(batch(ids, revision=10, score=0.1)))
    # ... and the normal order: original, then correction.
    list(sink.process(batch(ids[30:], revision=30, score=0.8, correction=True)))

    client = datastore.Client(project=LOCAL_PROJECT)
    stored = {e.key.name: e for e in client.get_multi([client.key("SinkOrder", i) for i in ids])}
    assert len(stored) == 60
    assert {stored[i]["revision"] for i in ids[:30]} == {20}
    assert {stored[i]["revision"] for i in ids[30:]} == {30}
    features = json.loads(stored[ids[0]]["features"])
    assert stored[ids[0]]["score"] == 0.9 and features[MODEL_INPUTS[0]] == 20.0
    assert stored[ids[0]]["risk_band"] == "high" and stored[ids[-1]]["correction"] is True


def test_a_lower_revision_arriving_later_never_replaces_a_higher_one(emulators) -> None:
    """Late arrivals through the real sink: a lower-revision correction after a higher one, and
    a lower-revision original after a higher correction. Datastore must end with the highest
    revision (and its score and features); a sink that wrote whatever came last would not."""
    from google.cloud import datastore

    sink = _DatastoreWriteDoFn(LOCAL_PROJECT, "SinkLate", None, RiskBands(), HANDBOOK_KEYS)
    sink.setup()
    # 30 ids per case: more than one 25-entity transaction.
    late_correction = [f"late-corr-{i}" for i in range(30)]
    late_original = [f"late-orig-{i}" for i in range(30)]
    # Original, newest correction, then an older correction that travelled in a slower bundle.
    list(sink.process(batch(late_correction, revision=10, score=0.1)))
    list(sink.process(batch(late_correction, revision=30, score=0.9, correction=True)))
    list(sink.process(batch(late_correction, revision=20, score=0.3, correction=True)))
    # The newest correction first, then the original, then an older correction.
    list(sink.process(batch(late_original, revision=30, score=0.9, correction=True)))
    list(sink.process(batch(late_original, revision=10, score=0.1)))
    list(sink.process(batch(late_original, revision=20, score=0.3, correction=True)))

    client = datastore.Client(project=LOCAL_PROJECT)
    ids = late_correction + late_original
    stored = {e.key.name: e for e in client.get_multi([client.key("SinkLate", i) for i in ids])}
    assert sorted(stored) == sorted(ids)
    assert {i: stored[i]["revision"] for i in ids} == {i: 30 for i in ids}
    assert {stored[i]["score"] for i in ids} == {0.9}
    assert {json.loads(stored[i]["features"])[MODEL_INPUTS[0]] for i in ids} == {30.0}


def test_an_original_after_two_reordered_corrections_keeps_the_highest(emulators) -> None:
    from google.cloud import datastore

    sink = _DatastoreWriteDoFn(LOCAL_PROJECT, "SinkThreeWay", None, RiskBands(), HANDBOOK_KEYS)
    sink.setup()
    ids = [f"three-way-{i}" for i in range(5)]
    list(sink.process(batch(ids, revision=30, score=0.9, correction=True)))
    list(sink.process(batch(ids, revision=20, score=0.3, correction=True)))
    list(sink.process(batch(ids, revision=10, score=0.1)))

    client = datastore.Client(project=LOCAL_PROJECT)
    stored = client.get_multi([client.key("SinkThreeWay", i) for i in ids])
    assert {e.key.name: e["revision"] for e in stored} == {i: 30 for i in ids}


def test_write_predictions_stores_and_publishes(local_run) -> None:
    import apache_beam as beam
    from google.cloud import datastore

    from pipelines.app.local_run import LocalRun

    topic = f"projects/{TOPO.project}/topics/{TOPO.predictions_topic}"
    ids = [f"pub-{i}" for i in range(5)]
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    with LocalRun(stack=local_run.stack) as run:
        run.watch()
        with TestPipeline(options=options) as p:
            _ = (
                p
                | beam.Create([batch(ids, revision=5, score=0.3)])
                | WritePredictions(
                    LOCAL_PROJECT,
                    "SinkPublish",
                    None,
                    topic,
                    RiskBands(0.2, 0.5),
                    keys=HANDBOOK_KEYS,
                )
            )
        seen = run.predictions.raw
        run.wait_for(lambda: set(ids) <= {m.attributes["transaction_id"] for m in seen}, 30, "")
        run.stop(settle_s=1.0)
    messages = run.predictions.raw
    mine = [m for m in messages if m.attributes["transaction_id"] in ids]
    assert sorted(m.attributes["transaction_id"] for m in mine) == ids
    for m in mine:
        body = json.loads(m.data)
        assert m.attributes["risk_band"] == "medium" == body["risk_band"]
        assert m.attributes["revision"] == "5" and m.attributes["correction"] == "false"
        assert body["features"] == {name: 5.0 for name in MODEL_INPUTS}
        assert body["event_time"] == "2018-04-02T10:00:00Z"
    client = datastore.Client(project=LOCAL_PROJECT)
    assert len(client.get_multi([client.key("SinkPublish", i) for i in ids])) == 5


def test_a_stale_writer_that_looked_up_before_a_newer_write_does_not_overwrite_it(
    emulators, monkeypatch
) -> None:
    """The race a zombie runs on Dataflow: a writer of revision 2 looks up the keys (nothing
    newer stored yet), then, before its commit, another writer stores revision 4. The commit's
    preconditions make it conflict; decided again, revision 4 stays. (An unconditional upsert
    after a check would store revision 2.)"""
    import threading

    from google.cloud import datastore

    ids = [f"stale-{i}" for i in range(30)]
    stale, fresh = (
        _DatastoreWriteDoFn(LOCAL_PROJECT, "SinkStale", None, RiskBands(), HANDBOOK_KEYS)
        for _ in "ab"
    )
    stale.setup()
    fresh.setup()
    api = stale._client._datastore_api
    real_commit = api.commit
    fresh_done = threading.Event()
    stale_thread: list[int] = []

    def commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.get_ident() in stale_thread and not fresh_done.is_set():
            fresh_done.wait(30)  # the stale writer looked up already; the fresh one writes now
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(api, "commit", commit)

    def write_stale() -> None:
        stale_thread.append(threading.get_ident())
        list(stale.process(batch(ids, revision=2, score=0.2)))

    thread = threading.Thread(target=write_stale)
    thread.start()
    time.sleep(1.0)  # its lookup is done, its commit waits
    list(fresh.process(batch(ids, revision=4, score=0.4, correction=True)))
    fresh_done.set()
    thread.join()
    client = datastore.Client(project=LOCAL_PROJECT)
    stored = client.get_multi([client.key("SinkStale", i) for i in ids])
    assert {e["revision"] for e in stored} == {4} and {e["score"] for e in stored} == {0.4}


def test_concurrent_writers_of_one_key_end_with_the_highest_revision(emulators) -> None:
    """Attempts of different work items writing the same predictions at the same moment (on
    Dataflow: a zombie and the key's new owner, or two sinks of reordered batches): the
    conditional commits conflict, are decided again, and the highest revision stays."""
    import threading

    from google.cloud import datastore

    ids = [f"race-{i}" for i in range(50)]
    sinks = [
        _DatastoreWriteDoFn(LOCAL_PROJECT, "SinkRace", None, RiskBands(), HANDBOOK_KEYS)
        for _ in range(4)
    ]
    for sink in sinks:
        sink.setup()
    start = threading.Barrier(len(sinks))

    def write(sink: _DatastoreWriteDoFn, revision: int) -> None:
        start.wait()
        for _ in range(3):
            list(sink.process(batch(ids, revision=revision, score=revision / 10)))

    threads = [
        threading.Thread(target=write, args=(sink, revision))
        for sink, revision in zip(sinks, (3, 1, 4, 2), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = datastore.Client(project=LOCAL_PROJECT)
    stored = client.get_multi([client.key("SinkRace", i) for i in ids])
    assert sorted({e["revision"] for e in stored}) == [4]
    assert {e["score"] for e in stored} == {0.4}
