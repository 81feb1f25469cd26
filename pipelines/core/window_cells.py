"""The cells and bucket aggregates of an entity's window state, for any definitions file.

An entity's events are kept in time buckets of ``BUCKET_US`` (pipelines/core/cells.py) as today;
what a cell and a bucket's summary hold is derived from the declarations (``Layout.of``):

  ``Cell``        one transaction: its time, the values of the event fields the entity's
                  windows read (``Definitions.fields_of``: operation fields and filter fields),
                  and the rest of the event (``kept``) so that a correction can rebuild it;
  ``LabelCell``   one label: its value and the label fields the label-rate filters read;
  ``Aggregates``  what a bucket's cells add up to, per accumulator (field, filter) of the
                  entity's features: n, the exact integer sum and sum of squares (units of
                  10**-scale, Python ints: no overflow), min, max, the distinct values, the
                  latest event (for ``last`` and ``since_previous``), and per label filter the
                  labels and their sum. It says which accumulators (and which parts of them) it
                  holds: a summary written before a feature was declared lacks that feature's,
                  and the state then reads that bucket's cells (``Aggregates.holds``).

The stored encoding (``encode_*``/``decode_*``) is versioned by its first byte and names every
field and accumulator, so a reader whose definitions gained a field or an accumulator decodes an
older cell or summary and sees what it lacks (nothing is misread by position).

The window state over these cells: pipelines/core/window_state.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pipelines.core.declarations import Definitions, Entity, WindowFeature
from pipelines.core.predicates import Predicate

__all__ = [
    "DISTINCT",
    "FORMAT_VERSION",
    "LATEST",
    "RANGE",
    "SQUARES",
    "SUM",
    "AccKey",
    "Aggregates",
    "Cell",
    "LabelCell",
    "LabelStat",
    "Layout",
    "Stat",
    "acc_key",
    "decode_aggregates",
    "decode_cell",
    "decode_label",
    "encode_aggregates",
    "encode_cell",
    "encode_label",
    "tie_key",
]

# The parts of an accumulator a feature may need, as bit flags (n is always held).
SUM = 1  # the exact sum of the values' units
SQUARES = 2  # the exact sum of their squares (std)
RANGE = 4  # min and max
DISTINCT = 8  # the distinct values
LATEST = 16  # the latest event in tie order: time, id, value

# What each operation needs of its accumulator (label_rate: the transactions' n, plus labels).
_PARTS = {
    "count": 0,
    "sum": SUM,
    "mean": SUM,
    "std": SUM | SQUARES,
    "min": RANGE,
    "max": RANGE,
    "distinct": DISTINCT,
    "last": LATEST,
    "since_previous": LATEST,
    "label_rate": 0,
}

# Version 1 of the summary is today's fixed struct (pipelines/stores/bigtable.py); tx cells had
# no version byte. 2: this module's self-describing layout.
FORMAT_VERSION = 2


def tie_key(transaction_id: str) -> tuple[int, str]:
    """The tie order of transactions at the same instant: shorter id first, then by text."""
    return (len(transaction_id), transaction_id)


class Cell(NamedTuple):
    """One transaction in an entity's window state.

    ``values`` are the fields the entity's windows read, in ``Layout.fields`` order (None: a
    field an older cell did not store). ``kept`` are the other event fields but the id, the time
    and the entity's own keys, in ``Layout.kept`` order: with the entity id and the transaction
    id they rebuild the event for a correction (``Layout.event``). ``revision`` and ``carried``
    as the stages keep them (pipelines/transforms/entity_windows.py)."""

    time_us: int
    values: tuple[Any, ...]
    revision: int = 0
    carried: tuple[float, ...] = ()
    carried_revision: int = 0
    kept: tuple[Any, ...] = ()


class LabelCell(NamedTuple):
    """A label (time = its transaction's) and the label fields label-rate filters read, in
    ``Layout.label_fields`` order. A later label of the same transaction replaces it."""

    time_us: int
    value: int
    values: tuple[Any, ...] = ()


class AccKey(NamedTuple):
    """An accumulator: the events of a filter (its normalised text, None: all), and the field
    whose values it aggregates (None: counts and times only)."""

    field: str | None
    where: str | None


class Stat(NamedTuple):
    """One accumulator over a bucket's cells. ``parts`` says which of the optional parts it
    holds; ``low``/``high``/``latest`` are meaningful only when n > 0."""

    parts: int
    n: int = 0
    total: int = 0  # sum of round(value * 10**scale)
    squares: int = 0  # sum of their squares (a Python int: no overflow)
    low: float = 0.0
    high: float = 0.0
    distinct: frozenset[Any] = frozenset()
    latest: tuple[int, str, Any] | None = None  # (time, transaction id, value)


class LabelStat(NamedTuple):
    """The labels of one label filter in a bucket: how many, and the sum of their values."""

    labels: int = 0
    frauds: int = 0


class Aggregates(NamedTuple):
    """A bucket's summary: every window that
    covers the bucket whole reads it instead of its cells."""

    transactions: int  # transaction cells (any filter)
    first_us: int  # earliest transaction time (0 without transactions)
    last_us: int  # latest transaction time (0 without transactions)
    labels: int  # label cells
    stats: Mapping[AccKey, Stat]
    label_stats: Mapping[str | None, LabelStat]

    def holds(self, layout: Layout) -> bool:
        """Whether it holds every accumulator (and part) the layout's features read."""
        for key, parts in layout.stats:
            stat = self.stats.get(key)
            if stat is None or stat.parts & parts != parts:
                return False
        return all(w in self.label_stats for w in layout.label_filters)

    @property
    def nonempty(self) -> bool:
        return bool(self.transactions + self.labels)


@dataclass(frozen=True)
class Layout:
    """What an entity's cells and summaries hold, derived from the definitions (``of``)."""

    entity: Entity
    fields: tuple[str, ...]  # Cell.values
    kept: tuple[str, ...]  # Cell.kept
    label_fields: tuple[str, ...]  # LabelCell.values
    key_types: tuple[str, ...]  # the entity's key fields' types (rebuilding from the id)
    id_field: str
    time_field: str
    label_field: str  # the label stream's value field ("" without labels)
    label_time_field: str
    stats: tuple[tuple[AccKey, int], ...]  # accumulator -> the parts its features need
    label_filters: tuple[str | None, ...]
    scales: Mapping[str, int]  # field -> the power of ten of its units (0: not a number)
    predicates: Mapping[str, Predicate]  # filter text -> predicate
    features: tuple[WindowFeature, ...]

    @classmethod
    def of(cls, defs: Definitions, entity: Entity) -> Layout:
        ev = defs.events
        features = defs.window_features(entity)
        fields = defs.fields_of(entity)
        skip = {ev.id_field, ev.time_field, *entity.keys, *fields}
        kept = tuple(n for n in ev.names if n not in skip)
        needs: dict[AccKey, int] = {}
        label_filters: list[str | None] = []
        label_names: set[str] = set()
        predicates: dict[str, Predicate] = {}
        for f in features:
            where = f.where.source if f.where is not None else None
            if f.where is not None:
                predicates[f.where.source] = f.where
            key = acc_key(f)
            needs[key] = needs.get(key, 0) | _PARTS[f.op]
            if f.needs_labels:
                if where not in label_filters:
                    label_filters.append(where)
                if f.where is not None:
                    label_names |= f.where.fields
        label_fields = () if defs.labels is None else defs.labels.names
        scales = {
            f.name: (f.scale if f.type == "number" else 0) for f in ev.fields if f.name in fields
        }
        return cls(
            entity,
            fields,
            kept,
            tuple(n for n in label_fields if n in label_names),
            tuple(ev.field(k).type for k in entity.keys),
            ev.id_field,
            ev.time_field,
            defs.labels.label_field if defs.labels is not None else "",
            defs.labels.time_field if defs.labels is not None else "",
            tuple(needs.items()),
            tuple(label_filters),
            scales,
            predicates,
            features,
        )

    def cell(
        self,
        event: Mapping[str, Any],
        revision: int = 0,
        carried: tuple[float, ...] = (),
        carried_revision: int = 0,
    ) -> Cell:
        """The cell of a transaction given as field name -> value (time in µs)."""
        return Cell(
            int(event[self.time_field]),
            tuple(event[n] for n in self.fields),
            revision,
            carried,
            carried_revision,
            tuple(event[n] for n in self.kept),
        )

    def label_cell(self, label: Mapping[str, Any]) -> LabelCell:
        """The cell of a label given as field name -> value (time in µs)."""
        return LabelCell(
            int(label[self.label_time_field]),
            int(label[self.label_field]),
            tuple(label[n] for n in self.label_fields),
        )

    def event(self, entity_id: str, transaction_id: str, cell: Cell) -> dict[str, Any]:
        """The transaction a cell was made of (for a correction): every event field."""
        out: dict[str, Any] = {self.id_field: transaction_id, self.time_field: cell.time_us}
        parts = entity_id.split("#")
        for name, kind, text in zip(self.entity.keys, self.key_types, parts, strict=True):
            value = text.replace("%23", "#").replace("%25", "%")
            out[name] = int(value) if kind == "integer" else value
        out.update(zip(self.kept, cell.kept, strict=True))
        out.update(zip(self.fields, cell.values, strict=True))
        return out

    def row(self, cell: Cell) -> dict[str, Any]:
        """The fields a filter of this entity may read, by name."""
        return dict(zip(self.fields, cell.values, strict=True))

    def label_row(self, cell: LabelCell) -> dict[str, Any]:
        return dict(zip(self.label_fields, cell.values, strict=True))


def acc_key(feature: WindowFeature) -> AccKey:
    """The accumulator a window feature reads (label_rate: its transactions' count)."""
    field = feature.field if feature.op not in ("count", "since_previous", "label_rate") else None
    return AccKey(field, feature.where.source if feature.where is not None else None)


# -- the stored encoding ---------------------------------------------------------------------------
#
# Integers are LEB128 varints (zigzag for signed ones: any size, so sums of squares are exact);
# a value is a tag byte and its bytes: 0 None, 1 float64 big-endian, 2 signed integer, 3 text
# (varint length + UTF-8). Fields and accumulators are named in every record, so a record is
# decodable without the definitions that wrote it.

_F64 = struct.Struct(">d")
_NONE, _FLOAT, _INT, _TEXT = 0, 1, 2, 3


def _uvarint(out: bytearray, n: int) -> None:
    if n < 0x80:  # most counts, revisions' low parts and tags: one byte
        out.append(n)
        return
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _svarint(out: bytearray, n: int) -> None:
    _uvarint(out, (n << 1) if n >= 0 else ((-n) << 1) - 1)


def _value(out: bytearray, value: Any) -> None:
    kind = type(value)
    if kind is float:  # the common types first, by exact type (bool is an int subclass)
        out.append(_FLOAT)
        out += _F64.pack(value)
    elif kind is str:
        data = value.encode()
        out.append(_TEXT)
        _uvarint(out, len(data))
        out += data
    elif kind is int:
        out.append(_INT)
        _svarint(out, value)
    elif value is None:
        out.append(_NONE)
    elif isinstance(value, float):
        out.append(_FLOAT)
        out += _F64.pack(value)
    elif isinstance(value, int):  # bool included: labels and flags are integers
        out.append(_INT)
        _svarint(out, int(value))
    elif isinstance(value, str):
        data = value.encode()
        out.append(_TEXT)
        _uvarint(out, len(data))
        out += data
    else:  # NumPy scalars from a batch read: their Python value
        _value(out, value.item())


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uvarint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def svarint(self) -> int:
        z = self.uvarint()
        return (z >> 1) if not z & 1 else -((z + 1) >> 1)

    def f64(self) -> float:
        (x,) = _F64.unpack_from(self.data, self.pos)
        self.pos += 8
        return float(x)

    def value(self) -> Any:
        tag = self.byte()
        if tag == _NONE:
            return None
        if tag == _FLOAT:
            return self.f64()
        if tag == _INT:
            return self.svarint()
        if tag == _TEXT:
            n = self.uvarint()
            text = self.data[self.pos : self.pos + n].decode()
            self.pos += n
            return text
        raise ValueError(f"unknown value tag {tag}")

    def text(self) -> str:
        value = self.value()
        if not isinstance(value, str):
            raise ValueError(f"expected a name, got {value!r}")
        return value


def _version(reader: _Reader, what: str) -> None:
    version = reader.byte()
    if version != FORMAT_VERSION:
        raise ValueError(f"{what} format {version} is not {FORMAT_VERSION}")


# A name's encoding (as a text value), computed once: every cell repeats its layout's names.
_NAMES: dict[str, bytes] = {}


def _name(name: str) -> bytes:
    found = _NAMES.get(name)
    if found is None:
        one = bytearray()
        _value(one, name)
        found = _NAMES[name] = bytes(one)
    return found


def _named(out: bytearray, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
    _uvarint(out, len(names))
    for name, value in zip(names, values, strict=True):
        out += _NAMES.get(name) or _name(name)
        _value(out, value)


def _read_named(reader: _Reader) -> dict[str, Any]:
    return {reader.text(): reader.value() for _ in range(reader.uvarint())}


def encode_cell(layout: Layout, cell: Cell) -> bytes:
    """Version byte, time, revision, carried revision, carried values (float64), then the
    event's fields as (name, value) pairs: the read ones and the kept ones."""
    out = bytearray([FORMAT_VERSION])
    _svarint(out, cell.time_us)
    _uvarint(out, cell.revision)
    _uvarint(out, cell.carried_revision)
    _uvarint(out, len(cell.carried))
    for x in cell.carried:
        out += _F64.pack(x)
    _named(out, layout.fields + layout.kept, cell.values + cell.kept)
    return bytes(out)


def decode_cell(layout: Layout, data: bytes) -> tuple[Cell, tuple[str, ...]]:
    """The cell, in ``layout``'s field order, and the layout's fields it lacks (None in it: a
    field declared after it was written; its window state must then be warmed from history)."""
    reader = _Reader(data)
    _version(reader, "cell")
    time_us = reader.svarint()
    revision = reader.uvarint()
    carried_revision = reader.uvarint()
    carried = tuple(reader.f64() for _ in range(reader.uvarint()))
    found = _read_named(reader)
    lacking = tuple(n for n in layout.fields + layout.kept if n not in found)
    return (
        Cell(
            time_us,
            tuple(found.get(n) for n in layout.fields),
            revision,
            carried,
            carried_revision,
            tuple(found.get(n) for n in layout.kept),
        ),
        lacking,
    )


def encode_label(layout: Layout, cell: LabelCell) -> bytes:
    """Version byte, time, the label's value, then its filter fields as (name, value) pairs."""
    out = bytearray([FORMAT_VERSION])
    _svarint(out, cell.time_us)
    _svarint(out, cell.value)
    _named(out, layout.label_fields, cell.values)
    return bytes(out)


def decode_label(layout: Layout, data: bytes) -> tuple[LabelCell, tuple[str, ...]]:
    """The label cell in ``layout``'s order and the label fields it lacks."""
    reader = _Reader(data)
    _version(reader, "label cell")
    time_us = reader.svarint()
    value = reader.svarint()
    found = _read_named(reader)
    lacking = tuple(n for n in layout.label_fields if n not in found)
    return LabelCell(time_us, value, tuple(found.get(n) for n in layout.label_fields)), lacking


def _sorted_values(values: Iterable[Any]) -> list[bytes]:
    """Distinct values as their encodings, sorted: the same set gives the same bytes."""
    encoded = []
    for v in values:
        one = bytearray()
        _value(one, v)
        encoded.append(bytes(one))
    return sorted(encoded)


def encode_aggregates(summary: Aggregates) -> bytes:
    """Version byte, transactions, first and last time, labels; then each accumulator: its
    field and filter, the parts it holds, n and those parts; then each label filter."""
    out = bytearray([FORMAT_VERSION])
    _uvarint(out, summary.transactions)
    _svarint(out, summary.first_us)
    _svarint(out, summary.last_us)
    _uvarint(out, summary.labels)
    _uvarint(out, len(summary.stats))
    for key in sorted(summary.stats, key=lambda k: (k.field or "", k.where or "")):
        stat = summary.stats[key]
        _value(out, key.field)
        _value(out, key.where)
        _uvarint(out, stat.parts)
        _uvarint(out, stat.n)
        if stat.parts & SUM:
            _svarint(out, stat.total)
        if stat.parts & SQUARES:
            _uvarint(out, stat.squares)
        if stat.parts & RANGE and stat.n:
            out += _F64.pack(stat.low) + _F64.pack(stat.high)
        if stat.parts & DISTINCT:
            values = _sorted_values(stat.distinct)
            _uvarint(out, len(values))
            for v in values:
                out += v
        if stat.parts & LATEST and stat.n:
            assert stat.latest is not None, "a non-empty accumulator has a latest event"
            time_us, tx_id, value = stat.latest
            _svarint(out, time_us)
            _value(out, tx_id)
            _value(out, value)
    _uvarint(out, len(summary.label_stats))
    for where in sorted(summary.label_stats, key=lambda w: w or ""):
        _value(out, where)
        _uvarint(out, summary.label_stats[where].labels)
        _svarint(out, summary.label_stats[where].frauds)
    return bytes(out)


def decode_aggregates(data: bytes) -> Aggregates:
    """The summary as written; ``Aggregates.holds`` then says whether it serves a layout."""
    reader = _Reader(data)
    _version(reader, "summary")
    transactions = reader.uvarint()
    first_us = reader.svarint()
    last_us = reader.svarint()
    labels = reader.uvarint()
    stats: dict[AccKey, Stat] = {}
    for _ in range(reader.uvarint()):
        key = AccKey(reader.value(), reader.value())
        parts = reader.uvarint()
        n = reader.uvarint()
        total = reader.svarint() if parts & SUM else 0
        squares = reader.uvarint() if parts & SQUARES else 0
        low = high = 0.0
        if parts & RANGE and n:
            low, high = reader.f64(), reader.f64()
        distinct: frozenset[Any] = frozenset()
        if parts & DISTINCT:
            distinct = frozenset(reader.value() for _ in range(reader.uvarint()))
        latest = None
        if parts & LATEST and n:
            latest = (reader.svarint(), reader.text(), reader.value())
        stats[key] = Stat(parts, n, total, squares, low, high, distinct, latest)
    label_stats: dict[str | None, LabelStat] = {}
    for _ in range(reader.uvarint()):
        where = reader.value()
        label_stats[where] = LabelStat(reader.uvarint(), reader.svarint())
    return Aggregates(transactions, first_us, last_us, labels, stats, label_stats)
