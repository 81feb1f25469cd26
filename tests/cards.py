"""Model cards for tests: the per-input fields a card records (pipelines/core/model_inputs.py),
and variants of the handbook's definitions file to check cards against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.declarations import (
    DEFAULT_DEFINITIONS,
    Definitions,
    load_definitions,
    parse_definitions,
)
from pipelines.core.model_inputs import card_inputs


def card_fields(
    features: Sequence[str] | None = None, definitions: Definitions | None = None
) -> dict[str, Any]:
    """What training writes into a card for a model of ``features`` (default: every feature of
    ``definitions``, default the handbook's file)."""
    definitions = definitions or load_definitions()
    return card_inputs(definitions, definitions.names if features is None else features)


def handbook_variant(
    change: Callable[[dict[str, Any]], None], name: str = "variant"
) -> Definitions:
    """The handbook's definitions file as YAML data, changed in place by ``change``, loaded."""
    data = yaml.safe_load(DEFAULT_DEFINITIONS.read_text())
    change(data)
    return parse_definitions(data, f"{name}.yaml")


def feature_spec(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The declaration of feature ``name`` in YAML data of a definitions file."""
    return next(f for f in data["features"] if f["name"] == name)


def write_variant(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A definitions file at ``path``: the handbook's, changed in place by ``change``."""
    data = yaml.safe_load(DEFAULT_DEFINITIONS.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
