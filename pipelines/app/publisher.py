"""Replay a dataset to the transaction and label topics at a given rate.

The replay merges the two streams in event-time order: each transaction at its time, each label
the label stream's declared delay of event time later (the handbook's: 7 days), labels first when
times tie (a label that is due must be known before the transactions that need it). The messages
are the definitions file's streams, each field read from its dataset column. Messages are
published at ``rate`` events per second of wall-clock time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd

from pipelines.core.declarations import Definitions, EventStream, Field, load_definitions
from pipelines.core.schema import format_rfc3339
from pipelines.core.training_data import to_epoch_us

__all__ = ["Publishable", "ReplayEvent", "publish_events", "replay_events"]


@dataclass(frozen=True)
class ReplayEvent:
    """One message of the replay: which topic, the payload, and its event time."""

    topic: str  # "transactions" or "labels"
    data: bytes
    due_us: int


def _columns(frame: pd.DataFrame, stream: EventStream) -> dict[str, list[object]]:
    """The stream's fields but the time, as JSON-ready values from their dataset columns."""
    out: dict[str, list[object]] = {}
    for f in stream.fields:
        if f.name == stream.time_field:
            continue
        column = frame[f.dataset_column]
        if f.type in ("number",):
            out[f.name] = column.to_numpy(np.float64).tolist()
        elif f.type in ("integer", "label"):
            out[f.name] = column.to_numpy(np.int64).tolist()
        elif f.type == "time":
            out[f.name] = [format_rfc3339(int(v)) for v in to_epoch_us(column)]
        else:
            out[f.name] = column.astype(str).tolist()
    return out


def _messages(frame: pd.DataFrame, stream: EventStream, times: list[str]) -> list[bytes]:
    values = _columns(frame, stream)
    names = [f.name for f in stream.fields]
    out = []
    for i, when in enumerate(times):
        body: dict[str, object] = {"schema_version": stream.version}
        for name in names:
            body[name] = when if name == stream.time_field else values[name][i]
        out.append(_dumps(body))
    return out


def replay_events(
    frame: pd.DataFrame,
    definitions: Definitions | None = None,
    include_labels: bool = True,
) -> list[ReplayEvent]:
    """The replay stream of a dataset frame (one column per declared field, e.g. a
    simulate() frame for the handbook's file, the default), in due order."""
    defs = definitions or load_definitions()
    ev = defs.events
    t = to_epoch_us(frame[ev.field(ev.time_field).dataset_column])
    times = [format_rfc3339(int(x)) for x in t]
    txs = _messages(frame, ev, times)
    labels = None
    if include_labels and defs.labels is not None:
        labels = _messages(frame, defs.labels, times)
        delay = defs.labels.delay_us
    events: list[tuple[int, int, int, ReplayEvent]] = []
    for i in range(len(frame)):
        events.append((int(t[i]), 1, i, ReplayEvent("transactions", txs[i], int(t[i]))))
        if labels is not None:
            due = int(t[i]) + delay
            events.append((due, 0, i, ReplayEvent("labels", labels[i], due)))
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


def malformed_examples(stream: EventStream | None = None) -> list[bytes]:
    """A few invalid messages the demo mixes in to show the dead-letter path: the handbook's
    (``stream`` None), or invalid messages of any declared transaction stream (``stream``):
    each breaks one rule of the stream (not JSON, a number as text, a key field missing, an
    unknown schema version, NaN, a time in the future, a number under its minimum or a text
    outside its values, an undeclared field)."""
    if stream is not None:
        return _malformed_of(stream)
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


def _valid_value(field: Field) -> object:
    """A value of ``field`` its stream accepts (ids and texts as text, numbers in bounds)."""
    if field.numeric:
        low = field.minimum if field.minimum is not None else 0.0
        high = field.maximum if field.maximum is not None else low + 100.0
        return float(min(max(low, 10.0), high))
    if field.values:
        return field.values[0]
    return "1"[: field.max_length]


def _malformed_of(stream: EventStream) -> list[bytes]:
    good: dict[str, object] = {"schema_version": stream.version}
    for f in stream.fields:
        good[f.name] = "x-1" if f.name == stream.id_field else _valid_value(f)
    good[stream.time_field] = "2018-04-02T10:00:00Z"
    numbers = [f for f in stream.fields if f.numeric]
    keys = [f for f in stream.fields if f.type == "id" and f.name != stream.id_field]
    out = [b"not json at all", _dumps({**good, "schema_version": 99})]
    if numbers:
        number = numbers[0]
        out.append(_dumps({**good, number.name: str(good[number.name])}))
        nan = _dumps({**good, number.name: 0.5}).replace(b"0.5", b"NaN")
        out.append(nan)
        if number.minimum is not None:
            out.append(_dumps({**good, number.name: number.minimum - 3}))
    if keys:
        out.append(_dumps({k: v for k, v in good.items() if k != keys[-1].name}))
    out.append(_dumps({**good, stream.time_field: "2099-01-01T00:00:00Z"}))
    texts = [f for f in stream.fields if f.values]
    if texts:
        out.append(_dumps({**good, texts[0].name: "not-a-declared-value"}))
    out.append(_dumps({**good, "coupon": "FREE"}))
    return out
