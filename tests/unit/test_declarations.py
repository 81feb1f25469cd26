"""The definitions file: the handbook's default reproduces today's features, and every mistake in
a file is reported with its place."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest
import yaml

from pipelines.core import definitions as handbook
from pipelines.core.declarations import (
    DEFAULT_DEFINITIONS,
    DefinitionsError,
    format_duration,
    load_definitions,
    parse_definitions,
    parse_duration,
)
from pipelines.core.engine import EventColumns, features_for
from pipelines.core.predicates import Predicate, PredicateError
from tests.oracle import oracle_features

DAY_US = 86_400_000_000


def _raw() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_DEFINITIONS.read_text())


def _errors(data: Any) -> list[str]:
    with pytest.raises(DefinitionsError) as info:
        parse_definitions(data, "test.yaml")
    return info.value.errors


def test_default_file_declares_the_handbook_inputs() -> None:
    defs = load_definitions()
    assert defs.names == handbook.MODEL_INPUTS
    customer, terminal = defs.entities
    assert (customer.keys, terminal.keys) == (("customer_id",), ("terminal_id",))
    assert defs.lookback_us(terminal) == handbook.max_lookback_us(handbook.TERMINAL)
    for entity, old in ((customer, handbook.CUSTOMER), (terminal, handbook.TERMINAL)):
        for labels in (False, True):
            assert defs.influence_span_us(entity, labels) == handbook.influence_span_us(old, labels)


def test_oracle_on_the_default_file_is_todays_engine_bit_for_bit() -> None:
    """The oracle is the spec of the operations; on the handbook's file it must give today's
    features exactly (ties, shared instants, labels in and out of the delayed windows)."""
    defs = load_definitions()
    rng = random.Random(3)
    events, labels = [], []
    for i in range(300):
        # Whole hours over 40 days: many transactions share an instant or sit on a window edge.
        t = 1_522_540_800_000_000 + rng.randrange(0, 40 * 24) * 3_600_000_000
        e = {
            "transaction_id": str(i),
            "tx_datetime": t,
            "customer_id": str(rng.randrange(5)),
            "terminal_id": str(rng.randrange(4)),
            "amount": round(rng.uniform(0, 200), 2),
        }
        events.append(e)
        labels.append({**e, "is_fraud": int(rng.random() < 0.3)})
    columns = {k: np.array([e[k] for e in events]) for k in events[0]}
    query = EventColumns(
        columns["transaction_id"],
        columns["customer_id"],
        columns["terminal_id"],
        columns["tx_datetime"],
        columns["amount"],
    )
    label_columns = EventColumns(
        query.transaction_id,
        query.customer_id,
        query.terminal_id,
        query.time_us,
        np.array([lb["is_fraud"] for lb in labels]),
    )
    today = features_for(query, labels=label_columns)
    oracle = np.array(oracle_features(defs, events, labels))
    assert today.tobytes() == oracle.tobytes()


def test_fingerprints_change_only_with_what_a_feature_depends_on() -> None:
    defs = load_definitions()
    data = _raw()
    data["features"].append(
        {"name": "NEW", "entity": "customer", "op": "max", "field": "amount", "window": "3h"}
    )
    data["features"][3]["window"] = "2d"  # CUSTOMER_ID_NB_TX_1DAY_WINDOW redeclared
    changed = parse_definitions(data)
    before, after = defs.fingerprints(), changed.fingerprints()
    assert {n for n in before if before[n] != after[n]} == {"CUSTOMER_ID_NB_TX_1DAY_WINDOW"}
    assert "NEW" in after


@pytest.mark.parametrize(
    ("text", "us"),
    [("90s", 90_000_000), ("10m", 600_000_000), ("3h", 3 * 3_600_000_000), ("7d", 7 * DAY_US)],
)
def test_durations(text: str, us: int) -> None:
    assert parse_duration(text) == us
    assert parse_duration(format_duration(us)) == us


@pytest.mark.parametrize("text", ["3x", "", "7", "d7", "1.5h", 7, None, "1h 30"])
def test_bad_durations_say_what_is_expected(text: Any) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 10m, 3h, 7d"):
        parse_duration(text)


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_raw())
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["features", 3, "window"], "3x", "features[3] (CUSTOMER_ID_NB_TX_1DAY_WINDOW).window"),
        (["features", 3, "window"], "0s", "longer than 0s"),
        (["features", 3, "entity"], "card", "'card' is not an entity (customer, terminal)"),
        (["features", 3, "op"], "median", "expected one of count, sum"),
        (["features", 4, "field"], "amout", "mean needs a field of the events, got 'amout'"),
        (["features", 4, "field"], "customer_id", "mean needs a numeric field"),
        (["features", 3, "field"], "amount", "count takes no field"),
        (["features", 10, "delay"], "1d", "must look behind the label delay (7d)"),
        (["features", 1, "when"], "weekday >= 'x'", "compares a number with a string"),
        (["features", 1, "when"], "wekday >= 5", "unknown field 'wekday'"),
        (["features", 1, "when"], "__import__('os')", "is not a condition"),
        (["features", 0, "value"], "customer_id", "not a numeric field"),
        (["entities", "customer", "keys"], ["card"], "'card' is not a field of the events"),
        (["events", "fields", "amount", "type"], "float", "expected one of id, string"),
        (["events", "time"], "amount", "amount is a number field, expected time"),
        (["labels", "delay"], "seven days", "not a duration"),
        (["features", 4, "name"], "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "declared twice"),
        (["features", 3, "colour"], "red", "unknown key(s) colour"),
    ],
)
def test_every_mistake_names_its_place(path: list[Any], value: Any, expected: str) -> None:
    errors = _errors(_mutate(path, value))
    assert any(expected in e for e in errors), errors


def test_all_problems_are_reported_at_once() -> None:
    data = _mutate(["features", 3, "window"], "3x")
    data["features"][5]["op"] = "median"
    assert len(_errors(data)) == 2


def test_composite_keys_filters_and_derived_inputs() -> None:
    data = _raw()
    data["events"]["fields"]["category"] = {"type": "string", "values": ["food", "travel"]}
    data["entities"]["card_category"] = {"keys": ["customer_id", "category"]}
    data["features"] += [
        {
            "name": "CARD_CATEGORY_NIGHT_MAX_3H",
            "entity": "card_category",
            "op": "max",
            "field": "amount",
            "window": "3h",
            "where": "hour < 6 and category in ['food', 'travel']",
        },
        {"name": "AMOUNT_VS_MAX", "ratio": ["TX_AMOUNT", "CARD_CATEGORY_NIGHT_MAX_3H"]},
    ]
    defs = parse_definitions(data)
    entity = defs.entity("card_category")
    assert entity.id_of({"customer_id": "7", "category": "a#b%"}) == "7#a%23b%25"
    assert defs.fields_of(entity) == ("amount", "category")
    assert defs.closure(["AMOUNT_VS_MAX"]) == (
        "TX_AMOUNT",
        "CARD_CATEGORY_NIGHT_MAX_3H",
        "AMOUNT_VS_MAX",
    )


def test_a_derived_input_reads_features_declared_above_it() -> None:
    data = _raw()
    data["features"].insert(0, {"name": "R", "ratio": ["TX_AMOUNT", "TX_DURING_NIGHT"]})
    assert any("not a feature declared above it" in e for e in _errors(data))


def test_predicates_give_the_same_answer_per_event_and_per_column() -> None:
    p = Predicate(
        "amount > 100 and not (channel in ['pos', 'atm']) or hour == 3",
        {"amount": "number", "channel": "string"},
    )
    rng = random.Random(1)
    rows = [
        {
            "amount": rng.choice([99.99, 100.0, 100.01, 250.0]),
            "channel": rng.choice(["pos", "atm", "web"]),
        }
        for _ in range(200)
    ]
    times = np.array([rng.randrange(0, 30) * 3_600_000_000 for _ in rows], dtype=np.int64)
    columns = {
        k: np.array([r[k] for r in rows], dtype=object if k == "channel" else None) for k in rows[0]
    }
    mask = p.mask(columns, times)
    assert [p.holds(r, int(t)) for r, t in zip(rows, times, strict=True)] == mask.tolist()
    assert mask.any() and not mask.all()


@pytest.mark.parametrize(
    "text", ["amount + 1 > 2", "f(x)", "amount.real > 1", "amount > [1]", "lambda: 1", "x = 1"]
)
def test_predicates_outside_the_subset_are_refused(text: str) -> None:
    with pytest.raises(PredicateError):
        Predicate(text, {"amount": "number"})
