"""make chaos-dataflow: rillet's own stages run the way Dataflow streaming runs them, with faults.

The runner model is bench/dataflow_model (generic: nothing of rillet in it). This module is the
rillet side: the data, the run, the oracle, the JSON.

1. Data: the handbook preset (pipelines.app.simulator), cut to ``customers`` customers that
   share terminals (a walk over the customer-terminal graph from a terminal compromised in the
   stretch, so that the kept terminals keep most of their traffic and their risk windows
   matter) and their transactions, up to the end of a stretch of ``days`` days from ``start``.
2. A private emulator stack (pipelines.app.local_run.LocalRun, free ports, its own table and
   Datastore kind); the store warmed by the product's backfill of everything before the
   stretch (``LocalRun.warm_store``); a small model trained on the warm backfill's feature
   table (labelled rows before the stretch), registered as the champion.
3. The graph: ``pipelines.streaming.build_pipeline`` on a pipeline that is never run; the part
   in scope extracted from it (parse, ComputeFeatures, Predict, WritePredictions, the dead
   letters; EvaluateOnline and Monitor pruned); the Pub/Sub reads bypassed: the harness feeds
   PubsubMessages (data, message id, publish time) to ParseTransactions and ParseLabels.
4. The stream: the stretch's transactions (each at its time) and the labels due in it (7 days
   after their transaction), published in due order (publish time = due time), delivered out
   of order: every message moved by up to ``jitter`` positions, ``late`` of them by up to
   ``late_days`` days of traffic, ``very_late`` of the transactions by 7.5 to 11 days of traffic
   (past the label delay: they change terminal windows already computed; their label is never
   published, so that nothing but them redoes those corrections), ``early_labels`` of the
   stretch's transactions with their label delivered up to ``early_by`` positions before them
   (it waits in the id index), ``redeliveries`` of the messages delivered again (same message
   id) later. The delivery order is written to ``<work dir>/deliveries.jsonl``.
5. The run (bench.dataflow_model.Coordinator): W worker processes x T threads, one key per work
   item (or ``--multi-key``), failures after every kind of side effect and before commits,
   retries, key moves, zombies.
6. The oracle: the product's backfill of the same data (every transaction up to the stretch's
   end and every label delivered or in the warm store; a label counts from its transaction's
   time + 7 days, as the stream sees it) and the label rule (one valid label message per
   transaction here, each delivered).

Definitions (counts):
  lost                valid transactions with no stored prediction (Datastore)
  labels_uncounted    valid delivered labels absent from their terminal's stored label cells
                      (Bigtable: the terminal's bucket rows)
  duplicated          stored predictions with a count feature above the oracle's, plus
                      transactions stored under two entities of one kind in Bigtable, plus
                      bucket rows whose stored summary is not what their cells add up to
  feature_mismatches  stored feature values that differ from the oracle's: per (transaction,
                      feature) of the stored predictions, and per (transaction, customer
                      feature) carried on the terminal's Bigtable cell the stream wrote
  stale_predictions   stored predictions (final Datastore state) whose features differ
  valid_dead_lettered valid messages on the dead-letter topic (e.g. a label that waited
                      again, as ``unknown_transaction``)
  risk_features_nonzero  at least 2% of the compared transactions have a non-zero
                      TERMINAL_ID_RISK_* feature (the oracle's)

The last stdout line is one JSON object; it is also written to ``<work dir>/result.json``, the
stored predictions to ``<work dir>/stored.parquet`` and every attempt to
``<work dir>/attempts.jsonl``. Exit status 1 if anything is lost, doubled, mismatched or
wrongly dead-lettered, 2 on a wrong argument.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.dataflow_model.coordinator import INJECTION_POINTS, ModelConfig

__all__ = ["DataflowChaosConfig", "main", "run"]

DAY_US = 86_400_000_000
LABEL_DELAY_US = 7 * DAY_US
IN_SCOPE = (
    "ParseTransactions",
    "ParseLabels",
    "ComputeFeatures",
    "Predict",
    "WritePredictions",
    "CollectDeadLetters",
    "WriteDeadLetters",
)
FED = {"transactions": "ReadTransactions", "labels": "ReadLabels"}


@dataclass
class DataflowChaosConfig:
    """One run (defaults: the full run of ``make chaos-dataflow``)."""

    work_dir: Path = Path(".rillet/chaos-dataflow")
    workers: int = 4
    threads: int = 4
    multi_key: bool = False
    days: int = 14
    customers: int = 300
    start: str = "2018-05-16"  # the stretch's first day (45 days of history before it)
    seed: int = 7
    # delivery
    source_batch: int = 25  # messages per work item of an input
    jitter: int = 60  # positions every message may move
    late: float = 0.05  # messages delivered up to late_days of traffic after their turn
    late_days: float = 2.0
    very_late: float = 0.05  # transactions delivered 7.5-11 days of traffic late (no label)
    early_labels: float = 0.1  # transactions whose label comes before them
    early_by: int = 400  # by up to this many positions (a tenth of it at least)
    redeliveries: float = 0.03  # messages delivered a second time (same message id)
    label_wait_s: float = 60.0  # the job's --label_wait_s (wall clock)
    # faults (per attempt)
    fail_after_bigtable: float = 0.03
    fail_after_datastore: float = 0.02
    fail_after_publish: float = 0.02
    fail_before_commit: float = 0.008
    zombie_rate: float = 0.003
    move_rate: float = 0.01
    timeout_s: float = 3600.0
    # A merchant terminal with this share of the stretch's transactions (make bench-scaleout's
    # hot-key run): that many transactions, drawn at random, moved to HOT_TERMINAL.
    hot_share: float = 0.0


HOT_TERMINAL = 99_999_999


# -- data --------------------------------------------------------------------------------------


def pick_customers(frame: pd.DataFrame, n: int, start_us: int, end_us: int, seed: int) -> list:
    """``n`` customers that share terminals: a breadth-first walk of the customer-terminal graph
    from a terminal compromised in [start, end) (scenario 2), customers in order of distance."""
    times = _epoch_us(frame["TX_DATETIME"])
    compromised = frame.loc[
        (frame.TX_FRAUD_SCENARIO == 2) & (times >= start_us) & (times < end_us), "TERMINAL_ID"
    ]
    seeds = sorted(compromised.unique().tolist())
    if not seeds:
        raise ValueError("no compromised terminal in the stretch")
    by_terminal = frame.groupby("TERMINAL_ID")["CUSTOMER_ID"].unique()
    by_customer = frame.groupby("CUSTOMER_ID")["TERMINAL_ID"].unique()
    chosen: list = []
    seen_c: set = set()
    seen_t = {random.Random(seed).choice(seeds)}
    frontier = list(seen_t)
    while frontier and len(chosen) < n:
        customers = sorted({c for t in frontier for c in by_terminal.get(t, [])} - seen_c)
        chosen += customers
        seen_c.update(customers)
        terminals = sorted({t for c in customers for t in by_customer[c]} - seen_t)
        seen_t.update(terminals)
        frontier = terminals
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} customers reachable")
    return chosen[:n]


def _epoch_us(series: pd.Series) -> np.ndarray:
    from pipelines.core.training_data import to_epoch_us

    return to_epoch_us(series)


@dataclass
class Message:
    """One delivery: which input, the payload, its Pub/Sub message id and publish time."""

    input: str
    data: bytes
    message_id: str
    publish_us: int
    transaction_id: str


def stream_messages(
    frame: pd.DataFrame, start_us: int, end_us: int, config: DataflowChaosConfig
) -> tuple[list[Message], list[Message], set[str], dict[str, int]]:
    """(the valid messages in publish order, the delivery order, the transactions whose label is
    never published, counts)."""
    rng = random.Random(config.seed)
    times = _epoch_us(frame["TX_DATETIME"])
    stretch_tx = [int(i) for i in np.flatnonzero((times >= start_us) & (times < end_us))]
    # Very late transactions: their label is never published (had it been due before them, it
    # would wait longer than --label_wait_s; after them, it would redo their corrections).
    very_late = set(rng.sample(stretch_tx, int(len(stretch_tx) * config.very_late)))
    early = set(rng.sample(stretch_tx, int(len(stretch_tx) * config.early_labels))) - very_late
    rows: list[tuple[int, int, int, str]] = []  # (due µs, kind order, row index, input)
    for i in stretch_tx:
        rows.append((int(times[i]), 1, i, "transactions"))
    due = times + LABEL_DELAY_US
    labelled = {int(i) for i in np.flatnonzero((due >= start_us) & (due < end_us))} | early
    for i in sorted(labelled - very_late):  # early ones not due in the stretch come anyway
        rows.append((int(due[i]), 0, i, "labels"))
    rows.sort()
    published: list[Message] = []
    for n, (due_us, _, i, kind) in enumerate(rows):
        body: dict[str, Any] = {
            "schema_version": 1,
            "transaction_id": str(frame.TRANSACTION_ID.iat[i]),
            "tx_datetime": _rfc3339(int(times[i])),
            "customer_id": str(frame.CUSTOMER_ID.iat[i]),
            "terminal_id": str(frame.TERMINAL_ID.iat[i]),
        }
        if kind == "transactions":
            body["amount"] = float(frame.TX_AMOUNT.iat[i])
        else:
            body["is_fraud"] = int(frame.TX_FRAUD.iat[i])
        data = json.dumps(body, separators=(",", ":")).encode()
        # Publish time: the due time (+ the rank, so that it is unique and in publish order).
        published.append(Message(kind, data, f"m{n}", due_us + n, body["transaction_id"]))
    very_late_ids = {str(frame.TRANSACTION_ID.iat[i]) for i in very_late}
    early_ids = {str(frame.TRANSACTION_ID.iat[i]) for i in early}
    per_day = len(published) / max(config.days, 1)
    position: dict[int, float] = {}
    late_tx: set[str] = set()
    late_messages = 0
    for n, m in enumerate(published):
        pos = n + rng.uniform(0, config.jitter)
        if m.input == "transactions" and m.transaction_id in very_late_ids:
            # Later than the label delay: it changes terminal windows already computed.
            pos += rng.uniform(7.5, 11.0) * per_day
        elif rng.random() < config.late:
            pos += rng.uniform(0.1, config.late_days) * per_day
            late_messages += 1
            if m.input == "transactions":
                late_tx.add(m.transaction_id)
        position[n] = pos
    tx_position = {
        m.transaction_id: position[n] for n, m in enumerate(published) if m.input == "transactions"
    }
    moved = 0
    for n, m in enumerate(published):
        if (
            m.input == "labels"
            and m.transaction_id in early_ids
            and m.transaction_id not in late_tx
        ):
            position[n] = tx_position[m.transaction_id] - rng.uniform(
                config.early_by / 10, config.early_by
            )
            moved += 1
    order = sorted(range(len(published)), key=position.__getitem__)
    deliveries = [published[n] for n in order]
    redelivered = 0
    for n in rng.sample(range(len(deliveries)), int(len(deliveries) * config.redeliveries)):
        at = min(len(deliveries), n + rng.randint(1, 2_000))
        deliveries.insert(at, deliveries[n])
        redelivered += 1
    counts = {
        "transactions": sum(1 for m in published if m.input == "transactions"),
        "labels": sum(1 for m in published if m.input == "labels"),
        "labels_before_transactions": moved,
        "late_messages": late_messages,
        "very_late_transactions": len(very_late_ids),
        "redeliveries": redelivered,
    }
    return published, deliveries, very_late_ids, counts


def _rfc3339(us: int) -> str:
    from pipelines.core.schema import format_rfc3339

    return format_rfc3339(us)


def feed_batches(graph: Any, deliveries: list[Message], size: int) -> list[Any]:
    """The deliveries as work items of the fed inputs (PubsubMessages, publish time as the
    element timestamp, as Pub/Sub's source gives them), in delivery order."""
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import WindowedValue

    from bench.dataflow_model.bundle import windowed_coder
    from bench.dataflow_model.coordinator import SourceBatch

    coders = {name: windowed_coder(graph, graph.stage_of_input(name).input) for name in FED}
    open_batches: dict[str, list[tuple[bytes, int]]] = {name: [] for name in FED}
    batches = []
    for m in deliveries:
        published = datetime.fromtimestamp(m.publish_us / 1e6, tz=UTC)
        message = PubsubMessage(m.data, {}, message_id=m.message_id, publish_time=published)
        wv = WindowedValue(message, Timestamp(micros=m.publish_us), (GlobalWindow(),))
        batch = open_batches[m.input]
        batch.append((coders[m.input].encode(wv), m.publish_us))
        if len(batch) >= size:
            batches.append(SourceBatch(m.input, batch))
            open_batches[m.input] = []
    batches += [SourceBatch(name, b) for name, b in open_batches.items() if b]
    return batches


# -- the run -----------------------------------------------------------------------------------


def build_graph(topology: Any, kind: str, model_dir: Path, label_wait_s: float) -> Any:
    """The product graph, built as ``rillet run`` builds it for Dataflow (one key per entity),
    and its part in scope."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from bench.dataflow_model.graph import extract
    from pipelines.streaming import build_pipeline

    options = PipelineOptions(
        [
            "--streaming",
            f"--project={topology.project}",
            f"--bigtable_instance={topology.bigtable_instance}",
            f"--bigtable_table={topology.bigtable_table}",
            f"--datastore_kind={kind}",
            f"--model_dir={model_dir}",
            "--key_buckets=0",
            f"--label_wait_s={label_wait_s}",
            # No lateness option: its very late transactions (up to 11 days) are corrected under
            # the defaults (no time limit; at most 10,000 corrections per event, above any
            # entity's traffic here), and every correction is checked.
        ]
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    return extract(pipeline, IN_SCOPE, FED)


def train_champion(warm_table: Path, model_dir: Path) -> str:
    """A small model on the warm backfill's labelled rows, registered as the champion."""
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.backfill.backfill import read_feature_table
    from pipelines.stores.model_registry import ModelRegistry

    table = read_feature_table(warm_table)
    table = table[table.TX_FRAUD.notna()].copy()
    table["TX_FRAUD"] = table.TX_FRAUD.astype(int)
    model, _ = train_model(table, None, TrainConfig(num_trees=10))
    version_dir = export_model(model, model_dir, {"purpose": "chaos-dataflow"})
    ModelRegistry(model_dir).register(version_dir.name, as_="champion", by="chaos-dataflow")
    return version_dir.name


def run(config: DataflowChaosConfig) -> dict[str, Any]:
    """The whole run; returns the result (see the module docstring)."""
    from bench.dataflow_model.coordinator import Coordinator
    from pipelines.app.local_run import LocalRun
    from pipelines.app.simulator import PRESETS, simulate, write_dataset
    from pipelines.backfill.backfill import read_feature_table, run_backfill

    timings: dict[str, float] = {}
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.monotonic() - clock, 1)
        print(f"[chaos-dataflow] {name}: {timings[name]} s", flush=True)
        clock = time.monotonic()

    work = config.work_dir
    work.mkdir(parents=True, exist_ok=True)
    start_us = int(pd.Timestamp(config.start, tz="UTC").value // 1000)
    end_us = start_us + config.days * DAY_US
    frame = simulate(PRESETS["handbook"])
    customers = pick_customers(frame, config.customers, start_us - 30 * DAY_US, end_us, config.seed)
    times = _epoch_us(frame["TX_DATETIME"])
    subset = frame[frame.CUSTOMER_ID.isin(customers) & (times < end_us)].reset_index(drop=True)
    if config.hot_share > 0:
        in_stretch = _epoch_us(subset["TX_DATETIME"]) >= start_us
        drawn = np.random.default_rng(config.seed).random(len(subset)) < config.hot_share
        subset.loc[in_stretch & drawn, "TERMINAL_ID"] = HOT_TERMINAL
    data_dir = work / "data"
    write_dataset(subset, data_dir)
    published, deliveries, unlabelled, counts = stream_messages(subset, start_us, end_us, config)
    # The oracle's input: every transaction, and every label the stream delivers or the warm
    # store holds (all but those never published).
    oracle_dir = work / "oracle-data"
    write_dataset(subset, oracle_dir)
    labels = pq.read_table(oracle_dir / "labels.parquet")
    ids = labels.column("TRANSACTION_ID").to_numpy().astype(str)
    keep = ~np.isin(ids, np.array(sorted(unlabelled), dtype=str))
    pq.write_table(labels.filter(pa.array(keep)), oracle_dir / "labels.parquet")
    with (work / "deliveries.jsonl").open("w") as out:
        for m in deliveries:
            out.write(json.dumps({"input": m.input, "id": m.message_id, "tx": m.transaction_id}))
            out.write("\n")
    step("data_s")

    oracle_table = read_feature_table(run_backfill(str(oracle_dir), str(work / "oracle")))
    step("oracle_backfill_s")

    with LocalRun(work / "stack", fresh="dfm", log_path=work / "stack.log") as local:
        topology, kind = local.topology, local.datastore_kind
        warm = local.warm_store(data_dir, work / "warm", config.start)
        step("warm_store_s")
        model_dir = work / "models"
        train_champion(warm, model_dir)
        step("train_s")
        graph = build_graph(topology, kind, model_dir, config.label_wait_s)
        batches = feed_batches(graph, deliveries, config.source_batch)
        rates = {
            "bigtable": config.fail_after_bigtable,
            "datastore": config.fail_after_datastore,
            "publish": config.fail_after_publish,
            "commit": config.fail_before_commit,
        }
        model = ModelConfig(
            workers=config.workers,
            threads=config.threads,
            multi_key=config.multi_key,
            fail_rates=rates,
            zombie_rate=config.zombie_rate,
            move_rate=config.move_rate,
            seed=config.seed,
            timeout_s=config.timeout_s,
        )
        coordinator = Coordinator(graph, model, work / "attempts.jsonl")
        stats = coordinator.run(batches)
        step("stream_s")
        stored = read_predictions(topology.project, kind, subset)
        cells = read_cells(topology, subset)
        cells.slots = read_slots(topology, [m.transaction_id for m in published])
        dead_letters = pull_all(topology.project, topology.dead_letter_subscription)
        step("read_back_s")
    result = check(config, subset, oracle_table, published, stored, cells, start_us, end_us)
    write_stored(stored, work / "stored.parquet")
    valid = {m.message_id: m for m in published}
    reasons = Counter(d["attributes"].get("reason", "?") for d in dead_letters)
    rejected = [
        (valid[i], d["attributes"].get("reason", "?"))
        for d in dead_letters
        if (i := d["attributes"].get("original_message_id")) in valid
    ]
    result["examples"]["valid_dead_lettered"] = [
        f"{m.input[:-1]} {m.transaction_id}: {reason}" for m, reason in rejected[:5]
    ]
    result.update(
        {
            "workers": config.workers,
            "threads": config.threads,
            "single_key_work_items": not config.multi_key,
            "work_items": stats.work_items,
            "attempts": stats.attempts,
            "days": config.days,
            "customers": config.customers,
            "terminals": int(subset.TERMINAL_ID.nunique()),
            **counts,
            "injected_failures": {p: stats.injected.get(p, 0) for p in INJECTION_POINTS},
            "unplanned_failures": dict(stats.unplanned_failures),
            "retries": stats.retries,
            "failures_retried": stats.failures_retried,
            "key_moves": stats.key_moves,
            "zombies": stats.zombies,
            "zombie_writes": stats.zombie_writes,
            "writes": dict(stats.writes),
            "timers_fired": stats.timers_fired,
            "timers_pending": stats.timers_pending,
            "dead_letters": dict(reasons),
            "valid_dead_lettered": len(rejected),
            "timings_s": timings,
        }
    )
    order = [
        "workers",
        "threads",
        "single_key_work_items",
        "work_items",
        "days",
        "transactions",
        "labels",
        "injected_failures",
        "retries",
        "key_moves",
        "zombie_writes",
        "lost",
        "duplicated",
        "feature_mismatches",
        "labels_uncounted",
        "stale_predictions",
        "risk_features_nonzero",
    ]
    ordered = {k: result[k] for k in order} | {k: v for k, v in result.items() if k not in order}
    (work / "result.json").write_text(json.dumps(ordered, indent=2))
    return ordered


# -- reading back ------------------------------------------------------------------------------


def read_predictions(project: str, kind: str, subset: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The stored Prediction entities of every transaction of the subset, by transaction id."""
    from google.cloud import datastore

    client = datastore.Client(project=project)
    ids = sorted(subset.TRANSACTION_ID.astype(str))
    found: dict[str, dict[str, Any]] = {}
    for at in range(0, len(ids), 1000):
        keys = [client.key(kind, i) for i in ids[at : at + 1000]]
        for entity in client.get_multi(keys):
            found[entity.key.name] = dict(entity)
    return found


@dataclass
class Cells:
    """What Bigtable holds for the subset's entities: per entity id, its cells of every bucket
    (``.tx``, ``.labels``), and how many bucket rows have a summary that is not their cells'."""

    customers: dict[str, Any]
    terminals: dict[str, Any]
    slots: dict[str, Any] = field(default_factory=dict)  # transaction id -> id-index record
    inconsistent_summaries: int = 0


def read_cells(topology: Any, subset: pd.DataFrame) -> Cells:
    from pipelines.core.declarations import load_definitions
    from pipelines.core.window_cells import Layout
    from pipelines.core.window_state import Bucket
    from pipelines.stores.bigtable import FeatureStore, StoreConfig
    from pipelines.stores.window_store import BucketCells

    store = FeatureStore(
        StoreConfig(topology.project, topology.bigtable_instance, topology.bigtable_table)
    )
    out = []
    inconsistent = 0
    defs = load_definitions()
    for name, column, labels in (
        ("customer", "CUSTOMER_ID", False),
        ("terminal", "TERMINAL_ID", True),
    ):
        layout = Layout.of(defs, defs.entity(name))
        ids = sorted(subset[column].astype(str).unique())
        cells: dict[str, BucketCells] = {}
        for at in range(0, len(ids), 200):
            summaries = store.read_summaries(layout, ids[at : at + 200], 0)
            rows = [(i, b) for i, buckets in summaries.items() for b in buckets]
            found = store.read_buckets(layout, rows, labels=True)
            for entity_id, b in rows:
                bucket = found.get((entity_id, b), BucketCells())
                if summaries[entity_id][b] != Bucket(layout, bucket.tx, bucket.labels).summary():
                    inconsistent += 1
                merged = cells.setdefault(entity_id, BucketCells())
                merged.tx.update(bucket.tx)
                if labels:
                    merged.labels.update(bucket.labels)
        out.append(cells)
    return Cells(out[0], out[1], inconsistent_summaries=inconsistent)


def read_slots(topology: Any, transaction_ids: list[str]) -> dict[str, Any]:
    """The id index's records of these transactions (transaction and label slot)."""
    from pipelines.stores.bigtable import FeatureStore, StoreConfig

    store = FeatureStore(
        StoreConfig(topology.project, topology.bigtable_instance, topology.bigtable_table)
    )
    ids = sorted(set(transaction_ids))
    out: dict[str, Any] = {}
    for at in range(0, len(ids), 1000):
        out.update(store.read_ids(ids[at : at + 1000]))
    return out


def pull_all(project: str, subscription: str) -> list[dict[str, Any]]:
    """Every message waiting on a subscription (attributes only)."""
    import warnings

    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    out: list[dict[str, Any]] = []
    try:
        while True:
            with warnings.catch_warnings():  # deprecated, yet it returns at once on the emulator
                warnings.simplefilter("ignore", DeprecationWarning)
                response = subscriber.pull(
                    subscription=path, max_messages=1000, return_immediately=True
                )
            if not response.received_messages:
                return out
            for m in response.received_messages:
                out.append({"attributes": dict(m.message.attributes)})
            subscriber.acknowledge(
                subscription=path, ack_ids=[m.ack_id for m in response.received_messages]
            )
    finally:
        subscriber.close()


# -- the oracle ----------------------------------------------------------------------------


def check(
    config: DataflowChaosConfig,
    subset: pd.DataFrame,
    oracle: pd.DataFrame,
    published: list[Message],
    stored: dict[str, dict[str, Any]],
    cells: Cells,
    start_us: int,
    end_us: int,
) -> dict[str, Any]:
    """The oracle's counts (module docstring)."""
    from pipelines.core.definitions import CUSTOMER, MODEL_INPUTS, window_features

    valid_tx = [m.transaction_id for m in published if m.input == "transactions"]
    labels = [m for m in published if m.input == "labels"]
    expected = oracle.set_index(oracle.TRANSACTION_ID.astype(str))
    lost = [t for t in valid_tx if t not in stored]
    compared = [t for t in valid_tx if t in stored]
    want = expected.loc[compared, list(MODEL_INPUTS)].to_numpy(dtype=np.float64)
    got = np.array(
        [[json.loads(stored[t]["features"])[f] for f in MODEL_INPUTS] for t in compared],
        dtype=np.float64,
    ).reshape(len(compared), len(MODEL_INPUTS))
    differs = want != got
    counts = [i for i, f in enumerate(MODEL_INPUTS) if "_NB_TX_" in f]
    above = (got[:, counts] > want[:, counts]).any(axis=1)
    risk = [i for i, f in enumerate(MODEL_INPUTS) if f.startswith("TERMINAL_ID_RISK_")]
    risk_share = float((want[:, risk] != 0).any(axis=1).mean()) if compared else 0.0

    # Bigtable: the customer features carried on each terminal cell the stream wrote.
    customer_names = [f.name for f in window_features(CUSTOMER)]
    carried_mismatches = 0
    carried_stale: list[str] = []
    terminal_of: dict[str, str] = {}
    doubled = 0
    for terminal, entity in cells.terminals.items():
        for tx_id, cell in entity.tx.items():
            if terminal_of.setdefault(tx_id, terminal) != terminal:
                doubled += 1
            if cell.carried_revision and tx_id in expected.index:
                oracle_values = expected.loc[tx_id, customer_names].to_numpy(dtype=np.float64)
                wrong = int((np.array(cell.carried) != oracle_values).sum())
                carried_mismatches += wrong
                if wrong:
                    carried_stale.append(tx_id)
    customer_of: dict[str, str] = {}
    for customer, entity in cells.customers.items():
        for tx_id in entity.tx:
            if customer_of.setdefault(tx_id, customer) != customer:
                doubled += 1
    uncounted = []
    for m in labels:
        body = json.loads(m.data)
        entity = cells.terminals.get(body["terminal_id"])
        cell = entity.labels.get(m.transaction_id) if entity is not None else None
        if cell is None or int(cell.value) != int(body["is_fraud"]):
            uncounted.append(m.transaction_id)
    slots = {}
    for tx_id in uncounted[:5]:
        record = cells.slots.get(tx_id)
        label = (record.label or {}) if record is not None else {}
        slots[tx_id] = {
            "slot": label.get("s"),
            "message": label.get("m"),
            "waiting": len(label.get("w", ())),
            "expired": len(label.get("x", ())),
        }
    stale = [t for t, row in zip(compared, differs, strict=True) if row.any()]
    return {
        "transactions": len(valid_tx),
        "labels": len(labels),
        "lost": len(lost),
        "duplicated": int(above.sum()) + doubled + cells.inconsistent_summaries,
        "feature_mismatches": int(differs.sum()) + carried_mismatches,
        "labels_uncounted": len(uncounted),
        "stale_predictions": len(stale),
        "risk_features_nonzero": risk_share >= 0.02,
        "risk_share": round(risk_share, 4),
        "compared": len(compared),
        "carried_mismatches": carried_mismatches,
        "stale_by_feature": {
            f: int(differs[:, i].sum()) for i, f in enumerate(MODEL_INPUTS) if differs[:, i].any()
        },
        "examples": {
            "lost": lost[:5],
            "stale": stale[:5],
            "labels_uncounted": uncounted[:5],
            "label_slots": slots,
            "carried": sorted(carried_stale)[:5],
        },
    }


def write_stored(stored: dict[str, dict[str, Any]], path: Path) -> None:
    """The final stored predictions: transaction_id, every feature, score, revision."""
    from pipelines.core.definitions import MODEL_INPUTS

    rows = []
    for tx_id in sorted(stored, key=lambda t: (len(t), t)):
        entity = stored[tx_id]
        features = json.loads(entity["features"])
        rows.append(
            {
                "transaction_id": tx_id,
                **{f: float(features[f]) for f in MODEL_INPUTS},
                "score": float(entity["score"]),
                "revision": int(entity["revision"]),
            }
        )
    columns = ["transaction_id", *MODEL_INPUTS, "score", "revision"]
    pd.DataFrame(rows, columns=columns).to_parquet(path, index=False)


# -- the command -------------------------------------------------------------------------------


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate between 0 and 1, not {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """A wrong argument: one line saying what is wrong, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"chaos-dataflow: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> DataflowChaosConfig:
    defaults = DataflowChaosConfig()
    parser = _Parser(prog="python -m bench.chaos_dataflow", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=defaults.work_dir)
    for name in ("workers", "threads", "days", "customers", "source_batch", "jitter", "early_by"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=_positive(int), default=getattr(defaults, name)
        )
    parser.add_argument("--multi-key", action="store_true", help="work items of many keys")
    parser.add_argument("--start", default=defaults.start, help="the stretch's first day")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for name in (
        "late",
        "very_late",
        "early_labels",
        "redeliveries",
        "fail_after_bigtable",
        "fail_after_datastore",
        "fail_after_publish",
        "fail_before_commit",
        "zombie_rate",
        "move_rate",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=_rate, default=getattr(defaults, name)
        )
    parser.add_argument("--late-days", type=_positive(float), default=defaults.late_days)
    parser.add_argument("--label-wait-s", type=_positive(float), default=defaults.label_wait_s)
    parser.add_argument("--timeout-s", type=_positive(float), default=defaults.timeout_s)
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items()}
    config = DataflowChaosConfig(**values)
    try:
        pd.Timestamp(config.start)
    except ValueError:
        parser.error(f"--start {config.start!r}: expected YYYY-MM-DD")
    if config.customers < 3:
        parser.error("--customers must be at least 3")
    return config


def main(argv: list[str] | None = None) -> int:
    from pipelines.app.local import StackError

    config = parse_args(argv)
    try:
        result = run(config)
    except StackError as exc:  # the emulators cannot start: what to install or fix
        print(f"chaos-dataflow: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    losses = (
        "lost",
        "duplicated",
        "feature_mismatches",
        "labels_uncounted",
        "stale_predictions",
        "valid_dead_lettered",
    )
    return 1 if any(result[k] for k in losses) else 0


if __name__ == "__main__":
    sys.exit(main())
