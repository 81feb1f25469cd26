"""The streaming pipeline's graph: build_pipeline (graph only), its step labels, key_buckets.
pipelines/main.py runs it (options, runner hooks, wait).

    transactions ─ ReadTransactions ─ ParseTransactions ─┐
                                                        ├─ ComputeFeatures ─ Predict ─┐
    labels ─────── ReadLabels ─────── ParseLabels ──────┘                             │
                                   WritePredictions (Datastore + topic) ──────────────┘
    labels ─ EvaluateOnline (per model version and day: AUC, AP, CP@100 -> ModelEvaluation; a
        day's state released once its labels are complete)
    predictions, labels, dead letters, evaluation ─ Monitor (drift, data quality, online quality,
        service health -> gauges and the alerts topic)
    every reject ─ CollectDeadLetters ─ WriteDeadLetters

Top-level labels are constants: Dataflow ``--update`` matches steps by name, so a rename needs
``--transform_name_mapping``. tests/unit/test_pipeline_graph.py pins them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipelines.core.declarations import Definitions
from pipelines.options import DIRECT_KEY_BUCKETS, RilletOptions, resource_path
from pipelines.stores.bigtable import StoreConfig
from pipelines.transforms.features import ComputeFeatures
from pipelines.transforms.inference import Predict, ServingConfig, resolve_model
from pipelines.transforms.monitoring import Monitor
from pipelines.transforms.online_eval import EvaluateOnline, card_entity
from pipelines.transforms.parse import ParseEvents
from pipelines.transforms.sinks import RiskBands, WriteDeadLetters, WritePredictions, key_fields

__all__ = [
    "DIRECT_RUNNERS",
    "STEP_LABELS",
    "build_pipeline",
    "input_subscriptions",
    "key_buckets",
    "serving_config",
]

# The local runners (Pub/Sub pulls tuned, recovery checkpoint kept: local_runner.recovery).
DIRECT_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")

READ_TRANSACTIONS = "ReadTransactions"
READ_LABELS = "ReadLabels"
PARSE_TRANSACTIONS = "ParseTransactions"
PARSE_LABELS = "ParseLabels"
COMPUTE_FEATURES = "ComputeFeatures"
PREDICT = "Predict"
WRITE_PREDICTIONS = "WritePredictions"
EVALUATE_ONLINE = "EvaluateOnline"
MONITOR = "Monitor"
COLLECT_DEAD_LETTERS = "CollectDeadLetters"
WRITE_DEAD_LETTERS = "WriteDeadLetters"

STEP_LABELS: tuple[str, ...] = (
    READ_TRANSACTIONS,
    READ_LABELS,
    PARSE_TRANSACTIONS,
    PARSE_LABELS,
    COMPUTE_FEATURES,
    PREDICT,
    WRITE_PREDICTIONS,
    EVALUATE_ONLINE,
    MONITOR,
    COLLECT_DEAD_LETTERS,
    WRITE_DEAD_LETTERS,
)


def input_subscriptions(options: PipelineOptions) -> tuple[str, str]:
    """The full paths of the transaction and label subscriptions."""
    opts = options.view_as(RilletOptions)
    project = options.view_as(GoogleCloudOptions).project
    return (
        resource_path(project, "subscriptions", opts.transactions_subscription),
        resource_path(project, "subscriptions", opts.labels_subscription),
    )


def key_buckets(options: PipelineOptions) -> int:
    """--key_buckets, or its default for the runner (pipelines/core/routing.py)."""
    chosen = options.view_as(RilletOptions).key_buckets
    if chosen is not None:
        return int(chosen)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return DIRECT_KEY_BUCKETS if runner in DIRECT_RUNNERS else 0


def serving_config(options: PipelineOptions, defs: Definitions | None = None) -> ServingConfig:
    """What the options serve (--model_dir, --model_version, --model_poll_s, backend), checked
    against the job's definitions (``defs``, or --definitions read here), whose every declared
    feature the job computes."""
    opts = options.view_as(RilletOptions)
    defs = defs if defs is not None else job_definitions(options)
    remote = (opts.vertex_project, opts.vertex_model) if opts.vertex_model else None
    return ServingConfig(
        opts.model_dir,
        opts.model_version,
        opts.model_poll_s,
        opts.inference_backend,
        remote,
        definitions=defs,
        computed=defs.names,
    )


def job_definitions(options: PipelineOptions) -> Definitions:
    """The definitions the job computes and serves: --definitions, or the handbook's file."""
    return options.view_as(RilletOptions).job_definitions()


def build_pipeline(
    p: beam.Pipeline, options: PipelineOptions, serving: ServingConfig | None = None
) -> dict[str, Any]:
    """Adds the streaming graph to ``p``; returns its main PCollections (for tests).

    ``serving`` defaults to serving_config(options), whose version (the registry's champion, or
    a pinned one) is checked here against the job's definitions, so that a missing or unservable
    model fails before the job starts. A given ``serving`` (tests) is bound to the job's
    definitions too: every stage computes and serves the one file of --definitions.
    """
    opts = options.view_as(RilletOptions)
    project = options.view_as(GoogleCloudOptions).project
    store = StoreConfig(project, opts.bigtable_instance, opts.bigtable_table)
    defs = job_definitions(options)
    if serving is None:
        serving = serving_config(options, defs)
        resolve_model(serving.model_dir, serving.version, defs, serving.computed)
    elif serving.definitions is None:
        serving = dataclasses.replace(serving, definitions=defs, computed=defs.names)
    elif serving.definitions != defs:
        raise ValueError(
            f"the serving config's definitions ({serving.definitions.source}) are not the job's "
            f"--definitions ({defs.source})"
        )
    tx_sub, label_sub = input_subscriptions(options)

    tx_messages = p | READ_TRANSACTIONS >> beam.io.ReadFromPubSub(
        subscription=tx_sub, with_attributes=True
    )
    label_messages = p | READ_LABELS >> beam.io.ReadFromPubSub(
        subscription=label_sub, with_attributes=True
    )
    transactions = tx_messages | PARSE_TRANSACTIONS >> ParseEvents(
        "transaction", tx_sub, defs.events
    )
    labels = label_messages | PARSE_LABELS >> ParseEvents("label", label_sub, defs.labels)
    computed = (transactions.valid, labels.valid) | COMPUTE_FEATURES >> ComputeFeatures(
        store,
        opts.max_batch_size,
        (tx_sub, label_sub),
        opts.label_wait_s,
        key_buckets(options),
        opts.correction_horizon_s,
        opts.window_cache_mb,
        opts.max_corrections_per_event,
        definitions=defs,
    )
    predictions = computed.batches | PREDICT >> Predict(serving)
    written = predictions.results | WRITE_PREDICTIONS >> WritePredictions(
        project,
        opts.datastore_kind,
        opts.datastore_namespace or None,
        resource_path(project, "topics", opts.predictions_topic),
        RiskBands(opts.risk_medium_threshold, opts.risk_high_threshold),
        keys=key_fields(defs),
    )
    evaluation = labels.valid | EVALUATE_ONLINE >> EvaluateOnline(
        project,
        opts.datastore_kind,
        opts.datastore_namespace or None,
        opts.eval_every_s,
        opts.evaluation_kind,
        key_buckets=key_buckets(options),
        card=card_entity(defs),
    )
    dead_letters = (
        transactions.dead_letters,
        labels.dead_letters,
        computed.dead_letters,
        predictions.dead_letters,
    ) | COLLECT_DEAD_LETTERS >> beam.Flatten()
    _ = dead_letters | WRITE_DEAD_LETTERS >> WriteDeadLetters(
        resource_path(project, "topics", opts.dead_letter_topic)
    )
    monitor = Monitor(
        serving.model_dir,
        opts.thresholds(),
        resource_path(project, "topics", opts.alerts_topic),
        opts.monitor_every_s,
        features=defs.names,
    )
    alerts = {
        "predictions": predictions.results,
        "labels": labels.valid,
        "dead_letters": dead_letters,
        "evaluation": evaluation,
    } | MONITOR >> monitor
    return {
        "transactions": transactions.valid,
        "labels": labels.valid,
        "feature_batches": computed.batches,
        "predictions": predictions.results,
        "published": written,
        "dead_letters": dead_letters,
        "evaluation": evaluation,
        "alerts": alerts,
        "drift_windows": monitor.drift_windows,
    }
