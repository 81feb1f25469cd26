"""The backfill of another definitions file: composite keys, text fields, filters, every kind of
feature; its table equals the oracle's features bit for bit, its columns are the file's."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.backfill.backfill import backfill_labels, backfill_options, run_backfill
from pipelines.core.declarations import load_definitions
from tests.oracle import oracle_features

CARDS = """
name: cards
events:
  topic: payments
  id: tx
  time: at
  fields:
    tx: {type: id, column: TX_ID}
    at: {type: time, column: AT}
    card: {type: id}
    merchant: {type: string, column: MERCHANT}
    amount: {type: number, scale: 2, min: 0, column: AMOUNT}
    channel: {type: string, values: [web, pos]}
labels:
  topic: chargebacks
  id: tx
  time: at
  label: fraud
  delay: 1h
  fields:
    tx: {type: id, column: TX_ID}
    at: {type: time, column: AT}
    card: {type: id}
    merchant: {type: string, column: MERCHANT}
    fraud: {type: label, column: FRAUD}
entities:
  card: {keys: [card]}
  card_merchant: {keys: [card, merchant]}
  merchant: {keys: [merchant]}
features:
  - {name: AMOUNT, value: amount}
  - {name: WEB, when: "channel == 'web'"}
  - {name: CARD_N_1H, entity: card, op: count, window: 1h}
  - {name: WEB_SUM, entity: card, op: sum, field: amount, window: 1d, where: "channel == 'web'"}
  - {name: CARD_STD_1D, entity: card, op: std, field: amount, window: 1d}
  - {name: CARD_MERCHANTS_1D, entity: card, op: distinct, field: merchant, window: 1d}
  - {name: PAIR_LAST, entity: card_merchant, op: last, field: amount, window: 6h}
  - {name: PAIR_GAP, entity: card_merchant, op: since_previous, window: 1d}
  - {name: MERCHANT_MAX_2H, entity: merchant, op: max, field: amount, window: 2h, delay: 10m}
  - {name: MERCHANT_RISK_1D, entity: merchant, op: label_rate, window: 1d, delay: 1h}
  - {name: MERCHANT_N_1D, entity: merchant, op: count, window: 1d, delay: 1h}
  - {name: AMOUNT_VS_MAX, ratio: [AMOUNT, MERCHANT_MAX_2H]}
"""

BASE_US = 1_522_540_800_000_000


@pytest.fixture(scope="module")
def cards(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """The file, and a dataset of 400 payments (on a 10-minute grid: shared instants, window
    edges) with labels for most, some twice (the later counts)."""
    root = tmp_path_factory.mktemp("cards")
    path = root / "cards.yaml"
    path.write_text(CARDS)
    rng = random.Random(7)
    events = []
    for i in rng.sample(range(100_000), 400):
        events.append(
            {
                "tx": i,
                "at": BASE_US + rng.randrange(0, 3 * 144) * 600_000_000,
                "card": rng.randrange(12),
                "merchant": rng.choice(["m#1", "m%2", "shop", "bar"]),
                "amount": round(rng.uniform(0, 300), 2),
                "channel": rng.choice(["web", "pos"]),
            }
        )
    labels = []
    for e in events:
        if rng.random() < 0.8:
            fields = {k: e[k] for k in ("tx", "at", "card", "merchant")}
            fraud = int(rng.random() < 0.2)
            labels.append({**fields, "fraud": fraud})
            if rng.random() < 0.1:
                labels.append({**fields, "fraud": 1 - fraud})
    data = root / "in"
    data.mkdir()
    at = {"AT": lambda f: pd.to_datetime(f["at"], unit="us", utc=True)}
    names = {"tx": "TX_ID", "merchant": "MERCHANT", "amount": "AMOUNT", "fraud": "FRAUD"}
    pd.DataFrame(events).rename(columns=names).assign(**at).drop(columns="at").to_parquet(
        data / "transactions.parquet"
    )
    pd.DataFrame(labels).rename(columns=names).assign(**at).drop(columns="at").to_parquet(
        data / "labels.parquet"
    )
    return path, events, labels


def test_backfill_of_another_file_equals_the_oracle(cards: Any, tmp_path: Path) -> None:
    path, events, labels = cards
    defs = load_definitions(path)
    assert backfill_labels(defs)[3:6] == (
        "CardFeatures",
        "Card_merchantFeatures",
        "MerchantFeatures",
    )
    table_dir = run_backfill(
        str(path.parent / "in"), str(tmp_path / "out"), ["--shards=3", f"--definitions={path}"]
    )
    table = pd.read_parquet(table_dir).sort_values("TX_ID").reset_index(drop=True)
    assert list(table.columns) == ["TX_ID", "AT", "card", "MERCHANT", *defs.names, "FRAUD"]
    ordered = sorted(events, key=lambda e: e["tx"])
    want = np.array(oracle_features(defs, ordered, labels))
    got = table[list(defs.names)].to_numpy()
    assert got.tobytes() == want.tobytes()
    latest = {lb["tx"]: lb["fraud"] for lb in labels}
    fraud = [latest.get(e["tx"]) for e in ordered]
    assert table.FRAUD.astype(object).where(table.FRAUD.notna(), None).tolist() == fraud


def test_to_bigtable_is_refused_for_another_file(cards: Any, capsys: Any) -> None:
    path, _, _ = cards
    with pytest.raises(SystemExit) as exit_info:
        backfill_options(
            ["--input=x", "--output=y", "--project=p", "--to_bigtable", f"--definitions={path}"]
        )
    assert exit_info.value.code == 2
    assert "--to_bigtable writes the handbook's stored cells only" in capsys.readouterr().err


def test_a_broken_definitions_file_is_named(tmp_path: Path, capsys: Any) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(CARDS.replace("window: 1h}", "window: 1x}"))
    with pytest.raises(SystemExit):
        backfill_options(["--input=x", "--output=y", f"--definitions={broken}"])
    err = capsys.readouterr().err
    assert "features[2] (CARD_N_1H).window" in err and "'1x' is not a duration" in err


def test_rillet_backfill_takes_the_definitions_file(cards: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.app.cli import app

    path, events, _ = cards
    out = tmp_path / "out"
    args = ["--input", str(path.parent / "in"), "--output", str(out), "--shards", "2"]
    args += ["--definitions", str(path), "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(app, ["backfill", *args])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output.strip().splitlines()[-1])
    assert manifest["rows"] == len(events) and manifest["definitions"] == str(path)
    table = pd.read_parquet(out / "features")
    assert list(table.columns)[-2:] == ["AMOUNT_VS_MAX", "FRAUD"]


def test_features_backfills_only_the_selected_columns(cards: Any, tmp_path: Path) -> None:
    """``--features``: the id and the selected columns (a derived input computed from the
    window feature it reads), equal to the full table's, by the selected entities' stages."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipelines.backfill.backfill import build_backfill

    path, events, labels = cards
    defs = load_definitions(path)
    only = "MERCHANT_RISK_1D,AMOUNT_VS_MAX"
    args = ["--shards=3", f"--definitions={path}", f"--features={only}"]
    table_dir = run_backfill(str(path.parent / "in"), str(tmp_path / "out"), args)
    table = pd.read_parquet(table_dir).sort_values("TX_ID").reset_index(drop=True)
    assert list(table.columns) == ["TX_ID", "MERCHANT_RISK_1D", "AMOUNT_VS_MAX"]
    ordered = sorted(events, key=lambda e: e["tx"])
    want = np.array(oracle_features(defs, ordered, labels))
    cols = [defs.names.index("MERCHANT_RISK_1D"), defs.names.index("AMOUNT_VS_MAX")]
    assert table[["MERCHANT_RISK_1D", "AMOUNT_VS_MAX"]].to_numpy().tobytes() == (
        np.ascontiguousarray(want[:, cols]).tobytes()
    )
    assert table.TX_ID.tolist() == [e["tx"] for e in ordered]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["features"] == ["MERCHANT_RISK_1D", "AMOUNT_VS_MAX"] and manifest["partial"]
    # Only the merchant's stage runs.
    options = backfill_options(["--input=x", "--output=y", *args])
    p = TestPipeline(options=options)
    build_backfill(p, options)
    labels_of = {t.full_label.split("/")[0] for t in p._current_transform().parts}
    assert "MerchantFeatures" in labels_of
    assert not {"CardFeatures", "Card_merchantFeatures"} & labels_of


def test_features_names_what_is_wrong(cards: Any, capsys: Any) -> None:
    path, _, _ = cards
    for only, message in [
        ("NOPE,CARD_N_1H", "--features: NOPE not declared in"),
        ("AMOUNT,WEB", "only row features selected"),
    ]:
        with pytest.raises(SystemExit):
            backfill_options(
                ["--input=x", "--output=y", f"--definitions={path}", f"--features={only}"]
            )
        assert message in capsys.readouterr().err
