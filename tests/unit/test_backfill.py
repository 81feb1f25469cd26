"""The Beam backfill: equal to the brute-force reference, any input format, cut-offs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.app.simulator import write_dataset
from pipelines.backfill.backfill import (
    BACKFILL_LABELS,
    BackfillOptions,
    build_backfill,
    read_feature_table,
    run_backfill,
)
from pipelines.backfill.event_tables import InvalidTable
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.training_data import to_epoch_us, training_features
from tests.reference import brute_force

SHARDS = ["--shards=3"]


def _wire(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dataset in the wire schema's column names, ids as text, times as RFC 3339."""
    base = pd.DataFrame(
        {
            "transaction_id": frame.TRANSACTION_ID.astype(str),
            "tx_datetime": frame.TX_DATETIME.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "customer_id": frame.CUSTOMER_ID.astype(str),
            "terminal_id": frame.TERMINAL_ID.astype(str),
        }
    )
    return base.assign(amount=frame.TX_AMOUNT), base.assign(is_fraud=frame.TX_FRAUD.astype(int))


@pytest.fixture(scope="module")
def sample(tiny_frame: pd.DataFrame) -> pd.DataFrame:
    """The first 400 transactions of the tiny preset (the brute force is quadratic)."""
    return tiny_frame.iloc[:400].reset_index(drop=True)


def test_backfill_equals_brute_force_reference(sample: pd.DataFrame, tmp_path: Path) -> None:
    write_dataset(sample, tmp_path / "in")
    table = read_feature_table(run_backfill(str(tmp_path / "in"), str(tmp_path / "out"), SHARDS))
    t_us = to_epoch_us(sample.TX_DATETIME)
    transactions = [
        (str(i), int(t), str(c), str(m), float(a))
        for i, t, c, m, a in zip(
            sample.TRANSACTION_ID,
            t_us,
            sample.CUSTOMER_ID,
            sample.TERMINAL_ID,
            sample.TX_AMOUNT,
            strict=True,
        )
    ]
    labels = [
        (str(i), int(t), str(m), int(f))
        for i, t, m, f in zip(
            sample.TRANSACTION_ID, t_us, sample.TERMINAL_ID, sample.TX_FRAUD, strict=True
        )
    ]
    expected = np.asarray(brute_force(transactions, labels))
    assert list(table.TRANSACTION_ID) == list(sample.TRANSACTION_ID)
    np.testing.assert_allclose(table[list(MODEL_INPUTS)].to_numpy(), expected, rtol=0, atol=1e-9)
    assert (table.TX_FRAUD.to_numpy() == sample.TX_FRAUD.to_numpy()).all()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows"] == len(sample) and manifest["features"] == list(MODEL_INPUTS)


def test_backfill_is_bit_identical_to_the_engine_on_a_whole_preset(
    tiny_frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_dataset(tiny_frame, tmp_path / "in")
    table = read_feature_table(run_backfill(str(tmp_path / "in"), str(tmp_path / "out"), SHARDS))
    expected = training_features(tiny_frame)
    assert np.array_equal(table[list(MODEL_INPUTS)].to_numpy(), expected[list(MODEL_INPUTS)])
    assert (table.TX_DATETIME == expected.TX_DATETIME).all()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_in_the_wire_schema_give_the_same_table(
    fmt: str, sample: pd.DataFrame, tmp_path: Path
) -> None:
    write_dataset(sample, tmp_path / "parquet")
    reference = read_feature_table(
        run_backfill(str(tmp_path / "parquet"), str(tmp_path / "ref"), SHARDS)
    )
    tx, labels = _wire(sample)
    source = tmp_path / fmt
    source.mkdir()
    if fmt == "csv":
        tx.to_csv(source / "transactions.csv", index=False)
        labels.to_csv(source / "labels.csv", index=False)
    else:
        # json.dumps writes floats that round-trip (pandas' to_json keeps 15 digits at most).
        for name, frame in (("transactions", tx), ("labels", labels)):
            lines = (json.dumps(r) for r in frame.to_dict(orient="records"))
            (source / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    table = read_feature_table(run_backfill(str(source), str(tmp_path / "out"), SHARDS))
    # Ids are text here: order both by the numeric id before comparing.
    table = table.assign(n=table.TRANSACTION_ID.astype(int)).sort_values("n")
    assert list(table.n) == list(reference.TRANSACTION_ID)
    assert np.array_equal(table[list(MODEL_INPUTS)].to_numpy(), reference[list(MODEL_INPUTS)])


def test_until_keeps_only_earlier_transactions_with_unchanged_features(
    tiny_frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_dataset(tiny_frame, tmp_path / "in")
    full = read_feature_table(run_backfill(str(tmp_path / "in"), str(tmp_path / "all"), SHARDS))
    cut = read_feature_table(
        run_backfill(str(tmp_path / "in"), str(tmp_path / "cut"), [*SHARDS, "--until=2018-04-15"])
    )
    earlier = full[full.TX_DATETIME < pd.Timestamp("2018-04-15", tz="UTC")]
    assert 0 < len(cut) == len(earlier) < len(full)
    # Point in time: later events never change an earlier transaction's features.
    assert np.array_equal(cut[list(MODEL_INPUTS)].to_numpy(), earlier[list(MODEL_INPUTS)])


def test_bad_input_stops_with_a_message_naming_the_problem(
    sample: pd.DataFrame, tmp_path: Path
) -> None:
    tx, labels = _wire(sample)
    cases = {
        "no column amount or TX_AMOUNT": tx.drop(columns="amount"),
        "amount values are NaN, infinite, below 0 or above": tx.assign(
            amount=np.where(np.arange(len(tx)) == 5, -1.0, tx.amount)
        ),
        "duplicate transaction ids": pd.concat([tx, tx.iloc[[7]]]),
    }
    for expected, frame in cases.items():
        source = tmp_path / expected.replace(" ", "_")
        source.mkdir()
        frame.to_csv(source / "transactions.csv", index=False)
        labels.to_csv(source / "labels.csv", index=False)
        with pytest.raises(Exception, match=expected) as info:
            run_backfill(str(source), str(tmp_path / "out"), SHARDS)
        assert isinstance(info.value, InvalidTable) or expected in str(info.value)


def test_cli_rejects_unknown_arguments(tmp_path: Path) -> None:
    from pipelines.app.cli import app

    runner = CliRunner()
    (tmp_path / "transactions.csv").write_text("")  # an input directory the check accepts
    unknown = runner.invoke(
        app, ["backfill", "--input", str(tmp_path), "--output", str(tmp_path), "--no_such=1"]
    )
    assert unknown.exit_code == 2
    assert "unknown argument(s) --no_such=1" in unknown.output


def test_step_labels_are_stable() -> None:
    """Dataflow matches steps by name: renaming one is a breaking change."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    assert BACKFILL_LABELS == (
        "ReadTransactions",
        "ReadLabels",
        "CheckUniqueIds",
        "CustomerFeatures",
        "TerminalFeatures",
        "WriteFeatureTable",
    )
    options = PipelineOptions(["--input=/nowhere", "--output=/nowhere"])
    assert options.view_as(BackfillOptions).shards == 8
    p = beam.Pipeline(options=options)
    build_backfill(p, options)
    top = {t.full_label for t in p.transforms_stack[0].parts}
    assert top == set(BACKFILL_LABELS)


@pytest.mark.slow
def test_multi_process_direct_runner_gives_the_same_table(
    tiny_frame: pd.DataFrame, tmp_path: Path
) -> None:
    write_dataset(tiny_frame, tmp_path / "in")
    args = [*SHARDS, "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    table = read_feature_table(run_backfill(str(tmp_path / "in"), str(tmp_path / "out"), args))
    expected = training_features(tiny_frame)
    assert np.array_equal(table[list(MODEL_INPUTS)].to_numpy(), expected[list(MODEL_INPUTS)])
