"""Bigtable online feature store: schema, table creation, batched reads and writes.

Schema (one table, see README "Feature store schema"):

  row key            ``customer#<customer_id>`` or ``terminal#<terminal_id>``
  family ``tx``      one cell per transaction of the entity: qualifier = transaction_id,
                     value = >q8 event time (µs) + >d8 amount + the other entity's id (UTF-8:
                     the terminal on a customer row, the customer on a terminal row), cell
                     timestamp = event time. The window state: the engine recomputes every
                     window from these cells, and the other id lets a transaction that an
                     out-of-order event affected be recomputed from the store alone.
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
                     ``unknown_transaction`` (``x``); see pipelines.transforms.label_slots.
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

import hashlib
import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from pipelines.features import CUSTOMER, TERMINAL, Entity
from pipelines.retry import (
    bigtable_mutate_options,
    bigtable_read_options,
    raise_for_statuses,
    with_backoff,
)
from pipelines.shared import process_shared

__all__ = [
    "FAMILY_FEATURES",
    "FAMILY_LABEL",
    "FAMILY_TX",
    "ID_ROW_PREFIX",
    "WAIT_ROW_PREFIX",
    "EntityHistory",
    "FeatureStore",
    "IdRecord",
    "StoreConfig",
    "content_digest",
    "create_table",
    "shared_store",
    "transaction_record",
]

_LOGGER = logging.getLogger(__name__)

FAMILY_TX = "tx"
FAMILY_LABEL = "label"
FAMILY_FEATURES = "features"
_TX_VALUE = struct.Struct(">qd")
_LABEL_VALUE = struct.Struct(">qb")
_FLOAT = struct.Struct(">d")
# Bigtable timestamps are microseconds with millisecond granularity.
_MS = 1000
ID_ROW_PREFIX = "txid#"
WAIT_ROW_PREFIX = "wait#"  # labels waiting for their transaction, with their deadlines
_ID_QUALIFIER = b"m"


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


@dataclass
class EntityHistory:
    """Events read back from the store for a set of entities, as parallel arrays."""

    entity_id: list[str] = field(default_factory=list)
    transaction_id: list[str] = field(default_factory=list)
    time_us: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    other_id: list[str] = field(default_factory=list)

    def add(
        self, entity_id: str, transaction_id: str, time_us: int, value: float, other_id: str = ""
    ) -> None:
        self.entity_id.append(entity_id)
        self.transaction_id.append(transaction_id)
        self.time_us.append(time_us)
        self.value.append(value)
        self.other_id.append(other_id)

    def __len__(self) -> int:
        return len(self.time_us)


@dataclass
class History:
    """What the feature engine needs from the store for one batch."""

    customer_tx: EntityHistory
    terminal_tx: EntityHistory
    terminal_labels: EntityHistory


@dataclass
class IdRecord:
    """What the id index holds for one transaction id (see the module docstring)."""

    tx: dict[str, Any] | None = None
    label: dict[str, Any] | None = None


def content_digest(*fields: Any) -> str:
    """A short digest of an event's content (plain str/int/float fields), stored in the id index
    so a second message with the same id can be told apart from a redelivery without ids."""
    return hashlib.sha1(repr(fields).encode()).hexdigest()[:16]


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
    """One FeatureStore (and gRPC channel) per process and table (see pipelines.shared)."""
    return process_shared(("feature_store", config), lambda: FeatureStore(config))


class FeatureStore:
    """Batched access to the Bigtable feature table (one client per instance, created lazily)."""

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

    # -- reads ---------------------------------------------------------------------------------

    def read_cells(
        self,
        entity: Entity,
        ids: Sequence[str],
        families: Sequence[str],
        start_us: int,
        end_us: int,
        into: dict[str, EntityHistory],
    ) -> None:
        """Appends to ``into[family]`` the cells of these entities with event time in
        [start_us, end_us), in one ReadRows call with a time-range filter."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        if end_us <= start_us:
            return
        row_set = RowSet()
        for entity_id in ids:
            row_set.add_row_key(entity.row_key(entity_id))
        # Bigtable's range is [start, end) in ms granularity: widen to whole ms, filter exactly
        # on the value's microsecond time afterwards.
        start_ms = max(0, start_us // _MS * _MS)
        end_ms = -(-end_us // _MS) * _MS
        filt = row_filters.RowFilterChain(
            [
                row_filters.FamilyNameRegexFilter("|".join(families)),
                row_filters.TimestampRangeFilter(
                    row_filters.TimestampRange(start=_ts(start_ms), end=_ts(end_ms))
                ),
                row_filters.CellsColumnLimitFilter(1),
            ]
        )
        prefix = len(entity.name) + 1
        rows = with_backoff(
            lambda: list(
                self.table.read_rows(row_set=row_set, filter_=filt, **bigtable_read_options())
            ),
            "Bigtable read",
        )
        for row in rows:
            entity_id = row.row_key.decode()[prefix:]
            for family, columns in row.cells.items():
                target = into[family]
                for qualifier, cells in columns.items():
                    raw = cells[0].value
                    other = ""
                    if family == FAMILY_TX:
                        t_us, value = _TX_VALUE.unpack_from(raw)
                        other = raw[_TX_VALUE.size :].decode()
                    else:
                        t_us, flag = _LABEL_VALUE.unpack(raw)
                        value = float(flag)
                    if start_us <= t_us < end_us:
                        target.add(entity_id, qualifier.decode(), t_us, value, other)

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
        out: dict[str, dict[str, float]] = {}
        prefix = len(entity.name) + 1
        rows = with_backoff(
            lambda: list(
                self.table.read_rows(row_set=row_set, filter_=filt, **bigtable_read_options())
            ),
            "Bigtable read features",
        )
        for row in rows:
            cols = row.cells.get(FAMILY_FEATURES, {})
            out[row.row_key.decode()[prefix:]] = {
                q.decode(): _FLOAT.unpack(c[0].value)[0] for q, c in cols.items()
            }
        return out

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
        filt = row_filters.CellsColumnLimitFilter(1)
        rows = with_backoff(
            lambda: list(
                self.table.read_rows(row_set=row_set, filter_=filt, **bigtable_read_options())
            ),
            "Bigtable read ids",
        )
        out: dict[str, IdRecord] = {}
        prefix = len(ID_ROW_PREFIX)
        for row in rows:
            record = out.setdefault(row.row_key.decode()[prefix:], IdRecord())
            for family, columns in row.cells.items():
                cells = columns.get(_ID_QUALIFIER)
                if cells:
                    setattr(record, family, json.loads(cells[0].value))
        return out

    def read_waiting(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every label waiting for its transaction: transaction id -> message key -> record (one
        prefix scan of the ``wait#`` rows, done when a worker takes over the stage)."""
        from google.cloud.bigtable import row_filters
        from google.cloud.bigtable.row_set import RowSet

        row_set = RowSet()
        start = WAIT_ROW_PREFIX.encode()
        row_set.add_row_range_from_keys(start_key=start, end_key=start[:-1] + b"$")
        filt = row_filters.CellsColumnLimitFilter(1)
        rows = with_backoff(
            lambda: list(
                self.table.read_rows(row_set=row_set, filter_=filt, **bigtable_read_options())
            ),
            "Bigtable read waiting labels",
        )
        prefix = len(WAIT_ROW_PREFIX)
        return {
            row.row_key.decode()[prefix:]: {
                q.decode(): json.loads(cells[0].value)
                for q, cells in row.cells.get(FAMILY_LABEL, {}).items()
                if cells
            }
            for row in rows
        }

    def waiting_rows(
        self,
        add: Sequence[tuple[str, str, dict[str, Any], int]] = (),
        remove: Sequence[tuple[str, Sequence[str] | None]] = (),
    ) -> list[Any]:
        """Row mutations for the labels waiting for their transaction: ``add`` (transaction id,
        message key, record, event time µs), ``remove`` (transaction id, message keys, or None
        for all of the id's)."""
        rows: dict[bytes, Any] = {}

        def row(tx_id: str) -> Any:
            key = f"{WAIT_ROW_PREFIX}{tx_id}".encode()
            if key not in rows:
                rows[key] = self.table.direct_row(key)
            return rows[key]

        for tx_id, keys in remove:
            if keys is None:
                row(tx_id).delete()
            else:
                for message_key in keys:
                    row(tx_id).delete_cell(FAMILY_LABEL, message_key.encode())
        for tx_id, message_key, record, time_us in add:
            row(tx_id).set_cell(
                FAMILY_LABEL,
                message_key.encode(),
                json.dumps(record, separators=(",", ":")).encode(),
                timestamp=_ts(int(time_us)),
            )
        return list(rows.values())

    def id_rows(self, entries: Sequence[tuple[str, str, dict[str, Any], int]]) -> list[Any]:
        """Row mutations for the id index: (transaction_id, family, record, event time µs)."""
        rows: dict[bytes, Any] = {}
        for tx_id, family, record, time_us in entries:
            key = _id_row_key(tx_id)
            if key not in rows:
                rows[key] = self.table.direct_row(key)
            # One version per entry, whatever its timestamp: a label slot written while only
            # its labels' event times were known must not shadow a later write (reads take the
            # newest cell).
            rows[key].delete_cell(family, _ID_QUALIFIER)
            rows[key].set_cell(
                family,
                _ID_QUALIFIER,
                json.dumps(record, separators=(",", ":")).encode(),
                timestamp=_ts(int(time_us)),
            )
        return list(rows.values())

    # -- writes --------------------------------------------------------------------------------

    def transaction_rows(
        self,
        transaction_ids: Sequence[str],
        customer_ids: Sequence[str],
        terminal_ids: Sequence[str],
        time_us: Sequence[int],
        amounts: Sequence[float],
        features: np.ndarray | None = None,
        feature_names: Sequence[str] = (),
        feature_entities: Sequence[Entity] = (),
    ) -> list[Any]:
        """Row mutations recording transactions (and optionally their features) in the store."""
        rows: dict[bytes, Any] = {}

        def row(key: bytes) -> Any:
            if key not in rows:
                rows[key] = self.table.direct_row(key)
            return rows[key]

        for i, tx_id in enumerate(transaction_ids):
            ts = _ts(int(time_us[i]))
            value = _TX_VALUE.pack(int(time_us[i]), float(amounts[i]))
            qualifier = tx_id.encode()
            crow = row(CUSTOMER.row_key(customer_ids[i]))
            trow = row(TERMINAL.row_key(terminal_ids[i]))
            crow.set_cell(FAMILY_TX, qualifier, value + terminal_ids[i].encode(), timestamp=ts)
            trow.set_cell(FAMILY_TX, qualifier, value + customer_ids[i].encode(), timestamp=ts)
            if features is not None:
                for col, (name, entity) in enumerate(
                    zip(feature_names, feature_entities, strict=True)
                ):
                    target = crow if entity == CUSTOMER else trow
                    target.set_cell(
                        FAMILY_FEATURES,
                        name.encode(),
                        _FLOAT.pack(float(features[i, col])),
                        timestamp=ts,
                    )
        return list(rows.values())

    def label_rows(
        self,
        transaction_ids: Sequence[str],
        terminal_ids: Sequence[str],
        time_us: Sequence[int],
        is_fraud: Sequence[int],
    ) -> list[Any]:
        """Row mutations recording fraud labels on the terminals' rows."""
        rows: dict[bytes, Any] = {}
        for i, tx_id in enumerate(transaction_ids):
            key = TERMINAL.row_key(terminal_ids[i])
            if key not in rows:
                rows[key] = self.table.direct_row(key)
            rows[key].set_cell(
                FAMILY_LABEL,
                tx_id.encode(),
                _LABEL_VALUE.pack(int(time_us[i]), int(is_fraud[i])),
                timestamp=_ts(int(time_us[i])),
            )
        return list(rows.values())

    def state_rows(
        self,
        entity: Entity,
        transactions: EntityHistory,
        labels: EntityHistory | None = None,
        latest: dict[str, tuple[int, dict[str, float]]] | None = None,
    ) -> list[Any]:
        """Row mutations writing one entity's state, as the streaming stage would have left it:
        its ``tx`` cells (with the other entity's id), its ``label`` cells, per entity id the
        ``features`` of its latest transaction (``latest[id] = (time_us, {name: value})``), and,
        for customers, the transactions' id-index rows. Used by the backfill to warm the store."""
        rows: dict[bytes, Any] = {}

        def row(entity_id: str) -> Any:
            key = entity.row_key(entity_id)
            if key not in rows:
                rows[key] = self.table.direct_row(key)
            return rows[key]

        ids: list[tuple[str, str, dict[str, Any], int]] = []
        for i, t_us in enumerate(transactions.time_us):
            value = _TX_VALUE.pack(t_us, transactions.value[i]) + transactions.other_id[i].encode()
            row(transactions.entity_id[i]).set_cell(
                FAMILY_TX, transactions.transaction_id[i].encode(), value, timestamp=_ts(t_us)
            )
            if entity == CUSTOMER:  # the id index, once per transaction (no message: "")
                record = transaction_record(
                    "",
                    t_us,
                    transactions.entity_id[i],
                    transactions.other_id[i],
                    transactions.value[i],
                )
                ids.append((transactions.transaction_id[i], FAMILY_TX, record, t_us))
        if labels is not None:
            for i, t_us in enumerate(labels.time_us):
                row(labels.entity_id[i]).set_cell(
                    FAMILY_LABEL,
                    labels.transaction_id[i].encode(),
                    _LABEL_VALUE.pack(t_us, int(labels.value[i])),
                    timestamp=_ts(t_us),
                )
        for entity_id, (t_us, values) in (latest or {}).items():
            target = row(entity_id)
            for name, feature in values.items():
                target.set_cell(
                    FAMILY_FEATURES, name.encode(), _FLOAT.pack(feature), timestamp=_ts(t_us)
                )
        return list(rows.values()) + self.id_rows(ids)

    def write(self, rows: Sequence[Any], chunk: int = 1000) -> None:
        """Applies row mutations (idempotent), retrying failed rows with backoff (a time budget,
        pipelines.retry): a store outage stalls the caller, it does not lose rows."""
        for start in range(0, len(rows), chunk):
            with_backoff(partial(self._mutate, list(rows[start : start + chunk])), "Bigtable write")

    def _mutate(self, pending: list[Any]) -> None:
        statuses = self.table.mutate_rows(pending, **bigtable_mutate_options())
        pending[:] = [r for r, st in zip(pending, statuses, strict=True) if st.code != 0]
        raise_for_statuses(statuses, "Bigtable write")
