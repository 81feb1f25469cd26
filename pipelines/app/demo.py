"""``rillet demo``: the whole product on the emulators, end to end, in one command.

Starts the emulators (unless running), simulates a small dataset, computes training features,
trains and exports a model, starts the streaming pipeline on the DirectRunner, replays the
transactions and their labels (7 days of event time later) with a few malformed messages, follows
the predictions on the prediction topic, prints a summary and stops everything it started.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.app.local import LocalStack, Topology, create_resources, environment
from pipelines.app.streaming_job import StreamingJob

__all__ = ["DemoConfig", "Monitor", "latency_ms", "percentiles", "run_demo"]

console = Console()


@dataclass
class DemoConfig:
    """Knobs of the demo (defaults: the small preset, replayed at 400 events/s: what the job
    sustains with room to spare on a 2-core machine, README "Measured here")."""

    preset: str = "small"
    rate: float = 400.0
    work_dir: Path = Path(".rillet")
    train_days: int = 35
    timeout_s: float = 600.0
    epochs: int = 5


@dataclass
class Monitor:
    """Drains a monitoring subscription in a thread, keeping the messages' bodies."""

    subscription: str
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        try:
            while not self.stop.is_set():
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    response = subscriber.pull(
                        subscription=self.subscription, max_messages=1000, return_immediately=True
                    )
                if not response.received_messages:
                    time.sleep(0.2)
                    continue
                for m in response.received_messages:
                    self.raw.append(m.message)
                    try:
                        self.received.append(json.loads(m.message.data))
                    except (ValueError, RecursionError):  # dead letters hold any bytes
                        self.received.append({"_raw": m.message.data})
                subscriber.acknowledge(
                    subscription=self.subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
        finally:
            subscriber.close()


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 (NaN when empty)."""
    if not values:
        return (float("nan"), float("nan"), float("nan"))
    p = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def latency_ms(prediction: dict[str, Any]) -> float | None:
    """Event-to-prediction latency of a prediction message: processing - publish time."""
    from pipelines.core.schema import parse_rfc3339

    try:
        return (
            parse_rfc3339(prediction["processing_time"]) - parse_rfc3339(prediction["publish_time"])
        ) / 1000.0
    except (KeyError, ValueError):
        return None


def feature_mismatches(bodies: list[dict[str, Any]], expected: Any) -> int:
    """Transactions whose latest served features differ from the batch computation."""
    from pipelines.core.definitions import MODEL_INPUTS
    from pipelines.transforms.sinks import latest_per_transaction

    latest = latest_per_transaction(bodies)
    if not latest:
        return 0
    want = expected.set_index(expected.TRANSACTION_ID.astype(str)).loc[
        list(latest), list(MODEL_INPUTS)
    ]
    served = np.array([[b["features"][f] for f in MODEL_INPUTS] for b in latest.values()])
    return int((want.to_numpy(dtype=np.float64) != served).any(axis=1).sum())


def count_datastore(project: str, kind: str) -> int:
    from google.cloud import datastore

    client = datastore.Client(project=project)
    query = client.query(kind=kind)
    query.keys_only()
    return sum(1 for _ in query.fetch())


def run_demo(config: DemoConfig) -> dict[str, Any]:
    from models.evaluation import rows_in
    from models.train import export_model, train_model
    from pipelines.app.publisher import malformed_examples, publish_events, replay_events
    from pipelines.app.simulator import PRESETS, simulate, write_dataset
    from pipelines.core.training_data import training_features

    work = config.work_dir
    topo = Topology()
    stack = LocalStack(work)
    console.rule("[bold]rillet demo")
    console.print("Starting the Pub/Sub, Bigtable and Datastore emulators ...")
    started = stack.up()
    console.print("  " + ", ".join(f"{k}: {v}" for k, v in started.items()))
    log_path = work / "logs" / "pipeline.log"
    job = StreamingJob([f"--project={topo.project}", f"--model_dir={work / 'models'}"], log_path)
    try:
        with environment(stack.env()):
            create_resources(topo)
            console.print(f"Simulating the '{config.preset}' preset ...")
            frame = simulate(PRESETS[config.preset])
            data_dir = work / "data" / config.preset
            write_dataset(frame, data_dir)
            console.print(
                f"  {len(frame):,} transactions, {int(frame.TX_FRAUD.sum()):,} frauds -> {data_dir}"
            )

            console.print(
                "Computing point-in-time training features (the streaming engine's code) ..."
            )
            feats = training_features(frame)
            first = frame.TX_DATETIME.min().strftime("%Y-%m-%d")
            last_train = (
                frame.TX_DATETIME.min() + np.timedelta64(config.train_days - 1, "D")
            ).strftime("%Y-%m-%d")
            train = rows_in(feats, (first, last_train))
            console.print(
                f"Training the TensorFlow model on {first} .. {last_train} "
                f"({len(train):,} rows) ..."
            )
            from models.train import TrainConfig

            model, metrics = train_model(train, None, TrainConfig(epochs=config.epochs))
            version_dir = export_model(
                model,
                work / "models",
                {
                    "training_range": [first, last_train],
                    "preset": config.preset,
                    "metrics": metrics,
                },
            )
            console.print(f"  exported {version_dir}")

            console.print("Starting the streaming pipeline on the DirectRunner ...")
            job.start()

            events = replay_events(frame)
            bad = malformed_examples()
            n_tx = len(frame)
            predictions = Monitor(
                f"projects/{topo.project}/subscriptions/{topo.predictions_subscription}"
            )
            dead = Monitor(f"projects/{topo.project}/subscriptions/{topo.dead_letter_subscription}")
            threads = [threading.Thread(target=m.run, daemon=True) for m in (predictions, dead)]
            for t in threads:
                t.start()
            topics = topo.topic_paths()
            console.print(
                f"Replaying {n_tx:,} transactions and {n_tx:,} labels "
                f"at {config.rate:,.0f} events/s "
                f"(+{len(bad)} malformed messages) ..."
            )
            t0 = time.monotonic()
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                pub_task = progress.add_task("published ", total=len(events) + len(bad))
                pred_task = progress.add_task("predicted ", total=n_tx)
                publisher = threading.Thread(
                    target=lambda: (
                        publish_events(
                            [type(events[0])("transactions", b, 0) for b in bad],
                            topics,
                            0,
                        ),
                        publish_events(
                            events, topics, config.rate, lambda n: progress.advance(pub_task, n)
                        ),
                    ),
                    daemon=True,
                )
                publisher.start()
                progress.advance(pub_task, len(bad))
                deadline = time.monotonic() + config.timeout_s
                while time.monotonic() < deadline:
                    progress.update(
                        pred_task,
                        completed=len({p.get("transaction_id") for p in predictions.received}),
                    )
                    job.check()
                    done = len({p.get("transaction_id") for p in predictions.received}) >= n_tx
                    if done and not publisher.is_alive() and len(dead.received) >= len(bad):
                        break
                    time.sleep(0.5)
            elapsed = time.monotonic() - t0
            time.sleep(1.0)
            for m in (predictions, dead):
                m.stop.set()
            for t in threads:
                t.join(timeout=10)
            stored = count_datastore(topo.project, "Prediction")
            originals = [p for p in predictions.received if not p.get("correction")]
            latencies = [x for x in map(latency_ms, originals) if x is not None]
            p50, p95, p99 = percentiles(latencies)
            unique_predictions = len({p.get("transaction_id") for p in predictions.received})
            summary = {
                "events_in": len(events) + len(bad),
                "transactions": n_tx,
                "labels": n_tx,
                "malformed_sent": len(bad),
                "predictions_in_datastore": stored,
                "messages_on_prediction_topic": len(predictions.received),
                "unique_predictions": unique_predictions,
                "corrections": len(predictions.received) - len(originals),
                "feature_mismatches": feature_mismatches(predictions.received, feats),
                "dead_letters": len(dead.received),
                "dead_letter_reasons": sorted({m.attributes.get("reason", "?") for m in dead.raw}),
                "elapsed_s": round(elapsed, 1),
                "events_per_s": round((len(events) + len(bad)) / elapsed, 1),
                "latency_ms_p50": round(p50, 1),
                "latency_ms_p95": round(p95, 1),
                "latency_ms_p99": round(p99, 1),
                "model_version": version_dir.name,
                "complete": unique_predictions >= n_tx and stored >= n_tx,
            }
            summary["exact"] = summary["complete"] and summary["feature_mismatches"] == 0
            _print_summary(summary, work, log_path)
            return summary
    finally:
        job.stop()
        stopped = stack.down()
        if stopped:
            console.print("Stopped what the demo started: " + ", ".join(stopped))


def _print_summary(summary: dict[str, Any], work: Path, log_path: Path) -> None:
    table = Table(title="rillet demo summary", show_header=False)
    labels = {
        "events_in": "events in (transactions + labels + malformed)",
        "predictions_in_datastore": "predictions in Datastore",
        "messages_on_prediction_topic": "messages on the prediction topic",
        "corrections": "of which corrections (an earlier event arrived late)",
        "feature_mismatches": "served features != batch features (latest revision)",
        "dead_letters": "dead letters",
        "dead_letter_reasons": "dead-letter reasons",
        "events_per_s": "events/s (publish start to last prediction)",
        "latency_ms_p50": "event-to-prediction latency p50 (ms)",
        "latency_ms_p95": "event-to-prediction latency p95 (ms)",
        "latency_ms_p99": "event-to-prediction latency p99 (ms)",
        "model_version": "model version",
    }
    for key, label in labels.items():
        value = summary[key]
        table.add_row(
            label,
            ", ".join(value)
            if isinstance(value, list)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value),
        )
    console.print(table)
    status = (
        "[green]complete, features exact[/green]"
        if summary["exact"]
        else "[green]complete[/green]"
        if summary["complete"]
        else "[red]INCOMPLETE[/red]"
    )
    console.print(f"Result: {status}")
    console.print(
        "Where to look next: pipeline log "
        f"{log_path}; dataset {work / 'data'}; "
        f"model card {work / 'models'}/<version>/model_card.json; "
        "README sections 'Feature store schema' and 'Prediction messages'; "
        "'rillet local up' keeps the emulators running for your own subscribers."
    )
    (work / "demo-summary.json").write_text(json.dumps(summary, indent=2))
