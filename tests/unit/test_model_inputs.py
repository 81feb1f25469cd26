"""A model is checked per input (pipelines/core/model_inputs.py): the card's fields, what a
changed declaration reports, derived inputs, and the features a job must compute."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.core.declarations import load_definitions
from pipelines.core.model_inputs import (
    card_inputs,
    declaration_changes,
    features_to_compute,
    input_problems,
)
from tests.cards import card_fields, feature_spec, handbook_variant

RATIO = {"name": "AMOUNT_OVER_AVG_1D", "ratio": ["TX_AMOUNT", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"]}


def _with_ratio(data: dict[str, Any]) -> None:
    data["features"].append(dict(RATIO))


def test_card_inputs_keep_the_models_order_and_refuse_what_is_not_declared() -> None:
    handbook = load_definitions()
    names = ["TERMINAL_ID_RISK_7DAY_WINDOW", "TX_AMOUNT"]
    fields = card_inputs(handbook, names)
    assert fields["features"] == names and list(fields["feature_fingerprints"]) == names
    assert fields["feature_fingerprints"]["TX_AMOUNT"] == handbook.fingerprint("TX_AMOUNT")
    assert fields["feature_declarations"]["TERMINAL_ID_RISK_7DAY_WINDOW"]["delay_us"] == (
        7 * 86_400_000_000
    )
    assert fields["definitions"] == {"name": "handbook", "file": "handbook.yaml"}
    with pytest.raises(ValueError, match=r"NOPE: not declared in the definitions 'handbook'"):
        card_inputs(handbook, ["TX_AMOUNT", "NOPE"])
    with pytest.raises(ValueError, match="TX_AMOUNT: named more than once"):
        card_inputs(handbook, ["TX_AMOUNT", "TX_AMOUNT"])


def test_what_differs_is_said_in_the_files_terms() -> None:
    handbook = load_definitions()

    def change(data: dict[str, Any]) -> None:
        risk = feature_spec(data, "TERMINAL_ID_RISK_1DAY_WINDOW")
        risk.update(window="36h", delay="8d", where="hour < 6")
        data["events"]["fields"]["amount"]["scale"] = 2

    other = handbook_variant(change)
    name = "TERMINAL_ID_RISK_1DAY_WINDOW"
    assert declaration_changes(handbook.declaration(name), other.declaration(name)) == [
        "window 1d -> 1d12h",
        "delay 7d -> 8d",
        "where none -> hour < 6",
    ]
    assert declaration_changes(
        handbook.declaration("TX_AMOUNT"), other.declaration("TX_AMOUNT")
    ) == ["field.scale 6 -> 2"]
    assert declaration_changes({"a": [1, 2]}, {"a": [1, 3]}) == ["a [1, 2] -> [1, 3]"]


def test_a_derived_input_is_refused_when_what_it_reads_changes() -> None:
    with_ratio = handbook_variant(_with_ratio)
    card = card_fields(["AMOUNT_OVER_AVG_1D"], with_ratio)
    assert input_problems(card, with_ratio) == []

    def change(data: dict[str, Any]) -> None:
        _with_ratio(data)
        feature_spec(data, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW")["window"] = "2d"

    assert input_problems(card, handbook_variant(change)) == [
        "AMOUNT_OVER_AVG_1D: declared differently (inputs[1].window 1d -> 2d)"
    ]
    # Its own inputs changed, in the handbook's file it is not declared at all.
    assert input_problems(card, load_definitions()) == [
        "AMOUNT_OVER_AVG_1D: not declared in the definitions"
    ]


def test_cards_without_fingerprints_and_without_features() -> None:
    handbook = load_definitions()
    old = {"features": list(handbook.names), "feature_definitions_version": "c81a57a0c3c6"}
    (problem,) = input_problems(old, handbook)
    assert "records no fingerprint per input" in problem and "retrain it" in problem
    partial = {**card_fields(), "feature_fingerprints": {"TX_AMOUNT": "x"}}
    assert "records no fingerprint per input" in input_problems(partial, handbook)[0]
    assert "lists no features" in input_problems({}, handbook)[0]
    # A fingerprint that differs without a recorded declaration: the fingerprints are shown.
    bare = card_fields(["TX_AMOUNT"])
    bare["feature_fingerprints"]["TX_AMOUNT"] = "000000000000"
    del bare["feature_declarations"]
    fingerprint = handbook.fingerprint("TX_AMOUNT")
    assert input_problems(bare, handbook) == [
        f"TX_AMOUNT: declared differently (fingerprint 000000000000 -> {fingerprint})"
    ]


def test_the_job_computes_the_union_of_its_models_inputs_in_file_order() -> None:
    with_ratio = handbook_variant(_with_ratio)
    champion = ["TERMINAL_ID_RISK_7DAY_WINDOW", "TX_AMOUNT"]
    challenger = ["AMOUNT_OVER_AVG_1D", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TX_AMOUNT"]
    assert features_to_compute(with_ratio, [champion, challenger]) == (
        "TX_AMOUNT",
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
        "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",  # read by the ratio
        "TERMINAL_ID_RISK_7DAY_WINDOW",
        "AMOUNT_OVER_AVG_1D",
    )
    assert features_to_compute(with_ratio, [champion]) == tuple(reversed(champion))
    with pytest.raises(KeyError, match="NOPE"):
        features_to_compute(with_ratio, [["NOPE"]])
