"""``rillet tail`` against the real Pub/Sub emulator, as a user runs it (a subprocess): prediction
messages of the contract (``_to_message``) with mixed risk bands and revisions on a private
topic; only the filtered band prints, the highest revision wins, and the subscription tail
creates carries the filter and is gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.definitions import MODEL_INPUTS
from pipelines.transforms.sinks import RiskBands, _to_message

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "rillet-local"
BANDS = RiskBands()

# (transaction, score, revision, correction), published in this order.
MESSAGES = [
    ("tx-1", 0.91, 1, False),  # high
    ("tx-2", 0.05, 1, False),  # low: filtered out
    ("tx-3", 0.30, 1, False),  # medium: filtered out
    ("tx-1", 0.95, 3, True),  # high, an update of tx-1
    ("tx-1", 0.92, 2, True),  # high, an older correction arriving late: superseded
    ("tx-4", 0.70, 1, False),  # high
    ("tx-4", 0.70, 1, False),  # a redelivery: superseded
    ("tx-2", 0.60, 2, True),  # tx-2 corrected to high: prints
    ("tx-3", 0.10, 2, True),  # low: filtered out
]
HIGHEST_HIGH = {"tx-1": 3, "tx-4": 1, "tx-2": 2}
HIGH_REVISIONS = {"tx-1": {1, 2, 3}, "tx-4": {1}, "tx-2": {2}}


def record(tx: str, score: float, revision: int, correction: bool) -> dict[str, Any]:
    """A record as ``prediction_records`` makes it."""
    return {
        "schema_version": 1,
        "transaction_id": tx,
        "entity_keys": {"customer_id": "7", "terminal_id": "9"},
        "event_time_us": 1_522_663_200_000_000 + int(tx[-1]) * 60_000_000,
        "publish_time_us": 1_522_663_200_000_000,
        "processing_time_us": 1_700_000_000_100_000,
        "revision": revision,
        "correction": correction,
        "score": score,
        "risk_band": BANDS.band(score),
        "model_version": "v1",
        "challenger_score": None,
        "challenger_version": None,
        "features": {name: 1.0 for name in MODEL_INPUTS},
    }


def publish(topic: str) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for message in MESSAGES:
        data, attributes = _to_message(record(*message))
        publisher.publish(topic, data, **attributes).result(timeout=30)


@pytest.fixture
def topic(local_run) -> str:
    """A prediction topic of this test's own (no other test publishes there)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(PROJECT, f"tail-predictions-{uuid.uuid4().hex[:8]}")
    publisher.create_topic(name=path)
    return path


class Tail:
    """``rillet tail`` in a child process; stderr read as it comes."""

    def __init__(self, local_run: Any, *args: str) -> None:
        cmd = [sys.executable, "-m", "pipelines.app.cli", "tail"]
        cmd += ["--state-dir", str(local_run.stack.state_dir), *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.stderr.extend(iter(self.proc.stderr.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        self._reader.start()

    def subscription(self, timeout_s: float = 60) -> str:
        """The subscription it announced (it reads it from then on)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.stderr:
                if line.startswith("tail: ") and " subscription " in line:
                    return line.split(" subscription ", 1)[1].split()[0]
            assert self.proc.poll() is None, "".join(self.stderr)[-3000:]
            time.sleep(0.1)
        raise AssertionError("no subscription line: " + "".join(self.stderr)[-3000:])

    def finish(self, timeout_s: float = 60) -> tuple[int, str, str]:
        # Not communicate(): it would read stderr too, racing the reader thread for its lines.
        stdout = self.proc.stdout.read()  # type: ignore[union-attr]  # until tail exits
        self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return self.proc.returncode, stdout, "".join(self.stderr)


def test_tail_prints_the_filtered_band_at_its_highest_revision(local_run, topic) -> None:
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    topic_name = topic.rsplit("/", 1)[1]
    tail = Tail(local_run, "--topic", topic_name, "--filter", "risk_band=high", "--timeout", "5")
    subscriber = pubsub_v1.SubscriberClient()
    try:
        path = tail.subscription()
        assert path.startswith(f"projects/{PROJECT}/subscriptions/tail-")
        stored = subscriber.get_subscription(request={"subscription": path})
        assert stored.filter == 'attributes.risk_band = "high"' and stored.topic == topic
        publish(topic)
        code, stdout, stderr = tail.finish()
        assert code == 0, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]

        lines = stdout.splitlines()
        assert lines[0].split()[:2] == ["event", "time"], stdout
        rows = [line.split() for line in lines[1:]]
        assert rows and all(row[3] == "high" and row[4] == "v1" for row in rows), stdout
        ranks: dict[str, list[int]] = {}
        for row in rows:
            ranks.setdefault(row[1], []).append(int(row[5]))
        # rev is the rank of each printed (increasing) revision: 1, 2, ... per transaction, at
        # most one per distinct high revision.
        assert all(r == list(range(1, len(r) + 1)) for r in ranks.values()), stdout
        assert set(ranks) == set(HIGHEST_HIGH), stdout
        assert all(len(ranks[tx]) <= len(HIGH_REVISIONS[tx]) for tx in ranks), stdout
        updates = [line for line in lines[1:] if "replaces revision" in line]
        assert len(updates) == len(rows) - len(HIGHEST_HIGH), stdout
        assert all("correction, replaces revision" in line for line in updates), stdout

        summary = [line for line in stderr.splitlines() if line.startswith("tail: received")]
        assert len(summary) == 1, stderr
        numbers = [int(word.strip(",")) for word in summary[0].split() if word.strip(",").isdigit()]
        received, printed, filtered_out, superseded = numbers[:4]
        assert printed == len(rows)
        assert received == printed + filtered_out + superseded
        # The emulator keeps the filter without applying it: tail drops the other bands itself.
        assert filtered_out in (0, 3) and received in (6, 9)
        assert f"(subscription {path.rsplit('/', 1)[1]} deleted)" in summary[0]
        with pytest.raises(exceptions.NotFound):
            subscriber.get_subscription(request={"subscription": path})
    finally:
        if tail.proc.poll() is None:
            tail.proc.kill()
        subscriber.close()


def test_tail_on_a_named_subscription_filters_client_side_and_keeps_it(local_run, topic) -> None:
    import json

    from google.cloud import pubsub_v1

    from pipelines.app.local import create_subscription

    name = f"tail-named-{uuid.uuid4().hex[:8]}"
    path = create_subscription(PROJECT, name, topic.rsplit("/", 1)[1])  # no filter of its own
    publish(topic)
    tail = Tail(
        local_run, "--subscription", name, "--filter", "risk_band=high", "--json", "--limit", "3"
    )
    subscriber = pubsub_v1.SubscriberClient()
    try:
        code, stdout, stderr = tail.finish()
        assert code == 0, stderr[-3000:]
        assert "its own filter is none; --filter is applied here" in stderr, stderr
        bodies = [json.loads(line) for line in stdout.splitlines()]
        assert len(bodies) == 3 and {b["risk_band"] for b in bodies} == {"high"}, stdout
        assert "deleted" not in stderr
        assert subscriber.get_subscription(request={"subscription": path}).name == path
    finally:
        if tail.proc.poll() is None:
            tail.proc.kill()
        subscriber.delete_subscription(request={"subscription": path})
        subscriber.close()


def test_tail_follows_dead_letters_with_their_reason(local_run, topic) -> None:
    """Dead letters as the job publishes them (``_dead_letter_message``): one line each with
    its reason and stage, a redelivered one once."""
    from google.cloud import pubsub_v1

    from pipelines.core.messages import DeadLetter
    from pipelines.transforms.sinks import _dead_letter_message

    tail = Tail(local_run, "--topic", topic.rsplit("/", 1)[1], "--dead-letters", "--timeout", "4")
    try:
        tail.subscription()
        publisher = pubsub_v1.PublisherClient()
        letters = [
            DeadLetter(b"{oops", "not_json", "Expecting value", "transactions", "parse", {}, "m1"),
            DeadLetter(b"{oops", "not_json", "Expecting value", "transactions", "parse", {}, "m1"),
            DeadLetter(
                b"{}", "unknown_transaction", "no tx-9", "labels", "TerminalWindows", {}, "m2"
            ),
        ]
        for letter in letters:
            message = _dead_letter_message(letter)
            publisher.publish(topic, message.data, **message.attributes).result(timeout=30)
        code, stdout, stderr = tail.finish()
        assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
        lines = stdout.splitlines()
        assert lines[0].split()[:3] == ["dead-lettered", "at", "reason"], stdout
        rows = sorted(line.split()[1:5] for line in lines[1:])
        assert rows == [
            ["not_json", "parse", "transactions", "m1"],
            ["unknown_transaction", "TerminalWindows", "labels", "m2"],
        ], stdout
        assert "printed 2" in stderr and "redelivered 1" in stderr, stderr
    finally:
        if tail.proc.poll() is None:
            tail.proc.kill()
