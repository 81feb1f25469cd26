"""The brute-force oracle of declared features: docs/specs/definitions.md, "Operations", as
plain Python loops over every event of every window, with no cleverness to share a bug with.

Every path that computes features (the batch engine, the stream's entity state) is held to it
on random streams and random definitions files (tests/unit/test_feature_oracle.py).

Events and labels are dicts of field name -> value, the time field as integer microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.core.declarations import (
    Definitions,
    DerivedFeature,
    RowFeature,
    WindowFeature,
)

__all__ = ["oracle_features", "oracle_value"]


def _tie(tx_id: str) -> tuple[int, str]:
    return (len(tx_id), tx_id)


def _units(value: Any, scale: int) -> int:
    return round(float(value) * 10**scale)


def oracle_value(
    defs: Definitions,
    feature: WindowFeature,
    query: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    labels: Sequence[Mapping[str, Any]],
) -> float:
    """One window feature of one transaction, from every event (the query among them)."""
    ev = defs.events
    t = int(query[ev.time_field])
    q_tie = _tie(str(query[ev.id_field]))
    lo, hi = t - feature.delay_us - feature.window_us, t - feature.delay_us
    entity_id = feature.entity.id_of(query)

    def in_window(e: Mapping[str, Any], time_field: str, id_field: str) -> bool:
        et = int(e[time_field])
        if not lo < et <= hi:
            return False
        if feature.delay_us == 0 and et == t:
            return _tie(str(e[id_field])) <= q_tie
        return True

    def passes(e: Mapping[str, Any], time_field: str) -> bool:
        return feature.where is None or feature.where.holds(e, int(e[time_field]))

    window = [
        e
        for e in events
        if feature.entity.id_of(e) == entity_id
        and in_window(e, ev.time_field, ev.id_field)
        and passes(e, ev.time_field)
    ]
    n = len(window)
    op = feature.op
    if op == "count":
        return float(n)
    if op == "label_rate":
        assert defs.labels is not None
        lb = defs.labels
        latest: dict[str, Mapping[str, Any]] = {}
        for label in labels:  # one label per transaction: the later one wins
            latest[str(label[lb.id_field])] = label
        frauds = sum(
            int(label[lb.label_field])
            for label in latest.values()
            if feature.entity.id_of(label) == entity_id
            and in_window(label, lb.time_field, lb.id_field)
            and passes(label, lb.time_field)
        )
        return float(frauds) / float(n) if n else 0.0
    if op in ("last", "since_previous"):
        before = [
            e for e in window if (int(e[ev.time_field]), _tie(str(e[ev.id_field]))) < (t, q_tie)
        ]
        if not before:
            return 0.0 if op == "last" else feature.reach_us / 1e6
        prev = max(before, key=lambda e: (int(e[ev.time_field]), _tie(str(e[ev.id_field]))))
        if op == "last":
            return float(prev[feature.field])  # type: ignore[index]
        return (t - int(prev[ev.time_field])) / 1e6
    assert feature.field is not None
    values = [e[feature.field] for e in window]
    if op == "distinct":
        return float(len(set(values)))
    if not values:
        return 0.0
    if op == "min":
        return float(min(float(v) for v in values))
    if op == "max":
        return float(max(float(v) for v in values))
    f = ev.field(feature.field)
    scale = f.scale if f.type == "number" else 0
    units = [_units(v, scale) for v in values]
    total = sum(units)
    if op == "sum":
        return float(total) / float(10**scale)
    if op == "mean":
        return (float(total) / float(10**scale)) / float(n)
    if op == "std":
        spread = n * sum(u * u for u in units) - total * total  # exact, >= 0
        return math.sqrt(spread) / float(n) / float(10**scale)
    raise ValueError(op)


def oracle_features(
    defs: Definitions,
    events: Sequence[Mapping[str, Any]],
    labels: Sequence[Mapping[str, Any]],
    names: Sequence[str] | None = None,
) -> list[list[float]]:
    """Every feature (``names``, default all, in that order) of every event, row by row."""
    names = list(defs.names if names is None else names)
    ev = defs.events
    out = []
    for q in events:
        values: dict[str, float] = {}
        for f in defs.features:
            if isinstance(f, RowFeature):
                if f.value is not None:
                    values[f.name] = float(q[f.value])
                else:
                    assert f.when is not None
                    values[f.name] = 1.0 if f.when.holds(q, int(q[ev.time_field])) else 0.0
            elif isinstance(f, DerivedFeature):
                a, b = (values[i] for i in f.inputs)
                if f.op == "difference":
                    values[f.name] = a - b
                else:
                    values[f.name] = a / b if b != 0 else 0.0
            else:
                values[f.name] = oracle_value(defs, f, q, events, labels)
        out.append([values[n] for n in names])
    return out
