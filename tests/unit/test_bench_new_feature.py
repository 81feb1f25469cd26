"""bench/new_feature.py's counting: lost, duplicated per version, served vs backfill."""

from __future__ import annotations

import pandas as pd

from bench.new_feature import counts, served_mismatches


def test_counts_lost_and_duplicates_per_version() -> None:
    predictions = [
        {"transaction_id": "1", "model_version": "a"},
        {"transaction_id": "1", "model_version": "b"},  # another version: not a duplicate
        {"transaction_id": "2", "model_version": "a"},
        {"transaction_id": "2", "model_version": "a"},  # the same version twice
        {"transaction_id": "3", "model_version": "a", "correction": True},  # not an original
    ]
    assert counts(predictions, ["1", "2", "3", "4"], {"1", "2", "3"}) == {
        "lost": 2,
        "duplicated": 1,
    }
    assert counts(predictions, ["1", "2"], {"1"}) == {"lost": 1, "duplicated": 1}


def test_served_mismatches_reads_the_latest_revision() -> None:
    table = pd.DataFrame({"transaction_id": [1, 2], "X": [1.0, 2.0], "Y": [0.0, 5.0]})
    predictions = [
        {"transaction_id": "1", "revision": 1, "features": {"X": 9.0}},
        {"transaction_id": "1", "revision": 2, "features": {"X": 1.0, "Y": 0.0}},
        {"transaction_id": "2", "revision": 1, "features": {"X": 2.0, "Y": 4.0}},
        {"transaction_id": "7", "revision": 1, "features": {"X": 2.0}},  # not in the table
    ]
    assert served_mismatches(predictions, table, "transaction_id") == (2, 1)
