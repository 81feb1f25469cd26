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
        "revision": 3,
        "correction": True,
    }
    first = format_line({**body, "revision": 1, "correction": False}, "new", None)
    assert "\x1b[31mhigh" in first  # red, on a terminal (typer.echo strips it elsewhere)
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    assert first.split() == ["2018-04-02T10:01:00Z", "tx-1", "0.9300", "high", "v1", "1"]
    update = format_line(body, "update", 1)
    assert update.endswith("3  correction, replaces revision 1")


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
