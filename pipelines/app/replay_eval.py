"""``rillet replay-eval``: the whole offline-to-online chain, measured, in one command.

1. simulate the preset's dataset (handbook: the published 1,754,155 transactions);
2. backfill the whole dataset into the point-in-time feature table (Beam, DirectRunner);
3. start a private emulator stack (free loopback ports, so nothing a user runs is touched) and
   backfill again up to the test week with ``--to_bigtable``: the feature store is now warm as
   of the test week's first second;
4. select a model on the validation folds and train it on the training week (models.selection);
5. start the streaming pipeline and replay the test week's transactions and their labels through
   Pub/Sub (labels 7 days of event time after their transaction, as in production);
6. once every test-week transaction has a prediction, stop the pipeline and run
   ``rillet evaluate``: offline vs served metrics, score differences, feature consistency, and
   the HTML report.

The test week is scored once, at step 6, by the model chosen at step 4 without it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["ReplayEvalConfig", "run_replay_eval"]

console = Console()


@dataclass
class ReplayEvalConfig:
    """Knobs of the chain (defaults: the published dataset at 400 events/s)."""

    preset: str = "handbook"
    work_dir: Path = Path(".rillet/replay-eval")
    rate: float = 400.0
    timeout_s: float = 1800.0
    quick: bool = False  # a two-candidate grid (CI, small presets)
    shards: int = 8


def _step(timings: dict[str, float], name: str, start: float) -> None:
    timings[name] = round(time.monotonic() - start, 1)
    console.print(f"  [dim]{name}: {timings[name]} s[/dim]")


def run_replay_eval(config: ReplayEvalConfig) -> dict[str, Any]:
    """Runs the chain; returns the evaluation result (also written to <work_dir>/result.json)."""
    from models.evaluation import Protocol, rows_in
    from models.selection import GRID, QUICK_GRID, select_and_train
    from pipelines.app.evaluate import EvaluationConfig, evaluate
    from pipelines.app.local_run import LocalRun
    from pipelines.app.publisher import replay_events
    from pipelines.app.simulator import PRESETS, simulate, write_dataset
    from pipelines.backfill.backfill import read_feature_table, run_backfill

    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}; expected one of {', '.join(PRESETS)}")
    sim = PRESETS[config.preset]
    protocol = Protocol.for_preset(config.preset, sim)
    work = config.work_dir
    timings: dict[str, float] = {}
    console.rule(f"[bold]rillet replay-eval ({config.preset})")
    console.print(
        f"Protocol: train {protocol.train_range[0]}..{protocol.train_range[1]}, "
        f"test {protocol.test_range[0]}..{protocol.test_range[1]}"
    )

    t = time.monotonic()
    data_dir = work / "data"
    console.print(f"1. Simulating '{config.preset}' -> {data_dir}")
    frame = simulate(sim)  # kept: step 5 replays its test week
    write_dataset(frame, data_dir)
    _step(timings, "simulate_s", t)

    t = time.monotonic()
    console.print("2. Backfill (Beam, DirectRunner): the point-in-time feature table")
    table_dir = run_backfill(str(data_dir), str(work / "backfill"), [f"--shards={config.shards}"])
    table = read_feature_table(table_dir)
    console.print(f"  {len(table):,} rows -> {table_dir}")
    _step(timings, "backfill_s", t)

    with LocalRun(work / "stack", log_path=work / "logs" / "pipeline.log") as run:
        console.print("3. Started a private emulator stack " + json.dumps(run.stack.ports()))
        topo = run.topology
        t = time.monotonic()
        console.print(f"   Warming the store: backfill --until {protocol.test_range[0]}")
        run.warm_store(
            data_dir, work / "backfill-warm", protocol.test_range[0], [f"--shards={config.shards}"]
        )
        _step(timings, "warm_store_s", t)

        t = time.monotonic()
        grid = QUICK_GRID if config.quick else GRID
        console.print(
            f"4. Model selection ({len(grid)} candidates x "
            f"{len(protocol.validation_folds())} validation folds), then training on "
            f"{protocol.train_range[0]}..{protocol.train_range[1]}"
        )
        version_dir, card = select_and_train(
            table, protocol, work / "models", grid, {"preset": config.preset}
        )
        from pipelines.stores.model_registry import ModelRegistry

        ModelRegistry(work / "models").register(version_dir.name, as_="champion", by="replay-eval")
        console.print(
            f"  chose {card['config']}; validation AP {card['validation_metrics'].get('ap')} "
            f"(the registry's champion)"
        )
        _step(timings, "train_s", t)

        week = rows_in(frame, protocol.test_range)
        events = replay_events(week)
        console.print(
            f"5. Streaming: replaying {len(week):,} test-week transactions and their labels "
            f"({len(events):,} events) at {config.rate:,.0f} events/s"
        )
        run.start_job([f"--model_dir={work / 'models'}", f"--model_version={version_dir.name}"])
        replay = _replay(run, events, len(week), config)
        timings["stream_s"] = replay["elapsed_s"]

        t = time.monotonic()
        console.print("6. Evaluating the test week (once): offline and as served")
        result = evaluate(
            EvaluationConfig(
                feature_table=table_dir,
                model_dir=work / "models",
                model_version=version_dir.name,
                served=True,
                project=topo.project,
                report_dir=work / "report",
                notes=[
                    f"rillet replay-eval --preset {config.preset} --rate {config.rate:g}"
                    + (" --quick" if config.quick else ""),
                    f"Stage timings (s): {json.dumps(timings)}",
                ],
                replay=replay,
            )
        )
        _step(timings, "evaluate_s", t)
    result["timings_s"] = timings
    (work / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _replay(run: Any, events: list[Any], n_transactions: int, config: ReplayEvalConfig) -> dict:
    """Publishes the events while the job runs; returns when every transaction has a prediction
    (or raises TimeoutError at the timeout), with the job and its monitor stopped."""
    run.replay(events, config.rate, first_alone=True, first_timeout_s=config.timeout_s)
    elapsed = run.wait_predicted(n_transactions, config.timeout_s)
    run.stop(settle_s=1.0)  # let the last Datastore commits of the final bundle land
    return {
        "events": len(events),
        "transactions": n_transactions,
        "rate": config.rate,
        "elapsed_s": round(elapsed, 1),
        "events_per_s": round(len(events) / elapsed, 1),
        "prediction_messages": len(run.predictions.received),
        "corrections": run.corrections(),
    }
