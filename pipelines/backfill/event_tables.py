"""Historical events as Arrow tables: reading Parquet, CSV and JSONL files, canonical columns.

The backfill reads the same two streams the streaming pipeline consumes, but from files. A
stream's fields are declared in the definitions file (pipelines.core.declarations); each field's
column is found under its name (the wire schema, e.g. ``amount``) or its dataset column
(``Field.dataset_column``, e.g. the reference dataset's ``TX_AMOUNT``). Every table is converted
to the canonical columns before any computation: one column per field, named by the field:

  id, string   int64 or text (ids), text (strings)
  integer      int64
  number       float64, finite and within the field's min/max
  label        int8, 0 or 1
  time         int64 µs since the epoch, UTC (timestamps, or RFC 3339 / ISO 8601 text)

Rows that cannot be used (a missing value, a non-finite or out-of-range number, a label other
than 0/1) stop the backfill with a message naming the file, the column and how many rows: a
historical load that silently skipped rows would train on a different dataset than it reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.declarations import EventStream, Field, load_definitions

__all__ = [
    "InvalidTable",
    "canonical",
    "read_tables",
    "table_format",
    "times_us",
]

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


def _column(table: pa.Table, field: Field, path: str) -> pa.ChunkedArray:
    aliases = dict.fromkeys((field.name, field.dataset_column))
    for alias in aliases:
        if alias in table.column_names:
            column = table.column(alias)
            if column.null_count:
                raise InvalidTable(f"{path}: {column.null_count} rows without {alias}")
            return column
    wanted = " or ".join(aliases)
    raise InvalidTable(f"{path}: no column {wanted} (columns: {', '.join(table.column_names)})")


def _ids(column: pa.ChunkedArray, name: str, path: str) -> pa.ChunkedArray:
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    raise InvalidTable(f"{path}: {name} must be integers or text, not {column.type}")


def _times_us(column: pa.ChunkedArray, path: str) -> pa.Array:
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")  # naive times are UTC (the spec)
        return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    try:
        parsed = pd.to_datetime(column.to_pandas(), utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise InvalidTable(f"{path}: transaction times must be RFC 3339 / ISO 8601: {exc}") from exc
    return pa.array(pd.DatetimeIndex(parsed).as_unit("us").asi8, type=pa.int64())


def times_us(table: pa.Table, path: str, stream: EventStream | None = None) -> pa.Array:
    """The event times of a table read from ``path``, as int64 µs since the epoch (UTC);
    ``stream``: whose time field (the default definitions' events)."""
    stream = stream if stream is not None else load_definitions().events
    return _times_us(_column(table, stream.field(stream.time_field), path), path)


def _numbers(column: pa.ChunkedArray, field: Field, path: str) -> pa.Array:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise InvalidTable(f"{path}: {field.name} must be numbers, not {column.type}")
    values = column.to_numpy().astype(np.float64)
    bad = ~np.isfinite(values)
    wrong = ["NaN", "infinite"]
    if field.minimum is not None:
        bad |= values < field.minimum
        wrong.append(f"below {field.minimum:g}")
    if field.maximum is not None:
        bad |= values > field.maximum
        wrong.append(f"above {field.maximum:g}")
    if bad.any():
        raise InvalidTable(
            f"{path}: {int(bad.sum())} {field.name} values are {', '.join(wrong[:-1])} or "
            f"{wrong[-1]} (first at row {int(np.argmax(bad))})"
        )
    return pa.array(values, type=pa.float64())


def _convert(column: pa.ChunkedArray, field: Field, path: str) -> pa.Array | pa.ChunkedArray:
    if field.type == "id":
        return _ids(column, field.name, path)
    if field.type == "time":
        return _times_us(column, path)
    if field.type == "number":
        return _numbers(column, field, path)
    if field.type == "string":
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return column.cast(pa.string())
        if pa.types.is_integer(column.type):  # digits read as numbers by CSV or JSON
            return column.cast(pa.string())
        raise InvalidTable(f"{path}: {field.name} must be text, not {column.type}")
    values = column.to_numpy()
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)) or (
        (values != np.rint(values)).any() if values.dtype.kind == "f" else False
    ):
        raise InvalidTable(f"{path}: {field.name} must be integers, not {column.type}")
    if field.type == "label":
        bad = (values != 0) & (values != 1)
        if bad.any():
            raise InvalidTable(f"{path}: {int(bad.sum())} labels are not 0 or 1")
        return pa.array(values.astype(np.int8), type=pa.int8())
    return pa.array(values.astype(np.int64), type=pa.int64())


def canonical(table: pa.Table, stream: EventStream, path: str) -> pa.Table:
    """The stream's fields of a table read from ``path``, one column each, named by the field
    (see the module docstring)."""
    return pa.table({f.name: _convert(_column(table, f, path), f, path) for f in stream.fields})
