"""Point-in-time-correct training features from a dataset, with the streaming engine's code."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.core.declarations import Definitions, EventStream, load_definitions
from pipelines.core.engine import Columns, compute_features

__all__ = ["dataset_columns", "training_features"]


def to_epoch_us(series: pd.Series) -> np.ndarray:
    """Datetimes (naive = UTC) as int64 microseconds since the epoch."""
    if getattr(series.dtype, "tz", None) is None:
        series = series.dt.tz_localize("UTC")
    # Through the DatetimeIndex: vectorised (Series.astype iterates for tz-aware values).
    index = pd.DatetimeIndex(series.dt.tz_convert("UTC")).as_unit("us")
    return np.asarray(index.asi8, dtype=np.int64)


def dataset_columns(frame: pd.DataFrame, stream: EventStream) -> Columns:
    """A stream's fields (by field name) from a dataset frame's columns (``Field.dataset_column``),
    the time field as int64 µs."""
    out: dict[str, np.ndarray] = {}
    for f in stream.fields:
        column = frame[f.dataset_column]
        out[f.name] = to_epoch_us(column) if f.type == "time" else column.to_numpy()
    return out


def training_features(frame: pd.DataFrame, defs: Definitions | None = None) -> pd.DataFrame:
    """One row per transaction: the id and time columns, the features of ``defs`` (the
    handbook's by default) in file order, and the label column.

    ``frame`` is a simulate()-style frame (labels included): its columns are the fields'
    dataset columns. Every label is treated as known at its transaction time + the features'
    delay, exactly as the stream sees the label topic.
    """
    defs = defs if defs is not None else load_definitions()
    ev = defs.events
    events = dataset_columns(frame, ev)
    labels = dataset_columns(frame, defs.labels) if defs.labels is not None else None
    matrix = compute_features(defs, events, labels)
    out = pd.DataFrame(matrix, columns=list(defs.names))
    time_column = ev.field(ev.time_field).dataset_column
    out.insert(0, time_column, frame[time_column].reset_index(drop=True))
    out.insert(0, ev.field(ev.id_field).dataset_column, events[ev.id_field])
    if defs.labels is not None:
        label = defs.labels.field(defs.labels.label_field).dataset_column
        out[label] = frame[label].to_numpy(np.int8)
    return out
