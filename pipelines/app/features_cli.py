"""``rillet features``: the feature store's side of a feature added to a live system.

``warm`` writes into the store what a job computing a new definitions file needs and the store
does not hold (pipelines/backfill/warm.py): the fields old cells lack, the state of new
entities, from the event history. Run it while the old job runs and again after stopping it,
before starting the job on the new file (README, "A new feature on a live system").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.app.errors import UserError
from pipelines.app.parsing import STATE_DIR, InputDir, ProjectOption, StateDir, parse
from pipelines.core.job_arguments import INSTANCE, TABLE
from pipelines.core.values import InputFile

features_app = typer.Typer(
    help="The feature store for a changed definitions file: warm it from history.",
    no_args_is_help=True,
)

_HISTORY_FIX = "point --input at the directory of the transactions* and labels* files"


@features_app.command("warm")
def warm(
    input: Annotated[
        Path,
        typer.Option(
            help="The event history: transactions* and labels* files (what the job has seen).",
            parser=parse(InputDir("input", "the event history", fix=_HISTORY_FIX)),
        ),
    ],
    definitions: Annotated[
        Path,
        typer.Option(
            help="The new definitions file (the one the job will run on).",
            parser=parse(InputFile("a definitions file (YAML, docs/specs/definitions.md)")),
        ),
    ],
    project: ProjectOption = "rillet-local",
    bigtable_instance: Annotated[
        str, typer.Option(help="Bigtable instance id.", parser=parse(INSTANCE))
    ] = "rillet",
    bigtable_table: Annotated[
        str, typer.Option(help="Feature table id.", parser=parse(TABLE))
    ] = "features",
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Fill the fields the stored cells lack and create the state of new entities, from the
    event history, for the --definitions file. Idempotent; prints what it did as JSON."""
    from pipelines.app.cli import use_local_stack
    from pipelines.app.parsing import definitions_for
    from pipelines.backfill.warm import read_history, warm_store
    from pipelines.stores.bigtable import FeatureStore, StoreConfig

    defs = definitions_for(definitions)
    txs = read_history(f"{str(input).rstrip('/')}/transactions*", defs.events)
    if txs is None:
        raise UserError(f"--input {input} has no transactions* file", _HISTORY_FIX)
    labels = None
    if defs.labels is not None:
        labels = read_history(f"{str(input).rstrip('/')}/labels*", defs.labels)
    if project == "rillet-local":
        use_local_stack(state_dir)
    store = FeatureStore(StoreConfig(project, bigtable_instance, bigtable_table))
    report = warm_store(defs, store, txs, labels)
    typer.echo(json.dumps(report.as_dict()))
