"""ParseEvents: Pub/Sub messages to validated events, and everything else to dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.core.completion import completion
from pipelines.core.declarations import EventStream
from pipelines.core.messages import DeadLetter, publish_time_us
from pipelines.core.schema import EventParser, InvalidEvent

__all__ = ["DEAD_LETTER_TAG", "ParseEvents", "ParsedEvents"]

DEAD_LETTER_TAG = "dead_letter"
METRICS_NAMESPACE = "rillet"


class ParsedEvents(NamedTuple):
    valid: beam.PCollection
    dead_letters: beam.PCollection


class _ParseDoFn(beam.DoFn):
    def __init__(self, kind: str, source: str, stream: EventStream) -> None:
        self._kind = kind
        self._source = source
        self._parse = EventParser(stream).parse
        self._valid = Metrics.counter(METRICS_NAMESPACE, f"{kind}s_valid")
        self._invalid = Metrics.counter(METRICS_NAMESPACE, f"{kind}s_dead_lettered")

    def process(self, message: Any) -> Iterator[Any]:
        # ReadFromPubSub(with_attributes=True) gives PubsubMessage; plain bytes are accepted too
        # (tests, batch sources).
        data = message.data if hasattr(message, "data") else message
        attributes = dict(getattr(message, "attributes", None) or {})
        message_id = getattr(message, "message_id", None) or ""
        try:
            event = self._parse(
                data, publish_time_us=publish_time_us(message), message_id=message_id
            )
        except InvalidEvent as exc:
            self._invalid.inc()
            Metrics.counter(METRICS_NAMESPACE, f"dead_letter_{exc.reason}").inc()
            payload = data if isinstance(data, bytes) else repr(data).encode()
            # Finished once published (local_runner.recovery), like every stage's dead letters.
            token = completion().hold([(self._source, message_id)], 1) if message_id else 0
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                DeadLetter(
                    payload,
                    exc.reason,
                    exc.detail,
                    self._source,
                    "parse",
                    attributes,
                    message_id,
                    token,
                ),
            )
            return
        self._valid.inc()
        yield event


class ParseEvents(beam.PTransform):
    """Validates transaction or label messages against their declared stream.

    Args:
      kind: "transaction" or "label".
      source: where the messages come from (recorded on dead letters).
      stream: the declared stream (the job's definitions' ``events`` or ``labels``).

    Returns:
      ParsedEvents(valid, dead_letters): Transaction/Label objects, and DeadLetter objects with
      the original bytes and the reason.

    Example Usage::

        parsed = messages | "ParseTransactions" >> ParseEvents(
            "transaction", "transactions-sub", defs.events
        )
    """

    def __init__(self, kind: str, source: str, stream: EventStream | None) -> None:
        super().__init__()
        if kind not in ("transaction", "label"):
            raise ValueError(f"kind must be 'transaction' or 'label', not {kind!r}")
        self._kind = kind
        self._source = source
        if stream is None:
            raise ValueError("the definitions declare no labels stream")
        self._stream = stream

    def expand(self, messages: beam.PCollection) -> ParsedEvents:
        out = messages | "Validate" >> beam.ParDo(
            _ParseDoFn(self._kind, self._source, self._stream)
        ).with_outputs(DEAD_LETTER_TAG, main="valid")
        return ParsedEvents(out.valid, out[DEAD_LETTER_TAG])
