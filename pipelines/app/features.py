"""The training and test rows a command reads: a backfill feature table, or a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_features"]


def load_features(path: str | Path) -> Any:
    """The point-in-time feature rows at ``path``: a feature table 'rillet backfill' wrote, or a
    dataset 'rillet simulate' (or 'make demo') wrote, whose rows are computed here by the same
    engine (pipelines/core/training_data.py). Ordered by transaction id, with CUSTOMER_ID (the
    card precision is per card)."""
    from pipelines.backfill.backfill import read_feature_table

    path = Path(path) if not str(path).startswith("gs://") else path
    if isinstance(path, Path) and (path / "transactions.parquet").exists():
        from pipelines.app.simulator import read_dataset
        from pipelines.core.training_data import training_features

        frame = read_dataset(path)
        rows = training_features(frame)
        rows["CUSTOMER_ID"] = frame["CUSTOMER_ID"].to_numpy()
        return rows.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)
    return read_feature_table(path)
