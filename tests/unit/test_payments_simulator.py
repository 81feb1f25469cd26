"""The payments workload (docs/specs/payments-workload.md): its definitions file loads and uses
what the handbook's does not, its simulator is deterministic and writes the declared layout,
every fraud scenario occurs and looks as documented, and a quick model on the declared
features (computed by the brute-force oracle, tests/oracle.py) catches the frauds on a later
week."""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.app.payments_simulator import (
    DEFINITIONS,
    PRESETS,
    SCENARIOS,
    PaymentsConfig,
    read_dataset,
    simulate,
    summary,
    top_k_by_scenario,
    write_dataset,
)
from pipelines.core.declarations import (
    DEFAULT_DEFINITIONS,
    Definitions,
    DerivedFeature,
    EventStream,
    RowFeature,
    WindowFeature,
    load_definitions,
    parse_definitions,
)
from tests.oracle import oracle_features, oracle_value

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return load_definitions(DEFINITIONS)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate(PRESETS["small"])


# -- the definitions file ----------------------------------------------------------------------


def test_the_file_loads_and_uses_what_the_handbook_does_not(defs: Definitions) -> None:
    handbook = load_definitions(DEFAULT_DEFINITIONS)
    assert defs.name == "payments" and 20 <= len(defs.names) <= 30
    assert set(defs.events.names) != set(handbook.events.names)
    assert len(defs.entities) >= 3
    assert any(len(e.keys) > 1 for e in defs.entities)
    windows = defs.window_features()
    assert any(f.window_us < HOUR_US for f in windows)
    assert any(f.where is not None for f in windows)
    ops = {f.op for f in windows}
    assert {"distinct", "since_previous", "max", "label_rate"} <= ops
    assert defs.labels is not None and defs.labels.delay_us >= DAY_US
    assert all(f.delay_us >= defs.labels.delay_us for f in windows if f.op == "label_rate")
    assert any(isinstance(f, DerivedFeature) for f in defs.features)
    card_category = defs.entity("card_category")
    assert card_category.keys == ("card_id", "merchant_category")


def test_the_simulator_fills_every_declared_field_within_its_bounds(
    defs: Definitions, small: pd.DataFrame
) -> None:
    for f in defs.events.fields:
        column = small[f.name]
        assert column.notna().all(), f.name
        if f.values:
            assert set(column) <= set(f.values), f.name
        if f.type == "string":
            assert column.str.len().max() <= f.max_length, f.name
        if f.minimum is not None:
            assert column.min() >= f.minimum, f.name
        if f.maximum is not None:
            assert column.max() <= f.maximum, f.name
        if f.type == "number":  # exact at the declared scale (cents)
            assert np.array_equal(np.round(column, f.scale), column), f.name
    assert small.transaction_id.is_unique and small.tx_time.is_monotonic_increasing


# -- the simulator -----------------------------------------------------------------------------


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    config = PRESETS["tiny"]
    first = simulate(config)
    pd.testing.assert_frame_equal(first, simulate(config))
    other = simulate(PaymentsConfig(**{**config.__dict__, "seed": config.seed + 1}))
    assert not first.equals(other)


def test_presets_sizes(small: pd.DataFrame) -> None:
    """The demo's preset is the handbook small's size: ~55k transactions over 8 weeks."""
    counts = summary(small)
    assert 50_000 <= counts["transactions"] <= 60_000
    assert small.tx_time.dt.floor("D").nunique() == 56
    assert 0.02 <= counts["frauds"] / counts["transactions"] <= 0.08
    large, demo = PRESETS["large"], PRESETS["small"]
    assert large.n_cards * large.n_days >= 30 * demo.n_cards * demo.n_days


def test_every_scenario_occurs_in_the_small_and_tiny_presets(small: pd.DataFrame) -> None:
    for frame in (small, simulate(PRESETS["tiny"])):
        counts = summary(frame)["scenarios"]
        assert set(counts) == {name for code, name in SCENARIOS.items() if code}
        assert min(counts.values()) >= 10, counts
    assert min(summary(small)["scenarios"].values()) >= 200
    assert (small.is_fraud == (small.fraud_scenario > 0)).all()


def test_scenarios_look_as_documented(small: pd.DataFrame) -> None:
    genuine = small[small.fraud_scenario == 0]
    by = {name: small[small.fraud_scenario == code] for code, name in SCENARIOS.items() if code}
    new_devices = set(small.device_id) - set(genuine.device_id)

    testing = by["card_testing"]
    assert (testing.channel == "online").all()
    assert (testing.amount < 5).mean() > 0.75  # the tests; the rest are the cash-outs
    assert testing.device_id.isin(new_devices).all()

    takeover = by["account_takeover"]
    assert (takeover.channel == "online").all() and takeover.device_id.isin(new_devices).all()
    assert takeover.amount.median() > 3 * genuine.amount.median()
    assert 0.4 < (takeover.country != takeover.card_country).mean() < 0.8

    merchant = by["compromised_merchant"]
    assert (merchant.channel == "pos").all()
    # Concentrated: a few merchants, each with many frauds.
    assert merchant.merchant_id.nunique() * 10 < len(merchant)

    spree = by["cross_border_spree"]
    assert (spree.country != spree.card_country).all()
    assert set(spree.channel) == {"pos", "atm"}
    # Genuine trips abroad exist too, so crossing a border is a hint, not a proof.
    assert ((genuine.country != genuine.card_country) & (genuine.channel == "pos")).sum() > 100


def test_write_dataset_names_columns_as_the_file_declares(
    defs: Definitions, tmp_path: Path
) -> None:
    frame = simulate(PRESETS["tiny"])
    paths = write_dataset(frame, tmp_path / "a")
    transactions = pq.read_table(paths["transactions"])
    labels = pq.read_table(paths["labels"])
    assert defs.labels is not None
    assert transactions.column_names == list(defs.events.names)
    assert labels.column_names == [*defs.labels.names, "fraud_scenario"]
    assert str(transactions.schema.field("tx_time").type) == "timestamp[us, tz=UTC]"
    back = transactions.to_pandas()
    pd.testing.assert_frame_equal(back, frame[list(defs.events.names)])
    assert labels.to_pandas().fraud_scenario.tolist() == frame.fraud_scenario.tolist()
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "a"), frame)

    # A field's `column:` names its dataset column.
    data = yaml.safe_load(DEFINITIONS.read_text())
    data["events"]["fields"]["amount"]["column"] = "TX_AMOUNT"
    renamed = parse_definitions(data)
    paths = write_dataset(frame, tmp_path / "b", renamed)
    columns = pq.read_table(paths["transactions"]).column_names
    assert "TX_AMOUNT" in columns and "amount" not in columns
    pd.testing.assert_frame_equal(read_dataset(tmp_path / "b", renamed), frame)

    # Files of different transactions are refused.
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    write_dataset(shuffled.iloc[:-1], tmp_path / "c")
    (tmp_path / "c" / "labels.parquet").write_bytes(
        (tmp_path / "a" / "labels.parquet").read_bytes()
    )
    with pytest.raises(ValueError, match="labels"):
        read_dataset(tmp_path / "c")


# -- the per-scenario report -------------------------------------------------------------------


def test_top_k_by_scenario_counts_the_daily_top_k() -> None:
    day1, day2 = pd.Timestamp("2018-04-01", tz="UTC"), pd.Timestamp("2018-04-02", tz="UTC")
    frame = pd.DataFrame(
        {
            "tx_time": [day1, day1, day1, day1, day2, day2, day2],
            "card_id": [1, 1, 2, 3, 1, 4, 5],
            "score": [0.9, 0.8, 0.8, 0.1, 0.5, 0.5, 0.7],
            "fraud_scenario": [1, 1, 2, 3, 0, 4, 4],
        }
    )
    # Day 1: top 2 = rows 0 and 1 (0.8 tie: the earlier row); day 2: rows 6 and 4.
    assert top_k_by_scenario(frame, k=2) == {
        "card_testing": {"frauds": 2, "in_top": 2},
        "account_takeover": {"frauds": 1, "in_top": 0},
        "compromised_merchant": {"frauds": 1, "in_top": 0},
        "cross_border_spree": {"frauds": 2, "in_top": 1},
    }
    # By card: day 1 cards 1 (0.9) and 2 (0.8); day 2 cards 5 (0.7) and 1 (0.5, before 4).
    assert top_k_by_scenario(frame, k=2, card_column="card_id") == {
        "card_testing": {"frauds": 1, "in_top": 1},
        "account_takeover": {"frauds": 1, "in_top": 1},
        "compromised_merchant": {"frauds": 1, "in_top": 0},
        "cross_border_spree": {"frauds": 2, "in_top": 1},
    }
    with pytest.raises(ValueError):
        top_k_by_scenario(frame, k=0)


# -- the frauds are learnable from the declared features ---------------------------------------


def _events(defs: Definitions, frame: pd.DataFrame) -> tuple[list[dict[str, Any]], list[int]]:
    """The frame's rows as the oracle's events (ids as text, the time in microseconds)."""
    ev = defs.events
    times = frame[ev.time_field].dt.tz_convert("UTC").dt.tz_localize(None)
    micros = times.to_numpy("datetime64[us]").astype(np.int64).tolist()
    records = frame[list(ev.names)].to_dict("records")
    for record, t in zip(records, micros, strict=True):
        record[ev.time_field] = t
        record[ev.id_field] = str(record[ev.id_field])
    return records, micros


def _oracle_rows(
    defs: Definitions, frame: pd.DataFrame, queries: Sequence[int]
) -> list[list[float]]:
    """The oracle's features of the rows ``queries``, given to it per feature only the events of
    the query's entity within its reach (the oracle drops the others anyway): the same values,
    at a cost that does not grow with the whole stream."""
    assert defs.labels is not None
    lb = defs.labels
    events, micros = _events(defs, frame)
    labels = [
        {**{k: e[k] for k in lb.names if k in e}, lb.label_field: int(y)}
        for e, y in zip(events, frame[lb.label_field], strict=True)
    ]
    members: dict[str, dict[str, list[int]]] = {}
    for entity in defs.entities:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, e in enumerate(events):  # time order: each group's times are sorted
            groups[entity.id_of(e)].append(i)
        members[entity.name] = groups
    group_times = {
        (entity, key): [micros[i] for i in rows]
        for entity, groups in members.items()
        for key, rows in groups.items()
    }
    out = []
    for q in queries:
        query, t = events[q], micros[q]
        values: dict[str, float] = {}
        for f in defs.features:
            if isinstance(f, WindowFeature):
                key = f.entity.id_of(query)
                rows, times = members[f.entity.name][key], group_times[f.entity.name, key]
                near = rows[
                    bisect.bisect_left(times, t - f.reach_us) : bisect.bisect_right(times, t)
                ]
                values[f.name] = oracle_value(
                    defs, f, query, [events[i] for i in near], [labels[i] for i in near]
                )
            elif isinstance(f, RowFeature):  # as tests/oracle.py's oracle_features
                if f.value is not None:
                    values[f.name] = float(query[f.value])
                else:
                    assert f.when is not None
                    values[f.name] = 1.0 if f.when.holds(query, t) else 0.0
            else:
                a, b = (values[i] for i in f.inputs)
                values[f.name] = a - b if f.op == "difference" else (a / b if b != 0 else 0.0)
        out.append([values[n] for n in defs.names])
    return out


def test_the_entity_slices_give_the_oracle_on_the_whole_stream(defs: Definitions) -> None:
    frame = simulate(PRESETS["tiny"])
    events, _ = _events(defs, frame)
    labels = [{**e, "is_fraud": int(y)} for e, y in zip(events, frame.is_fraud, strict=True)]
    queries = list(range(len(frame) - 1, len(frame) - 1200, -97))
    rows = [n for n in defs.names if isinstance(defs.feature(n), RowFeature)]
    for got, q in zip(_oracle_rows(defs, frame, queries), queries, strict=True):
        values = dict(zip(defs.names, got, strict=True))
        # Row features do not read other events: the oracle on the query alone.
        expected = dict(zip(rows, oracle_features(defs, [events[q]], [], rows)[0], strict=True))
        for f in defs.window_features():
            expected[f.name] = oracle_value(defs, f, events[q], events, labels)
        assert {n: values[n] for n in expected} == expected


@pytest.mark.slow
def test_a_quick_model_on_the_declared_features_catches_every_scenario_later(
    defs: Definitions, small: pd.DataFrame
) -> None:
    """Trained on week 6 (days 35-41), scored on week 8 (days 49-55, after the label delay's
    gap), as the protocol lays its blocks out: clearly better than chance on every scenario.
    Each week's rows: its frauds and 1,000 genuine ones (AUC does not depend on the mix)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    day = (small.tx_time - small.tx_time.iloc[0].floor("D")).dt.days.to_numpy()
    rng = np.random.default_rng(0)

    def week(first: int) -> np.ndarray:
        inside = (day >= first) & (day < first + 7)
        frauds = np.flatnonzero(inside & (small.is_fraud.to_numpy() == 1))
        genuine = rng.choice(
            np.flatnonzero(inside & (small.is_fraud.to_numpy() == 0)), 1000, replace=False
        )
        return np.sort(np.concatenate([frauds, genuine]))

    train, test = week(35), week(49)
    queries = np.concatenate([train, test]).tolist()
    features = np.array(_oracle_rows(defs, small, queries))
    model = HistGradientBoostingClassifier(random_state=0)
    model.fit(features[: len(train)], small.is_fraud.to_numpy()[train])
    scores = model.predict_proba(features[len(train) :])[:, 1]
    scenario = small.fraud_scenario.to_numpy()[test]
    assert roc_auc_score(scenario > 0, scores) > 0.9
    for code, name in SCENARIOS.items():
        if code:
            pair = (scenario == 0) | (scenario == code)
            assert roc_auc_score(scenario[pair] == code, scores[pair]) > 0.7, name


# -- the spec ----------------------------------------------------------------------------------


def _table(text: str, title: str) -> list[list[str]]:
    """The body rows of the first Markdown table under the heading ``title``, cell by cell."""
    part = text.split(title + "\n", 1)[1].split("\n#", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_spec_lists_the_fields_presets_scenarios_and_features(
    defs: Definitions, small: pd.DataFrame
) -> None:
    """docs/specs/payments-workload.md's tables are the file's fields, PRESETS (with the counts
    they generate), SCENARIOS and the file's features in order."""
    text = (Path(__file__).resolve().parents[2] / "docs/specs/payments-workload.md").read_text()

    fields = _table(text, "## 1. The streams")
    assert [(r[0].strip("`"), r[1]) for r in fields] == [
        (f.name, f.type) for f in defs.events.fields
    ]
    rows = {r[0].strip("`"): r[1:] for r in _table(text, "### Presets")}
    assert set(rows) == set(PRESETS)
    for name, config in PRESETS.items():
        cards, merchants, days, start, seed, transactions, frauds = rows[name]
        numbers = [int(x.replace(",", "")) for x in (cards, merchants, days, seed)]
        assert numbers == [config.n_cards, config.n_merchants, config.n_days, config.seed]
        assert start == config.start_date
        if name != "large":  # 3 s to generate: its counts were recorded by the same code
            counts = summary(small if name == "small" else simulate(config))
            listed = (int(transactions.replace(",", "")), int(frauds.replace(",", "")))
            assert listed == (counts["transactions"], counts["frauds"]), name
    scenarios = _table(text, "### Fraud scenarios")
    assert {int(r[0]): r[1].strip("`") for r in scenarios} == {
        code: name for code, name in SCENARIOS.items() if code
    }
    for row in scenarios:  # the features named as seeing it are declared
        named = re.findall(r"`([A-Z][A-Z0-9_]+)`", row[3])
        assert named and set(named) <= set(defs.names), row[1]
    features = _table(text, "## 3. The features")
    assert tuple(r[0].strip("`") for r in features) == defs.names


def test_no_code_of_the_job_names_the_workload(defs: Definitions) -> None:
    """Declared only: no module of the job's layers (core, stores, transforms, streaming,
    backfill, the entry and the runner) holds a string or a name that is one of this workload's
    own fields, entities, features or scenarios (those it shares with the handbook aside)."""
    import ast

    handbook = load_definitions(DEFAULT_DEFINITIONS)
    own = (
        set(defs.events.names)
        | {e.name for e in defs.entities}
        | set(defs.names)
        | set(SCENARIOS.values())
        | {defs.name, "fraud_scenario"}
    )
    own -= set(handbook.events.names) | {e.name for e in handbook.entities} | set(handbook.names)
    own -= {"genuine"}
    # Generic words a variable may well be called (a gRPC channel, a model card): as names
    # only; as strings (a column or field looked up) they would still be the workload's.
    generic = {"card", "country", "channel"}
    root = Path(__file__).resolve().parents[2] / "pipelines"
    modules = [root / "streaming.py", root / "main.py", root / "options.py"]
    for layer in ("core", "stores", "transforms", "backfill", "local_runner"):
        modules += sorted((root / layer).rglob("*.py"))
    found = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant):
                hit = node.value in own
            else:
                name = {
                    ast.Name: lambda n: n.id,
                    ast.Attribute: lambda n: n.attr,
                    ast.FunctionDef: lambda n: n.name,
                    ast.ClassDef: lambda n: n.name,
                    ast.arg: lambda n: n.arg,
                }.get(type(node), lambda n: None)(node)
                hit = name in own - generic
            if hit:
                where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
                found.append(f"{where}: {ast.unparse(node)[:40]}")
    assert found == []


def test_the_batch_engine_computes_the_file_as_the_oracle(defs: Definitions) -> None:
    """Every feature of every tiny transaction, by the batch engine for any definitions file
    (``compute_features``, issue 23; skipped until it lands) equals the oracle bit for bit."""
    from pipelines.core import engine

    compute = getattr(engine, "compute_features", None)
    if compute is None:
        pytest.skip("pipelines.core.engine has no compute_features yet")
    frame = simulate(PRESETS["tiny"])
    assert defs.labels is not None
    _, micros = _events(defs, frame)

    def columns(stream: EventStream) -> dict[str, np.ndarray]:
        """A stream's columns as the engine takes them: the time in microseconds, ids and
        texts as text, numbers and labels as float64."""
        out = {}
        for f in stream.fields:
            if f.type == "time":
                out[f.name] = np.asarray(micros, dtype=np.int64)
            elif f.type in ("id", "string"):
                out[f.name] = frame[f.name].astype(str).to_numpy(dtype=object)
            else:
                out[f.name] = frame[f.name].to_numpy(dtype=np.float64)
        return out

    got = compute(defs, columns(defs.events), columns(defs.labels))
    expected = np.array(_oracle_rows(defs, frame, range(len(frame))))
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
