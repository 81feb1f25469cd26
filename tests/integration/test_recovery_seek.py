"""Crash recovery on the DirectRunner against the Pub/Sub emulator: a restarted job seeks its
retain-acked input subscription back to the checkpoint (minus 2 s) and gets every message its
predecessor had pulled, and so acknowledged, without finishing (pipelines/local_runner/recovery.py).

The job is ``pipelines.main.run`` with ``--recovery_checkpoint``, as ``rillet run`` starts it: the
DirectRunner pulls through rillet's puller (which records every pull in the tracker before Beam
acknowledges it), and the checkpoint writer runs. Only the graph is replaced: one step that reports
each message's completion as the real graph's sinks do, finishing every message except those
whose payload starts with ``stuck`` (their output never reaches a sink, as when a job dies with
them in flight). The first job is then cancelled and the process's recovery state dropped (what a
crash leaves: the checkpoint file and the subscriptions), and the same job is started again.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from pipelines.app.local import LOCAL_PROJECT, create_subscription
from pipelines.core.completion import completion
from pipelines.core.messages import publish_time_us
from pipelines.local_runner import recovery
from pipelines.streaming import input_subscriptions

pytestmark = pytest.mark.integration

# What each job's step saw, per job tag: (payload, publish time µs).
_SEEN: dict[str, list[tuple[bytes, int]]] = {}
_SEEN_LOCK = threading.Lock()


class _ReportCompletion(beam.DoFn):
    """Records each message, and reports it to the graph's completion hook as a sink would:
    finished at once, or (payload ``stuck...``) waiting for an output that never comes."""

    def __init__(self, job: str, subscription: str) -> None:
        self._job = job
        self._subscription = subscription

    def process(self, message: Any) -> None:
        with _SEEN_LOCK:
            _SEEN.setdefault(self._job, []).append((message.data, publish_time_us(message)))
        outputs = 1 if message.data.startswith(b"stuck") else 0
        completion().hold([(self._subscription, message.message_id)], outputs)


def _seen(job: str) -> set[bytes]:
    with _SEEN_LOCK:
        return {data for data, _ in _SEEN.get(job, [])}


def _wait(done: Any, timeout_s: float, what: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.2)


def _drop_process_state() -> None:
    """What a crash takes with it: the tracker's state and the checkpoint writer thread."""
    for thread in threading.enumerate():
        if isinstance(thread, recovery.CheckpointWriter):
            thread.stop()
            thread.join(timeout=5)
    recovery.tracker().reset()


@pytest.fixture
def subscription(emulators: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """A topic with retain-acked transaction and label subscriptions (as create_resources makes
    the job's inputs): (topic path, transactions subscription, labels subscription) names."""
    from google.cloud import pubsub_v1

    tag = uuid.uuid4().hex[:8]
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(LOCAL_PROJECT, f"seek-{tag}")
    publisher.create_topic(name=topic)
    tx = create_subscription(LOCAL_PROJECT, f"seek-tx-{tag}", f"seek-{tag}", retain_acked=True)
    lb = create_subscription(LOCAL_PROJECT, f"seek-lb-{tag}", f"seek-{tag}", retain_acked=True)
    yield topic, tx.rsplit("/", 1)[1], lb.rsplit("/", 1)[1]
    subscriber = pubsub_v1.SubscriberClient()
    for path in (tx, lb):
        subscriber.delete_subscription(subscription=path)
    subscriber.close()
    publisher.delete_topic(topic=topic)


def test_a_restarted_job_gets_what_its_predecessor_acked_but_had_not_finished(
    subscription: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import pubsub_v1

    import pipelines.main

    topic, tx_sub, lb_sub = subscription
    checkpoint = tmp_path / "checkpoint.json"
    argv = [
        "--runner=DirectRunner",
        f"--project={LOCAL_PROJECT}",
        f"--transactions_subscription={tx_sub}",
        f"--labels_subscription={lb_sub}",
        f"--recovery_checkpoint={checkpoint}",
    ]
    job_tag = ["first"]

    def build(p: beam.Pipeline, options: Any) -> None:
        path = input_subscriptions(options)[0]
        _ = (
            p
            | "Read" >> beam.io.ReadFromPubSub(subscription=path, with_attributes=True)
            | "Report" >> beam.ParDo(_ReportCompletion(job_tag[0], path))
        )

    monkeypatch.setattr(pipelines.main, "build_pipeline", build)
    publisher = pubsub_v1.PublisherClient()

    def publish(payloads: list[bytes]) -> None:
        for future in [publisher.publish(topic, data) for data in payloads]:
            future.result(timeout=30)

    before = [b"done-a-%d" % i for i in range(5)]
    # The unfinished messages among finished ones, and more after them.
    stuck = [b"stuck-%d" % i for i in range(4)]
    around = [b"done-b-%d" % i for i in range(4)]
    after = [b"done-c-%d" % i for i in range(5)]
    result = pipelines.main.run(argv, wait=False)
    try:
        publish(before)
        _wait(lambda: _seen("first") >= set(before), 120, "the first job never read its input")
        # Groups seconds apart in publish time, beyond the seek's 2 s margin: what was finished
        # before the oldest unfinished message is not delivered again, and a checkpoint at the
        # newest message pulled (not the oldest unfinished) would not bring the stuck back.
        time.sleep(4)
        publish([m for pair in zip(around, stuck, strict=True) for m in pair])
        time.sleep(4)
        publish(after)
        _wait(lambda: _seen("first") >= set(before + stuck + around + after), 60, "not all read")
        oldest_stuck = min(t for data, t in _SEEN["first"] if data in stuck)
        tx_path = f"projects/{LOCAL_PROJECT}/subscriptions/{tx_sub}"
        # The checkpoint holds the oldest unfinished message (written every 0.5 s).
        _wait(
            lambda: recovery.read_checkpoint(checkpoint).get(tx_path) == oldest_stuck,
            10,
            lambda: f"checkpoint {recovery.read_checkpoint(checkpoint)}, oldest {oldest_stuck}",
        )
    finally:
        result.cancel()
        _drop_process_state()
    # Every message was acknowledged at pull: the subscription, as it is, delivers nothing.
    subscriber = pubsub_v1.SubscriberClient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # return_immediately
        left = subscriber.pull(subscription=tx_path, max_messages=100, return_immediately=True)
    assert list(left.received_messages) == []

    job_tag[0] = "restarted"
    result = pipelines.main.run(argv, wait=False)
    try:
        _wait(lambda: _seen("restarted") >= set(stuck), 120, "the unfinished were not redelivered")
        time.sleep(3)  # anything else the seek brought back
    finally:
        result.cancel()
        _drop_process_state()
        subscriber.close()
    # From the checkpoint minus 2 s on: the unfinished messages and those published with or
    # after them; nothing finished before them.
    assert _seen("restarted") == set(stuck + around + after)
