"""Event schema (version 1) for the transaction and label streams, with strict validation.

Every message on the input topics is a UTF-8 JSON object. Validation is strict on purpose: an event
that does not match the schema exactly is rejected with a machine-readable reason and goes to the
dead-letter topic with its original bytes, never silently coerced.

Transaction event::

    {"schema_version": 1, "transaction_id": "1093", "tx_datetime": "2018-04-01T07:19:05Z",
     "customer_id": "596", "terminal_id": "3156", "amount": 57.16}

Label event (published when the fraud label becomes known, 7 days after the transaction)::

    {"schema_version": 1, "transaction_id": "1093", "tx_datetime": "2018-04-01T07:19:05Z",
     "customer_id": "596", "terminal_id": "3156", "is_fraud": 0}

Identifiers are strings of 1-64 characters from ``[A-Za-z0-9._:-]``. Times are RFC 3339 with an
explicit offset and are kept as integer microseconds since the epoch (UTC).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
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

# \A...\Z, not ^...$ ("$" also matches before a trailing newline); ASCII digits only (\d would
# match any Unicode digit, and int() accepts those); offsets limited to RFC 3339's 00-23:00-59.
_ID_RE = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
_RFC3339_RE = re.compile(
    r"\A\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?"
    r"([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z",
    re.ASCII,
)

_TRANSACTION_FIELDS = (
    "schema_version",
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "terminal_id",
    "amount",
)
_LABEL_FIELDS = (
    "schema_version",
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "terminal_id",
    "is_fraud",
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


@dataclass(frozen=True, slots=True)
class Transaction(StageRecord):
    """A validated card transaction. Times are microseconds since the epoch (UTC)."""

    transaction_id: str
    event_time_us: int
    customer_id: str
    terminal_id: str
    amount: float
    publish_time_us: int = 0
    # The Pub/Sub message it came from ("" when not from Pub/Sub): tells a redelivery of the same
    # message (harmless) from a second message reusing the id (a duplicate, dead-lettered).
    message_id: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "transaction_id": self.transaction_id,
                "tx_datetime": format_rfc3339(self.event_time_us),
                "customer_id": self.customer_id,
                "terminal_id": self.terminal_id,
                "amount": self.amount,
            },
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True, slots=True)
class Label(StageRecord):
    """A validated fraud label for an earlier transaction (event time = the transaction's)."""

    transaction_id: str
    event_time_us: int
    customer_id: str
    terminal_id: str
    is_fraud: int
    publish_time_us: int = 0
    message_id: str = ""  # as Transaction.message_id

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "transaction_id": self.transaction_id,
                "tx_datetime": format_rfc3339(self.event_time_us),
                "customer_id": self.customer_id,
                "terminal_id": self.terminal_id,
                "is_fraud": self.is_fraud,
            },
            separators=(",", ":"),
        ).encode()


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


def _load_object(data: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
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
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise InvalidEvent("unknown_field", ",".join(map(repr, unknown))[:200])
    missing = [f for f in fields if f not in obj]
    if missing:
        raise InvalidEvent("missing_field", ",".join(missing))
    version = obj["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEvent("unknown_schema_version", repr(version)[:40])
    return obj


def _identifier(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidEvent("invalid_id", f"{name}={value!r:.80}")
    return value


def _event_time(obj: dict[str, Any], now_us: int | None) -> int:
    micros = parse_rfc3339(obj["tx_datetime"])
    now = int(time.time() * 1_000_000) if now_us is None else now_us
    if micros < MIN_EVENT_TIME_US:
        raise InvalidEvent("timestamp_too_old", obj["tx_datetime"])
    if micros > now + MAX_FUTURE_US:
        raise InvalidEvent("timestamp_in_future", obj["tx_datetime"])
    return micros


def parse_transaction(
    data: bytes, publish_time_us: int = 0, now_us: int | None = None, message_id: str = ""
) -> Transaction:
    """Validates one transaction message; raises InvalidEvent with the reason."""
    obj = _load_object(data, _TRANSACTION_FIELDS)
    amount = obj["amount"]
    if type(amount) not in (int, float):
        raise InvalidEvent(
            "invalid_amount", f"amount must be a number, got {type(amount).__name__}"
        )
    if type(amount) is int and not 0 <= amount <= MAX_AMOUNT:
        # Checked before float(), which raises OverflowError beyond ~1.8e308.
        raise InvalidEvent(
            "invalid_amount", f"integer outside [0, {MAX_AMOUNT:.0f}] ({amount.bit_length()} bits)"
        )
    amount = float(amount)
    if not math.isfinite(amount) or amount < 0 or amount > MAX_AMOUNT:
        raise InvalidEvent("invalid_amount", repr(amount))
    return Transaction(
        transaction_id=_identifier(obj, "transaction_id"),
        event_time_us=_event_time(obj, now_us),
        customer_id=_identifier(obj, "customer_id"),
        terminal_id=_identifier(obj, "terminal_id"),
        amount=amount,
        publish_time_us=publish_time_us,
        message_id=message_id,
    )


def parse_label(
    data: bytes, publish_time_us: int = 0, now_us: int | None = None, message_id: str = ""
) -> Label:
    """Validates one label message; raises InvalidEvent with the reason."""
    obj = _load_object(data, _LABEL_FIELDS)
    is_fraud = obj["is_fraud"]
    if type(is_fraud) is not int or is_fraud not in (0, 1):
        raise InvalidEvent("invalid_label", f"is_fraud must be 0 or 1, got {is_fraud!r:.40}")
    return Label(
        transaction_id=_identifier(obj, "transaction_id"),
        event_time_us=_event_time(obj, now_us),
        customer_id=_identifier(obj, "customer_id"),
        terminal_id=_identifier(obj, "terminal_id"),
        is_fraud=is_fraud,
        publish_time_us=publish_time_us,
        message_id=message_id,
    )
