"""``make bench-new-feature``: a feature added to a live system (issue 23).

The payments workload (pipelines/workloads/payments.yaml) without ``device_id`` runs first: its
stream lacks the field, so it has no card x device entity and none of the features reading the
device (``without_field``). The full file then adds CARD_NB_DEVICES_30D (a distinct count of a
field the stored cells do not hold) and CARD_DEVICE_NB_TX_30D (an entity with no stored rows).
The sequence: declare; backfill only the new columns (``--features``); warm the store
(pipelines/backfill/warm.py); train a challenger with the new inputs; restart the job on the new
file; shadow; promote. The last stdout line is one JSON object (README, "A new feature on a live
system").
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["NEW_FIELD", "without_field"]

NEW_FIELD = "device_id"


def without_field(data: dict[str, Any], name: str) -> dict[str, Any]:
    """A definitions file's data without the event field ``name``: without the entities keyed by
    it, the window features reading it (operation field or filter), the row features reading it
    and the derived inputs of any dropped feature (transitively); the labels stream loses it too.
    """
    from pipelines.core.declarations import parse_definitions

    out = copy.deepcopy(data)
    out["name"] = f"{data.get('name', 'definitions')}_without_{name}"
    for stream in ("events", "labels"):
        if stream in out:
            out[stream]["fields"].pop(name, None)
    dropped_entities = {e for e, spec in out["entities"].items() if name in spec["keys"]}
    for e in dropped_entities:
        del out["entities"][e]
    full = parse_definitions(data, "full")
    dropped: set[str] = set()
    for f in full.features:
        reads = {getattr(f, "field", None), getattr(f, "value", None)}
        for attr in ("where", "when"):
            predicate = getattr(f, attr, None)
            if predicate is not None:
                reads |= set(predicate.fields)
        entity = getattr(f, "entity", None)
        if name in reads or (entity is not None and entity.name in dropped_entities):
            dropped.add(f.name)
    changed = True
    while changed:
        changed = False
        for spec in out["features"]:
            inputs = spec.get("ratio") or spec.get("difference") or []
            if spec["name"] not in dropped and set(inputs) & dropped:
                dropped.add(spec["name"])
                changed = True
    out["features"] = [spec for spec in out["features"] if spec["name"] not in dropped]
    return out
