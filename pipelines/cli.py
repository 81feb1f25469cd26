"""The ``rillet`` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="rillet: real-time ML on Apache Beam and Google Cloud (Pub/Sub -> Bigtable features -> "
    "TensorFlow -> Datastore + Pub/Sub).",
    no_args_is_help=True,
    add_completion=False,
)
local_app = typer.Typer(
    help="The local emulator stack (Pub/Sub, Bigtable, Datastore).", no_args_is_help=True
)
app.add_typer(local_app, name="local")

StateDir = Annotated[Path, typer.Option(help="Where local state (pids, ports, logs) is kept.")]


def _stack(state_dir: Path) -> Any:
    from pipelines.local import LocalStack

    return LocalStack(state_dir)


@local_app.command("up")
def local_up(
    state_dir: StateDir = Path(".rillet"),
    pubsub_port: Annotated[int, typer.Option(min=1, max=65535)] = 8085,
    bigtable_port: Annotated[int, typer.Option(min=1, max=65535)] = 8086,
    datastore_port: Annotated[int, typer.Option(min=1, max=65535)] = 8081,
) -> None:
    """Start the emulators on loopback, wait until they answer, create topics, subscriptions and
    the feature table (idempotent). Prints the environment variables to export."""
    from pipelines.local import StackError, create_resources, environment

    stack = _stack(state_dir)
    try:
        result = stack.up(
            {"pubsub": pubsub_port, "bigtable": bigtable_port, "datastore": datastore_port}
        )
    except StackError as exc:
        typer.echo(f"rillet local up: {exc}", err=True)
        raise typer.Exit(1) from exc
    with environment(stack.env()):
        create_resources()
    for name, what in result.items():
        typer.echo(f"{name}: {what}")
    for key, value in stack.env().items():
        typer.echo(f"export {key}={value}")


@local_app.command("down")
def local_down(state_dir: StateDir = Path(".rillet")) -> None:
    """Stop the emulators that 'local up' started (and only those)."""
    for name, what in _stack(state_dir).down().items():
        typer.echo(f"{name}: {what}")


@local_app.command("status")
def local_status(state_dir: StateDir = Path(".rillet")) -> None:
    """Show each emulator's port, whether it answers, and whether we started it."""
    typer.echo(json.dumps(_stack(state_dir).status(), indent=2))


@app.command()
def simulate(
    output: Annotated[Path, typer.Option(help="Output directory for transactions/labels Parquet.")],
    preset: Annotated[str, typer.Option(help="handbook | small | tiny")] = "small",
) -> None:
    """Generate the reference card-transaction dataset (the handbook simulator)."""
    from pipelines.simulator import PRESETS, write_dataset
    from pipelines.simulator import simulate as run_simulation

    if preset not in PRESETS:
        typer.echo(
            f"rillet simulate: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}",
            err=True,
        )
        raise typer.Exit(2)
    frame = run_simulation(PRESETS[preset])
    paths = write_dataset(frame, output)
    typer.echo(f"{len(frame):,} transactions, {int(frame.TX_FRAUD.sum()):,} frauds")
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command()
def train(
    input: Annotated[Path, typer.Option(help="Dataset directory written by 'rillet simulate'.")],
    model_dir: Annotated[Path, typer.Option(help="Versioned model directory.")] = Path(
        "artifacts/models"
    ),
    train_start: Annotated[
        str, typer.Option(help="First training day, YYYY-MM-DD.")
    ] = "2018-04-01",
    train_end: Annotated[str, typer.Option(help="Last training day, YYYY-MM-DD.")] = "2018-05-05",
    epochs: Annotated[int, typer.Option(min=1)] = 5,
) -> None:
    """Compute point-in-time features, train the model on a date range, export a version."""
    from models.train import TrainConfig, export_model, split_by_day, train_model
    from pipelines.simulator import read_dataset
    from pipelines.training_data import training_features

    feats = training_features(read_dataset(input))
    rows = split_by_day(feats, train_start, train_end)
    if rows.empty:
        typer.echo(f"rillet train: no transactions between {train_start} and {train_end}", err=True)
        raise typer.Exit(2)
    model, metrics = train_model(rows, None, TrainConfig(epochs=epochs))
    target = export_model(
        model, model_dir, {"training_range": [train_start, train_end], "metrics": metrics}
    )
    typer.echo(f"exported {target}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    state_dir: StateDir = Path(".rillet"),
    emulators: Annotated[
        bool, typer.Option(help="Point the clients at the local emulators from 'rillet local up'.")
    ] = True,
) -> None:
    """Run the streaming pipeline. Extra arguments are Beam pipeline options, e.g.
    --runner=DirectRunner --project=rillet-local --model_dir=artifacts/models (see
    pipelines/options.py for the rillet options)."""
    from pipelines.pipeline import run as run_pipeline

    argv = list(ctx.args)
    if not any(a.startswith("--project") for a in argv) and emulators:
        argv.append("--project=rillet-local")
    if emulators and (state_dir / "local.json").exists():
        os.environ.update(_stack(state_dir).env())
    run_pipeline(argv)


@app.command()
def publish(
    input: Annotated[Path, typer.Option(help="Dataset directory written by 'rillet simulate'.")],
    rate: Annotated[
        float, typer.Option(min=0, help="Events per second (0: as fast as possible).")
    ] = 1000,
    limit: Annotated[int, typer.Option(min=0, help="Only the first N transactions (0: all).")] = 0,
    labels: Annotated[
        bool, typer.Option(help="Also publish the labels, 7 days of event time later.")
    ] = True,
    project: str = "rillet-local",
    state_dir: StateDir = Path(".rillet"),
) -> None:
    """Replay a dataset to the transaction and label topics at a given rate."""
    from pipelines.publisher import publish_events, replay_events
    from pipelines.simulator import read_dataset

    frame = read_dataset(input)
    if limit:
        frame = frame.iloc[:limit]
    if (state_dir / "local.json").exists():
        os.environ.update(_stack(state_dir).env())
    events = replay_events(frame, include_labels=labels)
    topics = {
        "transactions": f"projects/{project}/topics/transactions",
        "labels": f"projects/{project}/topics/labels",
    }
    n = publish_events(events, topics, rate)
    typer.echo(f"published {n:,} events")


@app.command()
def demo(
    preset: Annotated[str, typer.Option(help="Simulator preset to replay.")] = "small",
    rate: Annotated[float, typer.Option(min=1, help="Replay rate, events per second.")] = 800,
    work_dir: Annotated[Path, typer.Option(help="Where data, models, logs and state go.")] = Path(
        ".rillet"
    ),
    timeout: Annotated[
        float, typer.Option(min=10, help="Seconds to wait for all predictions.")
    ] = 600,
) -> None:
    """The whole product on the emulators: simulate, train, stream, predict, summarise."""
    from pipelines.demo import DemoConfig, run_demo
    from pipelines.local import StackError
    from pipelines.simulator import PRESETS

    if preset not in PRESETS:
        typer.echo(
            f"rillet demo: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}",
            err=True,
        )
        raise typer.Exit(2)
    try:
        summary = run_demo(
            DemoConfig(preset=preset, rate=rate, work_dir=work_dir, timeout_s=timeout)
        )
    except StackError as exc:
        typer.echo(f"rillet demo: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not summary["complete"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
