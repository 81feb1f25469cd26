"""Historical events as Arrow tables: reading Parquet, CSV and JSONL files, canonical columns.

The backfill reads the same two streams the streaming pipeline consumes, but from files. Column
names follow either the wire schema (``transaction_id``, ``tx_datetime``, ``customer_id``,
``terminal_id``, ``amount`` / ``is_fraud``, see pipelines.core.schema) or the reference dataset's
(``TRANSACTION_ID``, ``TX_DATETIME``, ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT`` /
``TX_FRAUD``). Every table is converted to the canonical columns below before any computation:

  transactions  transaction_id, customer_id, terminal_id, time_us (int64 µs UTC), amount (float64)
  labels        transaction_id, customer_id, terminal_id, time_us, is_fraud (int8 0/1)

Rows that cannot be used (missing ids or times, a non-finite or negative amount, a label other
than 0/1) stop the backfill with a message naming the file, the column and how many rows: a
historical load that silently skipped rows would train on a different dataset than it reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "EventKind",
    "InvalidTable",
    "canonical",
    "read_tables",
    "table_format",
    "times_us",
]

EventKind = Literal["transactions", "labels"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "transaction_id": ("transaction_id", "TRANSACTION_ID"),
    "tx_datetime": ("tx_datetime", "TX_DATETIME"),
    "customer_id": ("customer_id", "CUSTOMER_ID"),
    "terminal_id": ("terminal_id", "TERMINAL_ID"),
    "amount": ("amount", "TX_AMOUNT"),
    "is_fraud": ("is_fraud", "TX_FRAUD"),
}
_VALUE_COLUMN: dict[str, str] = {"transactions": "amount", "labels": "is_fraud"}
_BATCH_ROWS = 1 << 20


class InvalidTable(ValueError):
    """An input file that cannot be backfilled, with what is wrong and where."""


def table_format(path: str) -> str:
    """'parquet', 'csv' or 'jsonl' from a file name (compressed CSV/JSONL are read by Arrow)."""
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise InvalidTable(f"{path}: unknown format; expected .parquet, .csv or .jsonl")


def read_tables(path: str, stream: IO[bytes]) -> Iterator[pa.Table]:
    """Reads one file as Arrow tables of at most ~1M rows (Parquet is read batch by batch)."""
    fmt = table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(stream)
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
            yield pa.Table.from_batches([batch])
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        # Ids stay text unless they are plain integers; the time column is parsed below.
        yield pcsv.read_csv(stream)
    else:
        import pyarrow.json as pjson

        yield pjson.read_json(stream)


def _column(table: pa.Table, name: str, path: str) -> pa.ChunkedArray:
    for alias in _ALIASES[name]:
        if alias in table.column_names:
            return table.column(alias)
    wanted = " or ".join(_ALIASES[name])
    raise InvalidTable(f"{path}: no column {wanted} (columns: {', '.join(table.column_names)})")


def _ids(column: pa.ChunkedArray, name: str, path: str) -> pa.ChunkedArray:
    if column.null_count:
        raise InvalidTable(f"{path}: {column.null_count} rows without {name}")
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    raise InvalidTable(f"{path}: {name} must be integers or text, not {column.type}")


def _times_us(column: pa.ChunkedArray, path: str) -> pa.Array:
    if column.null_count:
        raise InvalidTable(f"{path}: {column.null_count} rows without a transaction time")
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")  # naive times are UTC (the spec)
        return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    try:
        parsed = pd.to_datetime(column.to_pandas(), utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise InvalidTable(f"{path}: transaction times must be RFC 3339 / ISO 8601: {exc}") from exc
    return pa.array(pd.DatetimeIndex(parsed).as_unit("us").asi8, type=pa.int64())


def times_us(table: pa.Table, path: str) -> pa.Array:
    """The transaction times of a table read from ``path``, as int64 µs since the epoch (UTC)."""
    return _times_us(_column(table, "tx_datetime", path), path)


def canonical(table: pa.Table, kind: EventKind, path: str) -> pa.Table:
    """The canonical columns of a transactions or labels table (see the module docstring)."""
    columns = {
        "transaction_id": _ids(_column(table, "transaction_id", path), "transaction_id", path),
        "customer_id": _ids(_column(table, "customer_id", path), "customer_id", path),
        "terminal_id": _ids(_column(table, "terminal_id", path), "terminal_id", path),
        "time_us": times_us(table, path),
    }
    value_name = _VALUE_COLUMN[kind]
    raw = _column(table, value_name, path)
    if raw.null_count:
        raise InvalidTable(f"{path}: {raw.null_count} rows without {value_name}")
    values = raw.to_numpy().astype(np.float64)
    if kind == "transactions":
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            raise InvalidTable(
                f"{path}: {int(bad.sum())} amounts are negative, NaN or infinite "
                f"(first at row {int(np.argmax(bad))})"
            )
        columns["amount"] = pa.array(values, type=pa.float64())
    else:
        bad = (values != 0) & (values != 1)
        if bad.any():
            raise InvalidTable(f"{path}: {int(bad.sum())} labels are not 0 or 1")
        columns["is_fraud"] = pa.array(values.astype(np.int8), type=pa.int8())
    return pa.table(columns)
