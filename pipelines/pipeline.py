"""The streaming pipeline: build_pipeline (graph only) and run (options, runner, wait).

    transactions ─ ReadTransactions ─ ParseTransactions ─┐
                                                        ├─ ComputeFeatures ─ Predict ─┐
    labels ─────── ReadLabels ─────── ParseLabels ──────┘                             │
                                   WritePredictions (Datastore + topic) ──────────────┘
    every reject ─ CollectDeadLetters ─ WriteDeadLetters

Top-level labels are constants: Dataflow ``--update`` matches steps by name, so a rename needs
``--transform_name_mapping``. tests/unit/test_pipeline_graph.py pins them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipelines.options import DIRECT_KEY_BUCKETS, RilletOptions, resource_path
from pipelines.stores.bigtable import StoreConfig
from pipelines.transforms.features import ComputeFeatures
from pipelines.transforms.inference import ModelInfo, Predict, resolve_model
from pipelines.transforms.parse import ParseEvents
from pipelines.transforms.sinks import RiskBands, WriteDeadLetters, WritePredictions

__all__ = ["DIRECT_RUNNERS", "STEP_LABELS", "build_pipeline", "input_subscriptions", "run"]

_LOGGER = logging.getLogger(__name__)

# The local runners (Pub/Sub pulls tuned, recovery checkpoint kept: local_runner.recovery).
DIRECT_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")

READ_TRANSACTIONS = "ReadTransactions"
READ_LABELS = "ReadLabels"
PARSE_TRANSACTIONS = "ParseTransactions"
PARSE_LABELS = "ParseLabels"
COMPUTE_FEATURES = "ComputeFeatures"
PREDICT = "Predict"
WRITE_PREDICTIONS = "WritePredictions"
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


def build_pipeline(
    p: beam.Pipeline, options: PipelineOptions, model: ModelInfo | None = None
) -> dict[str, Any]:
    """Adds the streaming graph to ``p``; returns its main PCollections (for tests).

    ``model`` defaults to the version the options pick from ``--model_dir``.
    """
    opts = options.view_as(RilletOptions)
    project = options.view_as(GoogleCloudOptions).project
    store = StoreConfig(project, opts.bigtable_instance, opts.bigtable_table)
    model = model or resolve_model(opts.model_dir, opts.model_version)
    tx_sub, label_sub = input_subscriptions(options)

    tx_messages = p | READ_TRANSACTIONS >> beam.io.ReadFromPubSub(
        subscription=tx_sub, with_attributes=True
    )
    label_messages = p | READ_LABELS >> beam.io.ReadFromPubSub(
        subscription=label_sub, with_attributes=True
    )
    transactions = tx_messages | PARSE_TRANSACTIONS >> ParseEvents("transaction", tx_sub)
    labels = label_messages | PARSE_LABELS >> ParseEvents("label", label_sub)
    computed = (transactions.valid, labels.valid) | COMPUTE_FEATURES >> ComputeFeatures(
        store, opts.max_batch_size, (tx_sub, label_sub), opts.label_wait_s, key_buckets(options)
    )
    predictions = computed.batches | PREDICT >> Predict(model)
    written = predictions.results | WRITE_PREDICTIONS >> WritePredictions(
        project,
        opts.datastore_kind,
        opts.datastore_namespace or None,
        resource_path(project, "topics", opts.predictions_topic),
        RiskBands(opts.risk_medium_threshold, opts.risk_high_threshold),
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
    return {
        "transactions": transactions.valid,
        "labels": labels.valid,
        "feature_batches": computed.batches,
        "predictions": predictions.results,
        "published": written,
        "dead_letters": dead_letters,
    }


def pipeline_options(argv: Sequence[str]) -> PipelineOptions:
    """Options for a streaming run; a wrong argument exits with argparse's message."""
    options = PipelineOptions(list(argv))
    options.view_as(StandardOptions).streaming = True
    errors = options.view_as(RilletOptions).validate_local()
    unknown = unknown_arguments(argv)
    if unknown:
        errors.append(f"unknown argument(s) {' '.join(unknown)}; see 'rillet run --help'")
    if errors:
        for error in errors:
            print(f"rillet run: {error}", file=sys.stderr)
        raise SystemExit(2)
    return options


def unknown_arguments(argv: Sequence[str]) -> list[str]:
    """Flags no PipelineOptions subclass declares (Beam itself only logs and drops them)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: set[type] = set()
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(argv))
    return [a for a in unknown if a.startswith("-")]


def run(argv: Sequence[str] | None = None, wait: bool = True) -> Any:
    """Builds and runs the streaming pipeline. On the DirectRunner, Pub/Sub pulls are tuned
    (see pipelines/local_runner) and, with --recovery_checkpoint, the job first recovers what
    a killed predecessor had in flight and then keeps the checkpoint (see local_runner.recovery)."""
    options = pipeline_options(sys.argv[1:] if argv is None else argv)
    opts = options.view_as(RilletOptions)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner in DIRECT_RUNNERS:
        from pipelines.local_runner import tune_direct_runner

        tune_direct_runner(opts.direct_pull_max_messages)
        if opts.recovery_checkpoint:
            _start_recovery(options)
    elif opts.recovery_checkpoint:
        _LOGGER.warning("--recovery_checkpoint is for the DirectRunner; %s ignores it", runner)
    p = beam.Pipeline(options=options)
    build_pipeline(p, options)
    result = p.run()
    if wait:
        result.wait_until_finish()
    return result


def _start_recovery(options: PipelineOptions) -> None:
    """Seeks the input subscriptions back to the checkpoint, then tracks and checkpoints."""
    from pipelines.local_runner import recovery

    opts = options.view_as(RilletOptions)
    sought = recovery.seek_to_checkpoint(opts.recovery_checkpoint, input_subscriptions(options))
    if sought:
        _LOGGER.info("resumed from %s: %s", opts.recovery_checkpoint, sought)
    recovery.tracker().enable(opts.max_in_flight)
    recovery.CheckpointWriter(opts.recovery_checkpoint).start()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run()
