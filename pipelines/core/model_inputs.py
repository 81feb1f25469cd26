"""Which declared features a model uses, and whether a definitions file still serves it.

A model card records, for each of the model's inputs (``features``, in the model's input order),
the feature's fingerprint (``Definitions.fingerprint``: a hash of everything its values depend
on) and its declaration as plain data, plus the name and file of the definitions it was trained
on (docs/specs/registry.md, "The model card"). A model is checked per input: it can be served
with a definitions file that declares every one of its inputs with the same fingerprint, whatever
else the file declares. Adding a feature, or changing one the model does not use, leaves it
valid; changing a window, a delay, a filter, a field's scale ... of an input it uses refuses it.

The job computes what its serving models need: the union of their inputs, with the inputs of
derived ones (``features_to_compute``), in the file's order.

Beam-free: the registry, the serving job, training and the CLI read the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.core.declarations import Definitions, format_duration

__all__ = [
    "CARD_FIELDS",
    "card_inputs",
    "declaration_changes",
    "features_to_compute",
    "input_problems",
    "unknown_inputs",
]

# The card's fields that say what the model reads (docs/specs/registry.md).
CARD_FIELDS = ("features", "feature_fingerprints", "feature_declarations", "definitions")


def unknown_inputs(definitions: Definitions, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that ``definitions`` does not declare, in their order."""
    declared = set(definitions.names)
    return [n for n in names if n not in declared]


def card_inputs(definitions: Definitions, names: Sequence[str]) -> dict[str, Any]:
    """The model card's fields for a model whose inputs are ``names`` (in its input order):
    ``features``, ``feature_fingerprints`` and ``feature_declarations`` (one per input) and
    ``definitions`` ({``name``, ``file``}). A ValueError names inputs that are not declared or
    are repeated."""
    unknown = unknown_inputs(definitions, names)
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not declared in the definitions {definitions.name!r} "
            f"({definitions.source or 'not from a file'}); it declares "
            + ", ".join(definitions.names)
        )
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)}: named more than once among a model's inputs")
    return {
        "features": list(names),
        "feature_fingerprints": {n: definitions.fingerprint(n) for n in names},
        "feature_declarations": {n: definitions.declaration(n) for n in names},
        "definitions": {
            "name": definitions.name,
            "file": Path(definitions.source).name if definitions.source else None,
        },
    }


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if key.endswith("_us") and isinstance(value, int):
        return format_duration(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(k, v)}" for k, v in value.items()) + "}"
    return str(value)


def declaration_changes(before: Any, after: Any, path: str = "", key: str = "") -> list[str]:
    """What differs between two declarations (``Definitions.declaration``), one entry per
    changed leaf: ``window 1d -> 2d``, ``field.scale 6 -> 2``, ``inputs[1].where none -> ...``
    (durations shown as durations, their ``_us`` dropped from the name)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in [*before, *(k for k in after if k not in before)]:
            name = k[:-3] if k.endswith("_us") else k
            out += declaration_changes(
                before.get(k), after.get(k), f"{path}.{name}" if path else name, k
            )
        return out
    if (
        isinstance(before, list)
        and isinstance(after, list)
        and len(before) == len(after)
        and any(isinstance(x, dict) for x in [*before, *after])
    ):
        out = []
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            out += declaration_changes(a, b, f"{path}[{i}]", key)
        return out
    if before == after:
        return []
    return [f"{path or 'declaration'} {_shown(key, before)} -> {_shown(key, after)}"]


def input_problems(
    card: Mapping[str, Any], definitions: Definitions, computed: Sequence[str] | None = None
) -> list[str]:
    """Why ``definitions`` cannot serve the model of ``card``: one line per input that is not
    declared, declared differently (what differs), or (``computed``: what the job computes)
    not computed. Empty when it can. A card without per-input fingerprints (written before
    definitions files) is one problem: retrain it."""
    features = card.get("features")
    if not isinstance(features, list) or not features:
        return ["its model card lists no features; expected 'features': the model's inputs"]
    recorded = card.get("feature_fingerprints")
    if not isinstance(recorded, dict) or any(f not in recorded for f in features):
        return [
            "its model card records no fingerprint per input (a card from before definitions "
            "files, or incomplete), so its features cannot be checked against the definitions; "
            "retrain it ('rillet train' or 'rillet retrain')"
        ]
    declared_as = card.get("feature_declarations") or {}
    declared = set(definitions.names)
    problems = []
    for name in features:
        if name not in declared:
            problems.append(f"{name}: not declared in the definitions")
            continue
        fingerprint = definitions.fingerprint(name)
        if fingerprint != recorded[name]:
            changes = []
            if isinstance(declared_as, dict) and name in declared_as:
                changes = declaration_changes(declared_as[name], definitions.declaration(name))
            what = "; ".join(changes) or f"fingerprint {recorded[name]} -> {fingerprint}"
            problems.append(f"{name}: declared differently ({what})")
        elif computed is not None and name not in computed:
            problems.append(f"{name}: declared, but the job does not compute it")
    return problems


def features_to_compute(
    definitions: Definitions, inputs: Iterable[Sequence[str]]
) -> tuple[str, ...]:
    """The features a job must compute to serve models with these inputs (one sequence per
    model): their union and every feature a derived one among them reads, in the file's order.
    A KeyError names inputs that are not declared (check the cards first)."""
    wanted: list[str] = []
    for names in inputs:
        wanted += [n for n in names if n not in wanted]
    return definitions.closure(wanted)
