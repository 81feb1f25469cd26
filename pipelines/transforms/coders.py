"""Deterministic coders for what the job shuffles and keeps in state: safe across ``--update``.

Dataflow encodes every value that crosses a shuffle (the input of a stateful step) and every
state cell with the coder the graph names. Beam's fallback for a project class is a pickle of it:
a class renamed or moved between two versions of the job, or a field added, garbles what is in
flight when ``--update`` swaps the code. These coders write an explicit, versioned layout of the
stage records instead, built from Beam's own stream primitives (varints, UTF-8 strings, doubles):

    byte  kind      T transaction, L label, W wake-up, R routed event, P customer part
    byte  version   2 (T, L, P; 1 for W, R); version 1 of T, L and P is still read
    then the record's fields in the order below, strings length-prefixed, ints as varints,
    floats as big-endian doubles; an event's declared fields (any definitions file) as a count
    and, per field, its name, a type byte (s text, f float, i integer) and its value

Adding a field means a new version number that the decoder still reads the old way: version 1
of a transaction held the handbook's fields in a fixed order (customer_id, terminal_id, amount),
read back into the same ``fields``.
tests/unit/test_coders.py round-trips every record; tests/unit/test_update_compat.py pins the
coders of every stateful step's input.

The online evaluation and the Monitor keep and shuffle rows instead: ``typing.NamedTuple`` types
encoded by Beam's ``RowCoder`` (``beam:coder:row:v1``, portable: fields by position with typed
coders, sequences instead of mappings so that the encoding is deterministic), made by
:func:`row_coder`, which refuses a field Beam would pickle. The row types of pipelines/core stay
plain NamedTuples (core imports no Beam): their ``RowCoder`` is registered here. A row read back
from state or a shuffle may be a NamedTuple that Beam rebuilt from the schema (a Dataflow worker
does not know the launcher's schema ids): same fields, another class, so code reads rows by
field name, never by ``isinstance``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from apache_beam import coders
from apache_beam.coders import Coder
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream

from pipelines.core.alerts import StreakRow
from pipelines.core.batches import Part, Routed, StageRecord
from pipelines.core.drift import BucketCounts, Closable, DriftProgress
from pipelines.core.schema import Label, Transaction

__all__ = ["StageRecordCoder", "WakeUp", "row_coder"]

_VERSION = 1  # wake-ups and routed events
_EVENT_VERSION = 2  # transactions, labels and parts: declared fields by name
STAGE_RECORD_URN = "rillet:coder:stage_record:v1"


class WakeUp(StageRecord):
    """Arms a stage key's label timer: labels wait under it (read from the store at start)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WakeUp) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("WakeUp", self.key))

    def __repr__(self) -> str:
        return f"WakeUp({self.key!r})"


def _put_str(out: Any, value: str) -> None:
    out.write(value.encode(), True)


def _get_str(stream: Any) -> str:
    return bytes(stream.read_all(True)).decode()


def _put_fields(out: Any, fields: dict[str, Any]) -> None:
    out.write_var_int64(len(fields))
    for name, value in fields.items():
        _put_str(out, name)
        if isinstance(value, str):
            out.write_byte(ord("s"))
            _put_str(out, value)
        elif isinstance(value, float):
            out.write_byte(ord("f"))
            out.write_bigendian_double(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            out.write_byte(ord("i"))
            out.write_var_int64(value)
        else:
            raise TypeError(f"field {name}: no stage record encoding for {type(value).__name__}")


def _get_fields(stream: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for _ in range(stream.read_var_int64()):
        name = _get_str(stream)
        tag = chr(stream.read_byte())
        if tag == "s":
            fields[name] = _get_str(stream)
        elif tag == "f":
            fields[name] = stream.read_bigendian_double()
        elif tag == "i":
            fields[name] = stream.read_var_int64()
        else:
            raise ValueError(f"unknown field type {tag!r} of {name}")
    return fields


def _put_tx(out: Any, tx: Transaction) -> None:
    _put_str(out, tx.transaction_id)
    out.write_var_int64(tx.event_time_us)
    _put_fields(out, tx.fields)
    out.write_var_int64(tx.publish_time_us)
    _put_str(out, tx.message_id)


def _get_tx(stream: Any, version: int) -> Transaction:
    tx_id = _get_str(stream)
    time_us = stream.read_var_int64()
    if version == 1:  # the handbook's fields, in a fixed order
        fields = {"customer_id": _get_str(stream), "terminal_id": _get_str(stream)}
        fields["amount"] = stream.read_bigendian_double()
    else:
        fields = _get_fields(stream)
    return Transaction(tx_id, time_us, fields, stream.read_var_int64(), _get_str(stream))


def _put_label(out: Any, lb: Label) -> None:
    _put_str(out, lb.transaction_id)
    out.write_var_int64(lb.event_time_us)
    _put_fields(out, lb.fields)
    out.write_var_int64(int(lb.is_fraud))
    out.write_var_int64(lb.publish_time_us)
    _put_str(out, lb.message_id)


def _get_label(stream: Any, version: int) -> Label:
    tx_id = _get_str(stream)
    time_us = stream.read_var_int64()
    if version == 1:
        fields: dict[str, Any] = {
            "customer_id": _get_str(stream),
            "terminal_id": _get_str(stream),
        }
    else:
        fields = _get_fields(stream)
    is_fraud = stream.read_var_int64()
    return Label(tx_id, time_us, fields, is_fraud, stream.read_var_int64(), _get_str(stream))


def _put(out: Any, record: Any) -> None:
    if isinstance(record, Transaction):
        out.write_byte(ord("T"))
        out.write_byte(_EVENT_VERSION)
        _put_tx(out, record)
    elif isinstance(record, Label):
        out.write_byte(ord("L"))
        out.write_byte(_EVENT_VERSION)
        _put_label(out, record)
    elif isinstance(record, WakeUp):
        out.write_byte(ord("W"))
        out.write_byte(_VERSION)
        _put_str(out, record.key)
    elif isinstance(record, Routed):
        out.write_byte(ord("R"))
        out.write_byte(_VERSION)
        out.write_var_int64(record.token)
        _put(out, record.event)
    elif isinstance(record, Part):
        out.write_byte(ord("P"))
        out.write_byte(_EVENT_VERSION)
        _put_tx(out, record.tx)
        out.write_var_int64(len(record.values))
        for value in record.values:
            out.write_bigendian_double(value)
        out.write_var_int64(record.revision)
        out.write_byte(int(record.correction))
        out.write_var_int64(record.token)
    else:
        raise TypeError(f"no stage record coder for {type(record).__name__}")


def _get(stream: Any) -> Any:
    kind = chr(stream.read_byte())
    version = stream.read_byte()
    newest = _EVENT_VERSION if kind in "TLP" else _VERSION
    if not 1 <= version <= newest:
        raise ValueError(f"unknown version {version} of stage record {kind!r}")
    if kind == "T":
        return _get_tx(stream, version)
    if kind == "L":
        return _get_label(stream, version)
    if kind == "W":
        return WakeUp(_get_str(stream))
    if kind == "R":
        token = stream.read_var_int64()
        return Routed(_get(stream), token)
    if kind == "P":
        tx = _get_tx(stream, version)
        values = tuple(stream.read_bigendian_double() for _ in range(stream.read_var_int64()))
        revision = stream.read_var_int64()
        correction = bool(stream.read_byte())
        return Part(tx, values, revision, correction, stream.read_var_int64())
    raise ValueError(f"unknown stage record kind {kind!r}")


class StageRecordCoder(Coder):
    """The coder of ``StageRecord``s (see the module docstring): deterministic, versioned."""

    def encode(self, value: Any) -> bytes:
        out = create_OutputStream()
        _put(out, value)
        return out.get()

    def decode(self, encoded: bytes) -> Any:
        return _get(create_InputStream(encoded))

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return StageRecord

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


# A named coder in the graph (not a pickled Python object): its spec is this URN, the same in
# every build of the job, so Dataflow's --update check and the fingerprint test see a stable name.
Coder.register_structured_urn(STAGE_RECORD_URN, StageRecordCoder)


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
