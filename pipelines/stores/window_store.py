"""The window store interface, its record types and an in-memory implementation.

A keyed stage reads and writes only its own keys' records (README "Ordering"):

  entity buckets  per (entity type, entity id, time bucket): one ``Cell`` per transaction of
                  the entity in the bucket and, on entities with label features, one
                  ``LabelCell`` per labelled transaction, plus the bucket's ``Aggregates``
                  (pipelines/core/window_cells.py: what they hold follows the definitions file,
                  ``Layout``); rows stay bounded whatever the entity's rate, and a long window
                  reads summaries.
  entity head     per (entity type, entity id): the entity's latest feature values (for online
                  lookups).
  id index        per transaction id: the first transaction message seen (``IdRecord.tx``) and
                  the label slot (``IdRecord.label``, pipelines/core/label_slots.py).
  waiting labels  per transaction id: label messages waiting for their transaction, with their
                  wall-clock deadlines.

Everything is keyed by transaction id, so writing a record twice changes nothing: a redelivered
event, a retried work item or a backfill over a range the stream already saw is idempotent.

Versions: a bucket write carries a timestamp, its writer's fence (pipelines/transforms/
keyed_stage.py): a bucket's cells and summary are written in one row mutation (atomic), and a
read sees, per cell, the version with the highest timestamp. A work item whose key moved to
another worker and that goes on writing (a zombie) writes with an older fence than every work
item committed after it, so it cannot hide their writes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

from pipelines.core.cells import NO_STREAM_WRITE
from pipelines.core.declarations import Entity
from pipelines.core.window_cells import (
    Aggregates,
    Cell,
    LabelCell,
    Layout,
    decode_aggregates,
    decode_cell,
    decode_label,
    encode_aggregates,
    encode_cell,
    encode_label,
)

__all__ = [
    "NO_STREAM_WRITE",
    "Aggregates",
    "Archive",
    "BucketCells",
    "BucketWrite",
    "Cell",
    "EntityHead",
    "IdRecord",
    "InMemoryStore",
    "LabelCell",
    "StoredArchive",
    "StoredCell",
    "UnwarmedCell",
    "WarmableStore",
    "WindowStore",
    "Writes",
    "archive_cells",
    "complete_cell",
    "complete_label",
    "summary_timestamp",
]


class UnwarmedCell(ValueError):
    """A stored cell lacks a field the definitions declare: it was written before the field
    was declared (a feature added to a running system). Its windows would read None (a crash,
    or silently wrong values), and a correction rebuilt from it would lack the field, so the
    read fails instead, naming the field and the fix: warm the stored cells from the event
    history (pipelines/backfill/warm.py, ``rillet features warm``) before the job reads them."""

    def __init__(self, layout: Layout, where: str, lacking: Sequence[str]) -> None:
        readers = sorted(
            f.name
            for f in layout.features
            if f.field in lacking or (f.where is not None and set(lacking) & f.where.fields)
        )
        reason = f"read by {', '.join(readers)}" if readers else "kept to rebuild corrections"
        super().__init__(
            f"the stored {layout.entity.name} cell {where} lacks the field(s) "
            f"{', '.join(lacking)} ({reason}): the store was written before the definitions "
            "declared them. Warm it from the event history before the job reads it: rillet "
            "features warm --definitions FILE --input HISTORY_DIR"
        )
        self.entity = layout.entity.name
        self.lacking = tuple(lacking)


def _where(parts: tuple[object, ...]) -> str:
    return "/".join(p.decode() if isinstance(p, bytes) else str(p) for p in parts)


def complete_cell(layout: Layout, data: bytes, *where: object) -> Cell:
    """A stored transaction cell; ``UnwarmedCell`` if it lacks a field of ``layout`` (``where``:
    its row and qualifier, joined only then: reads are a hot path)."""
    cell, lacking = decode_cell(layout, data)
    if lacking:
        raise UnwarmedCell(layout, _where(where), lacking)
    return cell


def complete_label(layout: Layout, data: bytes, *where: object) -> LabelCell:
    """A stored label cell; ``UnwarmedCell`` if it lacks a label field of ``layout``."""
    cell, lacking = decode_label(layout, data)
    if lacking:
        raise UnwarmedCell(layout, _where(where), lacking)
    return cell


class StoredCell(NamedTuple):
    """A stored cell as the warm step scans it: where it is, its version (timestamp µs), the
    cell decoded in a layout (None where it lacks a field) and the fields it lacks."""

    entity_id: str
    bucket: int
    tx_id: str
    label: bool  # a LabelCell (family "label"), else a transaction Cell
    cell: Cell | LabelCell
    lacking: tuple[str, ...]
    timestamp_us: int


class StoredArchive(NamedTuple):
    """An entity's stored archive as the warm step scans it (cells decoded leniently, None
    where they lack a field), the fields any of its cells lack, and its version."""

    entity_id: str
    archive: Archive
    lacking: tuple[str, ...]
    timestamp_us: int


@dataclass
class BucketCells:
    """The cells of one entity bucket as read (label cells when asked for)."""

    tx: dict[str, Cell] = field(default_factory=dict)
    labels: dict[str, LabelCell] = field(default_factory=dict)


class EntityHead(NamedTuple):
    """What a cold read needs to know of an entity first (its head row, one small cell).

    ``stream_from``: the earliest bucket the stream ever wrote for it (``NO_STREAM_WRITE``:
    none): an archive is the truth only for buckets before it. ``cells``: its transaction and
    label cells within the lookback at its last write (a hint: a sparse entity is read whole
    in one range scan, a dense one by its summaries and the buckets its windows need)."""

    stream_from: int
    cells: int


@dataclass
class Archive:
    """The backfill's copy of a sparse entity's cells of the buckets [from_bucket, to_bucket)
    in one value (a cold read of it costs one cell, not one per transaction). The bucket rows
    stay the truth; the archive stands in for them while the stream has not written there."""

    from_bucket: int
    to_bucket: int
    cells: BucketCells


class BucketWrite(NamedTuple):
    """Changed cells of one entity bucket and its new summary, written as one row mutation.

    ``timestamp_us``: the version the cells and the summary are written with (the writer's
    fence; None: each cell's event time and the summary's newest, the backfill's). ``layout``:
    the entity and what its cells hold (how they are encoded)."""

    layout: Layout
    entity_id: str
    bucket: int
    tx: dict[str, Cell]
    labels: dict[str, LabelCell]
    summary: Aggregates
    timestamp_us: int | None


@dataclass
class IdRecord:
    """What the id index holds for one transaction id (see pipelines.stores.bigtable)."""

    tx: dict[str, Any] | None = None
    label: dict[str, Any] | None = None


@dataclass
class Writes:
    """The mutations of one stage's batch, applied together (one MutateRows on Bigtable)."""

    buckets: list[BucketWrite] = field(default_factory=list)
    # (entity, entity id, event time µs, feature name -> value): the latest features
    features: list[tuple[Entity, str, int, dict[str, float]]] = field(default_factory=list)
    # (entity, entity id, head, timestamp µs: the writer's fence, or the backfill's end)
    heads: list[tuple[Entity, str, EntityHead, int]] = field(default_factory=list)
    # (layout, entity id, archive, timestamp µs: the backfill's end)
    archives: list[tuple[Layout, str, Archive, int]] = field(default_factory=list)
    # (transaction id, family "tx" or "label", record, event time µs)
    ids: list[tuple[str, str, dict[str, Any], int]] = field(default_factory=list)
    # (transaction id, message key, record with its "deadline", event time µs)
    waits_add: list[tuple[str, str, dict[str, Any], int]] = field(default_factory=list)
    # (transaction id, message keys, or None for all of the id's)
    waits_remove: list[tuple[str, Sequence[str] | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


class WarmableStore(Protocol):
    """What the warm step (pipelines/backfill/warm.py) needs of a store besides its writes."""

    def scan_cells(self, layout: Layout) -> tuple[list[StoredCell], list[StoredArchive]]:
        """Every stored cell (newest version) and archive of the layout's entity."""
        ...

    def rewrite_cells(
        self, layout: Layout, cells: Sequence[StoredCell], archives: Sequence[StoredArchive]
    ) -> None:
        """Writes these cells and archives back at their own versions (``timestamp_us``): a
        version a writer wrote since stays the newest. Summaries are left as they are."""
        ...

    def read_heads(
        self, layout: Layout, ids: Sequence[str], archives: bool = True
    ) -> dict[str, tuple[EntityHead | None, Archive | None]]: ...

    def apply(self, writes: Writes) -> None: ...


class WindowStore(Protocol):
    """What the keyed stages need from a store. Every call is batched over many keys, of one
    entity (``layout.entity``; the layout says how its cells decode)."""

    def read_summaries(
        self, layout: Layout, ids: Sequence[str], first_bucket: int
    ) -> dict[str, dict[int, Aggregates]]:
        """The summaries of these entities' buckets from ``first_bucket`` on (entities without
        any are absent)."""
        ...

    def read_buckets(
        self, layout: Layout, buckets: Sequence[tuple[str, int]], labels: bool
    ) -> dict[tuple[str, int], BucketCells]:
        """The cells of these (entity id, bucket)s (label cells too when ``labels``); empty
        buckets are absent."""
        ...

    def read_heads(
        self, layout: Layout, ids: Sequence[str]
    ) -> dict[str, tuple[EntityHead | None, Archive | None]]:
        """The heads and archives of these entities (absent: neither was ever written)."""
        ...

    def read_ranges(
        self, layout: Layout, starts: Sequence[tuple[str, int]], labels: bool
    ) -> dict[tuple[str, int], BucketCells]:
        """The cells of every bucket of these entities from each one's start bucket on (one
        range scan each); empty buckets are absent."""
        ...

    def read_ids(self, transaction_ids: Sequence[str]) -> dict[str, IdRecord]:
        """The id-index records of these transaction ids (absent: never seen)."""
        ...

    def read_waiting(
        self, transaction_ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Labels waiting for these transaction ids (None: all): transaction id -> message key
        -> record."""
        ...

    def apply(self, writes: Writes) -> None:
        """Applies a batch's mutations; retried until they are all durable."""
        ...


def archive_cells(
    layout: Layout, tx: Iterator[tuple[str, bytes]], labels: Iterator[tuple[str, bytes]]
) -> tuple[BucketCells, tuple[str, ...]]:
    """An archive's cells decoded leniently (None where a cell lacks a field) and the fields
    any of them lacks (the warm step's view of it)."""
    cells = BucketCells()
    lacking: set[str] = set()
    for tx_id, data in tx:
        cells.tx[tx_id], missing = decode_cell(layout, data)
        lacking.update(missing)
    for tx_id, data in labels:
        cells.labels[tx_id], missing = decode_label(layout, data)
        lacking.update(missing)
    return cells, tuple(sorted(lacking))


def _lenient_archive(
    layout: Layout,
    entity_id: str,
    first: int,
    last: int,
    tx: dict[str, bytes],
    labels: dict[str, bytes],
    timestamp_us: int,
) -> StoredArchive:
    cells, lacking = archive_cells(layout, iter(tx.items()), iter(labels.items()))
    return StoredArchive(entity_id, Archive(first, last, cells), lacking, timestamp_us)


def summary_timestamp(write: BucketWrite) -> int:
    """The version a bucket's summary is written with: the writer's fence, or (the backfill's
    writes) the newest event time among the cells written."""
    if write.timestamp_us is not None:
        return write.timestamp_us
    times = [c.time_us for c in write.tx.values()] + [c.time_us for c in write.labels.values()]
    return max(times, default=write.summary.last_us)


_IN_MEMORY: dict[str, InMemoryStore] = {}

# A versioned value: (timestamp µs, value). The newest timestamp wins; on a tie the later write.
_Versioned = tuple[int, Any]


def _newer(stored: _Versioned | None, timestamp: int) -> bool:
    return stored is None or timestamp >= stored[0]


class InMemoryStore:
    """A WindowStore in a dict, for unit tests of the stages' logic (no emulator). It keeps
    Bigtable's rule that a cell's newest version wins, whatever the order of the writes, and
    holds cells and summaries encoded as Bigtable does (pipelines/core/window_cells.py), so a
    reader whose definitions changed decodes them by name, as it would from Bigtable.

    Stores are registered by name in the process: a pipeline's DoFns are pickled, and each
    unpickled copy must reach the same store (``__reduce__``)."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        _IN_MEMORY[name] = self
        # (entity name, entity id, bucket) -> {"tx": {id: versioned bytes}, "label": ...,
        # "summary": versioned bytes}
        self.rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.features: dict[tuple[str, str], tuple[int, dict[str, float]]] = {}
        # (entity name, entity id) -> (timestamp, head), archive (its buckets and encoded cells)
        self.heads: dict[tuple[str, str], tuple[int, EntityHead]] = {}
        self.archives: dict[
            tuple[str, str], tuple[int, int, dict[str, bytes], dict[str, bytes], int]
        ] = {}
        self.ids: dict[str, IdRecord] = {}
        self.waiting: dict[str, dict[str, dict[str, Any]]] = {}

    @staticmethod
    def named(name: str) -> InMemoryStore:
        return _IN_MEMORY.get(name) or InMemoryStore(name)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (InMemoryStore.named, (self.name,))

    def read_summaries(
        self, layout: Layout, ids: Sequence[str], first_bucket: int
    ) -> dict[str, dict[int, Aggregates]]:
        entity = layout.entity
        wanted = set(ids)
        out: dict[str, dict[int, Aggregates]] = {}
        for (name, entity_id, bucket), row in self.rows.items():
            wanted_row = name == entity.name and entity_id in wanted and bucket >= first_bucket
            if wanted_row and row.get("summary") is not None:
                out.setdefault(entity_id, {})[bucket] = decode_aggregates(row["summary"][1])
        return out

    def read_buckets(
        self, layout: Layout, buckets: Sequence[tuple[str, int]], labels: bool
    ) -> dict[tuple[str, int], BucketCells]:
        entity = layout.entity
        out: dict[tuple[str, int], BucketCells] = {}
        for entity_id, bucket in set(buckets):
            row = self.rows.get((entity.name, entity_id, bucket))
            if row is None:
                continue
            cells = BucketCells(
                {
                    k: complete_cell(layout, v[1], entity_id, bucket, k)
                    for k, v in row["tx"].items()
                },
                {
                    k: complete_label(layout, v[1], entity_id, bucket, k)
                    for k, v in row["label"].items()
                }
                if labels
                else {},
            )
            if cells.tx or cells.labels:
                out[(entity_id, bucket)] = cells
        return out

    def read_heads(
        self, layout: Layout, ids: Sequence[str], archives: bool = True
    ) -> dict[str, tuple[EntityHead | None, Archive | None]]:
        entity = layout.entity
        out: dict[str, tuple[EntityHead | None, Archive | None]] = {}
        for entity_id in set(ids):
            head = self.heads.get((entity.name, entity_id))
            stored = self.archives.get((entity.name, entity_id)) if archives else None
            archive = None
            if stored is not None:
                first, last, tx, labels, _ = stored
                cells = BucketCells(
                    {k: complete_cell(layout, v, entity_id, "archive", k) for k, v in tx.items()},
                    {
                        k: complete_label(layout, v, entity_id, "archive", k)
                        for k, v in labels.items()
                    },
                )
                archive = Archive(first, last, cells)
            if head is not None or archive is not None:
                out[entity_id] = (head[1] if head else None, archive)
        return out

    def read_ranges(
        self, layout: Layout, starts: Sequence[tuple[str, int]], labels: bool
    ) -> dict[tuple[str, int], BucketCells]:
        entity = layout.entity
        first = dict(starts)
        wanted = [
            (entity_id, bucket)
            for (name, entity_id, bucket) in self.rows
            if name == entity.name and entity_id in first and bucket >= first[entity_id]
        ]
        return self.read_buckets(layout, wanted, labels)

    def read_ids(self, transaction_ids: Sequence[str]) -> dict[str, IdRecord]:
        return {i: copy.deepcopy(self.ids[i]) for i in set(transaction_ids) if i in self.ids}

    def read_waiting(
        self, transaction_ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        wanted = None if transaction_ids is None else set(transaction_ids)
        return {
            k: copy.deepcopy(v)
            for k, v in self.waiting.items()
            if v and (wanted is None or k in wanted)
        }

    def scan_cells(self, layout: Layout) -> tuple[list[StoredCell], list[StoredArchive]]:
        name = layout.entity.name
        cells: list[StoredCell] = []
        for (entity, entity_id, bucket), row in sorted(self.rows.items()):
            if entity != name:
                continue
            for tx_id, (ts, data) in row["tx"].items():
                cell, lacking = decode_cell(layout, data)
                cells.append(StoredCell(entity_id, bucket, tx_id, False, cell, lacking, ts))
            for tx_id, (ts, data) in row["label"].items():
                label, lacking = decode_label(layout, data)
                cells.append(StoredCell(entity_id, bucket, tx_id, True, label, lacking, ts))
        archives = [
            _lenient_archive(layout, entity_id, first, last, tx, labels, ts)
            for (entity, entity_id), (first, last, tx, labels, ts) in sorted(self.archives.items())
            if entity == name
        ]
        return cells, archives

    def rewrite_cells(
        self, layout: Layout, cells: Sequence[StoredCell], archives: Sequence[StoredArchive]
    ) -> None:
        for c in cells:
            row = self.rows[(layout.entity.name, c.entity_id, c.bucket)]
            family = row["label"] if c.label else row["tx"]
            if _newer(family.get(c.tx_id), c.timestamp_us):
                data = (
                    encode_label(layout, c.cell)  # type: ignore[arg-type]
                    if c.label
                    else encode_cell(layout, c.cell)  # type: ignore[arg-type]
                )
                family[c.tx_id] = (c.timestamp_us, data)
        for a in archives:
            stored = self.archives.get((layout.entity.name, a.entity_id))
            if stored is None or a.timestamp_us >= stored[4]:
                self.apply(Writes(archives=[(layout, a.entity_id, a.archive, a.timestamp_us)]))

    def apply(self, writes: Writes) -> None:
        if not writes:
            return
        for w in writes.buckets:
            row = self.rows.setdefault(
                (w.layout.entity.name, w.entity_id, w.bucket),
                {"tx": {}, "label": {}, "summary": None},
            )
            for tx_id, cell in w.tx.items():
                ts = cell.time_us if w.timestamp_us is None else w.timestamp_us
                if _newer(row["tx"].get(tx_id), ts):
                    row["tx"][tx_id] = (ts, encode_cell(w.layout, cell))
            for tx_id, label in w.labels.items():
                ts = label.time_us if w.timestamp_us is None else w.timestamp_us
                if _newer(row["label"].get(tx_id), ts):
                    row["label"][tx_id] = (ts, encode_label(w.layout, label))
            ts = summary_timestamp(w)
            if _newer(row["summary"], ts):
                row["summary"] = (ts, encode_aggregates(w.summary))
        for entity, entity_id, head, timestamp in writes.heads:
            if _newer(self.heads.get((entity.name, entity_id)), timestamp):
                self.heads[(entity.name, entity_id)] = (timestamp, head)
        for layout, entity_id, archive, timestamp in writes.archives:
            self.archives[(layout.entity.name, entity_id)] = (
                archive.from_bucket,
                archive.to_bucket,
                {k: encode_cell(layout, c) for k, c in archive.cells.tx.items()},
                {k: encode_label(layout, c) for k, c in archive.cells.labels.items()},
                timestamp,
            )
        for entity, entity_id, time_us, values in writes.features:
            stored = self.features.get((entity.name, entity_id))
            if stored is None or time_us >= stored[0]:
                self.features[(entity.name, entity_id)] = (time_us, dict(values))
        for tx_id, family, record, _ in writes.ids:
            setattr(self.ids.setdefault(tx_id, IdRecord()), family, copy.deepcopy(record))
        for tx_id, keys in writes.waits_remove:
            if keys is None:
                self.waiting.pop(tx_id, None)
                continue
            entries = self.waiting.get(tx_id, {})
            for key in keys:
                entries.pop(key, None)
            if not entries:
                self.waiting.pop(tx_id, None)
        for tx_id, key, record, _ in writes.waits_add:
            self.waiting.setdefault(tx_id, {})[key] = copy.deepcopy(record)
