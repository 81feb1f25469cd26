"""The training and test rows a command reads: a backfill feature table, or a dataset, for any
definitions file.

The models (models/) read their rows by role, with the handbook's column names as the contract:
``TRANSACTION_ID``, ``TX_DATETIME``, ``CUSTOMER_ID`` (the card: Card Precision@k counts per the
definitions file's first entity) and ``TX_FRAUD`` (the label). A workload whose fields are named
otherwise gets its columns renamed to those roles here (``training_roles``), once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ROLES", "dataset_rows", "load_features", "read_events", "training_roles"]

# role -> the models' column name
ROLES = {"id": "TRANSACTION_ID", "time": "TX_DATETIME", "card": "CUSTOMER_ID", "label": "TX_FRAUD"}


def training_roles(table: Any, definitions: Any) -> Any:
    """``table`` (dataset or feature-table columns by ``Field.dataset_column``) with its id, time,
    card and label columns under the models' names (ROLES); the card is the first entity's id
    (its key columns joined as ``Entity.id_of`` joins them)."""
    ev = definitions.events
    renames = {
        ev.field(ev.id_field).dataset_column: ROLES["id"],
        ev.field(ev.time_field).dataset_column: ROLES["time"],
    }
    if definitions.labels is not None:
        lb = definitions.labels
        renames[lb.field(lb.label_field).dataset_column] = ROLES["label"]
    card = definitions.entities[0]
    columns = [ev.field(k).dataset_column for k in card.keys]
    out = table.rename(columns={k: v for k, v in renames.items() if k != v})
    if columns != [ROLES["card"]]:
        parts = [
            out[c].astype(str).str.replace("%", "%25").str.replace("#", "%23") for c in columns
        ]
        joined = parts[0]
        for part in parts[1:]:
            joined = joined + "#" + part
        out[ROLES["card"]] = joined.to_numpy()
    return out


def read_events(path: Path, definitions: Any) -> Any:
    """A dataset's transactions with their labels (one row each), columns by dataset column,
    ordered by time then id: what ``training_features`` reads."""
    import pyarrow.parquet as pq

    ev = definitions.events
    tx = pq.read_table(path / "transactions.parquet").to_pandas()
    if definitions.labels is None:
        return tx
    lb = definitions.labels
    labels = pq.read_table(path / "labels.parquet").to_pandas()
    tx_id = ev.field(ev.id_field).dataset_column
    label_id = lb.field(lb.id_field).dataset_column
    label = lb.field(lb.label_field).dataset_column
    merged = tx.merge(
        labels.loc[:, [label_id, label]].rename(columns={label_id: tx_id}),
        on=tx_id,
        how="left",
        validate="one_to_one",
    )
    if merged[label].isna().any():
        raise ValueError(f"{path}: transactions without a label in labels.parquet")
    merged[label] = merged[label].astype("int8")
    time = ev.field(ev.time_field).dataset_column
    return merged.sort_values([time, tx_id], kind="stable").reset_index(drop=True)


def load_features(path: str | Path, definitions: Any = None) -> Any:
    """The point-in-time feature rows at ``path`` for ``definitions`` (default: the handbook's
    file): a feature table 'rillet backfill' wrote, or a dataset 'rillet simulate' (or 'make
    demo') wrote, whose rows are computed here by the same engine
    (pipelines/core/training_data.py); with the models' role columns (``training_roles``)."""
    from pipelines.backfill.backfill import read_feature_table
    from pipelines.core.declarations import load_definitions
    from pipelines.core.training_data import training_features

    defs = definitions if definitions is not None else load_definitions()
    path = Path(path) if not str(path).startswith("gs://") else path
    if isinstance(path, Path) and (path / "transactions.parquet").exists():
        if defs.name == "handbook":
            from pipelines.app.simulator import read_dataset

            frame = read_dataset(path)
            rows = training_features(frame, defs)
            rows["CUSTOMER_ID"] = frame["CUSTOMER_ID"].to_numpy()
            return rows.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)
        return dataset_rows(read_events(path, defs), defs)
    return training_roles(read_feature_table(path, defs), defs)


def dataset_rows(frame: Any, definitions: Any) -> Any:
    """The point-in-time training rows of a dataset's events for ``definitions`` (the engine's),
    with the first entity's key columns and the models' role columns (``training_roles``)."""
    from pipelines.core.training_data import training_features

    rows = training_features(frame, definitions)
    for key in definitions.entities[0].keys:
        column = definitions.events.field(key).dataset_column
        rows[column] = frame[column].to_numpy()
    return training_roles(rows, definitions)
