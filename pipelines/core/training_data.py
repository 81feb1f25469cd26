"""Point-in-time-correct training features from a dataset, with the streaming engine's code."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.engine import EventColumns, features_for

__all__ = ["training_features"]


def to_epoch_us(series: pd.Series) -> np.ndarray:
    """Datetimes (naive = UTC) as int64 microseconds since the epoch."""
    if getattr(series.dtype, "tz", None) is None:
        series = series.dt.tz_localize("UTC")
    # Through the DatetimeIndex: vectorised (Series.astype iterates for tz-aware values).
    index = pd.DatetimeIndex(series.dt.tz_convert("UTC")).as_unit("us")
    return np.asarray(index.asi8, dtype=np.int64)


def training_features(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per transaction: TRANSACTION_ID, TX_DATETIME, the MODEL_INPUTS and TX_FRAUD.

    ``frame`` is a simulate()-style frame (labels included). Every label is treated as known at
    its transaction time + the features' delay, exactly as the stream sees the label topic.
    """
    t = to_epoch_us(frame["TX_DATETIME"])
    ids = frame["TRANSACTION_ID"].to_numpy(np.int64)
    customers = frame["CUSTOMER_ID"].to_numpy(np.int64)
    terminals = frame["TERMINAL_ID"].to_numpy(np.int64)
    query = EventColumns(ids, customers, terminals, t, frame["TX_AMOUNT"].to_numpy(np.float64))
    labels = EventColumns(ids, customers, terminals, t, frame["TX_FRAUD"].to_numpy(np.float64))
    matrix = features_for(query, labels=labels)
    out = pd.DataFrame(matrix, columns=list(MODEL_INPUTS))
    out.insert(0, "TX_DATETIME", frame["TX_DATETIME"].reset_index(drop=True))
    out.insert(0, "TRANSACTION_ID", ids)
    out["TX_FRAUD"] = frame["TX_FRAUD"].to_numpy(np.int8)
    return out
