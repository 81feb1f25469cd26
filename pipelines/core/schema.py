"""The transaction and label streams' messages, validated strictly against their declaration.

The streams are declared in the definitions file (pipelines/core/declarations.py,
docs/specs/definitions.md): fields and types, the id and event-time fields, the label field.
Every message on the input topics is a UTF-8 JSON object. Validation is strict on purpose: an event
that does not match the schema exactly is rejected with a machine-readable reason and goes to the
dead-letter topic with its original bytes, never silently coerced.

The handbook's streams (pipelines/workloads/handbook.yaml), for example. Transaction event::

    {"schema_version": 1, "transaction_id": "1093", "tx_datetime": "2018-04-01T07:19:05Z",
     "customer_id": "596", "terminal_id": "3156", "amount": 57.16}

Label event (published when the fraud label becomes known, 7 days after the transaction)::

    {"schema_version": 1, "transaction_id": "1093", "tx_datetime": "2018-04-01T07:19:05Z",
     "customer_id": "596", "terminal_id": "3156", "is_fraud": 0}

Identifiers (``id`` fields) are strings of 1-64 characters from ``[A-Za-z0-9._:-]``. Times are
RFC 3339 with an explicit offset and are kept as integer microseconds since the epoch (UTC).
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipelines.core.declarations import EventStream, Field, LabelStream

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "SHAPE_REASONS",
    "EventParser",
    "InvalidEvent",
    "Label",
    "Transaction",
    "format_rfc3339",
    "parse_label",
    "parse_rfc3339",
    "parse_transaction",
    "transaction_order_key",
]

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 4096
# Event times outside [MIN_EVENT_TIME, now + MAX_FUTURE] are rejected: a timestamp decades in the
# past or days in the future is a producer bug, and would corrupt windows if accepted.
MIN_EVENT_TIME_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_US = 24 * 3600 * 1_000_000
MAX_AMOUNT = 1e9
# Numbers without declared bounds stay within this magnitude (a float64 holds it exactly enough).
MAX_MAGNITUDE = 1e15

# \A...\Z, not ^...$ ("$" also matches before a trailing newline); ASCII digits only (\d would
# match any Unicode digit, and int() accepts those); offsets limited to RFC 3339's 00-23:00-59.
_ID_RE = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
_RFC3339_RE = re.compile(
    r"\A\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?"
    r"([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z",
    re.ASCII,
)


class InvalidEvent(ValueError):
    """Raised by the parsers; ``reason`` is a stable code, ``detail`` a human explanation."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StageRecord:
    """What the keyed feature stages shuffle between them (transactions, labels and the records
    of pipelines/core/batches.py): the marker their deterministic coder is registered for
    (pipelines/transforms/coders.py), so no value is pickled across a shuffle."""

    __slots__ = ()


class _Record(StageRecord):
    """A validated event: its id, its event time and its other declared fields by name.

    ``fields`` holds the stream's declared fields other than the id and the event time, in the
    definitions file's order (pipelines/core/declarations.py); read them there
    (``tx.fields["amount"]``): they are not attributes."""

    __slots__ = ()
    transaction_id: str
    event_time_us: int
    fields: dict[str, Any]

    def to_json(self, stream: EventStream) -> bytes:
        """The event as a message of ``stream`` (the job's: no default, so that an event is never
        re-serialised with another file's stream)."""
        body: dict[str, Any] = {
            "schema_version": stream.version,
            stream.id_field: self.transaction_id,
        }
        for f in stream.fields:
            if f.name == stream.time_field:
                body[f.name] = format_rfc3339(self.event_time_us)
            elif isinstance(self, Label) and f.name == getattr(stream, "label_field", None):
                body[f.name] = self.is_fraud
            elif f.name != stream.id_field:
                body[f.name] = self.fields[f.name]
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True, eq=True)
class Transaction(_Record):
    """A validated event of the transaction stream. Times are microseconds since the epoch (UTC).

    ``message_id``: the Pub/Sub message it came from ("" when not from Pub/Sub): tells a
    redelivery of the same message (harmless) from a second message reusing the id (a
    duplicate, dead-lettered)."""

    transaction_id: str
    event_time_us: int
    fields: dict[str, Any]
    publish_time_us: int = 0
    message_id: str = ""


@dataclass(frozen=True, slots=True, eq=True)
class Label(_Record):
    """A validated label for an earlier transaction (event time = the transaction's).

    ``is_fraud`` is the label's value (the stream's ``label`` field, 0 or 1); ``fields`` its
    other declared fields (those that route it to its entities)."""

    transaction_id: str
    event_time_us: int
    fields: dict[str, Any]
    is_fraud: int
    publish_time_us: int = 0
    message_id: str = ""


def transaction_order_key(transaction_id: str) -> tuple[int, str]:
    """Tie-break order for transactions at the same instant: "lower transaction id first".

    Ids are strings; ordering by (length, text) equals numeric order for decimal ids without
    leading zeros (the reference dataset) and plain text order for fixed-length ids (UUIDs).
    """
    return (len(transaction_id), transaction_id)


def parse_rfc3339(value: str) -> int:
    """Parses an RFC 3339 timestamp with an explicit offset into epoch microseconds."""
    if not isinstance(value, str) or not _RFC3339_RE.match(value):
        raise InvalidEvent("invalid_timestamp", f"not an RFC 3339 time with offset: {value!r:.80}")
    text = value.replace("z", "Z").replace("t", "T").replace(" ", "T")
    frac = ""
    main = text
    if "." in text:
        main, rest = text.split(".", 1)
        digits = re.match(r"\d+", rest)
        assert digits is not None
        frac = digits.group(0)
        main = main + rest[len(frac) :]
    try:
        dt = datetime.fromisoformat(main.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidEvent("invalid_timestamp", str(exc)) from exc
    # Whole seconds via integer arithmetic (no float rounding), then the fraction truncated to µs.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    delta = dt - epoch
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000
    return micros + int((frac + "000000")[:6])


def format_rfc3339(micros: int) -> str:
    """Formats epoch microseconds as RFC 3339 UTC ("Z"), with a fraction only when needed."""
    seconds, frac = divmod(int(micros), 1_000_000)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:06d}Z" if frac else f"{text}Z"


def _reject_constant(name: str) -> Any:
    raise InvalidEvent("invalid_number", f"{name} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidEvent("duplicate_field", repr(key)[:200])
        obj[key] = value
    return obj


def _load_object(data: bytes, fields: Sequence[str], version: int) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray):
        raise InvalidEvent("not_bytes", type(data).__name__)
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("oversized", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", str(exc)) from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_object)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent("not_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", type(obj).__name__)
    unknown = sorted(set(obj) - {"schema_version", *fields})
    if unknown:
        raise InvalidEvent("unknown_field", ",".join(map(repr, unknown))[:200])
    missing = [f for f in ("schema_version", *fields) if f not in obj]
    if missing:
        raise InvalidEvent("missing_field", ",".join(missing))
    found = obj["schema_version"]
    if type(found) is not int or found != version:
        raise InvalidEvent("unknown_schema_version", repr(found)[:40])
    return obj


def _identifier(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidEvent("invalid_id", f"{name}={value!r:.80}")
    return value


def _event_time(obj: dict[str, Any], name: str, now_us: int | None) -> int:
    micros = parse_rfc3339(obj[name])
    now = int(time.time() * 1_000_000) if now_us is None else now_us
    if micros < MIN_EVENT_TIME_US:
        raise InvalidEvent("timestamp_too_old", obj[name])
    if micros > now + MAX_FUTURE_US:
        raise InvalidEvent("timestamp_in_future", obj[name])
    return micros


SHAPE_REASONS = frozenset(
    {
        "not_bytes",
        "oversized",
        "not_utf8",
        "not_json",
        "invalid_number",
        "duplicate_field",
        "not_object",
        "unknown_field",
        "missing_field",
        "unknown_schema_version",
    }
)
TIME_REASONS = frozenset({"invalid_timestamp", "timestamp_too_old", "timestamp_in_future"})


def field_reason(name: str) -> str:
    """The reason of a declared number, integer or text field's bad value."""
    return f"invalid_{name}"


def _number(obj: dict[str, Any], f: Field) -> float | int:
    """A number or integer field, within its declared bounds (reason ``invalid_<field>``)."""
    value = obj[f.name]
    reason = field_reason(f.name)
    kinds = (int,) if f.type == "integer" else (int, float)
    if type(value) not in kinds:
        expected = "a whole number" if f.type == "integer" else "a number"
        raise InvalidEvent(reason, f"{f.name} must be {expected}, got {type(value).__name__}")
    lo = -MAX_MAGNITUDE if f.minimum is None else f.minimum
    hi = MAX_MAGNITUDE if f.maximum is None else f.maximum
    if type(value) is int and not lo <= value <= hi:
        # Checked before float(), which raises OverflowError beyond ~1.8e308.
        raise InvalidEvent(reason, f"integer outside [{lo:g}, {hi:g}] ({value.bit_length()} bits)")
    if f.type == "integer":
        return int(value)
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidEvent(reason, repr(number))
    return number


def _text(obj: dict[str, Any], f: Field) -> str:
    value = obj[f.name]
    reason = field_reason(f.name)
    if not isinstance(value, str) or not 0 < len(value) <= f.max_length:
        raise InvalidEvent(reason, f"{f.name} must be a text of 1-{f.max_length} characters")
    if f.values and value not in f.values:
        raise InvalidEvent(reason, f"{value!r:.40} is not one of {', '.join(f.values)}"[:200])
    return value


class EventParser:
    """Validates the messages of one declared stream (the definitions file's ``events`` or
    ``labels``), strictly: every declared field present, no other, each of its type.

    Reasons (the dead-letter ``reason`` attribute, docs/specs/messages.md): the message's shape
    (not_bytes, oversized, not_utf8, not_json, invalid_number, duplicate_field, not_object,
    unknown_field, missing_field, unknown_schema_version), ``invalid_id`` for an id field,
    ``invalid_timestamp``/``timestamp_too_old``/``timestamp_in_future`` for the time field,
    ``invalid_label`` for the label field and ``invalid_<field>`` for any other field."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.labels = isinstance(stream, LabelStream)
        self._names = stream.names
        self._others = tuple(
            f for f in stream.fields if f.name not in (stream.id_field, stream.time_field)
        )
        self._label = stream.label_field if isinstance(stream, LabelStream) else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (EventParser, (self.stream,))

    @property
    def reasons(self) -> frozenset[str]:
        """Every reason this stream's messages can be rejected with (a closed set)."""
        out = set(SHAPE_REASONS | TIME_REASONS | {"invalid_id"})
        for f in self._others:
            if f.name == self._label:
                out.add("invalid_label")
            elif f.type == "time":
                continue
            elif f.type != "id":
                out.add(field_reason(f.name))
        return frozenset(out)

    def parse(
        self,
        data: bytes,
        publish_time_us: int = 0,
        now_us: int | None = None,
        message_id: str = "",
    ) -> Transaction | Label:
        """One message as a Transaction (or a Label); raises InvalidEvent with the reason."""
        obj = _load_object(data, self._names, self.stream.version)
        tx_id = _identifier(obj, self.stream.id_field)
        event_time = _event_time(obj, self.stream.time_field, now_us)
        fields: dict[str, Any] = {}
        label = 0
        for f in self._others:
            if f.name == self._label:
                value = obj[f.name]
                if type(value) is not int or value not in (0, 1):
                    raise InvalidEvent(
                        "invalid_label", f"{f.name} must be 0 or 1, got {value!r:.40}"
                    )
                label = value
            elif f.type == "id":
                fields[f.name] = _identifier(obj, f.name)
            elif f.type == "time":
                fields[f.name] = _event_time(obj, f.name, now_us)
            elif f.type in ("number", "integer", "label"):
                fields[f.name] = _number(obj, f)
            else:
                fields[f.name] = _text(obj, f)
        if self.labels:
            return Label(tx_id, event_time, fields, label, publish_time_us, message_id)
        return Transaction(tx_id, event_time, fields, publish_time_us, message_id)


@functools.cache
def _default_stream(labels: bool) -> EventStream:
    from pipelines.core.declarations import load_definitions

    defs = load_definitions()
    if labels:
        assert defs.labels is not None
        return defs.labels
    return defs.events


@functools.cache
def _default_parser(labels: bool) -> EventParser:
    return EventParser(_default_stream(labels))


def parse_transaction(
    data: bytes, publish_time_us: int = 0, now_us: int | None = None, message_id: str = ""
) -> Transaction:
    """Validates one message of the handbook's transaction stream (``EventParser`` for any)."""
    tx = _default_parser(False).parse(data, publish_time_us, now_us, message_id)
    assert isinstance(tx, Transaction)
    return tx


def parse_label(
    data: bytes, publish_time_us: int = 0, now_us: int | None = None, message_id: str = ""
) -> Label:
    """Validates one message of the handbook's label stream (``EventParser`` for any)."""
    lb = _default_parser(True).parse(data, publish_time_us, now_us, message_id)
    assert isinstance(lb, Label)
    return lb
