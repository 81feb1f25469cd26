"""Bigtable online feature store: schema, table creation, batched reads and writes.

Schema (one table, see README "Feature store schema"):

  row key            ``customer#<customer_id>`` or ``terminal#<terminal_id>``
  family ``tx``      one cell per transaction of the entity: qualifier = transaction_id,
                     value = >q8 event time (µs) + >d8 amount + the other entity's id (UTF-8:
                     the terminal on a customer row, the customer on a terminal row), cell
                     timestamp = event time. The window state: the engine recomputes every
                     window from these cells, and the other id lets a transaction that an
                     out-of-order event affected be recomputed from the store alone.
                     Qualifier ``#snapshot`` (never a transaction id): many cells in one,
                     columnar (the backfill's bulk load; a cold read costs per cell, measured:
                     ~10 µs a cell on the emulator, ~1 µs an entry in a snapshot). Single cells
                     win over its entries.
  family ``label``   terminal rows only: one cell per labelled transaction: qualifier =
                     transaction_id, value = >q8 event time + 1 byte is_fraud, cell timestamp =
                     the transaction's event time (the window is over transaction time).
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

Cells are keyed by transaction id, so writing an event twice (a redelivery, a resumed job, a
backfill over a range the stream already saw) changes nothing: the store is idempotent.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from pipelines.core.definitions import TERMINAL, Entity
from pipelines.core.label_slots import content_digest
from pipelines.stores.retry import (
    CALL_TIMEOUT_S,
    raise_for_statuses,
    with_backoff,
)
from pipelines.stores.shared import process_shared
from pipelines.stores.window_store import EntityCells, IdRecord, LabelCell, TxCell, Writes

__all__ = [
    "FAMILY_FEATURES",
    "FAMILY_LABEL",
    "FAMILY_TX",
    "ID_ROW_PREFIX",
    "SNAPSHOT_QUALIFIER",
    "WAIT_ROW_PREFIX",
    "FeatureStore",
    "IdRecord",
    "StoreConfig",
    "create_table",
    "decode_snapshot",
    "decode_tx_cell",
    "encode_snapshot",
    "encode_tx_cell",
    "shared_store",
    "transaction_record",
]

_LOGGER = logging.getLogger(__name__)

FAMILY_TX = "tx"
FAMILY_LABEL = "label"
FAMILY_FEATURES = "features"
_TX_HEAD = struct.Struct(">qdqqH")
_LABEL_VALUE = struct.Struct(">qb")
_FLOAT = struct.Struct(">d")
# Bigtable timestamps are microseconds with millisecond granularity.
_MS = 1000
ID_ROW_PREFIX = "txid#"
WAIT_ROW_PREFIX = "wait#"  # labels waiting for their transaction, with their deadlines
_ID_QUALIFIER = b"m"
SNAPSHOT_QUALIFIER = b"#snapshot"  # "#" is not allowed in ids (pipelines.core.schema)
_SNAPSHOT_HEAD = struct.Struct(">BII")  # format version, transactions, labels
_SNAPSHOT_VERSION = 1


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
    message_id: str,
    time_us: int,
    customer_id: str,
    terminal_id: str,
    amount: float,
    publish_time_us: int = 0,
) -> dict[str, Any]:
    """The id-index record of a transaction (family ``tx``)."""
    return {
        "m": message_id,
        "p": int(publish_time_us),
        "d": content_digest(int(time_us), str(customer_id), str(terminal_id), float(amount)),
        "t": int(time_us),
        "c": str(customer_id),
        "k": str(terminal_id),
    }


def _id_row_key(transaction_id: str) -> bytes:
    return f"{ID_ROW_PREFIX}{transaction_id}".encode()


def _ts(micros: int) -> datetime:
    # Round down to Bigtable's millisecond granularity; the exact time travels in the value.
    return datetime.fromtimestamp((micros // _MS * _MS) / 1e6, tz=UTC)


def shared_store(config: StoreConfig) -> FeatureStore:
    """One FeatureStore (and gRPC channel) per process and table (see pipelines.stores.shared)."""
    return process_shared(("feature_store", config), lambda: FeatureStore(config))


def encode_tx_cell(cell: TxCell) -> bytes:
    """>q time µs, >d amount, >q revision, >q carried revision, >H n, n x >d carried, other id."""
    return (
        _TX_HEAD.pack(
            cell.time_us, cell.amount, cell.revision, cell.carried_revision, len(cell.carried)
        )
        + struct.pack(f">{len(cell.carried)}d", *cell.carried)
        + cell.other_id.encode()
    )


def decode_tx_cell(raw: bytes) -> TxCell:
    time_us, amount, revision, carried_revision, n = _TX_HEAD.unpack_from(raw)
    end = _TX_HEAD.size + 8 * n
    carried = struct.unpack_from(f">{n}d", raw, _TX_HEAD.size)
    return TxCell(time_us, amount, raw[end:].decode(), revision, carried, carried_revision)


def _blob(values: Sequence[str]) -> bytes:
    joined = "\n".join(values).encode()
    return struct.pack(">I", len(joined)) + joined


def encode_snapshot(cells: EntityCells) -> bytes:
    """An entity's cells as one value, columnar: the head ``>BII`` (version, n transactions, m
    labels), then n x ``>q`` time, n x ``>d`` amount, n x ``>q`` revision, n x ``>q`` carried
    revision, n x ``>H`` carried count, the carried values (``>d``), the transaction ids and
    the other ids (each list ``>I`` length + UTF-8 joined by newlines), then m x ``>q`` time,
    m x ``>b`` is_fraud and the labels' transaction ids (same as the ids)."""
    import numpy as np

    tx_ids = list(cells.tx)
    txs = [cells.tx[i] for i in tx_ids]
    label_ids = list(cells.labels)
    labels = [cells.labels[i] for i in label_ids]
    carried = [v for c in txs for v in c.carried]
    return b"".join(
        [
            _SNAPSHOT_HEAD.pack(_SNAPSHOT_VERSION, len(txs), len(labels)),
            np.array([c.time_us for c in txs], ">i8").tobytes(),
            np.array([c.amount for c in txs], ">f8").tobytes(),
            np.array([c.revision for c in txs], ">i8").tobytes(),
            np.array([c.carried_revision for c in txs], ">i8").tobytes(),
            np.array([len(c.carried) for c in txs], ">u2").tobytes(),
            np.array(carried, ">f8").tobytes(),
            _blob(tx_ids),
            _blob([c.other_id for c in txs]),
            np.array([lb.time_us for lb in labels], ">i8").tobytes(),
            np.array([lb.is_fraud for lb in labels], ">i1").tobytes(),
            _blob(label_ids),
        ]
    )


def decode_snapshot(raw: bytes) -> EntityCells:
    """The cells of ``encode_snapshot``."""
    import numpy as np

    version, n, m = _SNAPSHOT_HEAD.unpack_from(raw)
    if version != _SNAPSHOT_VERSION:
        raise ValueError(f"unknown snapshot format {version}")
    offset = _SNAPSHOT_HEAD.size

    def array(dtype: str, count: int) -> list[Any]:
        nonlocal offset
        values = np.frombuffer(raw, dtype, count, offset)
        offset += values.nbytes
        return values.tolist()

    def blob(count: int) -> list[str]:
        nonlocal offset
        (size,) = struct.unpack_from(">I", raw, offset)
        offset += 4 + size
        return raw[offset - size : offset].decode().split("\n") if count else []

    times, amounts = array(">i8", n), array(">f8", n)
    revisions, carried_revisions = array(">i8", n), array(">i8", n)
    counts = array(">u2", n)
    flat = array(">f8", sum(counts))
    tx_ids, others = blob(n), blob(n)
    label_times, flags, label_ids = array(">i8", m), array(">i1", m), blob(m)
    carried: Any
    if flat:
        carried, at = [], 0
        for k in counts:
            carried.append(tuple(flat[at : at + k]))
            at += k
    else:  # the backfill's cells carry nothing
        carried = itertools.repeat(())
    return EntityCells(
        dict(
            zip(
                tx_ids,
                map(TxCell, times, amounts, others, revisions, carried, carried_revisions),
                strict=True,
            )
        ),
        dict(zip(label_ids, map(LabelCell, label_times, flags), strict=True)),
    )


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

    def read_entities(
        self, entity: Entity, ids: Sequence[str], start_us: int, end_us: int, labels: bool
    ) -> dict[str, EntityCells]:
        """The cells of these entities with event time in [start_us, end_us), in one ReadRows
        call with a time-range filter."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        if end_us <= start_us or not ids:
            return {}
        row_set = RowSet()
        for entity_id in sorted(set(ids)):
            row_set.add_row_key(entity.row_key(entity_id))
        # Bigtable's range is [start, end) in ms granularity: widen to whole ms, filter exactly
        # on the value's microsecond time afterwards. No upper bound in the filter: a snapshot
        # is timestamped with its newest entry and may hold older ones inside the range.
        start_ms = max(0, start_us // _MS * _MS)
        families = f"{FAMILY_TX}|{FAMILY_LABEL}" if labels else FAMILY_TX
        filt = row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter(families),
                row_filters.TimestampRangeFilter(row_filters.TimestampRange(start=_ts(start_ms))),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )
        prefix = len(entity.name) + 1
        out: dict[str, EntityCells] = {}
        for row in self._read(row_set, filt, "Bigtable read"):
            cells = EntityCells()
            tx_cells = row.cells.get(FAMILY_TX, {})
            snapshot = tx_cells.pop(SNAPSHOT_QUALIFIER, None)
            if snapshot is not None:  # first: the single cells override its entries
                bulk = decode_snapshot(snapshot[0].value)
                for tx_id, tx in bulk.tx.items():
                    if start_us <= tx.time_us < end_us:
                        cells.tx[tx_id] = tx
                if labels:
                    for tx_id, label in bulk.labels.items():
                        if start_us <= label.time_us < end_us:
                            cells.labels[tx_id] = label
            for qualifier, versions in tx_cells.items():
                tx = decode_tx_cell(versions[0].value)
                if start_us <= tx.time_us < end_us:
                    cells.tx[qualifier.decode()] = tx
            for qualifier, versions in row.cells.get(FAMILY_LABEL, {}).items():
                t_us, flag = _LABEL_VALUE.unpack(versions[0].value)
                if start_us <= t_us < end_us:
                    cells.labels[qualifier.decode()] = LabelCell(t_us, flag)
            if cells.tx or cells.labels:
                out[row.row_key.decode()[prefix:]] = cells
        return out

    def read_features(self, entity: Entity, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The latest feature values per entity id (for inspection and tests)."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        row_set = RowSet()
        for entity_id in ids:
            row_set.add_row_key(entity.row_key(entity_id))
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
        self, keys: Sequence[str] | None = None
    ) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Labels waiting under these stage keys (None: all; one prefix scan per key, in one
        ReadRows call): (stage key, transaction id) -> message key -> record."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        row_set = RowSet()
        for prefix in [""] if keys is None else sorted(set(keys)):
            start = f"{WAIT_ROW_PREFIX}{prefix}#".encode() if prefix else WAIT_ROW_PREFIX.encode()
            row_set.add_row_range_from_keys(start_key=start, end_key=start[:-1] + b"$")
        if keys is not None and not keys:
            return {}
        rows = self._read(
            row_set, row_filters.CellsColumnLimitFilter(1), "Bigtable read waiting labels"
        )
        out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for row in rows:
            stage_key, _, tx_id = row.row_key.decode()[len(WAIT_ROW_PREFIX) :].rpartition("#")
            entries = {
                q.decode(): json.loads(cells[0].value)
                for q, cells in row.cells.get(FAMILY_LABEL, {}).items()
                if cells
            }
            if entries:
                out[(stage_key, tx_id)] = entries
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

        for entity, entity_id, snapshot in writes.snapshots:
            newest = max(
                [c.time_us for c in snapshot.tx.values()]
                + [c.time_us for c in snapshot.labels.values()],
                default=0,
            )
            value = encode_snapshot(snapshot)
            set_cell(entity.row_key(entity_id), FAMILY_TX, SNAPSHOT_QUALIFIER, value, newest)
        for entity, entity_id, tx_id, tx in writes.tx_cells:
            key = entity.row_key(entity_id)
            set_cell(key, FAMILY_TX, tx_id.encode(), encode_tx_cell(tx), tx.time_us)
        for terminal_id, tx_id, label in writes.label_cells:
            value = _LABEL_VALUE.pack(label.time_us, label.is_fraud)
            set_cell(
                TERMINAL.row_key(terminal_id), FAMILY_LABEL, tx_id.encode(), value, label.time_us
            )
        for entity, entity_id, time_us, values in writes.features:
            key = entity.row_key(entity_id)
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
        for stage_key, tx_id, keys in writes.waits_remove:
            key = _wait_row_key(stage_key, tx_id)
            if keys is None:
                entry(key).mutations.add().delete_from_row.SetInParent()
            else:
                for message_key in keys:
                    delete_cell(key, FAMILY_LABEL, message_key.encode())
        for stage_key, tx_id, message_key, record, time_us in writes.waits_add:
            key = _wait_row_key(stage_key, tx_id)
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
                for result in response.entries:
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


def _wait_row_key(stage_key: str, transaction_id: str) -> bytes:
    return f"{WAIT_ROW_PREFIX}{stage_key}#{transaction_id}".encode()


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()
