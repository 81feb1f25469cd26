"""Schema'd coders for what the job keeps in Beam state and shuffles (Dataflow ``--update``).

Dataflow ``--update`` carries a running job's state and in-flight shuffled data over to the new
graph, decoded with the new job's coders. A ``PickleCoder`` (or the ``FastPrimitivesCoder`` Beam
falls back to for an untyped PCollection) pickles a project class by module and name, so moving
or renaming the class, or changing its fields, breaks the update or garbles what was in flight.
Rows here are ``typing.NamedTuple`` types encoded by Beam's ``RowCoder`` (``beam:coder:row:v1``,
portable): fields by position with typed coders, sequences instead of mappings so that the
encoding is deterministic. ``tests/unit/test_update_compat.py`` pins every state and shuffle
coder of the graph against a committed fingerprint.

The row types of pipelines/core stay plain ``typing.NamedTuple`` (core imports no Beam): their
``RowCoder`` is registered here, in the transforms layer.

A value read back from state or a shuffle may be a NamedTuple that Beam rebuilt from the schema
(a Dataflow worker does not know the launcher's schema ids): same fields, another class. Code
reads such values by field name, never by ``isinstance``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from apache_beam import coders

from pipelines.core.alerts import StreakRow
from pipelines.core.drift import BucketCounts, Closable, DriftProgress

__all__ = ["row_coder"]


def _resolve_annotations(row_type: type[Any]) -> None:
    """Beam reads a NamedTuple's raw ``__annotations__``: under ``from __future__ import
    annotations`` those are strings, which it would take for ``Any`` (a pickled field), and it
    knows ``Optional[X]`` but not ``X | None``. Resolves them in place, nested rows first."""
    hints = typing.get_type_hints(row_type)
    resolved = {}
    for name, hint in hints.items():
        if isinstance(hint, types.UnionType):
            hint = typing.Union[hint.__args__]  # noqa: UP007 - the form Beam understands
        resolved[name] = hint
        for arg in (hint, *typing.get_args(hint)):
            if isinstance(arg, type) and issubclass(arg, tuple) and hasattr(arg, "_fields"):
                _resolve_annotations(arg)
    row_type.__annotations__ = resolved


def row_coder(row_type: type[Any]) -> coders.Coder:
    """The RowCoder of a NamedTuple type (registered, so that type hints naming it infer it);
    fails unless every field has a type Beam encodes without pickling."""
    _resolve_annotations(row_type)
    coders.registry.register_coder(row_type, coders.RowCoder)
    coder = coders.registry.get_coder(row_type)
    if not coder.is_deterministic():
        raise TypeError(f"{row_type.__qualname__}: a field Beam cannot encode deterministically")
    return coder


for _core_row in (BucketCounts, Closable, DriftProgress, StreakRow):
    row_coder(_core_row)
