"""``rillet demo``: the whole product on the emulators, end to end, in one command.

For a workload of pipelines/workloads/ (``--workload``, default the handbook's): starts the
emulators (unless running), simulates a dataset with the workload's simulator, computes training
features from its definitions file, trains, exports and registers a model, starts the streaming
pipeline on the DirectRunner with ``--definitions=<the file>``, replays the transactions and
their labels (the file's label delay of event time later) with a few malformed messages of its
stream, follows the predictions on the prediction topic, prints a summary (served == batch for
every transaction, throughput and latency, the model's test-week AUC, AP and CP@100 and, for a
simulator with fraud scenarios, each scenario's frauds in the daily top 100) and stops
everything it started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.app.features import dataset_rows
from pipelines.app.local_run import LocalRun, percentiles
from pipelines.core.definitions import LABEL_DELAY_DAYS

__all__ = ["DEMO_RATES", "DemoConfig", "demo_validation", "feature_mismatches", "run_demo"]

console = Console()

# Each workload's default replay rate (events/s): what the job sustains with room to spare on
# a 2-core machine (README "Measured here"). The payments file's job computes 30 features over
# four entity stages (the handbook's: 15 over two): at 250 events/s it kept pace (249.8) but its
# p99 reached 2.8 s on a machine shared with other jobs, hence 200.
DEMO_RATES: dict[str, float] = {"handbook": 400.0, "payments": 200.0}


@dataclass
class DemoConfig:
    """Knobs of the demo (defaults: the handbook's small preset, replayed at its DEMO_RATES).

    ``rate`` None: the workload's DEMO_RATES; ``train_days`` None: the handbook's 35, another
    workload's dataset days minus its label delay and the test week (its last week is the test
    week, as 'rillet train' and 'rillet evaluate' use it)."""

    preset: str = "small"
    rate: float | None = None
    work_dir: Path = Path(".rillet")
    train_days: int | None = None
    timeout_s: float = 600.0
    workload: str = "handbook"


def feature_mismatches(
    bodies: list[dict[str, Any]], expected: Any, names: Sequence[str], id_column: str
) -> int:
    """Transactions whose latest served features (``names``, the job's definitions') differ
    from the batch computation ``expected`` (its ids in ``id_column``)."""
    from pipelines.transforms.sinks import latest_per_transaction

    latest = latest_per_transaction(bodies)
    if not latest:
        return 0
    want = expected.set_index(expected[id_column].astype(str)).loc[list(latest), list(names)]
    served = np.array([[b["features"][f] for f in names] for b in latest.values()])
    return int((want.to_numpy(dtype=np.float64) != served).any(axis=1).sum())


def demo_validation(
    model: Any,
    frame: Any,
    features: Any,
    first_day: str,
    train_days: int,
    delay_days: int = LABEL_DELAY_DAYS,
) -> dict[str, Any]:
    """The demo model's card fields ``validation_ranges``, ``validation_metrics`` (AUC, AP,
    CP@100, as ``rillet train`` records them) and ``protocol``: scored on the week that follows
    its training days and the label delay (the protocol's layout, models.evaluation.Protocol),
    known-compromised cards removed. No second fit: the model is trained once, as the demo
    needs.
    Empty metrics when the data ends before that week or it holds one class. ``frame`` is the
    simulated one (its CUSTOMER_ID: the card) unless ``features`` already has the models' card
    column (pipelines/app/features.py roles), ``features`` training_features(frame);
    ``delay_days``: the definitions' label delay (``retrain.label_delay_days``)."""
    out, _ = _scored_test_week(model, frame, features, first_day, train_days, delay_days)
    return out


def _scored_test_week(
    model: Any, frame: Any, features: Any, first_day: str, train_days: int, delay_days: int
) -> tuple[dict[str, Any], Any]:
    """demo_validation's fields and the test week's rows with their ``score`` (None when the
    week has no figures)."""
    import datetime as dt

    from models.evaluation import Protocol, evaluate_scores, test_set
    from models.train import predict

    protocol = Protocol(dt.date.fromisoformat(first_day), train_days, delay_days)
    table = features
    if "CUSTOMER_ID" not in features.columns:
        cards = frame.set_index("TRANSACTION_ID")["CUSTOMER_ID"]
        table = features.assign(CUSTOMER_ID=cards.reindex(features.TRANSACTION_ID).to_numpy())
    valid = test_set(table, protocol).copy()
    valid["score"] = predict(model, valid)
    try:
        metrics = evaluate_scores(valid)
    except ValueError:  # no rows in that week, or one class: no figures rather than wrong ones
        return {"validation_ranges": [], "validation_metrics": {}}, None
    fields = {
        "validation_ranges": [list(protocol.test_range)],
        "validation_metrics": {k: metrics[k] for k in ("auc", "ap", "cp100", "n", "frauds")},
        # The layout it was trained and scored in: 'rillet evaluate' scores the same week.
        "protocol": protocol.to_dict(),
    }
    return fields, valid


def count_datastore(project: str, kind: str) -> int:
    from google.cloud import datastore

    client = datastore.Client(project=project)
    query = client.query(kind=kind)
    query.keys_only()
    return sum(1 for _ in query.fetch())


def _simulate(workload: str, preset: str, work: Path) -> tuple[Any, Path]:
    """The workload's simulated frame and the dataset folder it is written to (as 'rillet
    simulate --workload' writes it)."""
    if workload == "handbook":
        from pipelines.app.simulator import PRESETS, simulate, write_dataset

        frame = simulate(PRESETS[preset])
        data_dir = work / "data" / preset
        write_dataset(frame, data_dir)
        return frame, data_dir
    if workload == "payments":
        from pipelines.app import payments_simulator as payments
        from pipelines.app.parsing import WORKLOAD_MARK

        frame = payments.simulate(payments.PRESETS[preset])
        data_dir = work / "data" / f"payments-{preset}"
        payments.write_dataset(frame, data_dir)
        (data_dir / WORKLOAD_MARK).write_text("payments\n")
        return frame, data_dir
    raise ValueError(f"no simulator for the workload {workload!r}")


def demo_presets(workload: str) -> tuple[str, ...]:
    """The presets of the workload's simulator."""
    if workload == "payments":
        from pipelines.app import payments_simulator as payments

        return tuple(payments.PRESETS)
    from pipelines.app.simulator import PRESETS

    return tuple(PRESETS)


def _default_train_days(frame: Any, defs: Any, delay_days: int, workload: str) -> int:
    """The handbook's 35 days (make demo's figures); another workload's dataset days minus its
    label delay and a test week: its last week is the test week."""
    if workload == "handbook":
        return 35
    times = frame[defs.events.field(defs.events.time_field).dataset_column]
    days = (times.max().normalize() - times.min().normalize()).days + 1
    return max(1, days - delay_days - 7)


def _top100_by_scenario(scored: Any, frame: Any, defs: Any) -> dict[str, dict[str, int]] | None:
    """Per fraud scenario of the simulator (a ``fraud_scenario`` column), how many of the test
    week's frauds the model ranks in its daily top 100 (None: a simulator without scenarios)."""
    if scored is None or "fraud_scenario" not in frame.columns:
        return None
    from pipelines.app.payments_simulator import top_k_by_scenario

    id_column = defs.events.field(defs.events.id_field).dataset_column
    scenario = frame.set_index(id_column)["fraud_scenario"]
    rows = scored.assign(fraud_scenario=scenario.reindex(scored.TRANSACTION_ID).to_numpy())
    return top_k_by_scenario(rows, time_column="TX_DATETIME")


def run_demo(config: DemoConfig) -> dict[str, Any]:
    from models.evaluation import rows_in
    from models.export import export_model
    from models.selection import QUICK_GRID
    from models.train import train_model
    from pipelines.app.publisher import ReplayEvent, malformed_examples, replay_events
    from pipelines.app.retrain import label_delay_days
    from pipelines.app.run_report import read_alerts
    from pipelines.core.declarations import WORKLOADS, load_definitions
    from pipelines.local_runner.snapshot import run_dir, run_ids

    workload = config.workload
    definitions_path = WORKLOADS / f"{workload}.yaml"
    defs = load_definitions(definitions_path)
    delay_days = label_delay_days(defs)
    rate = config.rate if config.rate is not None else DEMO_RATES.get(workload, 200.0)
    work = config.work_dir
    log_path = work / "logs" / "pipeline.log"
    console.rule(f"[bold]rillet demo ({workload})")
    console.print("Starting the Pub/Sub, Bigtable and Datastore emulators ...")
    # The recorded ports (emulators already answering there are reused): 'rillet local up'
    # users keep their subscribers.
    run = LocalRun(work, private=False, log_path=log_path)
    try:
        with run:
            console.print("  " + ", ".join(f"{k}: {v}" for k, v in run.started.items()))
            console.print(f"Simulating the {workload} workload's '{config.preset}' preset ...")
            frame, data_dir = _simulate(workload, config.preset, work)
            console.print(
                f"Computing point-in-time training features of {definitions_path.name} "
                f"({len(defs.names)} features; the streaming engine's code) ..."
            )
            feats = dataset_rows(frame, defs)
            console.print(
                f"  {len(frame):,} transactions, {int(feats.TX_FRAUD.sum()):,} frauds -> {data_dir}"
            )
            train_days = config.train_days or _default_train_days(frame, defs, delay_days, workload)
            start = feats.TX_DATETIME.min()
            first = start.strftime("%Y-%m-%d")
            last_train = (start + np.timedelta64(train_days - 1, "D")).strftime("%Y-%m-%d")
            train = rows_in(feats, (first, last_train))
            console.print(
                f"Training the model (YDF gradient boosted trees) on {first} .. {last_train} "
                f"({len(train):,} rows) ..."
            )
            model, _ = train_model(train, None, QUICK_GRID[0], inputs=defs.names)
            validation, scored = _scored_test_week(
                model, frame, feats, first, train_days, delay_days
            )
            version_dir = export_model(
                model,
                work / "models",
                {
                    "training_range": [first, last_train],
                    "training_rows": len(train),
                    "training_frauds": int(train.TX_FRAUD.sum()),
                    "preset": config.preset,
                    **validation,
                },
                definitions=defs,
            )
            from pipelines.stores.model_registry import ModelRegistry

            registry = ModelRegistry(work / "models", definitions=defs)
            registry.register(version_dir.name, as_="champion", by="demo")
            console.print(f"  exported {version_dir} (the registry's champion)")

            console.print("Starting the streaming pipeline on the DirectRunner ...")
            # Until the job's first snapshot, 'rillet monitor' waits rather than show an old one.
            (run.monitor_dir / "snapshot.json").unlink(missing_ok=True)
            job_started = time.monotonic()
            run.start_job(
                [
                    f"--model_dir={work / 'models'}",
                    f"--definitions={definitions_path}",
                    "--monitor_every_s=5",
                ]
            )
            console.print(f"  watch it live in another terminal: rillet monitor --state-dir {work}")

            events = replay_events(frame, definitions=defs)
            # The handbook's own examples (make demo unchanged), else examples of the stream.
            stream = None if workload == "handbook" else defs.events
            bad = [ReplayEvent("transactions", b, 0) for b in malformed_examples(stream)]
            n_tx = len(frame)
            console.print(
                f"Replaying {n_tx:,} transactions and {n_tx:,} labels "
                f"at {rate:,.0f} events/s "
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
                    rate,
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
            # The first transaction waited for the start-up.
            first_id = json.loads(events[0].data)[defs.events.id_field]
            p50, p95, p99 = percentiles(run.latencies(exclude=frozenset([first_id])))
            unique_predictions = run.predicted()
            metrics = validation.get("validation_metrics", {})
            summary = {
                "workload": workload,
                "definitions": str(definitions_path),
                "rate": rate,
                "events_in": len(events) + len(bad),
                "transactions": n_tx,
                "labels": n_tx,
                "malformed_sent": len(bad),
                "predictions_in_datastore": stored,
                "messages_on_prediction_topic": len(predictions.received),
                "unique_predictions": unique_predictions,
                "corrections": run.corrections(),
                "feature_mismatches": feature_mismatches(
                    predictions.received, feats, defs.names, "TRANSACTION_ID"
                ),
                "dead_letters": len(dead.received),
                "dead_letter_reasons": sorted({m.attributes.get("reason", "?") for m in dead.raw}),
                "elapsed_s": round(elapsed, 1),
                "events_per_s": round((len(events) - 1) / elapsed, 1),
                "job_ready_s": round(job_ready_s, 1),
                "latency_ms_p50": round(p50, 1),
                "latency_ms_p95": round(p95, 1),
                "latency_ms_p99": round(p99, 1),
                "model_version": version_dir.name,
                "test_week": " .. ".join(validation["validation_ranges"][0])
                if validation["validation_ranges"]
                else None,
                "test_auc": _rounded(metrics.get("auc")),
                "test_ap": _rounded(metrics.get("ap")),
                "test_cp100": _rounded(metrics.get("cp100")),
                "top100_by_scenario": _top100_by_scenario(scored, frame, defs),
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


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
        "test_week": "its test week (after training and the label delay)",
        "test_auc": "test-week AUC",
        "test_ap": "test-week average precision",
        "test_cp100": "test-week Card Precision@100",
        "top100_by_scenario": "frauds in the daily top 100, per scenario (test week)",
        "alerts": "alerts on the alerts topic",
        "alerts_by_kind": "alerts (kind: feature or metric)",
    }
    for key, label in labels.items():
        value = summary[key]
        if key == "top100_by_scenario":
            if value is None:
                continue
            value = ", ".join(f"{k} {v['in_top']}/{v['frauds']}" for k, v in value.items())
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
        f"Workload {summary['workload']} ({summary['definitions']}). "
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
