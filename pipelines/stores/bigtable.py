"""Bigtable online feature store: schema, table creation, batched reads and writes.

Schema (one table; the contract, field by field, is docs/specs/bigtable.md):

  row key            ``<entity>#<entity_id>#<bucket>``: one row per entity and time bucket of
                     15 minutes (pipelines/core/cells.py; ``<bucket>`` = event time // bucket,
                     12 digits), so a row stays bounded whatever the entity's rate.
  family ``tx``      one cell per transaction of the entity in the bucket: qualifier =
                     transaction_id, value = the cell (pipelines/core/window_cells.py
                     ``encode_cell``: the fields the entity's windows read, the rest of the
                     event, revisions and carried features, each field named); and qualifier
                     ``#summary``: the bucket's ``Aggregates`` (``encode_aggregates``), written
                     in the same row mutation as the cells (atomic), so a long window reads
                     summaries.
  family ``label``   rows of entities with label features: one cell per labelled transaction:
                     qualifier = transaction_id, value = ``encode_label``.
                     Cell versions: the stream writes with its fence (a per-key counter in Beam
                     state, pipelines/transforms/keyed_stage.py), the backfill with event times;
                     a read takes each cell's newest version, so an attempt that lost its key
                     (a zombie) cannot hide what a later work item wrote.

  row key            ``<entity>#<entity_id>``: the entity's head
  family ``features`` the latest computed features of the entity: qualifier = feature name,
                     value = >d8 float, cell timestamp = event time of the transaction.

  row key            ``txid#<transaction_id>``: the id index (one row per transaction id)
  family ``tx``      qualifier ``m``: the first transaction message seen with this id, JSON
                     {message_id, digest, time_us, customer_id, terminal_id}. A later message
                     with the same id is a redelivery (same message_id) or a duplicate.
  family ``label``   qualifier ``m``: the transaction's label slot, JSON: the label in force
                     (message id, digest, fields, publish time; state ``recorded``), the label
                     messages waiting for the transaction (``w``) and those dead-lettered as
                     ``unknown_transaction`` (``x``); see pipelines.core.label_slots.
                     Both cells are timestamped with the event time, so the tables' GC rule
                     ages them out with the window state; each holds one version.

  row key            ``wait#<transaction_id>``: labels waiting for their transaction
  family ``label``   qualifier = message key, JSON: the label's fields and its wall-clock
                     deadline. Deleted when the label is decided; read at start-up, so a new
                     worker (a restart, Dataflow moving the key) keeps every wait and deadline.

Cells are keyed by transaction id, so writing an event twice (a redelivery, a retried work item,
a backfill over a range the stream already saw) changes nothing: the store is idempotent.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from pipelines.core.declarations import Entity
from pipelines.core.label_slots import content_digest
from pipelines.core.window_cells import (
    Aggregates,
    Cell,
    Layout,
    decode_aggregates,
    decode_cell,
    decode_label,
    encode_aggregates,
    encode_cell,
    encode_label,
)
from pipelines.stores.retry import (
    CALL_TIMEOUT_S,
    raise_for_statuses,
    with_backoff,
)
from pipelines.stores.window_store import (
    Archive,
    BucketCells,
    EntityHead,
    IdRecord,
    Writes,
    summary_timestamp,
)

__all__ = [
    "ARCHIVE_QUALIFIER",
    "FAMILY_FEATURES",
    "FAMILY_LABEL",
    "FAMILY_TX",
    "HEAD_QUALIFIER",
    "ID_ROW_PREFIX",
    "SUMMARY_QUALIFIER",
    "WAIT_ROW_PREFIX",
    "FeatureStore",
    "IdRecord",
    "StoreConfig",
    "bucket_row_bytes",
    "bucket_row_key",
    "create_table",
    "decode_archive",
    "decode_head",
    "encode_archive",
    "encode_head",
    "head_row_key",
    "transaction_record",
]

_LOGGER = logging.getLogger(__name__)

FAMILY_TX = "tx"
FAMILY_LABEL = "label"
FAMILY_FEATURES = "features"
_FLOAT = struct.Struct(">d")
# Bigtable timestamps are microseconds with millisecond granularity.
_MS = 1000
ID_ROW_PREFIX = "txid#"
WAIT_ROW_PREFIX = "wait#"  # labels waiting for their transaction, with their deadlines
_ID_QUALIFIER = b"m"
SUMMARY_QUALIFIER = b"#summary"  # "#" is not allowed in ids (pipelines.core.schema)
HEAD_QUALIFIER = b"#head"  # on the entity's head row
ARCHIVE_QUALIFIER = b"#archive"  # on the entity's head row (the backfill's)
_HEAD = struct.Struct(">Bqq")  # format version, stream_from bucket, cells
_ARCHIVE_HEAD = struct.Struct(">BqqII")  # format version, from, to bucket, transactions, labels
_ARCHIVE_VERSION = 2  # 1: the handbook-only cells, columnar (not read: a new table)
_SIZE = struct.Struct(">I")
_BUCKET_DIGITS = 12


def head_row_key(entity: Entity, entity_id: str) -> bytes:
    """The entity's head row (its latest features)."""
    return f"{entity.name}#{entity_id}".encode()


def bucket_row_key(entity: Entity, entity_id: str, bucket: int) -> bytes:
    """The row of one entity's time bucket (zero-padded: rows sort by time)."""
    if bucket < 0:
        raise ValueError(f"event times before 1970 have no bucket row: {bucket}")
    return f"{entity.name}#{entity_id}#{bucket:0{_BUCKET_DIGITS}d}".encode()


def bucket_row_bytes(
    layout: Layout,
    transactions_per_s: float,
    labels_per_s: float,
    carried_features: int = 0,
    id_chars: int = 8,
) -> int:
    """The size of the largest bucket row an entity makes when it gets ``transactions_per_s``
    and ``labels_per_s`` (each label lands in its transaction's bucket), from the encoded size
    of its cells: per cell the qualifier, family, timestamp and value, as Bigtable counts a row
    (plus the row key and the summary once). ``carried_features``: the features of the stages
    before that its cells carry; ``id_chars``: the length of ids and text values (numbers are
    encoded as float64)."""
    from pipelines.core.cells import BUCKET_US
    from pipelines.core.window_cells import LabelCell

    ident = "9" * id_chars
    key = bucket_row_key(layout.entity, ident, 10**9)
    values = tuple(0.0 if layout.scales.get(n) else ident for n in layout.fields)
    kept = tuple(ident for _ in layout.kept)
    cell = Cell(0, values, 1, (0.0,) * carried_features, 1, kept)
    tx = id_chars + len(FAMILY_TX) + 8 + len(encode_cell(layout, cell))
    label_cell = LabelCell(0, 1, tuple(ident for _ in layout.label_fields))
    label = id_chars + len(FAMILY_LABEL) + 8 + len(encode_label(layout, label_cell))
    summary = len(SUMMARY_QUALIFIER) + len(FAMILY_TX) + 8 + _summary_bytes(layout)
    seconds = BUCKET_US / 1_000_000
    cells = transactions_per_s * seconds * tx + labels_per_s * seconds * label
    return int(len(key) + summary + cells)


def _summary_bytes(layout: Layout) -> int:
    """The size of a summary of one cell (distinct sets grow with the bucket: not counted)."""
    from pipelines.core.window_cells import LabelCell
    from pipelines.core.window_state import Bucket

    values = tuple(0.0 if layout.scales.get(n) else "9" for n in layout.fields)
    bucket = Bucket(layout, {"1": Cell(1, values, kept=("9",) * len(layout.kept))})
    bucket.labels["1"] = LabelCell(1, 1, ("9",) * len(layout.label_fields))
    return len(encode_aggregates(bucket.summary()))


def encode_head(head: EntityHead) -> bytes:
    """``>Bqq``: format version (1), the earliest bucket the stream wrote, the cells."""
    return _HEAD.pack(1, head.stream_from, head.cells)


def decode_head(raw: bytes) -> EntityHead:
    version, stream_from, cells = _HEAD.unpack_from(raw)
    if version != 1:
        raise ValueError(f"unknown entity head format {version}")
    return EntityHead(stream_from, cells)


def _sized(out: list[bytes], data: bytes) -> None:
    out.append(_SIZE.pack(len(data)))
    out.append(data)


def encode_archive(layout: Layout, archive: Archive) -> bytes:
    """An archive as one value (docs/specs/bigtable.md): the head ``>BqqII`` (version 2, from
    and to bucket, n transactions, m labels), then n x (transaction id, ``encode_cell``) and
    m x (transaction id, ``encode_label``), each part a ``>I`` length and its bytes."""
    cells = archive.cells
    out = [
        _ARCHIVE_HEAD.pack(
            _ARCHIVE_VERSION,
            archive.from_bucket,
            archive.to_bucket,
            len(cells.tx),
            len(cells.labels),
        )
    ]
    for tx_id, cell in cells.tx.items():
        _sized(out, tx_id.encode())
        _sized(out, encode_cell(layout, cell))
    for tx_id, label in cells.labels.items():
        _sized(out, tx_id.encode())
        _sized(out, encode_label(layout, label))
    return b"".join(out)


def decode_archive(layout: Layout, raw: bytes) -> Archive:
    """The archive of ``encode_archive``, its cells in ``layout``'s order."""
    version, first, last, n, m = _ARCHIVE_HEAD.unpack_from(raw)
    if version != _ARCHIVE_VERSION:
        raise ValueError(f"archive format {version} is not {_ARCHIVE_VERSION}")
    offset = _ARCHIVE_HEAD.size

    def part() -> bytes:
        nonlocal offset
        (size,) = _SIZE.unpack_from(raw, offset)
        offset += _SIZE.size + size
        return raw[offset - size : offset]

    cells = BucketCells()
    for _ in range(n):
        tx_id = part().decode()
        cells.tx[tx_id] = decode_cell(layout, part())[0]
    for _ in range(m):
        tx_id = part().decode()
        cells.labels[tx_id] = decode_label(layout, part())[0]
    return Archive(first, last, cells)


@dataclass(frozen=True)
class StoreConfig:
    """Where the feature store lives."""

    project: str
    instance: str
    table: str


def create_table(config: StoreConfig, max_age_days: int | None = None) -> bool:
    """Creates the feature table and its column families if missing; returns True if created.

    ``max_age_days`` adds an age-based GC rule to the event families. Leave it off when
    replaying historical data (cell timestamps are event times, so a 2018 replay would be
    collected at once); production (Terraform) sets it to the longest lookback plus a margin.
    """
    from google.cloud.bigtable import Client, column_family

    client = Client(project=config.project, admin=True)
    instance = client.instance(config.instance)
    table = instance.table(config.table)
    one_version = column_family.MaxVersionsGCRule(1)
    if max_age_days:
        from datetime import timedelta

        event_rule: Any = column_family.GCRuleUnion(
            [one_version, column_family.MaxAgeGCRule(timedelta(days=max_age_days))]
        )
    else:
        event_rule = one_version
    families = {FAMILY_TX: event_rule, FAMILY_LABEL: event_rule, FAMILY_FEATURES: one_version}
    if table.exists():
        existing = table.list_column_families()
        for name, rule in families.items():
            if name not in existing:
                table.column_family(name, rule).create()
        return False
    table.create(column_families=families)
    return True


def transaction_record(
    message_id: str, time_us: int, fields: dict[str, Any], publish_time_us: int = 0
) -> dict[str, Any]:
    """The id-index record of a transaction (family ``tx``): its message, publish time, content
    digest, event time and declared fields (``v``; a label must agree with those it carries)."""
    return {
        "m": message_id,
        "p": int(publish_time_us),
        "d": content_digest(int(time_us), *fields.values()),
        "t": int(time_us),
        "v": dict(fields),
    }


def _id_row_key(transaction_id: str) -> bytes:
    return f"{ID_ROW_PREFIX}{transaction_id}".encode()


def _ts(micros: int) -> datetime:
    # Round down to Bigtable's millisecond granularity; the exact time travels in the value.
    return datetime.fromtimestamp((micros // _MS * _MS) / 1e6, tz=UTC)


class FeatureStore:
    """The Bigtable WindowStore: batched reads and writes of the feature table (one client per
    instance, created lazily). Every call has a deadline and is retried with backoff."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._table: Any = None

    @property
    def table(self) -> Any:
        if self._table is None:
            from google.cloud.bigtable import Client

            client = Client(project=self.config.project)
            self._table = client.instance(self.config.instance).table(self.config.table)
        return self._table

    def _read(self, row_set: Any, filt: Any, what: str) -> list[_Row]:
        """The rows of ``row_set`` through ``filt``: one ReadRows call with a deadline and no
        client retry (``with_backoff`` retries the whole read, which is idempotent), the stream
        parsed from raw messages (the client's per-cell objects cost most of a cold read)."""
        from google.cloud.bigtable_v2.types import bigtable, data

        request = bigtable.ReadRowsRequest.pb()(table_name=self.table.name)
        request.rows.row_keys.extend(row_set.row_keys)
        for r in row_set.row_ranges:
            target = request.rows.row_ranges.add()
            if r.start_key is not None:
                setattr(
                    target,
                    "start_key_closed" if r.start_inclusive else "start_key_open",
                    r.start_key,
                )
            if r.end_key is not None:
                setattr(target, "end_key_closed" if r.end_inclusive else "end_key_open", r.end_key)
        request.filter.CopyFrom(data.RowFilter.pb(filt._to_pb()))

        def attempt() -> list[_Row]:
            stream = self._data_api().read_rows(
                request=bigtable.ReadRowsRequest(request), timeout=CALL_TIMEOUT_S, retry=None
            )
            return _parse_rows(bigtable.ReadRowsResponse.pb(r) for r in stream)

        return with_backoff(attempt, what)

    # -- reads ---------------------------------------------------------------------------------

    def read_summaries(
        self, layout: Layout, ids: Sequence[str], first_bucket: int
    ) -> dict[str, dict[int, Aggregates]]:
        """The bucket summaries of these entities from ``first_bucket`` on: one ReadRows call,
        a row range per entity, the summary cells only."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        if not ids:
            return {}
        entity = layout.entity
        row_set = RowSet()
        for entity_id in sorted(set(ids)):
            start = bucket_row_key(entity, entity_id, max(first_bucket, 0))
            row_set.add_row_range_from_keys(
                start_key=start, end_key=head_row_key(entity, entity_id) + b"#~"
            )
        filt = row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter(FAMILY_TX),
                row_filters.ColumnQualifierRegexFilter(SUMMARY_QUALIFIER),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )
        out: dict[str, dict[int, Aggregates]] = {}
        for row in self._read(row_set, filt, "Bigtable read summaries"):
            entity_id, bucket = _split_bucket_key(entity, row.row_key)
            cells = row.cells.get(FAMILY_TX, {}).get(SUMMARY_QUALIFIER)
            if cells:
                out.setdefault(entity_id, {})[bucket] = decode_aggregates(cells[0].value)
        return out

    def read_heads(
        self, layout: Layout, ids: Sequence[str]
    ) -> dict[str, tuple[EntityHead | None, Archive | None]]:
        """The heads and archives of these entities, in one ReadRows call of their head rows."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        if not ids:
            return {}
        entity = layout.entity
        row_set = RowSet()
        for entity_id in sorted(set(ids)):
            row_set.add_row_key(head_row_key(entity, entity_id))
        filt = row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter(FAMILY_TX),
                row_filters.ColumnQualifierRegexFilter(b"#head|#archive"),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )
        prefix = len(entity.name) + 1
        out: dict[str, tuple[EntityHead | None, Archive | None]] = {}
        for row in self._read(row_set, filt, "Bigtable read heads"):
            cells = row.cells.get(FAMILY_TX, {})
            head = cells.get(HEAD_QUALIFIER)
            archive = cells.get(ARCHIVE_QUALIFIER)
            out[row.row_key.decode()[prefix:]] = (
                decode_head(head[0].value) if head else None,
                decode_archive(layout, archive[0].value) if archive else None,
            )
        return out

    def read_ranges(
        self, layout: Layout, starts: Sequence[tuple[str, int]], labels: bool
    ) -> dict[tuple[str, int], BucketCells]:
        """The cells of every bucket of these entities from each one's start bucket on: one
        ReadRows call, a row range each (the summaries are not read)."""
        from google.cloud.bigtable.row_set import RowSet

        if not starts:
            return {}
        entity = layout.entity
        row_set = RowSet()
        for entity_id, first in sorted(set(starts)):
            row_set.add_row_range_from_keys(
                start_key=bucket_row_key(entity, entity_id, max(first, 0)),
                end_key=head_row_key(entity, entity_id) + b"#~",
            )
        return self._read_cells(layout, row_set, labels, "Bigtable read ranges")

    def read_buckets(
        self, layout: Layout, buckets: Sequence[tuple[str, int]], labels: bool
    ) -> dict[tuple[str, int], BucketCells]:
        """The cells of these (entity id, bucket)s, newest version of each: one ReadRows call
        (the summaries are not read: they are derived from the cells)."""
        from google.cloud.bigtable.row_set import RowSet

        if not buckets:
            return {}
        row_set = RowSet()
        for entity_id, bucket in sorted(set(buckets)):
            row_set.add_row_key(bucket_row_key(layout.entity, entity_id, bucket))
        return self._read_cells(layout, row_set, labels, "Bigtable read buckets")

    def _read_cells(
        self, layout: Layout, row_set: Any, labels: bool, what: str
    ) -> dict[tuple[str, int], BucketCells]:
        from google.cloud.bigtable import row_filters

        families = f"{FAMILY_TX}|{FAMILY_LABEL}" if labels else FAMILY_TX
        filt = row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter(families),
                # Every qualifier but "#summary" ("#" never starts a transaction id).
                row_filters.ColumnQualifierRegexFilter(rb"[^#]\C*"),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )
        out: dict[tuple[str, int], BucketCells] = {}
        for row in self._read(row_set, filt, what):
            cells = BucketCells(
                {
                    q.decode(): decode_cell(layout, v[0].value)[0]
                    for q, v in row.cells.get(FAMILY_TX, {}).items()
                },
                {
                    q.decode(): decode_label(layout, v[0].value)[0]
                    for q, v in row.cells.get(FAMILY_LABEL, {}).items()
                },
            )
            if cells.tx or cells.labels:
                out[_split_bucket_key(layout.entity, row.row_key)] = cells
        return out

    def read_features(self, entity: Entity, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The latest feature values per entity id (for inspection and tests)."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        row_set = RowSet()
        for entity_id in ids:
            row_set.add_row_key(head_row_key(entity, entity_id))
        filt = row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter(FAMILY_FEATURES),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )
        prefix = len(entity.name) + 1
        return {
            row.row_key.decode()[prefix:]: {
                q.decode(): _FLOAT.unpack(c[0].value)[0]
                for q, c in row.cells.get(FAMILY_FEATURES, {}).items()
            }
            for row in self._read(row_set, filt, "Bigtable read features")
        }

    def read_ids(self, transaction_ids: Sequence[str]) -> dict[str, IdRecord]:
        """The id index entries of these transaction ids, in one ReadRows call."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        ids = sorted(set(transaction_ids))
        if not ids:
            return {}
        row_set = RowSet()
        for tx_id in ids:
            row_set.add_row_key(_id_row_key(tx_id))
        out: dict[str, IdRecord] = {}
        prefix = len(ID_ROW_PREFIX)
        rows = self._read(row_set, row_filters.CellsColumnLimitFilter(1), "Bigtable read ids")
        for row in rows:
            record = out.setdefault(row.row_key.decode()[prefix:], IdRecord())
            for family, columns in row.cells.items():
                cells = columns.get(_ID_QUALIFIER)
                if cells:
                    setattr(record, family, json.loads(cells[0].value))
        return out

    def read_waiting(
        self, transaction_ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Labels waiting for these transaction ids (None: all, one prefix scan; in one
        ReadRows call): transaction id -> message key -> record."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        row_set = RowSet()
        if transaction_ids is None:
            start = WAIT_ROW_PREFIX.encode()
            row_set.add_row_range_from_keys(start_key=start, end_key=start[:-1] + b"$")
        elif not transaction_ids:
            return {}
        else:
            for tx_id in sorted(set(transaction_ids)):
                row_set.add_row_key(_wait_row_key(tx_id))
        rows = self._read(
            row_set, row_filters.CellsColumnLimitFilter(1), "Bigtable read waiting labels"
        )
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            tx_id = row.row_key.decode()[len(WAIT_ROW_PREFIX) :]
            entries = {
                q.decode(): json.loads(cells[0].value)
                for q, cells in row.cells.get(FAMILY_LABEL, {}).items()
                if cells
            }
            if entries:
                out[tx_id] = entries
        return out

    # -- writes --------------------------------------------------------------------------------

    def entries(self, writes: Writes) -> list[Any]:
        """The MutateRows entries of ``writes``, one per row key (raw protobuf messages: the
        client's per-cell objects cost three times the whole call, measured on the emulator)."""
        from google.cloud.bigtable_v2.types import bigtable

        entry_type = bigtable.MutateRowsRequest.pb().Entry
        entries: dict[bytes, Any] = {}

        def entry(key: bytes) -> Any:
            found = entries.get(key)
            if found is None:
                found = entries[key] = entry_type(row_key=key)
            return found

        def set_cell(key: bytes, family: str, qualifier: bytes, value: bytes, t_us: int) -> None:
            cell = entry(key).mutations.add().set_cell
            cell.family_name = family
            cell.column_qualifier = qualifier
            cell.timestamp_micros = t_us // _MS * _MS  # Bigtable's granularity is 1 ms
            cell.value = value

        def delete_cell(key: bytes, family: str, qualifier: bytes) -> None:
            column = entry(key).mutations.add().delete_from_column
            column.family_name = family
            column.column_qualifier = qualifier

        for w in writes.buckets:
            key = bucket_row_key(w.layout.entity, w.entity_id, w.bucket)
            for tx_id, tx in w.tx.items():
                ts = tx.time_us if w.timestamp_us is None else w.timestamp_us
                set_cell(key, FAMILY_TX, tx_id.encode(), encode_cell(w.layout, tx), ts)
            for tx_id, label in w.labels.items():
                ts = label.time_us if w.timestamp_us is None else w.timestamp_us
                value = encode_label(w.layout, label)
                set_cell(key, FAMILY_LABEL, tx_id.encode(), value, ts)
            summary = encode_aggregates(w.summary)
            set_cell(key, FAMILY_TX, SUMMARY_QUALIFIER, summary, summary_timestamp(w))
        for entity, entity_id, head, timestamp in writes.heads:
            key = head_row_key(entity, entity_id)
            set_cell(key, FAMILY_TX, HEAD_QUALIFIER, encode_head(head), timestamp)
        for layout, entity_id, archive, timestamp in writes.archives:
            value = encode_archive(layout, archive)
            key = head_row_key(layout.entity, entity_id)
            set_cell(key, FAMILY_TX, ARCHIVE_QUALIFIER, value, timestamp)
        for entity, entity_id, time_us, values in writes.features:
            key = head_row_key(entity, entity_id)
            for name, feature in values.items():
                set_cell(key, FAMILY_FEATURES, name.encode(), _FLOAT.pack(feature), time_us)
        for tx_id, family, record, time_us in writes.ids:
            key = _id_row_key(tx_id)
            if family == FAMILY_LABEL:
                # One version, whatever its timestamp: a label slot written while only its
                # labels' event times were known must not shadow a later write (reads take the
                # newest cell). A transaction's record always has its event time: it overwrites.
                delete_cell(key, family, _ID_QUALIFIER)
            set_cell(key, family, _ID_QUALIFIER, _json(record), int(time_us))
        for tx_id, keys in writes.waits_remove:
            key = _wait_row_key(tx_id)
            if keys is None:
                entry(key).mutations.add().delete_from_row.SetInParent()
            else:
                for message_key in keys:
                    delete_cell(key, FAMILY_LABEL, message_key.encode())
        for tx_id, message_key, record, time_us in writes.waits_add:
            key = _wait_row_key(tx_id)
            set_cell(key, FAMILY_LABEL, message_key.encode(), _json(record), int(time_us))
        return list(entries.values())

    def apply(self, writes: Writes, chunk: int = 1000, chunk_bytes: int = 2_000_000) -> None:
        """Applies a batch's mutations (one MutateRows call per ``chunk`` rows or ``chunk_bytes``
        bytes: gRPC servers refuse messages over 4 MB by default), retrying the rows not applied
        with backoff (a time budget, pipelines.stores.retry): a store outage stalls the caller,
        it does not lose rows. Idempotent."""
        pending: list[Any] = []
        size = 0
        for entry in self.entries(writes) if writes else []:
            entry_size = entry.ByteSize()
            if pending and (len(pending) >= chunk or size + entry_size > chunk_bytes):
                with_backoff(partial(self._mutate, pending), "Bigtable write")
                pending, size = [], 0
            pending.append(entry)
            size += entry_size
        if pending:
            with_backoff(partial(self._mutate, pending), "Bigtable write")

    def _mutate(self, pending: list[Any]) -> None:
        """One MutateRows call with a deadline; leaves in ``pending`` the rows not applied."""
        from google.api_core import exceptions
        from google.cloud.bigtable_v2.types import bigtable

        request = bigtable.MutateRowsRequest.pb()(table_name=self.table.name, entries=pending)
        applied = [False] * len(pending)
        statuses: list[Any] = []
        try:
            responses = self._data_api().mutate_rows(
                request=bigtable.MutateRowsRequest(request), timeout=CALL_TIMEOUT_S, retry=None
            )
            for response in responses:
                # The raw message: proto-plus wraps every field read, and reading each row's
                # status through it cost as much as building the request.
                for result in bigtable.MutateRowsResponse.pb(response).entries:
                    applied[result.index] = result.status.code == 0
                    statuses.append(result.status)
        finally:
            pending[:] = [e for e, ok in zip(pending, applied, strict=True) if not ok]
        raise_for_statuses(statuses, "Bigtable write")
        if pending:  # the stream ended without a status for some rows
            raise exceptions.ServiceUnavailable(f"Bigtable write: {len(pending)} rows unanswered")

    def _data_api(self) -> Any:
        """The generated Bigtable data client (raw requests; errors as google.api_core's)."""
        return self.table._table_impl.client._gapic_client


class _Cell(NamedTuple):
    value: bytes


class _Row(NamedTuple):
    """A row as read: family -> qualifier -> cells, newest first (the legacy client's shape)."""

    row_key: bytes
    cells: dict[str, dict[bytes, list[_Cell]]]


def _parse_rows(responses: Iterable[Any]) -> list[_Row]:
    """Rows from a ReadRows response stream (raw messages): chunks carry the row key, family and
    qualifier only when they change, a value may span chunks (``value_size``), and a row counts
    once its ``commit_row`` chunk arrives (``reset_row`` drops what came of it)."""
    rows: list[_Row] = []
    key = b""
    family = ""
    qualifier = b""
    cells: dict[str, dict[bytes, list[_Cell]]] = {}
    value = b""
    in_row = False  # a chunk may repeat the row key of the row it continues (the emulator does)
    for response in responses:
        for chunk in response.chunks:
            if chunk.reset_row:
                cells, value, in_row = {}, b"", False
                continue
            if not in_row:
                key, cells, in_row = chunk.row_key, {}, True
            if chunk.HasField("family_name"):
                family = chunk.family_name.value
            if chunk.HasField("qualifier"):
                qualifier = chunk.qualifier.value
            value += chunk.value
            if chunk.value_size > 0:
                continue  # the rest of this cell's value is in the next chunks
            cells.setdefault(family, {}).setdefault(qualifier, []).append(_Cell(value))
            value = b""
            if chunk.commit_row:
                rows.append(_Row(key, cells))
                in_row = False
    return rows


def _wait_row_key(transaction_id: str) -> bytes:
    return f"{WAIT_ROW_PREFIX}{transaction_id}".encode()


def _split_bucket_key(entity: Entity, row_key: bytes) -> tuple[str, int]:
    """(entity id, bucket) of a bucket row key."""
    entity_id, _, bucket = row_key.decode()[len(entity.name) + 1 :].rpartition("#")
    return entity_id, int(bucket)


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()
