"""Crash recovery on the DirectRunner: what was pulled but not finished, checkpointed, and replayed.

Beam's local runner acknowledges Pub/Sub messages as soon as it pulls them, before any step has
processed them, so a job killed mid-stream loses whatever it had in flight. rillet recovers it with
the subscriptions' retained acknowledged messages (``retain_acked_messages``) and Seek:

1. Every pull is recorded here before the runner acknowledges it
   (pipelines/local_runner/pubsub_pull.py calls ``Tracker.pulled``): message id and publish
   time, per subscription.
2. Every element carries the receipts of the messages it came from. A message is finished when
   every output it produced has reached its sink: its prediction stored in Datastore and
   published, or its dead letter published (``Tracker.hold``/``release``/``finish``).
3. A thread writes, every ``interval_s``, a checkpoint per subscription: the publish time of the
   oldest unfinished message, or of the newest pulled one when nothing is in flight.
4. On restart, ``seek_to_checkpoint`` seeks each subscription back to its checkpoint minus a
   margin: everything unfinished is delivered again, along with some finished messages. The
   checkpoint also holds the newest publish time the job had pulled per subscription, so the
   restarted job counts the messages that come again (``Replay``, what ``rillet run`` reports).

Redelivery is harmless because every step is idempotent: the feature stage recognises a message
it has already counted (by message id, pipelines/transforms/features.py), Datastore entities are
keyed by transaction_id, Bigtable cells are keyed by transaction and event time.

The tracker also bounds memory: ``Tracker.admit`` tells the puller to stop pulling while more than
``max_in_flight`` messages are unfinished, so a backlog waits in Pub/Sub, not in the runner.

On Dataflow none of this is used: Dataflow acknowledges a message only after its effects are
durably checkpointed, and a drained or updated job keeps its state.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipelines.core.completion import Receipt, install

__all__ = [
    "Receipt",
    "Replay",
    "Tracker",
    "read_checkpoint",
    "replay",
    "seek_to_checkpoint",
    "tracker",
]

_LOGGER = logging.getLogger(__name__)

SEEK_MARGIN_US = 2_000_000  # seek this far before the checkpoint: publish times are not ordered


class Tracker:
    """Messages pulled and not yet finished, per subscription (process-wide; thread-safe)."""

    def __init__(self) -> None:
        self.enabled = False
        self.max_in_flight = 0  # 0: unbounded
        self._lock = threading.Lock()
        self._pending: dict[Receipt, int] = {}  # receipt -> publish time (µs)
        self._newest: dict[str, int] = {}  # subscription -> newest publish time pulled
        # token -> (receipts, outputs left, parent tokens): a keyed stage's outputs hold the
        # tokens of the inputs they came from, so a message finishes only when the last stage's
        # outputs reached their sinks.
        self._groups: dict[int, tuple[list[Receipt], int, list[int]]] = {}
        self._next_token = 1
        self.finished_count = 0

    def enable(self, max_in_flight: int = 0) -> None:
        """Starts tracking: the graph's completion reports (pipelines.core.completion) come
        here from now on."""
        self.enabled = True
        self.max_in_flight = max_in_flight
        install(self)

    def reset(self) -> None:
        with self._lock:
            self._pending.clear()
            self._newest.clear()
            self._groups.clear()
            self.finished_count = 0
        self.enabled = False
        self.max_in_flight = 0
        install(None)
        _REPLAY.reset()

    # -- source side ---------------------------------------------------------------------------

    def admit(self) -> int:
        """How many more messages the puller may take now (a large number when unbounded)."""
        if not self.enabled or not self.max_in_flight:
            return 1 << 30
        with self._lock:
            return max(0, self.max_in_flight - len(self._pending))

    def pulled(self, subscription: str, messages: Iterable[tuple[str, int]]) -> None:
        """Records (message id, publish time µs) pairs pulled from ``subscription``."""
        if not self.enabled:
            return
        pairs = list(messages)
        with self._lock:
            for message_id, publish_us in pairs:
                self._pending[(subscription, message_id)] = publish_us
                if publish_us > self._newest.get(subscription, 0):
                    self._newest[subscription] = publish_us
        _REPLAY.pulled(subscription, [publish_us for _, publish_us in pairs])

    def caught_up(self, subscription: str) -> None:
        """A pull of ``subscription`` returned nothing: what was replayed has all come."""
        if self.enabled:
            _REPLAY.pulled(subscription, [])

    def reopen(self, receipt: Receipt, publish_us: int) -> None:
        """Marks a finished message unfinished again, until the outputs it is now given reach
        their sinks (a waiting label's dead letter): meanwhile the checkpoint holds it, so a
        crash replays it."""
        if not self.enabled or publish_us <= 0:  # no publish time: no point to seek to
            return
        with self._lock:
            self._pending.setdefault(receipt, publish_us)

    # -- sink side -----------------------------------------------------------------------------

    def finish(self, receipts: Iterable[Receipt]) -> None:
        if not self.enabled:
            return
        with self._lock:
            for receipt in receipts:
                if self._pending.pop(receipt, None) is not None:
                    self.finished_count += 1

    def hold(self, receipts: Sequence[Receipt], outputs: int) -> int:
        """Groups receipts that finish when ``outputs`` outputs were released; returns the token
        the outputs carry (0 when there is nothing to wait for)."""
        if not self.enabled:
            return 0
        if outputs <= 0:
            self.finish(receipts)
            return 0
        return self._group(list(receipts), outputs, [])

    def chain(self, tokens: Iterable[int], outputs: int) -> int:
        """For a stage between two others: its inputs carried ``tokens`` (one per input); its
        ``outputs`` outputs carry the returned token, and each input token is released once all
        of them were. With no output, the inputs are released at once."""
        if not self.enabled:
            return 0
        parents = [t for t in tokens if t]
        if outputs <= 0 or not parents:
            for parent in parents:
                self.release(parent)
            return 0
        return self._group([], outputs, parents)

    def _group(self, receipts: list[Receipt], outputs: int, parents: list[int]) -> int:
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._groups[token] = (receipts, outputs, parents)
        return token

    def release(self, token: int) -> None:
        """One output of group ``token`` reached its sink (or the next stage's group)."""
        if not self.enabled or not token:
            return
        with self._lock:
            group = self._groups.get(token)
            if group is None:
                return
            receipts, left, parents = group
            if left > 1:
                self._groups[token] = (receipts, left - 1, parents)
                return
            del self._groups[token]
        self.finish(receipts)
        for parent in parents:
            self.release(parent)

    # -- checkpoint ----------------------------------------------------------------------------

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def newest(self) -> dict[str, int]:
        """Per subscription: the newest publish time pulled."""
        with self._lock:
            return dict(self._newest)

    def resume_points(self) -> dict[str, int]:
        """Per subscription: the publish time from which redelivery recovers everything
        unfinished (the oldest pending message, else the newest pulled)."""
        with self._lock:
            points = dict(self._newest)
            for (subscription, _), publish_us in self._pending.items():
                if publish_us < points.get(subscription, 1 << 62):
                    points[subscription] = publish_us
            return points


class Replay:
    """What a restarted job got again (process-wide; thread-safe): per subscription, the
    messages published no later than the newest its predecessor had pulled (``bounds``, from the
    checkpoint), counted as they are pulled. A subscription's replay is over when a pull returns
    nothing or a message published past its bound plus the seek margin (publish times are not
    ordered) arrives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checkpoint_written_us = 0  # 0: the job did not resume from a checkpoint
        self.sought: dict[str, int] = {}
        self._bounds: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._open: set[str] = set()

    def start(self, written_us: int, sought: dict[str, int], bounds: dict[str, int]) -> None:
        with self._lock:
            self.checkpoint_written_us = written_us
            self.sought = dict(sought)
            self._bounds = {s: bounds.get(s, at) for s, at in sought.items()}
            self._counts = dict.fromkeys(sought, 0)
            self._open = set(sought)

    def pulled(self, subscription: str, publish_us: Sequence[int]) -> None:
        with self._lock:
            bound = self._bounds.get(subscription)
            if bound is None:
                return
            self._counts[subscription] += sum(1 for us in publish_us if us <= bound)
            if not publish_us or max(publish_us) > bound + SEEK_MARGIN_US:
                self._open.discard(subscription)

    @property
    def resumed(self) -> bool:
        return bool(self.checkpoint_written_us)

    @property
    def done(self) -> bool:
        """Whether every sought subscription's replay is over."""
        with self._lock:
            return not self._open

    def counts(self) -> dict[str, int]:
        """Per subscription: the messages replayed so far."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        self.start(0, {}, {})


_TRACKER = Tracker()
_REPLAY = Replay()


def tracker() -> Tracker:
    """The process-wide tracker (the DirectRunner runs every step in this process)."""
    return _TRACKER


def replay() -> Replay:
    """The process-wide record of what this job resumed from (``seek_to_checkpoint``)."""
    return _REPLAY


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    return data


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, int]:
    """Subscription -> publish time (µs) from a checkpoint file; {} when there is none."""
    return {str(k): int(v) for k, v in _read(path).get("resume_from_us", {}).items()}


def write_checkpoint(
    path: str | os.PathLike[str], points: dict[str, int], newest: dict[str, int] | None = None
) -> None:
    """Atomically replaces the checkpoint (write, fsync, rename): never half a file. ``newest``:
    per subscription, the newest publish time pulled (what a restart counts as replayed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    content = {
        "resume_from_us": points,
        "newest_pulled_us": newest or {},
        "written_at_us": time.time_ns() // 1000,
    }
    with open(tmp, "w") as fh:
        json.dump(content, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


class CheckpointWriter(threading.Thread):
    """Writes the tracker's resume points every ``interval_s`` (a daemon thread). A subscription
    the job has not pulled from yet keeps the point of the previous checkpoint."""

    def __init__(self, path: str | os.PathLike[str], interval_s: float = 0.5) -> None:
        super().__init__(name="rillet-checkpoint", daemon=True)
        self.path = Path(path)
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        self._previous = read_checkpoint(self.path)
        self._previous_newest = {
            str(k): int(v) for k, v in _read(self.path).get("newest_pulled_us", {}).items()
        }
        # What the file holds: unchanged points are not rewritten.
        self._written: tuple[dict[str, int], dict[str, int]] = (
            self._previous,
            self._previous_newest,
        )

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.write_once()

    def write_once(self) -> None:
        points = {**self._previous, **tracker().resume_points()}
        newest = {**self._previous_newest, **tracker().newest()}
        if points and (points, newest) != self._written:
            write_checkpoint(self.path, points, newest)
            self._written = (points, newest)

    def stop(self) -> None:
        self._stop_event.set()


def seek_to_checkpoint(
    path: str | os.PathLike[str], subscriptions: Sequence[str], margin_us: int = SEEK_MARGIN_US
) -> dict[str, int]:
    """Seeks each subscription in the checkpoint back to its resume point minus ``margin_us``
    (retained acknowledged messages become deliverable again); returns what was sought, and
    starts counting the replay (``replay()``)."""
    from google.cloud import pubsub_v1
    from google.protobuf import timestamp_pb2

    content = _read(path)
    points = read_checkpoint(path)
    sought: dict[str, int] = {}
    subscriber: Any = pubsub_v1.SubscriberClient()
    try:
        for subscription in subscriptions:
            if subscription not in points:
                continue
            at_us = max(0, points[subscription] - margin_us)
            stamp = timestamp_pb2.Timestamp(
                seconds=at_us // 1_000_000, nanos=at_us % 1_000_000 * 1000
            )
            subscriber.seek(request={"subscription": subscription, "time": stamp})
            sought[subscription] = at_us
            _LOGGER.info("resume: %s sought back to publish time %d µs", subscription, at_us)
    finally:
        subscriber.close()
    if sought:
        # A checkpoint written before it held the newest pulled: the resume point bounds it.
        newest = {str(k): int(v) for k, v in content.get("newest_pulled_us", {}).items()}
        newest = {**points, **newest}
        _REPLAY.start(
            int(content.get("written_at_us", 0)) or time.time_ns() // 1000, sought, newest
        )
    return sought
