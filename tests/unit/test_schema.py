import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.schema import (
    MAX_MESSAGE_BYTES,
    InvalidEvent,
    format_rfc3339,
    parse_label,
    parse_rfc3339,
    parse_transaction,
)
from tests.events import handbook_json

GOOD = {
    "schema_version": 1,
    "transaction_id": "1093",
    "tx_datetime": "2018-04-01T07:19:05Z",
    "customer_id": "596",
    "terminal_id": "3156",
    "amount": 57.16,
}


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_transaction() -> None:
    tx = parse_transaction(encode(GOOD), publish_time_us=5)
    assert tx.transaction_id == "1093"
    assert tx.event_time_us == 1522567145_000_000
    assert tx.fields["amount"] == 57.16 and tx.publish_time_us == 5
    assert parse_transaction(handbook_json(tx)) == parse_transaction(encode(GOOD))


def test_valid_label() -> None:
    body = {k: v for k, v in GOOD.items() if k != "amount"} | {"is_fraud": 1}
    assert parse_label(encode(body)).is_fraud == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_utf8"),
        (b"[1, 2]", "not_object"),
        (encode({**GOOD, "extra": 1}), "unknown_field"),
        (encode({k: v for k, v in GOOD.items() if k != "amount"}), "missing_field"),
        (encode({**GOOD, "schema_version": 2}), "unknown_schema_version"),
        (encode({**GOOD, "schema_version": "1"}), "unknown_schema_version"),
        (encode({**GOOD, "amount": "57.16"}), "invalid_amount"),
        (encode({**GOOD, "amount": True}), "invalid_amount"),
        (encode({**GOOD, "amount": -0.01}), "invalid_amount"),
        (encode({**GOOD, "amount": 1e12}), "invalid_amount"),
        (
            b'{"schema_version":1,"transaction_id":"1","tx_datetime":"2018-04-01T00:00:00Z",'
            b'"customer_id":"1","terminal_id":"1","amount":NaN}',
            "invalid_number",
        ),
        (
            b'{"schema_version":1,"transaction_id":"1","tx_datetime":"2018-04-01T00:00:00Z",'
            b'"customer_id":"1","terminal_id":"1","amount":Infinity}',
            "invalid_number",
        ),
        (b'{"schema_version":1,"schema_version":1}', "duplicate_field"),
        (encode({**GOOD, "transaction_id": ""}), "invalid_id"),
        (encode({**GOOD, "customer_id": 596}), "invalid_id"),
        (encode({**GOOD, "terminal_id": "a b"}), "invalid_id"),
        (encode({**GOOD, "tx_datetime": "2018-04-01 07:19:05"}), "invalid_timestamp"),
        (encode({**GOOD, "tx_datetime": "yesterday"}), "invalid_timestamp"),
        (encode({**GOOD, "tx_datetime": "1990-01-01T00:00:00Z"}), "timestamp_too_old"),
        (encode({**GOOD, "tx_datetime": "2999-01-01T00:00:00Z"}), "timestamp_in_future"),
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversized"),
    ],
)
def test_invalid_transactions_have_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(payload)
    assert info.value.reason == reason


def test_label_must_be_zero_or_one() -> None:
    body = {k: v for k, v in GOOD.items() if k != "amount"} | {"is_fraud": 2}
    with pytest.raises(InvalidEvent, match="invalid_label"):
        parse_label(encode(body))


def test_rfc3339_offsets_and_fractions() -> None:
    assert parse_rfc3339("2018-04-01T09:19:05.25+02:00") == parse_rfc3339("2018-04-01T07:19:05.25Z")
    assert (
        format_rfc3339(parse_rfc3339("2018-04-01T07:19:05.000001Z"))
        == "2018-04-01T07:19:05.000001Z"
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(InvalidEvent):
        parse_transaction(data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*GOOD, "is_fraud", "other"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
    )
)
def test_arbitrary_objects_are_valid_or_rejected(obj: dict) -> None:
    try:
        tx = parse_transaction(json.dumps(obj).encode())
    except InvalidEvent as exc:
        assert exc.reason
    else:
        assert tx.fields["amount"] >= 0 and tx.transaction_id
