"""``rillet tail``'s pure parts: the filter (parsing, the Pub/Sub expression, the same check
client side), the revision keeping, the printed line, and the pull loop on a fake subscriber."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.app.errors import UserError
from pipelines.app.tail import (
    DEAD_LETTER_FILTER_KEYS,
    PREDICTION_WIDTHS,
    Columns,
    Condition,
    Latest,
    TailConfig,
    _loop,
    filter_expression,
    format_line,
    matches,
    parse_filters,
)


def test_filters_become_one_pubsub_expression() -> None:
    conditions = parse_filters(["risk_band=high", "model_version = v2 ", "correction!=true"])
    assert conditions == (
        Condition("risk_band", "high"),
        Condition("model_version", "v2"),
        Condition("correction", "true", negated=True),
    )
    assert filter_expression(conditions) == (
        'attributes.correction != "true" AND attributes.risk_band = "high" AND '
        'attributes.model_version = "v2"'
    )
    assert filter_expression(()) == ""


def test_one_keys_values_are_alternatives() -> None:
    conditions = parse_filters(["risk_band=high", "risk_band=medium", "risk_band=high"])
    assert len(conditions) == 2  # the repeated one once
    expression = filter_expression(conditions)
    assert expression == '(attributes.risk_band = "high" OR attributes.risk_band = "medium")'
    assert matches(conditions, {"risk_band": "medium"})
    assert not matches(conditions, {"risk_band": "low"})


def test_the_client_side_check_is_the_expression() -> None:
    conditions = parse_filters(["risk_band=high", "model_version!=v1"])
    assert matches(conditions, {"risk_band": "high", "model_version": "v2"})
    assert not matches(conditions, {"risk_band": "high", "model_version": "v1"})
    assert not matches(conditions, {"risk_band": "low", "model_version": "v2"})
    # Pub/Sub: "=" needs the attribute, "!=" holds without it.
    assert not matches(conditions, {"model_version": "v2"})
    assert matches(conditions, {"risk_band": "high"})
    assert matches((), {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("band=high", "unknown attribute 'band'; expected key=value or key!=value with key one of"),
        ("risk_band", "expected key=value or key!=value with key one of risk_band, model_version"),
        ("=high", "expected key=value"),
        ("revision=3", "unknown attribute 'revision'"),
        ("risk_band=HIGH", "risk_band is one of low, medium, high"),
        ("correction=yes", "correction is one of true, false"),
        ("model_version=", "the value must be non-empty"),
        ('model_version=a"b', "without quotes or backslashes"),
        ("model_version=a\\b", "without quotes or backslashes"),
        ("model_version=a\nb", "printable"),
    ],
)
def test_a_bad_filter_names_what_is_allowed(text: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_filters([text])
    assert expected in caught.value.message
    assert caught.value.exit_code == 2


def test_a_filter_past_pubsubs_limit_is_refused() -> None:
    with pytest.raises(UserError, match="more than its limit of 256"):
        parse_filters([f"model_version=v{i:040d}" for i in range(5)])


def test_the_highest_revision_is_kept() -> None:
    latest = Latest()
    assert latest.offer("a", 1) == ("new", None)
    assert latest.offer("a", 1) == ("superseded", 1)  # a redelivery
    assert latest.offer("a", 3) == ("update", 1)
    assert latest.offer("a", 2) == ("superseded", 3)  # an older correction, late
    assert latest.offer("b", 5) == ("new", None)
    assert latest.revision("a") == 3 and latest.revision("b") == 5


def test_the_oldest_transactions_are_forgotten_past_max_ids() -> None:
    latest = Latest(max_ids=2)
    latest.offer("a", 1)
    latest.offer("b", 1)
    latest.offer("a", 2)  # a is the most recent now
    latest.offer("c", 1)
    assert latest.revision("b") is None and latest.revision("a") == 2


def test_a_line_says_what_it_replaces() -> None:
    body = {
        "event_time": "2018-04-02T10:01:00Z",
        "transaction_id": "tx-1",
        "score": 0.93,
        "risk_band": "high",
        "model_version": "v1",
        "revision": 1_765_000_000_000_003,  # a fence (microseconds), not a count
        "correction": True,
    }
    first = format_line({**body, "revision": 1_765_000_000_000_001, "correction": False}, "new", 1)
    assert "\x1b[31mhigh" in first  # red, on a terminal (typer.echo strips it elsewhere)
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    assert first.split() == ["2018-04-02T10:01:00Z", "tx-1", "0.9300", "high", "v1", "1"]
    update = format_line(body, "update", 2)
    assert update.endswith("2  correction, replaces revision 1")


def test_rev_is_the_rank_of_the_revisions_kept() -> None:
    """The contract's revision is a fence in microseconds: the line shows 1, 2, 3 per
    transaction, in the order the increasing revisions were kept."""
    latest = Latest()
    fence = 1_765_000_000_000_000
    for revision, rank in ((fence, 1), (fence + 7, 2), (fence + 3, 2), (fence + 9, 3)):
        latest.offer("a", revision)
        assert latest.rank("a") == rank
    latest.offer("b", fence + 5)
    assert latest.rank("b") == 1 and latest.rank("c") is None


def plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


def test_columns_fit_full_version_ids_and_long_ids() -> None:
    """A 22-character version id fits the model column (no line pushed out of line); a longer
    value widens its column for the lines that follow, which align with each other."""
    columns = Columns(PREDICTION_WIDTHS)
    header = columns.header()
    body = {
        "event_time": "2018-04-02T10:01:00Z",
        "transaction_id": "53056",
        "score": 0.0123,
        "risk_band": "low",
        "model_version": "20261207T123307253712Z",
    }
    lines = [plain(format_line(body, "new", 1, columns))]
    assert header.index("rev") == lines[0].rindex(
        "1"
    )  # the rev column starts where its header does
    assert header.index("model") == lines[0].index("20261207T123307253712Z")
    uuid_body = {**body, "transaction_id": "6f1c1f3e-2b7a-4c43-9d7e-0a8f5d1b2c3d"}
    lines += [plain(format_line(uuid_body, "new", 1, columns)) for _ in range(2)]
    assert lines[1].index("0.0123") == lines[2].index("0.0123")
    assert columns.header().index("model") == lines[2].index("20261207T123307253712Z")


def dead_letter(original_id: str, reason: str, ack_id: str) -> Any:
    from datetime import UTC, datetime

    attributes = {
        "reason": reason,
        "detail": "Expecting value:\n line 1 column 1 (char 0)",
        "source": "transactions",
        "stage": "parse",
        "original_message_id": original_id,
    }
    return SimpleNamespace(
        ack_id=ack_id,
        message=SimpleNamespace(
            data=b"not json",
            attributes=attributes,
            message_id=f"dl-{ack_id}",
            publish_time=datetime(2026, 12, 7, 21, 3, 12, 500_000, tzinfo=UTC),
        ),
    )


def test_dead_letters_print_their_reason_once_per_original_message() -> None:
    from pipelines.app.tail import Counts

    subscriber = FakeSubscriber(
        [
            [
                dead_letter("m1", "not_json", "1"),
                dead_letter("m1", "not_json", "2"),  # redelivered: once
                dead_letter("m2", "duplicate_transaction_id", "3"),  # filtered out
                dead_letter("m3", "not_json", "4"),
            ]
        ]
    )
    printed: list[str] = []
    counts = Counts()
    conditions = parse_filters(["reason=not_json"], DEAD_LETTER_FILTER_KEYS)
    config = TailConfig(
        "p",
        topic="dead-letter",
        conditions=conditions,
        timeout_s=0.2,
        poll_s=0.05,
        dead_letters=True,
    )
    _loop(subscriber, "sub", config, counts, printed.append, lambda line: None)
    assert len(printed) == 2
    cells = printed[0].split()
    assert cells[:5] == ["2026-12-07T21:03:12Z", "not_json", "parse", "transactions", "m1"]
    assert printed[0].endswith("Expecting value: line 1 column 1 (char 0)")  # one line
    assert "m3" in printed[1]
    assert (counts.received, counts.printed, counts.filtered_out, counts.superseded) == (4, 2, 1, 1)
    assert counts.summary(dead_letters=True).endswith("redelivered 1")
    with pytest.raises(UserError, match=r"unknown attribute 'risk_band'.*reason, stage"):
        parse_filters(["risk_band=high"], DEAD_LETTER_FILTER_KEYS)


def test_a_dead_letter_on_the_prediction_topic_says_where_to_look() -> None:
    from pipelines.app.tail import Counts

    notes: list[str] = []
    _loop(
        FakeSubscriber([[dead_letter("m1", "not_json", "1")]]),
        "sub",
        TailConfig("p", timeout_s=0.2, poll_s=0.05),
        Counts(),
        lambda line: None,
        notes.append,
    )
    assert notes == [
        "tail: skipped message dl-1: not a prediction message (dead letters? "
        "'rillet tail --dead-letters')"
    ]


def message(tx: str, revision: int, band: str, ack_id: str) -> Any:
    body = {"transaction_id": tx, "revision": revision, "risk_band": band, "score": 0.5}
    attributes = {"transaction_id": tx, "risk_band": band, "revision": str(revision)}
    return SimpleNamespace(
        ack_id=ack_id,
        message=SimpleNamespace(
            data=json.dumps(body).encode(), attributes=attributes, message_id=ack_id
        ),
    )


class FakeSubscriber:
    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches
        self.acked: list[str] = []

    def pull(self, request: dict[str, Any], timeout: float, retry: Any) -> Any:
        batch = self.batches.pop(0) if self.batches else []
        assert len(batch) <= request["max_messages"]
        return SimpleNamespace(received_messages=batch)

    def acknowledge(self, request: dict[str, Any]) -> None:
        self.acked += request["ack_ids"]


def test_the_loop_acks_what_it_read_and_stops_at_the_limit() -> None:
    from pipelines.app.tail import Counts

    subscriber = FakeSubscriber(
        [
            [
                message("a", 1, "high", "1"),
                message("b", 1, "low", "2"),  # filtered out
                message("a", 1, "high", "3"),  # redelivered: superseded
            ],
            [message("a", 2, "high", "4"), message("c", 1, "high", "5")],
            [message("d", 1, "high", "6")],  # past the limit: never pulled
        ]
    )
    printed: list[str] = []
    counts = Counts()
    config = TailConfig("p", conditions=parse_filters(["risk_band=high"]), limit=3, as_json=True)
    _loop(subscriber, "sub", config, counts, printed.append, lambda line: None)
    assert [(json.loads(p)["transaction_id"], json.loads(p)["revision"]) for p in printed] == [
        ("a", 1),
        ("a", 2),
        ("c", 1),
    ]
    assert (counts.received, counts.printed, counts.filtered_out, counts.superseded) == (5, 3, 1, 1)
    assert subscriber.acked == ["1", "2", "3", "4", "5"] and len(subscriber.batches) == 1


def test_the_loop_stops_after_the_idle_timeout() -> None:
    from pipelines.app.tail import Counts

    counts = Counts()
    config = TailConfig("p", timeout_s=0.3, poll_s=0.05)
    _loop(FakeSubscriber([]), "sub", config, counts, lambda line: None, lambda line: None)
    assert counts.received == 0
