"""Warming the feature store for a definitions file that gained features: what a running job's
store must hold before a job computing the new file reads it, written from the event history.

A feature added to a live system may read what the store does not hold:

* a field that stored cells lack (the file's events gained it, or an entity's windows now read
  it): cells are self-describing (pipelines/core/window_cells.py), so the new job sees the gap;
  it refuses to read such a cell (``stores.window_store.UnwarmedCell``). The warm step fills
  the gap in place: it reads every stored cell of the entity (newest version, with its
  timestamp), adds the lacking fields from the history (by transaction id) and writes the cell
  back **at its own timestamp**, without touching the summaries. Bigtable replaces that one
  version, so the warm never hides a newer write: a cell a running job rewrites meanwhile keeps
  its newer version (without the field: the next warm pass fills it), and its revision and
  carried features are kept as the stream wrote them. Summaries that lack the new feature's
  accumulator are read through their cells by the stages (``Aggregates.holds``).
* an entity that has no stored rows, or rows only a warm wrote (a new entity, e.g. card x
  device; a second pass after the old job stopped writes it again, with what that job saw
  since): its state is written as the backfill's ``--to_bigtable`` writes it (cells within the
  lookback, labels, summaries, heads, archives of sparse entities, the latest features), from the
  history's transactions the store already holds (the ids found in the other entities' cells:
  what the running job has seen), up to the newest of them, with event-time versions (below any
  fence of the job that will then write there).

The order, with a running job (documented in the README, "A new feature on a live system"):
warm while the old job runs (the bulk, no downtime), stop the old job (locally: LocalRun's stop,
its checkpoint keeps the subscription's unacked messages; on Dataflow: drain), warm again (only
the cells written since lack the field: seconds), start the job on the new file. A cell that
still lacks a field fails the new job's read loudly, naming the field and this step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.cells import SPARSE_CELLS, bucket_of
from pipelines.core.declarations import Definitions, Entity, EventStream
from pipelines.core.engine import compute_features
from pipelines.core.window_cells import Cell, LabelCell, Layout
from pipelines.core.window_state import Bucket
from pipelines.stores.window_store import (
    NO_STREAM_WRITE,
    Archive,
    BucketCells,
    BucketWrite,
    EntityHead,
    StoredArchive,
    StoredCell,
    WarmableStore,
    Writes,
)

__all__ = ["WarmReport", "entity_state_writes", "read_history", "warm_store"]

Columns = Mapping[str, np.ndarray]


@dataclass
class WarmReport:
    """What a warm pass did, per entity: ``filled`` cells (and archives) given the fields they
    lacked, ``created`` cells of entities the store had no rows of, and the stored transactions
    the history lacks (``missing``: their cells stay unwarmed; the job will refuse them)."""

    filled: dict[str, int] = field(default_factory=dict)
    archives: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "filled": self.filled,
            "archives": self.archives,
            "created": self.created,
            "missing": {k: len(v) for k, v in self.missing.items()},
        }


def read_history(pattern: str, stream: EventStream) -> dict[str, np.ndarray] | None:
    """The events of the files matching ``pattern`` (local or gs://, Parquet/CSV/JSONL, as the
    backfill reads them) as canonical columns by field name; None when no file matches."""
    import pyarrow as pa
    from apache_beam.io.filesystems import FileSystems

    from pipelines.backfill.event_tables import canonical, read_tables

    tables = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            tables += [canonical(t, stream, meta.path) for t in read_tables(meta.path, f)]
    if not tables:
        return None
    table = pa.concat_tables(tables)
    return {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}


def _stream_value(kind: str, value: Any) -> Any:
    """A history value as the stream's parser gives it (pipelines/core/schema.py): ids and
    texts as str, numbers as float, integers and times as int."""
    if hasattr(value, "item"):
        value = value.item()
    if kind in ("id", "string"):
        return str(value)
    if kind == "number":
        return float(value)
    return int(value)


class _History:
    """A stream's history columns, looked up by transaction id as the stream's values."""

    def __init__(self, stream: EventStream, columns: Columns) -> None:
        self.stream = stream
        self.columns = columns
        ids = [str(i) for i in np.asarray(columns[stream.id_field]).tolist()]
        # The later row wins, as the backfill's feature table keeps a transaction's later label.
        self.index = {tx_id: i for i, tx_id in enumerate(ids)}
        self.kinds = {f.name: f.type for f in stream.fields}

    def value(self, i: int, name: str) -> Any:
        return _stream_value(self.kinds[name], self.columns[name][i])

    def row(self, i: int) -> dict[str, Any]:
        return {n: self.value(i, n) for n in self.stream.names}


def _fill_cell(layout: Layout, cell: Cell, lacking: Sequence[str], row: dict[str, Any]) -> Cell:
    def filled(names: Sequence[str], values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(row[n] if n in lacking else v for n, v in zip(names, values, strict=True))

    return cell._replace(
        values=filled(layout.fields, cell.values), kept=filled(layout.kept, cell.kept)
    )


def _fill_label(layout: Layout, cell: LabelCell, row: dict[str, Any]) -> LabelCell:
    return cell._replace(values=tuple(row[n] for n in layout.label_fields))


def _fill_archive(
    layout: Layout,
    stored: StoredArchive,
    txs: _History,
    labels: _History | None,
    missing: list[str],
) -> StoredArchive:
    cells = BucketCells()
    for tx_id, cell in stored.archive.cells.tx.items():
        i = txs.index.get(tx_id)
        if i is None:
            missing.append(tx_id)
            cells.tx[tx_id] = cell
        else:
            cells.tx[tx_id] = _fill_cell(layout, cell, stored.lacking, txs.row(i))
    for tx_id, label in stored.archive.cells.labels.items():
        j = None if labels is None else labels.index.get(tx_id)
        if j is None or labels is None:
            missing.append(tx_id)
            cells.labels[tx_id] = label
        else:
            cells.labels[tx_id] = _fill_label(layout, label, labels.row(j))
    archive = Archive(stored.archive.from_bucket, stored.archive.to_bucket, cells)
    return stored._replace(archive=archive, lacking=())


def warm_store(
    defs: Definitions,
    store: WarmableStore,
    transactions: Columns,
    labels: Columns | None = None,
) -> WarmReport:
    """Warms ``store`` for ``defs`` from the history (canonical columns by field name, times in
    µs): fills the fields stored cells lack, creates the state of entities without stored rows
    (module docstring). Idempotent: a second pass finds nothing to fill."""
    txs = _History(defs.events, transactions)
    label_history = (
        _History(defs.labels, labels) if labels is not None and defs.labels is not None else None
    )
    report = WarmReport()
    entities = [e for e in defs.entities if defs.window_features(e)]
    scans = {e.name: store.scan_cells(Layout.of(defs, e)) for e in entities}
    seen: set[str] = set()
    for cells, archives in scans.values():
        seen.update(c.tx_id for c in cells if not c.label)
        for a in archives:
            seen.update(a.archive.cells.tx)
    for entity in entities:
        layout = Layout.of(defs, entity)
        cells, archives = scans[entity.name]
        missing: list[str] = []
        if (cells or archives) and _streamed(store, layout, cells, archives):
            filled: list[StoredCell] = []
            for c in cells:
                if not c.lacking:
                    continue
                history = label_history if c.label else txs
                i = None if history is None else history.index.get(c.tx_id)
                if i is None or history is None:
                    missing.append(c.tx_id)
                    continue
                row = history.row(i)
                cell = (
                    _fill_label(layout, c.cell, row)  # type: ignore[arg-type]
                    if c.label
                    else _fill_cell(layout, c.cell, c.lacking, row)  # type: ignore[arg-type]
                )
                filled.append(c._replace(cell=cell, lacking=()))
            warmed = [
                _fill_archive(layout, a, txs, label_history, missing) for a in archives if a.lacking
            ]
            store.rewrite_cells(layout, filled, warmed)
            report.filled[entity.name] = len(filled)
            report.archives[entity.name] = len(warmed)
        else:
            ids = np.array([str(i) for i in np.asarray(transactions[defs.events.id_field])])
            keep = np.isin(ids, sorted(seen)) if seen else np.ones(len(ids), dtype=bool)
            if keep.any():
                subset = {n: np.asarray(v)[keep] for n, v in transactions.items()}
                end_us = int(np.max(subset[defs.events.time_field]))
                writes = entity_state_writes(defs, entity, subset, labels, end_us)
                store.apply(writes)
                report.created[entity.name] = sum(len(w.tx) for w in writes.buckets)
            else:
                report.created[entity.name] = 0
        if missing:
            report.missing[entity.name] = missing
    return report


def _streamed(
    store: WarmableStore,
    layout: Layout,
    cells: Sequence[StoredCell],
    archives: Sequence[StoredArchive],
) -> bool:
    """Whether a stream ever wrote the entity (a head whose ``stream_from`` is set). One that
    only a warm (or a backfill) wrote is written again whole from the history: a running old
    job has seen more transactions since, and the new entity must hold them too."""
    ids = sorted({c.entity_id for c in cells} | {a.entity_id for a in archives})
    heads = store.read_heads(layout, ids, archives=False)  # archives may lack a field
    return any(h is not None and h.stream_from != NO_STREAM_WRITE for h, _ in heads.values())


def entity_state_writes(
    defs: Definitions,
    entity: Entity,
    transactions: Columns,
    labels: Columns | None,
    end_us: int,
) -> Writes:
    """An entity's window state as the streaming stage would have left it at ``end_us``, for
    any definitions file: its cells within the lookback (event-time versions), its label cells
    (entities with label features), each bucket's summary, each entity's head (no stream write
    yet) and, for a sparse entity, the archive of its whole buckets before the end; the window
    features of each entity's latest transaction."""
    layout = Layout.of(defs, entity)
    features = defs.window_features(entity)
    matrix = compute_features(
        defs,
        dict(transactions),
        dict(labels) if labels is not None and defs.labels is not None else None,
        names=[f.name for f in features],
    )
    txs = _History(defs.events, transactions)
    since = end_us - defs.lookback_us(entity) - max((f.delay_us for f in features), default=0)
    times = np.asarray(transactions[defs.events.time_field])
    buckets: dict[tuple[str, int], BucketCells] = {}
    entity_of: list[str] = []
    for i in range(len(times)):
        row = txs.row(i)
        entity_id = entity.id_of(row)
        entity_of.append(entity_id)
        if int(times[i]) < since or int(times[i]) > end_us:
            continue
        cells = buckets.setdefault((entity_id, bucket_of(int(times[i]))), BucketCells())
        cells.tx[row[defs.events.id_field]] = layout.cell(row)
    lb = defs.labels
    if labels is not None and lb is not None and any(f.needs_labels for f in features):
        history = _History(lb, labels)
        label_times = np.asarray(labels[lb.time_field])
        for j in range(len(label_times)):
            if not since <= int(label_times[j]) <= end_us:
                continue
            row = history.row(j)
            cells = buckets.setdefault(
                (entity.id_of(row), bucket_of(int(label_times[j]))), BucketCells()
            )
            cells.labels[row[lb.id_field]] = layout.label_cell(row)
    writes = Writes()
    writes.buckets += [
        BucketWrite(layout, e, b, c.tx, c.labels, Bucket(layout, c.tx, c.labels).summary(), None)
        for (e, b), c in buckets.items()
    ]
    per_entity: dict[str, dict[int, BucketCells]] = {}
    for (e, b), c in buckets.items():
        per_entity.setdefault(e, {})[b] = c
    first, last = bucket_of(since), bucket_of(end_us)
    stamp = end_us // 1000 * 1000
    for entity_id, cells_of in per_entity.items():
        total = sum(len(c.tx) + len(c.labels) for c in cells_of.values())
        writes.heads.append((entity, entity_id, EntityHead(NO_STREAM_WRITE, total), stamp))
        if total <= SPARSE_CELLS:
            archived = BucketCells()
            for b, c in cells_of.items():
                if b < last:
                    archived.tx.update(c.tx)
                    archived.labels.update(c.labels)
            writes.archives.append((layout, entity_id, Archive(first, last, archived), stamp))
    frame = pd.DataFrame({"entity": entity_of, "time": times})
    frame = frame[frame.time <= end_us]
    latest = frame.reset_index().sort_values(["time", "index"]).groupby("entity").tail(1)
    names = [f.name for f in features]
    for entity_id, t, i in zip(latest["entity"], latest["time"], latest["index"], strict=True):
        values = dict(zip(names, map(float, matrix[i]), strict=True))
        writes.features.append((entity, str(entity_id), int(t), values))
    return writes
