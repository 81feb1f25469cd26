"""``rillet demo``: the whole product on the emulators, end to end, in one command.

Starts the emulators (unless running), simulates a small dataset, computes training features,
trains and exports a model, starts the streaming pipeline on the DirectRunner, replays the
transactions and their labels (7 days of event time later) with a few malformed messages, follows
the predictions on the prediction topic, prints a summary and stops everything it started.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.app.local_run import LocalRun, percentiles

__all__ = ["DemoConfig", "demo_validation", "feature_mismatches", "run_demo"]

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


def demo_validation(
    model: Any, frame: Any, features: Any, first_day: str, train_days: int
) -> dict[str, Any]:
    """The demo model's card fields ``validation_ranges``, ``validation_metrics`` (AUC, AP,
    CP@100, as ``rillet train`` records them) and ``protocol``: scored on the week that follows
    its training days and the label delay (the protocol's layout, models.evaluation.Protocol),
    known-compromised cards removed. No second fit: the model is trained once, as the demo
    needs.
    Empty metrics when the data ends before that week or it holds one class. ``frame`` is the
    simulated one (its CUSTOMER_ID: the card), ``features`` training_features(frame)."""
    import datetime as dt

    from models.evaluation import Protocol, evaluate_scores, test_set
    from models.train import predict

    protocol = Protocol(dt.date.fromisoformat(first_day), train_days)
    cards = frame.set_index("TRANSACTION_ID")["CUSTOMER_ID"]
    table = features.assign(CUSTOMER_ID=cards.reindex(features.TRANSACTION_ID).to_numpy())
    valid = test_set(table, protocol).copy()
    valid["score"] = predict(model, valid)
    try:
        metrics = evaluate_scores(valid)
    except ValueError:  # no rows in that week, or one class: no figures rather than wrong ones
        return {"validation_ranges": [], "validation_metrics": {}}
    return {
        "validation_ranges": [list(protocol.test_range)],
        "validation_metrics": {k: metrics[k] for k in ("auc", "ap", "cp100", "n", "frauds")},
        # The layout it was trained and scored in: 'rillet evaluate' scores the same week.
        "protocol": protocol.to_dict(),
    }


def count_datastore(project: str, kind: str) -> int:
    from google.cloud import datastore

    client = datastore.Client(project=project)
    query = client.query(kind=kind)
    query.keys_only()
    return sum(1 for _ in query.fetch())


def run_demo(config: DemoConfig) -> dict[str, Any]:
    from models.evaluation import rows_in
    from models.export import export_model
    from models.selection import QUICK_GRID
    from models.train import train_model
    from pipelines.app.publisher import ReplayEvent, malformed_examples, replay_events
    from pipelines.app.run_report import read_alerts
    from pipelines.app.simulator import PRESETS, simulate, write_dataset
    from pipelines.core.training_data import training_features
    from pipelines.local_runner.snapshot import run_dir, run_ids

    work = config.work_dir
    log_path = work / "logs" / "pipeline.log"
    console.rule("[bold]rillet demo")
    console.print("Starting the Pub/Sub, Bigtable and Datastore emulators ...")
    # The recorded ports (emulators already answering there are reused): 'rillet local up'
    # users keep their subscribers.
    run = LocalRun(work, private=False, log_path=log_path)
    try:
        with run:
            console.print("  " + ", ".join(f"{k}: {v}" for k, v in run.started.items()))
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
                f"Training the model (YDF gradient boosted trees) on {first} .. {last_train} "
                f"({len(train):,} rows) ..."
            )
            model, _ = train_model(train, None, QUICK_GRID[0])
            version_dir = export_model(
                model,
                work / "models",
                {
                    "training_range": [first, last_train],
                    "training_rows": len(train),
                    "training_frauds": int(train.TX_FRAUD.sum()),
                    "preset": config.preset,
                    **demo_validation(model, frame, feats, first, config.train_days),
                },
            )
            from pipelines.stores.model_registry import ModelRegistry

            ModelRegistry(work / "models").register(version_dir.name, as_="champion", by="demo")
            console.print(f"  exported {version_dir} (the registry's champion)")

            console.print("Starting the streaming pipeline on the DirectRunner ...")
            # Until the job's first snapshot, 'rillet monitor' waits rather than show an old one.
            (run.monitor_dir / "snapshot.json").unlink(missing_ok=True)
            job_started = time.monotonic()
            run.start_job([f"--model_dir={work / 'models'}", "--monitor_every_s=5"])
            console.print(f"  watch it live in another terminal: rillet monitor --state-dir {work}")

            events = replay_events(frame)
            bad = [ReplayEvent("transactions", b, 0) for b in malformed_examples()]
            n_tx = len(frame)
            console.print(
                f"Replaying {n_tx:,} transactions and {n_tx:,} labels "
                f"at {config.rate:,.0f} events/s "
                f"(+{len(bad)} malformed messages) ..."
            )
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                pub_task = progress.add_task("published ", total=len(events) + len(bad))
                pred_task = progress.add_task("predicted ", total=n_tx)
                run.publish(bad)
                progress.advance(pub_task, len(bad))
                # The first transaction alone, until its prediction is out: the job's start-up
                # (TensorFlow, the model, the clients: ~15 s here) is reported as such, not
                # as the latency of the thousands of events a replay would queue meanwhile.
                run.replay(
                    events,
                    config.rate,
                    first_alone=True,
                    first_timeout_s=config.timeout_s,
                    progress=lambda n: progress.advance(pub_task, n),
                )
                t0 = time.monotonic()  # the paced replay starts: what events/s measures
                job_ready_s = t0 - job_started
                progress.advance(pub_task, 1)
                with suppress(TimeoutError):  # the summary says what is missing
                    run.wait_predicted(
                        n_tx,
                        config.timeout_s,
                        dead_letters=len(bad),
                        progress=lambda n: progress.update(pred_task, completed=n),
                    )
            elapsed = time.monotonic() - t0
            time.sleep(6.0)  # the job's last snapshot and alerts
            run.stop_monitors()
            runs = run_ids(run.monitor_dir)  # the job just started is the latest run
            run_directory = run_dir(run.monitor_dir, runs[-1]) if runs else None
            alerts = read_alerts(run_directory) if run_directory else []
            report = _write_report(run_directory) if run_directory else None
            predictions, dead = run.predictions, run.dead_letters
            stored = count_datastore(run.topology.project, "Prediction")
            first_id = json.loads(events[0].data)["transaction_id"]  # it waited for the start-up
            p50, p95, p99 = percentiles(run.latencies(exclude=frozenset([first_id])))
            unique_predictions = run.predicted()
            summary = {
                "events_in": len(events) + len(bad),
                "transactions": n_tx,
                "labels": n_tx,
                "malformed_sent": len(bad),
                "predictions_in_datastore": stored,
                "messages_on_prediction_topic": len(predictions.received),
                "unique_predictions": unique_predictions,
                "corrections": run.corrections(),
                "feature_mismatches": feature_mismatches(predictions.received, feats),
                "dead_letters": len(dead.received),
                "dead_letter_reasons": sorted({m.attributes.get("reason", "?") for m in dead.raw}),
                "elapsed_s": round(elapsed, 1),
                "events_per_s": round((len(events) - 1) / elapsed, 1),
                "job_ready_s": round(job_ready_s, 1),
                "latency_ms_p50": round(p50, 1),
                "latency_ms_p95": round(p95, 1),
                "latency_ms_p99": round(p99, 1),
                "model_version": version_dir.name,
                "alerts": len(alerts),
                "alerts_by_kind": sorted(
                    {f"{a['kind']}: {a.get('feature') or a['metric']}" for a in alerts}
                ),
                "monitoring_report": str(report) if report else None,
                "complete": unique_predictions >= n_tx and stored >= n_tx,
            }
            summary["exact"] = summary["complete"] and summary["feature_mismatches"] == 0
            _print_summary(summary, work, log_path)
            return summary
    finally:
        if run.stopped:
            console.print("Stopped what the demo started: " + ", ".join(run.stopped))


def _write_report(run_directory: Path) -> Path | None:
    """The run's monitoring report (rillet report), or None when the job left no history."""
    from pipelines.app.run_report import write_run_report

    try:
        return write_run_report(run_directory)
    except Exception as exc:  # the summary still matters more than the report
        console.print(f"[yellow]no monitoring report: {exc}[/yellow]")
        return None


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
        "events_per_s": "events/s (paced replay start to last prediction)",
        "job_ready_s": "job start to its first prediction (s)",
        "latency_ms_p50": "event-to-prediction latency p50 (ms)",
        "latency_ms_p95": "event-to-prediction latency p95 (ms)",
        "latency_ms_p99": "event-to-prediction latency p99 (ms)",
        "model_version": "model version",
        "alerts": "alerts on the alerts topic",
        "alerts_by_kind": "alerts (kind: feature or metric)",
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
    if summary.get("monitoring_report"):
        console.print(
            f"Monitoring report (throughput, latency, drift, alerts): "
            f"{summary['monitoring_report']}"
        )
    (work / "demo-summary.json").write_text(json.dumps(summary, indent=2))
