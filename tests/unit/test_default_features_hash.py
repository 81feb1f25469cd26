"""The default definitions file computes today's features bit for bit: the training table of
the "small" simulation hashes to the value recorded before the batch paths read the file
(commit f3e5bf8's hard-coded engine)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.app.simulator import PRESETS, simulate, write_dataset
from pipelines.backfill.backfill import read_feature_table, run_backfill
from pipelines.core.training_data import training_features

# sha256 of training_features(simulate(PRESETS["small"])), computed by the engine before
# definitions were files: 53,057 rows, every column's bytes.
SMALL_TABLE_SHA256 = "d444d94abe0c7f1c84ec4bc6ab837cc5ed94f7acf5d1ef5d176f67990a2d42eb"


# sha256 of the backfill's feature table of the "tiny" simulation (3 shards), recorded likewise:
# 1,487 rows; id, time, both entity keys, the 15 features, the label.
TINY_BACKFILL_SHA256 = "33cc2f51a468083d80e402b7ee240ebe77e6fa42223dbccdc15cbf77f1d7343b"


def table_sha256(table: pd.DataFrame) -> str:
    """The column names, then every column's values as bytes (times as int64)."""
    digest = hashlib.sha256(",".join(table.columns).encode())
    for name in table.columns:
        column = table[name]
        if name == "TX_DATETIME":
            column = column.astype("int64")
        digest.update(np.ascontiguousarray(column.to_numpy()).tobytes())
    return digest.hexdigest()


def test_small_training_table_is_todays_bit_for_bit() -> None:
    table = training_features(simulate(PRESETS["small"]))
    assert len(table) == 53_057
    assert table_sha256(table) == SMALL_TABLE_SHA256


def test_tiny_backfill_table_is_todays_bit_for_bit(tmp_path: Path) -> None:
    write_dataset(simulate(PRESETS["tiny"]), tmp_path / "in")
    table = read_feature_table(
        run_backfill(str(tmp_path / "in"), str(tmp_path / "out"), ["--shards=3"])
    )
    assert len(table) == 1_487
    assert table_sha256(table) == TINY_BACKFILL_SHA256
