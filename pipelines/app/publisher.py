"""Replay a dataset to the transaction and label topics at a given rate.

The replay merges the two streams in event-time order: each transaction at its time, each label
``label_delay_days`` (7) of event time later, labels first when times tie (a label that is due
must be known before the transactions that need it). Messages are published at ``rate`` events
per second of wall-clock time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd

from pipelines.core.definitions import DAY_US
from pipelines.core.schema import format_rfc3339
from pipelines.core.training_data import to_epoch_us

__all__ = ["Publishable", "ReplayEvent", "publish_events", "replay_events"]


@dataclass(frozen=True)
class ReplayEvent:
    """One message of the replay: which topic, the payload, and its event time."""

    topic: str  # "transactions" or "labels"
    data: bytes
    due_us: int


def replay_events(
    frame: pd.DataFrame,
    label_delay_days: float = 7.0,
    include_labels: bool = True,
) -> list[ReplayEvent]:
    """The replay stream of a simulate()-style frame (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID,
    TERMINAL_ID, TX_AMOUNT, TX_FRAUD), in due order."""
    t = to_epoch_us(frame["TX_DATETIME"])
    ids = frame["TRANSACTION_ID"].astype(str).to_numpy()
    customers = frame["CUSTOMER_ID"].astype(str).to_numpy()
    terminals = frame["TERMINAL_ID"].astype(str).to_numpy()
    amounts = frame["TX_AMOUNT"].to_numpy(np.float64)
    events: list[tuple[int, int, int, ReplayEvent]] = []
    for i in range(len(frame)):
        body = {
            "schema_version": 1,
            "transaction_id": ids[i],
            "tx_datetime": format_rfc3339(int(t[i])),
            "customer_id": customers[i],
            "terminal_id": terminals[i],
        }
        tx = dict(body, amount=float(amounts[i]))
        events.append((int(t[i]), 1, i, ReplayEvent("transactions", _dumps(tx), int(t[i]))))
        if include_labels:
            due = int(t[i] + label_delay_days * DAY_US)
            label = dict(body, is_fraud=int(frame["TX_FRAUD"].iat[i]))
            events.append((due, 0, i, ReplayEvent("labels", _dumps(label), due)))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return [e[3] for e in events]


def _dumps(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Publishable(Protocol):
    """What publish_events needs of a message: a topic name and its bytes."""

    @property
    def topic(self) -> str: ...

    @property
    def data(self) -> bytes: ...


E = TypeVar("E", bound=Publishable)
Rate = float | Callable[[float], float]  # messages/s, or messages/s as of t seconds in


def _paced(events: Sequence[E], rate: Rate) -> Iterator[E]:
    start = time.monotonic()
    due = 0.0  # when the next event is due, in seconds after the start
    for event in events:
        per_s = rate(time.monotonic() - start) if callable(rate) else rate
        if per_s > 0:
            ahead = due - (time.monotonic() - start)
            if ahead > 0.002:
                time.sleep(ahead)
            due += 1.0 / per_s
        yield event


def publish_events(
    events: Sequence[E],
    topics: dict[str, str],
    rate: Rate,
    progress: Callable[[int], None] | None = None,
    attributes: Callable[[E], dict[str, str]] | None = None,
    on_published: Callable[[int, str], None] | None = None,
) -> int:
    """Publishes the events at ``rate`` per second (0 = as fast as possible; a function of the
    seconds since the first message for a varying rate); ``topics`` maps "transactions"/"labels"
    to full topic paths. ``on_published(i, message_id)`` is called as each event is accepted by
    Pub/Sub (from the client's threads). Returns the number published."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01)
    )
    for topic in sorted(set(topics.values())):
        # A missing topic (a misspelt project shows up as one) is a NotFound here, at once,
        # not from a publish future after the replay started.
        publisher.get_topic(topic=topic)
    futures = []
    sent = 0
    try:
        for i, event in enumerate(_paced(events, rate)):
            attrs = attributes(event) if attributes else {}
            future = publisher.publish(topics[event.topic], event.data, **attrs)
            if on_published is not None:
                future.add_done_callback(
                    lambda f, i=i: f.exception() is None and on_published(i, f.result())
                )
            futures.append(future)
            sent += 1
            if len(futures) >= 2000:
                for f in futures:
                    f.result(timeout=120)
                futures = []
            if progress and sent % 100 == 0:
                progress(100)
        for f in futures:
            f.result(timeout=120)
        if progress and sent % 100:
            progress(sent % 100)
    finally:
        publisher.stop()
    return sent


def malformed_examples() -> list[bytes]:
    """A few invalid messages the demo mixes in to show the dead-letter path."""
    good = {
        "schema_version": 1,
        "transaction_id": "x-1",
        "tx_datetime": "2018-04-02T10:00:00Z",
        "customer_id": "1",
        "terminal_id": "1",
        "amount": 10.0,
    }
    return [
        b"not json at all",
        _dumps({**good, "amount": "12.5"}),
        _dumps({k: v for k, v in good.items() if k != "terminal_id"}),
        _dumps({**good, "schema_version": 99}),
        b'{"schema_version":1,"transaction_id":"x-5","tx_datetime":"2018-04-02T10:00:00Z",'
        b'"customer_id":"1","terminal_id":"1","amount":NaN}',
        _dumps({**good, "tx_datetime": "2099-01-01T00:00:00Z"}),
        _dumps({**good, "amount": -3}),
        _dumps({**good, "coupon": "FREE"}),
    ]
