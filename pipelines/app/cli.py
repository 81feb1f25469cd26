"""The ``rillet`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.app.capacity import HOTTEST_KEY_SHARE
from pipelines.app.errors import RUNTIME, UserError
from pipelines.app.features_cli import features_app
from pipelines.app.inputs import FEATURE_NAMES, InputsOption, chosen_inputs, require_columns
from pipelines.app.models_cli import models_app
from pipelines.app.parsing import (
    JOB_NAME,
    PRESET,
    PROJECT,
    REGION,
    REPOSITORY,
    RUN_ID,
    STATE_DIR,
    SUBNETWORK,
    TAG,
    WORKLOAD,
    WORKLOAD_MARK,
    DatasetDir,
    DefinitionsOption,
    ModelDirIn,
    ModelDirOut,
    ProjectOption,
    StateDir,
    definitions_for,
    kind_of,
    latest_dataset,
    parse,
    workload_names,
    workload_of,
)
from pipelines.core.job_arguments import KIND, NAMESPACE, PUBSUB_NAME
from pipelines.core.values import (
    Bucket,
    Choice,
    Day,
    Email,
    InputDir,
    InputFile,
    Name,
    OutputDir,
    Text,
    Version,
    When,
)

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
app.add_typer(models_app, name="models")
app.add_typer(features_app, name="features")

_DATASET_FIX = "make a dataset with 'rillet simulate --output DIR' and pass --input DIR"
_FEATURES_FIX = (
    "pass the features directory 'rillet backfill --output OUT' wrote (OUT/features), or a "
    "dataset 'rillet simulate' wrote"
)


def _stack(state_dir: Path) -> Any:
    from pipelines.app.local import LocalStack

    return LocalStack(state_dir)


def main(argv: list[str] | None = None) -> None:
    """The ``rillet`` console script. A user's mistake is one line (or two: what is wrong, then
    what to do) and an exit code, 2 for a wrong argument and 1 for the environment: a value typer
    refuses (pipelines/app/parsing.py), a UserError a command raises, or a Google Cloud client's
    error that only the environment explains (no credentials, a missing topic). Anything else is
    a bug and keeps its traceback. ``--debug``, anywhere on the line, shows the traceback of a
    mistake too, with the same exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    words = [a for a in args if not a.startswith("-")]
    command = " ".join(words[:2] if words[:1] in (["local"], ["models"]) else words[:1])
    if argv is None:  # the console script: its own process (tests calling main(argv) share one)
        from pipelines.app.quiet import quiet_libraries

        quiet_libraries(_state_dir(command, args) / "logs", command)
    args, typed = spell_options(args)
    try:
        code = app(args=args, prog_name="rillet", standalone_mode=False, obj={"typed": typed})
    except Exception as exc:
        mistake = _as_user_error(exc)
        if mistake is None:
            raise  # a bug: its traceback
        if debug:
            import traceback

            traceback.print_exc()
        for line in mistake.lines(mistake.command if mistake.command is not None else command):
            typer.echo(line, err=True)
        raise SystemExit(mistake.exit_code) from None
    if words[:1] == ["run"] and ("--help" in args or "-h" in args):
        typer.echo(pipeline_options_help())
    if code:
        raise SystemExit(code)


def _as_user_error(exc: BaseException) -> UserError | None:
    """The user's mistake ``exc`` stands for, or None (a bug)."""
    from typer._click.exceptions import BadParameter, ClickException, NoArgsIsHelpError, UsageError

    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, NoArgsIsHelpError):
        assert exc.ctx is not None
        exc.ctx.get_help()  # typer's rich help prints itself
        return UserError("a command is missing", "see the commands above")
    if isinstance(exc, UsageError):
        where = exc.ctx.command_path.partition(" ")[2] if exc.ctx else ""
        message = exc.format_message()
        if isinstance(exc, BadParameter):
            opts = getattr(exc.param, "opts", None) or []
            name = opts[0] if opts and opts[0].startswith("-") else getattr(exc.param, "name", "")
            # rillet's kinds say "'value': expected ..."; typer's own types only what is wrong.
            message = f"{name}{' ' if kind_of(exc.param) else ': '}{exc.message}"
        kind = kind_of(getattr(exc, "param", None))
        see = f"see 'rillet {where} --help'" if where else "see 'rillet --help'"
        return UserError(message, kind.fix if kind and kind.fix else see).named(where)
    if isinstance(exc, ClickException):
        return UserError(exc.format_message())
    return environment_error(exc)


def environment_error(exc: BaseException) -> UserError | None:
    """A Google Cloud client's error that only the environment explains, as one line (None for
    any other error). Checked only against the client libraries already imported."""
    auth = sys.modules.get("google.auth.exceptions")
    if auth is not None and isinstance(exc, auth.DefaultCredentialsError):
        return UserError(
            "no Google Cloud credentials found (Application Default Credentials)",
            "for the local emulators keep --project rillet-local (the default) after 'rillet "
            "local up'; for Google Cloud run 'gcloud auth application-default login'",
            RUNTIME,
        )
    api = sys.modules.get("google.api_core.exceptions")
    if api is None:
        return None
    if isinstance(exc, api.NotFound):
        return UserError(
            f"not found: {exc.message}",
            "check --project (a misspelt project shows up as a missing topic); 'rillet local "
            "up' creates the local topics and subscriptions, terraform/ those on Google Cloud",
            RUNTIME,
        )
    if isinstance(exc, api.PermissionDenied | api.Unauthenticated | api.Forbidden):
        return UserError(
            f"refused by Google Cloud: {exc.message}",
            "check --project and the account's roles (README: the threat model)",
            RUNTIME,
        )
    if isinstance(exc, api.ServiceUnavailable | api.DeadlineExceeded | api.RetryError):
        return UserError(
            f"Google Cloud (or the emulator) did not answer: {exc}",
            "for the local emulators: 'rillet local status', then 'rillet local up'",
            RUNTIME,
        )
    return None


def _state_dir(command: str, args: list[str]) -> Path:
    """The state folder of the command line (--state-dir; the demo's --work-dir), else the
    default: where the command's log file goes."""
    flags = ("--state-dir", "--state_dir") + (
        ("--work-dir", "--work_dir") if command == "demo" else ()
    )
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in flags:
            if eq:
                return Path(value)
            if i + 1 < len(args):
                return Path(args[i + 1])
    return STATE_DIR


def spell_options(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """One spelling per option, either accepted: rillet's own options are ``--model-dir``, Beam's
    (``run``'s and ``backfill``'s extra arguments) ``--model_dir``; the other spelling of
    either is rewritten to it. Also returns each rewritten flag's spelling as typed, for the
    messages."""
    words = [a for a in args if not a.startswith("-")]
    command: Any = typer.main.get_command(app)
    for word in words[:2]:  # the command, or a group and its command ("local up")
        if not hasattr(command, "commands"):
            break
        command = command.commands.get(word)
    if command is None:
        return args, {}
    own = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    passthrough = bool(command.context_settings.get("allow_extra_args"))
    out, typed = [], {}
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag.startswith("--") and flag not in own:
            dashed = flag.replace("_", "-")
            if dashed in own:
                typed[dashed] = flag
                flag = dashed
            elif passthrough:
                spelt = "--" + flag[2:].replace("-", "_")
                typed[spelt] = flag
                flag = spelt
        out.append(flag + eq + value)
    return out, typed


def pipeline_options_help() -> str:
    """The streaming job's own options (pipelines/options.py), for ``rillet run --help``."""
    from pipelines.core.job_arguments import job_parser

    parser = job_parser(prog="rillet run")
    return (
        "\nrillet's pipeline options (as Beam options, --name=value; any other Beam option, e.g. "
        "--runner, --project, is passed on):\n" + parser.format_help()
    )


def use_local_stack(state_dir: Path) -> None:
    """Points the Google Cloud clients at the emulators (those 'rillet local up' recorded in
    ``state_dir``, else the default ports); a UserError at once if any does not answer, instead
    of a client waiting on a closed port or falling back to real Google Cloud."""
    stack = _stack(state_dir)
    status = stack.status()
    down = [f"{name} on port {s['port']}" for name, s in status.items() if not s["answering"]]
    if down:
        raise UserError(
            f"the local emulators are not running ({', '.join(down)}: "
            f"{'no answer' if len(down) == 1 else 'no answers'})",
            "start them with 'rillet local up' (or name a Google Cloud --project to use it)",
            RUNTIME,
        )
    os.environ.update(stack.env())


@local_app.command("up")
def local_up(
    state_dir: StateDir = STATE_DIR,
    pubsub_port: Annotated[int, typer.Option(min=1, max=65535)] = 8085,
    bigtable_port: Annotated[int, typer.Option(min=1, max=65535)] = 8086,
    datastore_port: Annotated[int, typer.Option(min=1, max=65535)] = 8081,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the emulators to answer.")
    ] = 90,
) -> None:
    """Start the emulators on loopback, wait until they answer, create topics, subscriptions and
    the feature table (idempotent). Prints the environment variables to export."""
    from pipelines.app.local import StackError, create_resources, environment

    stack = _stack(state_dir)
    typer.echo(f"starting the emulators (waiting up to {timeout:g} s for them to answer) ...")
    try:
        result = stack.up(
            {"pubsub": pubsub_port, "bigtable": bigtable_port, "datastore": datastore_port},
            timeout_s=timeout,
        )
    except StackError as exc:
        raise UserError(str(exc), exit_code=RUNTIME) from exc
    with environment(stack.env()):
        create_resources()
    for name, what in result.items():
        typer.echo(f"{name}: {what}")
    for key, value in stack.env().items():
        typer.echo(f"export {key}={value}")


@local_app.command("down")
def local_down(state_dir: StateDir = STATE_DIR) -> None:
    """Stop the emulators that 'local up' started (and only those)."""
    for name, what in _stack(state_dir).down().items():
        typer.echo(f"{name}: {what}")


@local_app.command("status")
def local_status(state_dir: StateDir = STATE_DIR) -> None:
    """Show each emulator's port, whether it answers, and whether we started it."""
    typer.echo(json.dumps(_stack(state_dir).status(), indent=2))


@app.command()
def simulate(
    output: Annotated[
        Path | None,
        typer.Option(
            help="Output directory for transactions/labels Parquet. Default: "
            "<state-dir>/data/<preset>.",
            parser=parse(OutputDir("a directory for the dataset")),
        ),
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            help="handbook (docs/specs/reference-workload.md) | payments "
            "(docs/specs/payments-workload.md)",
            parser=WORKLOAD,
        ),
    ] = "handbook",
    preset: Annotated[
        str,
        typer.Option(
            help="handbook: handbook | small | tiny; payments: large | small | tiny", parser=PRESET
        ),
    ] = "small",
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Generate a workload's dataset: the handbook's card transactions
    (docs/specs/reference-workload.md) or the payments stream (docs/specs/payments-workload.md)."""
    if workload == "payments":
        from pipelines.app import payments_simulator as payments

        if preset not in payments.PRESETS:
            raise UserError(
                f"the payments workload has no preset {preset!r}",
                fix="pass --preset " + " | ".join(payments.PRESETS),
            )
        output = output or state_dir / "data" / f"payments-{preset}"
        frame = payments.simulate(payments.PRESETS[preset])
        paths = payments.write_dataset(frame, output)
        (output / WORKLOAD_MARK).write_text("payments\n")
        counts = payments.summary(frame)
        scenarios = ", ".join(f"{n} {c:,}" for n, c in counts["scenarios"].items())
        typer.echo(
            f"{counts['transactions']:,} transactions, {counts['frauds']:,} frauds ({scenarios})"
        )
    else:
        from pipelines.app.simulator import PRESETS, write_dataset
        from pipelines.app.simulator import simulate as run_simulation

        if preset not in PRESETS:
            raise UserError(
                f"the handbook workload has no preset {preset!r}",
                fix="pass --preset " + " | ".join(PRESETS),
            )
        output = output or state_dir / "data" / preset
        frame = run_simulation(PRESETS[preset])
        paths = write_dataset(frame, output)
        typer.echo(f"{len(frame):,} transactions, {int(frame.TX_FRAUD.sum()):,} frauds")
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def backfill(
    ctx: typer.Context,
    input: Annotated[
        str | None,
        typer.Option(
            help="Directory (local or gs://) with transactions* and labels* files. Default: the "
            "newest dataset under <state-dir>/data.",
            parser=parse(
                InputDir(
                    "dataset", "transactions* and labels* files", remote_ok=True, fix=_DATASET_FIX
                )
            ),
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Output directory (local or gs://). Default: <state-dir>/backfill.",
            parser=parse(OutputDir("a directory for the feature table", remote_ok=True)),
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Only transactions before this UTC day/time (exclusive).", parser=parse(When())
        ),
    ] = None,
    to_bigtable: Annotated[
        bool,
        typer.Option(
            "--to-bigtable", help="Also warm the feature store: its state as of the input's end."
        ),
    ] = False,
    shards: Annotated[int, typer.Option(min=1, help="Entity shards.")] = 8,
    features: Annotated[
        str | None,
        typer.Option(
            help="Only these features (NAME[,NAME]): the id and their columns, joinable on it, "
            "by their entities' stages only (a feature added to a live system).",
            parser=parse(FEATURE_NAMES),
        ),
    ] = None,
    definitions: DefinitionsOption = None,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Compute the streaming features over history with Beam (point-in-time feature table as
    Parquet; optionally the Bigtable state). Extra arguments are Beam options, e.g.
    --runner=DataflowRunner --project=P --region=R --temp_location=gs://... or
    --direct_running_mode=multi_processing --direct_num_workers=2."""
    from pipelines.backfill.backfill import run as run_backfill

    input = input or str(latest_dataset(state_dir))
    output = output or str(state_dir / "backfill")
    # --input's kind checked the directory (the default: a dataset that exists).
    if not input.startswith("gs://") and not any(Path(input).glob("transactions*")):
        raise UserError(
            f"--input {input} has no transactions* file",
            _DATASET_FIX,
        )
    argv = [f"--input={input}", f"--output={output}", f"--shards={shards}", *ctx.args]
    if until:
        argv.append(f"--until={until}")
    if features:
        argv.append(f"--features={features}")
    # The dataset's workload's file unless one is given (--to-bigtable: the handbook's only).
    from pipelines.core.declarations import WORKLOADS

    workload = "handbook" if input.startswith("gs://") else workload_of(Path(input))
    defs_path = definitions if definitions is not None else WORKLOADS / f"{workload}.yaml"
    definitions_for(defs_path)  # a file with mistakes: a UserError naming each
    argv.append(f"--definitions={defs_path}")
    if to_bigtable:
        argv.append("--to_bigtable")
        if not any(a.startswith("--project") for a in argv):
            argv.append("--project=rillet-local")
        if any(a == "--project=rillet-local" for a in argv):
            use_local_stack(state_dir)
    if not any(a.startswith("--runner") for a in argv):
        argv.append("--runner=DirectRunner")
    from pipelines.backfill.event_tables import InvalidTable

    try:
        manifest = run_backfill(argv)
    except InvalidTable as exc:
        raise UserError(str(exc)) from exc
    if not manifest.get("rows"):
        raise UserError(
            f"no transaction in {input}" + (f" before --until {until}" if until else ""),
            "check --input (and --until): the feature table would be empty",
            RUNTIME,
        )
    typer.echo(json.dumps(manifest))


def _definitions_of(path: Path | None, data: Path | None) -> Any:
    """--definitions, else the file of the data's workload (a dataset names it), else the
    handbook's."""
    if path is not None:
        return definitions_for(path)
    return definitions_for(workload=workload_of(data) if data is not None else "handbook")


@app.command()
def train(
    features: Annotated[
        Path | None,
        typer.Option(
            help="Feature table written by 'rillet backfill' (<output>/features), or a dataset "
            "(its features computed here). Default: the newest dataset under <state-dir>/data.",
            parser=parse(InputDir("features", "a feature table or a dataset", fix=_FEATURES_FIX)),
        ),
    ] = None,
    model_dir: ModelDirOut = ".rillet/models",
    train_start: Annotated[
        str | None,
        typer.Option(
            help="First training day (YYYY-MM-DD). Default: the reference protocol's 2018-07-25 "
            "when the table covers it (docs/specs/reference-workload.md), else the table's last "
            "weeks.",
            parser=parse(Day()),
        ),
    ] = None,
    train_days: Annotated[int, typer.Option(min=1, help="Training days.")] = 7,
    select: Annotated[
        bool, typer.Option(help="Choose the configuration on the validation folds first.")
    ] = True,
    quick: Annotated[bool, typer.Option(help="A two-candidate grid (fast).")] = False,
    register: Annotated[
        str | None,
        typer.Option(
            help="Register the new version as champion | challenger | none. Default: champion "
            "when the registry has none, else challenger.",
            parser=parse(Choice(("champion", "challenger", "none"))),
        ),
    ] = None,
    inputs: InputsOption = None,
    definitions: DefinitionsOption = None,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Train on a date range of the backfill table and export a versioned SavedModel + card,
    registered in the model directory's registry (see 'rillet models').

    The protocol (docs/specs/reference-workload.md section 3): train on the training days,
    a 7-day delay, a 7-day test week. Model selection uses only validation folds that end before
    the test week; the test week is left for 'rillet evaluate'."""
    _quiet_tensorflow()
    from models.selection import GRID, QUICK_GRID, select_and_train
    from pipelines.app.features import load_features

    defs = _definitions_of(definitions, features)
    features = features or latest_dataset(state_dir, defs.name)
    fix = "pass the features directory that 'rillet backfill --output OUT' wrote: OUT/features"
    if (features / "manifest.json").exists() and (features / "features").is_dir():
        raise UserError(
            f"--features {features} is the backfill's output directory, not its feature table",
            f"pass --features {features / 'features'}",
        )
    if not any(features.glob("*.parquet")):
        raise UserError(f"--features {features} holds no .parquet file", fix)
    from pipelines.stores.model_registry import ModelRegistry, RegistryError

    model_inputs = chosen_inputs(inputs, defs)
    registry = ModelRegistry(model_dir, definitions=defs)
    try:
        # The role is decided before the new version exists (it would be the implicit champion).
        role = register or ("challenger" if registry.pointer().champion else "champion")
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    table = load_features(features, defs)
    if table.empty:
        raise UserError(f"--features {features} has no rows", fix)
    try:
        protocol = _protocol(table, train_start, train_days)
        require_columns(model_inputs, table.columns)
        grid = (QUICK_GRID if quick else GRID) if select else (GRID[0],)
        # One candidate too is scored on the folds: every registered version has metrics.
        target, card = select_and_train(
            table,
            protocol,
            model_dir,
            grid,
            validate=True,
            inputs=model_inputs,
            definitions=defs,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if role != "none":
        try:
            pointer = registry.register(target.name, as_=role)
        except RegistryError as exc:
            raise UserError(str(exc), exit_code=RUNTIME) from exc
        role = f"{role} (champion {pointer.champion}, challenger {pointer.challenger})"
    typer.echo(
        json.dumps(
            {
                "version_dir": str(target),
                "registered_as": role,
                "training_range": card["training_range"],
                "inputs": len(card["features"]),
                "validation_metrics": {
                    k: v for k, v in card["validation_metrics"].items() if k != "folds"
                },
                "config": card["config"],
            }
        )
    )


@app.command()
def retrain(
    history: Annotated[
        str | None,
        typer.Option(
            help="Event history (local or gs://): the transactions*/labels* files 'rillet "
            "simulate' writes, or a backfill feature table. Default: the newest dataset under "
            "<state-dir>/data.",
            parser=parse(
                InputDir(
                    "history",
                    "event files or a backfill feature table",
                    remote_ok=True,
                    fix="pass the directory 'rillet simulate --output DIR' wrote",
                )
            ),
        ),
    ] = None,
    model_dir: ModelDirOut = ".rillet/models",
    now: Annotated[
        str | None,
        typer.Option(
            help="Retraining time: an ISO 8601 date or time (UTC unless an offset is given) "
            "from the history's first day to the day its last day is labelled. Default: the "
            "history's last transaction.",
            parser=parse(When()),
        ),
    ] = None,
    train_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Labelled days to train on. Default: the longest that fits the history, up to "
            "21 (three weeks beat one in make bench-continual).",
        ),
    ] = None,
    eval_days: Annotated[
        int, typer.Option(min=1, help="Latest labelled days the offline check scores.")
    ] = 7,
    register: Annotated[
        str,
        typer.Option(
            help="Register the new version as challenger | champion | none.",
            parser=parse(Choice(("challenger", "champion", "none"))),
        ),
    ] = "challenger",
    quick: Annotated[bool, typer.Option(help="A two-candidate grid (fast).")] = False,
    select: Annotated[
        bool,
        typer.Option(
            help="Choose among the grid's candidates on validation folds (they need another "
            "training window and two weeks of labelled history); --no-select trains the grid's "
            "first candidate.",
        ),
    ] = True,
    work_dir: Annotated[
        str | None,
        typer.Option(
            help="Keep the backfill and the holdout fit here.",
            parser=parse(OutputDir("a work directory", remote_ok=True)),
        ),
    ] = None,
    inputs: InputsOption = None,
    definitions: DefinitionsOption = None,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Continual learning, one step: point-in-time training data from the history up to now
    minus the label delay (the backfill: the streaming job's feature code), selection and
    training, an offline check against the champion on the latest labelled days, and the new
    version registered as challenger (the promotion policy, 'rillet models policy', decides
    the rest). Prints the result as JSON."""
    local = None if history is None or history.startswith("gs://") else Path(history)
    defs = _definitions_of(definitions, local)
    history = history or str(latest_dataset(state_dir, defs.name))  # a given one: its kind
    _quiet_tensorflow()
    import tempfile

    from models.selection import GRID, QUICK_GRID
    from pipelines.app.retrain import RetrainConfig, copy_version
    from pipelines.app.retrain import register as register_version
    from pipelines.app.retrain import retrain as run_retrain
    from pipelines.stores.model_registry import ModelRegistry, RegistryError

    model_inputs = chosen_inputs(inputs, defs)
    registry = ModelRegistry(model_dir, definitions=defs)
    try:
        champion = registry.pointer().champion if registry.versions() else None
    except RegistryError as exc:
        raise UserError(str(exc)) from exc
    # Versions are written locally, then copied in (export writes local files; a gs:// registry
    # gets each version whole, its card last).
    local_dir = model_dir if not model_dir.startswith("gs://") else tempfile.mkdtemp()
    grid = QUICK_GRID if quick else GRID
    config = RetrainConfig(
        history=history,
        model_dir=local_dir,
        champion=f"{model_dir.rstrip('/')}/{champion}" if champion else None,
        now=now,
        train_days=train_days,
        eval_days=eval_days,
        grid=grid if select else grid[:1],
        work_dir=work_dir,
        card={"parent": champion},
        inputs=model_inputs,
        definitions=defs,
    )
    try:
        result = run_retrain(config)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if local_dir != model_dir:
        result["version_dir"] = copy_version(result["version_dir"], model_dir)
    if register != "none":
        try:
            pointer = register_version(result, model_dir, as_=register, definitions=defs)
        except RegistryError as exc:
            raise UserError(str(exc), exit_code=RUNTIME) from exc
        result["registered"] = {
            "as": register,
            "champion": pointer.champion,
            "challenger": pointer.challenger,
        }
    typer.echo(json.dumps(result, default=str))


def _protocol(table: Any, train_start: str | None, train_days: int) -> Any:
    """The protocol for a feature table: from --train-start, else the reference protocol's dates
    when the table covers them, else the table's last weeks. A UserError says what does not fit
    and what would."""
    import datetime as dt

    from models.evaluation import Protocol
    from pipelines.app.simulator import PRESETS

    first = table["TX_DATETIME"].min().date()
    last = table["TX_DATETIME"].max().date()
    n_days = (last - first).days + 1
    if train_start:
        try:
            start = dt.date.fromisoformat(train_start)
        except ValueError as exc:
            raise UserError(f"--train-start {train_start!r}: expected YYYY-MM-DD") from exc
        protocol = Protocol(train_start=start, train_days=train_days)
        if protocol.earliest_day < first:
            raise UserError(
                f"--train-start {train_start}: the oldest validation fold would train from "
                f"{protocol.earliest_day}, before the data starts ({first})",
                f"the earliest --train-start for this table is "
                f"{start + (first - protocol.earliest_day)}",
            )
        if protocol.last_day > last:
            raise UserError(
                f"--train-start {train_start}: the test week would end {protocol.last_day}, "
                f"after the data ends ({last})",
                f"the latest --train-start for this table is {start - (protocol.last_day - last)}",
            )
        return protocol
    handbook = Protocol.handbook()
    try:
        handbook.check_fits(first.isoformat(), n_days)
        return handbook
    except ValueError:
        pass
    try:
        return Protocol.last_weeks(first.isoformat(), n_days, train_days=train_days)
    except ValueError:
        need = Protocol.last_weeks("2000-01-01", 1000, train_days=train_days).span_days
        enough = [f"{n} ({c.n_days} days)" for n, c in PRESETS.items() if c.n_days >= need]
        raise UserError(
            f"the feature table covers {n_days} days ({first}..{last}); training, its validation "
            f"folds and the test week need at least {need}",
            "use a longer dataset: rillet simulate --preset " + " or ".join(enough),
        ) from None


@app.command()
def evaluate(
    features: Annotated[
        Path | None,
        typer.Option(
            help="Feature table written by 'rillet backfill', or a dataset (its features "
            "computed here). Default: the newest dataset under <state-dir>/data.",
            parser=parse(InputDir("features", "a feature table or a dataset", fix=_FEATURES_FIX)),
        ),
    ] = None,
    model_dir: ModelDirIn = ".rillet/models",
    model_version: Annotated[
        str,
        typer.Option(
            help="Version, or 'champion' / 'challenger' (the registry's), 'latest'.",
            parser=parse(Version()),
        ),
    ] = "champion",
    served: Annotated[
        bool,
        typer.Option(help="Also score the predictions the streaming pipeline stored in Datastore."),
    ] = True,
    project: ProjectOption = "rillet-local",
    datastore_kind: Annotated[str, typer.Option(parser=parse(KIND))] = "Prediction",
    datastore_namespace: Annotated[str, typer.Option(parser=parse(NAMESPACE))] = "",
    report: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the HTML report. Default: <state-dir>/report.",
            parser=parse(OutputDir("a directory for the report")),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    prediction_logs: Annotated[
        Path | None,
        typer.Option(
            help="Also write the test set's PredictionLogs (TFRecord) here, scored through "
            "tfx-bsl's RunInference handler on the serving_default signature (for TFMA, "
            "monitoring baselines, retraining).",
            parser=parse(OutputDir("a directory for the prediction logs")),
        ),
    ] = None,
    definitions: DefinitionsOption = None,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Score the test week once: AUC, AP, Card Precision@100 offline (backfill table) and as
    served (Datastore), score differences, feature consistency, and an HTML report."""
    _quiet_tensorflow()
    from pipelines.app.evaluate import EvaluationConfig
    from pipelines.app.evaluate import evaluate as run_evaluation

    if served and project == "rillet-local":
        use_local_stack(state_dir)
    defs = _definitions_of(definitions, features)
    try:
        result = run_evaluation(
            EvaluationConfig(
                feature_table=features or latest_dataset(state_dir, defs.name),
                model_dir=Path(model_dir),
                model_version=model_version,
                served=served,
                project=project,
                kind=datastore_kind,
                namespace=datastore_namespace or None,
                report_dir=report or state_dir / "report",
                prediction_logs=prediction_logs,
                definitions=defs,
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    _print_result(result, as_json)
    if served and not result.get("ok", False):
        raise typer.Exit(1)


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model {result['model_version']}: test {result['protocol']['test']}")
    table.add_column("")
    table.add_column("AUC")
    table.add_column("AP")
    table.add_column("CP@100")
    for side in ("offline", "served"):
        m = result.get(side)
        if m:
            table.add_row(side, f"{m['auc']:.4f}", f"{m['ap']:.4f}", f"{m['cp100']:.4f}")
    console = Console()
    console.print(table)
    for key in ("n_test", "n_served", "max_abs_score_diff", "consistency", "report"):
        if key in result:
            console.print(f"{key}: {result[key]}")


@app.command()
def deploy(
    project: Annotated[str, typer.Option(help="Google Cloud project.", parser=parse(PROJECT))],
    region: Annotated[
        str, typer.Option(help="Dataflow and Artifact Registry region.", parser=parse(REGION))
    ],
    bucket: Annotated[
        str,
        typer.Option(
            help="Bucket (its name, without gs://) for templates, staging, temp, models.",
            parser=parse(Bucket()),
        ),
    ],
    repository: Annotated[
        str, typer.Option(help="Artifact Registry repository id.", parser=parse(REPOSITORY))
    ],
    service_account: Annotated[
        str, typer.Option(help="Dataflow worker service account.", parser=parse(Email()))
    ],
    job_name: Annotated[str, typer.Option(parser=parse(JOB_NAME))] = "rillet",
    version: Annotated[
        str, typer.Option(help="Image and template version tag.", parser=parse(TAG))
    ] = "dev",
    model_dir: Annotated[
        str,
        typer.Option(
            help="Default: gs://<bucket>/models.",
            parser=parse(
                Name(r"gs://[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9](/.*)?", "a gs:// path", True)
            ),
        ),
    ] = "",
    model_version: Annotated[str, typer.Option(parser=parse(Version()))] = "champion",
    max_workers: Annotated[int, typer.Option(min=1)] = 10,
    num_workers: Annotated[int, typer.Option(min=1)] = 1,
    subnetwork: Annotated[
        str | None, typer.Option(help="Subnetwork (no public IPs).", parser=parse(SUBNETWORK))
    ] = None,
    update: Annotated[
        bool, typer.Option(help="Replace the running job of this name, keeping its state.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the commands, run nothing.")] = False,
) -> None:
    """Build and push the image, build the Flex Template, launch (or --update) the streaming job.
    See README "Deploying to Dataflow"."""
    from pipelines.app.deploy import DeployConfig, DeployError, deploy_commands, run_commands

    commands = deploy_commands(
        DeployConfig(
            project=project,
            region=region,
            bucket=bucket,
            repository=repository,
            service_account=service_account,
            job_name=job_name,
            version=version,
            model_dir=model_dir,
            model_version=model_version,
            max_workers=max_workers,
            num_workers=num_workers,
            subnetwork=subnetwork,
            update=update,
        )
    )
    if dry_run:
        import shlex

        for command in commands:
            typer.echo(shlex.join(command))
        return
    try:
        run_commands(commands)
    except DeployError as exc:
        raise UserError(str(exc), exit_code=RUNTIME) from exc


@app.command()
def plan(
    events_per_second: Annotated[
        float, typer.Option(min=0.001, help="Input rate to plan for (transactions + labels).")
    ],
    vcpus_per_worker: Annotated[int, typer.Option(min=1, help="vCPUs per Dataflow worker.")] = 4,
    target_utilisation: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="Planned utilisation (headroom).")
    ] = 0.6,
    hot_share: Annotated[
        float,
        typer.Option(
            min=0.000001,
            max=1.0,
            help="The hottest entity's share of the input (a big merchant's terminal: 0.05). "
            "Default: the reference workload's hottest key.",
        ),
    ] = HOTTEST_KEY_SHARE,
    definitions: DefinitionsOption = None,
) -> None:
    """Estimate Dataflow workers, Bigtable nodes and the Datastore write rate for a given input
    rate, and the hottest entity's key utilisation and largest row, from the per-event costs
    measured here and each service's published guidance, for the job of --definitions (its
    entity stages' rows; default: the handbook's file)."""
    from pipelines.app.capacity import Assumptions
    from pipelines.app.capacity import plan as make_plan

    defs = definitions_for(definitions)
    typer.echo(
        json.dumps(
            make_plan(
                events_per_second,
                Assumptions.of(
                    defs,
                    vcpus_per_worker=vcpus_per_worker,
                    target_utilisation=target_utilisation,
                    hottest_key_share=hot_share,
                ),
                defs,
            ),
            indent=2,
        )
    )


@app.command("replay-eval")
def replay_eval(
    preset: Annotated[
        str,
        typer.Option(
            help="Simulator preset (handbook: the reference protocol, "
            "docs/specs/reference-workload.md).",
            parser=PRESET,
        ),
    ] = "handbook",
    work_dir: Annotated[
        Path,
        typer.Option(
            help="Data, models, logs, report.", parser=parse(OutputDir("a work directory"))
        ),
    ] = Path(".rillet/replay-eval"),
    rate: Annotated[float, typer.Option(min=1, help="Replay rate, events per second.")] = 400,
    timeout: Annotated[float, typer.Option(min=10, help="Seconds to wait for predictions.")] = (
        1800
    ),
    quick: Annotated[bool, typer.Option(help="Two-candidate model selection (fast).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The whole chain: simulate -> backfill -> warm store -> select + train -> stream the test
    week through Pub/Sub -> evaluate offline vs served -> report."""
    _quiet_tensorflow()
    from pipelines.app.local import StackError
    from pipelines.app.replay_eval import ReplayEvalConfig, run_replay_eval

    try:
        result = run_replay_eval(
            ReplayEvalConfig(
                preset=preset, work_dir=work_dir, rate=rate, timeout_s=timeout, quick=quick
            )
        )
    except (StackError, ValueError, TimeoutError) as exc:
        raise UserError(str(exc), exit_code=RUNTIME) from exc
    _print_result(result, as_json)
    if not result.get("ok", False):
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    state_dir: StateDir = STATE_DIR,
    emulators: Annotated[
        bool, typer.Option(help="Point the clients at the local emulators from 'rillet local up'.")
    ] = True,
    resume: Annotated[
        bool,
        typer.Option(
            help="DirectRunner: recover what a killed job had in flight (seek the subscriptions "
            "back to its checkpoint). --no-resume starts from the subscriptions as they are."
        ),
    ] = True,
    status_every: Annotated[
        float, typer.Option(min=0.5, help="Seconds between the status lines.")
    ] = 10.0,
) -> None:
    """Run the streaming pipeline. Extra arguments are Beam pipeline options, e.g.
    --runner=DirectRunner --project=rillet-local --model_dir=.rillet/models
    --definitions=pipelines/workloads/payments.yaml (see pipelines/options.py for the rillet
    options; --model_dir defaults to <state-dir>/models, where 'make demo' registers its model;
    --definitions, the features' file the job computes and serves, to the handbook's, and the
    model served must have been trained on it). On the DirectRunner the job keeps a recovery
    checkpoint in <state-dir>/recovery/ unless --recovery_checkpoint says otherwise, and a
    monitoring snapshot in <state-dir>/monitor/ ('rillet monitor') unless --monitor_dir does."""
    typed: dict[str, str] = (ctx.obj or {}).get("typed", {})
    argv = list(ctx.args)
    if not any(a.startswith("--project") for a in argv) and emulators:
        argv.append("--project=rillet-local")
    if not any(a.startswith("--model_dir") for a in argv):
        argv.append(f"--model_dir={state_dir / 'models'}")
    # The job's own arguments first, without Beam or TensorFlow: a malformed value is answered
    # at once.
    from pipelines.core.job_arguments import BadArguments, job_parser, stray_positionals

    see = "see 'rillet run --help'"
    try:
        # The user's own values (the defaults added above are well formed) and other flags:
        # Beam's options, or typos.
        _, others = job_parser(check_paths=False).parse_known_args(list(ctx.args))
    except BadArguments as exc:
        raise UserError(_as_typed(str(exc), typed), see) from None
    stray = stray_positionals(argv)
    if stray:
        raise UserError(
            f"unexpected argument(s) {' '.join(stray)}: options are --name=value (a value with "
            "spaces needs quotes)"
        )
    if any(a.startswith("-") for a in others):  # only Beam knows its own
        from pipelines.main import unknown_argument_errors

        for error in unknown_argument_errors(argv):
            raise UserError(_as_typed(error.removesuffix(f"; {see}"), typed), see)
    try:
        known, _ = job_parser().parse_known_args(argv)  # now the paths too
    except BadArguments as exc:
        raise UserError(_as_typed(str(exc), typed), exc.fix or see) from None
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    from pipelines.main import checked_options
    from pipelines.options import RilletOptions
    from pipelines.streaming import DIRECT_RUNNERS

    options, errors = checked_options(argv)
    if errors:
        raise UserError(_as_typed(errors[0], typed), "see 'rillet run --help'")
    problems = _model_errors(options.view_as(RilletOptions))
    if problems:
        raise UserError(problems[0])
    direct = (options.view_as(StandardOptions).runner or "DirectRunner") in DIRECT_RUNNERS
    if direct:
        # One local job per feature table, held until the command returns (or the process dies);
        # taken before --no-resume deletes a checkpoint a running job may be using.
        from pipelines.app.job_lock import hold_table_lock

        project_id = options.view_as(GoogleCloudOptions).project or ""
        table = (project_id, known.bigtable_instance, known.bigtable_table)
        ctx.with_resource(hold_table_lock(state_dir, *table))
    checkpoint = known.recovery_checkpoint
    if not checkpoint and direct:
        checkpoint = str(state_dir / "recovery" / "checkpoint.json")
        argv.append(f"--recovery_checkpoint={checkpoint}")
    if not known.monitor_dir and direct:
        argv.append(f"--monitor_dir={state_dir / 'monitor'}")  # what 'rillet monitor' reads
    if not resume and checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    project = next((a.split("=", 1)[1] for a in argv if a.startswith("--project=")), "")
    if emulators and project == "rillet-local":
        use_local_stack(state_dir)
    _quiet_tensorflow()
    from pipelines.app.job_status import ready_lines, resuming_line
    from pipelines.local_runner.recovery import replay
    from pipelines.main import run as run_pipeline
    from pipelines.stores.model_registry import ModelRegistry
    from pipelines.transforms.inference import resolve_model
    from pipelines.transforms.model_serving import Served

    opts = options.view_as(RilletOptions)
    defs = opts.job_definitions()
    model = resolve_model(opts.model_dir, opts.model_version, defs, defs.names)
    announced = Served(0, 0.0, model.version, None)
    if opts.model_version == "champion":
        pointer = ModelRegistry(opts.model_dir).pointer()
        announced = Served(pointer.generation, 0.0, model.version, pointer.challenger)
    result = run_pipeline(argv, wait=False)
    for line in ready_lines(options, model.version, announced.challenger):
        typer.echo(f"rillet run: {line}" if line.startswith("ready") else line)
    if replay().resumed:  # the seek is done when run_pipeline returns
        typer.echo(resuming_line(replay(), checkpoint))
    _watch(result, status_every, announced)


def _as_typed(message: str, typed: dict[str, str]) -> str:
    """``message`` with each option spelt as the user typed it (spell_options rewrote it)."""
    for spelt, original in typed.items():
        message = message.replace(spelt, original)
    return message


def _quiet_tensorflow() -> None:
    """Imports TensorFlow (and runs one op) with the process's stderr sent to /dev/null: its C++
    start-up notes (oneDNN, absl's "before InitializeLog") are printed then, whatever
    TF_CPP_MIN_LOG_LEVEL says (TensorFlow 2.21), and are not rillet's to show. An import error
    still raises, after stderr is back."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        tf.constant(1) + 1
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def _watch(result: Any, every_s: float, announced: Any) -> None:
    """A status line every ``every_s`` until the job ends (its error is raised) or Ctrl-C
    (the job is cancelled); between them, a line as soon as the models served change (from the
    ``announced`` pair on) and, after a restart, one when the replay is over."""
    import signal
    import threading
    import time

    from pipelines.app.job_status import (
        JobStatus,
        change_lines,
        read_status,
        resumed_line,
        status_line,
    )
    from pipelines.local_runner.recovery import replay

    failures: list[BaseException] = []

    def wait() -> None:
        try:
            result.wait_until_finish()
        except BaseException as exc:  # re-raised in the main thread
            failures.append(exc)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # a plain `kill` stops the job as Ctrl-C does

    signal.signal(signal.SIGTERM, interrupt)
    waiter = threading.Thread(target=wait, daemon=True, name="rillet-job")
    waiter.start()
    before, since = JobStatus(), time.monotonic()
    served = announced
    replaying = replay().resumed
    try:
        while True:
            # Polled more often than the status is printed: a promotion shows within seconds.
            waiter.join(min(every_s, 2.0))
            if not waiter.is_alive():
                break
            now = read_status(result)
            changes, served = change_lines(served, now.served)
            for line in changes:
                typer.echo(f"rillet run: {line}")
            if replaying and replay().done:
                replaying = False
                counts = replay().counts()
                names = {s: s.rsplit("/", 1)[-1] for s in counts}
                typer.echo(
                    "rillet run: "
                    + resumed_line(
                        replay().checkpoint_written_us / 1e6,
                        {names[s]: n for s, n in counts.items()},
                    )
                )
            if time.monotonic() - since >= every_s:
                typer.echo(f"rillet run: {status_line(now, before, time.monotonic() - since)}")
                before, since = now, time.monotonic()
    except KeyboardInterrupt:
        typer.echo("rillet run: stopping ...")
        result.cancel()
        typer.echo("rillet run: stopped")
        return
    if failures:
        raise failures[0]


def _model_errors(opts: Any) -> list[str]:
    """The model the job would serve: its directory and version exist and its card matches the
    job's definitions (--definitions)."""
    from pipelines.transforms.inference import model_versions, resolve_model

    model_dir = opts.model_dir
    if not model_dir.startswith("gs://") and not Path(model_dir).is_dir():
        return [
            f"--model_dir {model_dir}: no such directory; train a model into it with "
            f"'rillet train --features OUT/features --model-dir {model_dir}'"
        ]
    try:
        defs = opts.job_definitions()
        resolve_model(model_dir, opts.model_version, defs, defs.names)
    except FileNotFoundError as exc:
        if opts.model_version in ("latest", "champion", "challenger"):
            return [str(exc)]
        versions = model_versions(model_dir)
        return [
            f"--model_version {opts.model_version}: not in {model_dir}; available: "
            + (", ".join(versions) or "none (train one with 'rillet train')")
        ]
    except (ValueError, KeyError, OSError) as exc:
        return [f"--model_dir {model_dir}: {exc}"]
    return []


MonitorDir = Annotated[
    Path | None,
    typer.Option(
        help="The job's --monitor_dir. Default: <state-dir>/monitor ('rillet run' writes it).",
        parser=parse(OutputDir("the job's --monitor_dir")),
    ),
]
AlertThresholds = Annotated[
    Path | None,
    typer.Option(
        help="The job's --alert_thresholds file. Default: the packaged thresholds.",
        parser=parse(InputFile("a JSON file of alert thresholds")),
    ),
]


def _monitor_thresholds(path: Path | None) -> Any:
    from pipelines.core.thresholds import load_thresholds

    try:
        return load_thresholds(path)
    except ValueError as exc:
        raise UserError(str(exc), "pass a valid --alert-thresholds file (or none)") from exc


@app.command()
def monitor(
    monitor_dir: MonitorDir = None,
    state_dir: StateDir = STATE_DIR,
    refresh: Annotated[float, typer.Option(min=0.2, help="Seconds between two redraws.")] = 2.0,
    alerts: Annotated[int, typer.Option(min=0, help="Recent alerts shown.")] = 10,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    alert_thresholds: AlertThresholds = None,
) -> None:
    """A live dashboard of a local job (DirectRunner): throughput, latency, backlog, lag, drift,
    online quality, data quality and the recent alerts, from the snapshot the job writes into
    its --monitor_dir (docs/specs/monitoring.md). Ctrl-C exits."""
    from pipelines.app.monitor_view import watch

    directory = monitor_dir or state_dir / "monitor"
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--monitor-dir {directory} is a file; expected the job's --monitor_dir")
    watch(
        directory,
        refresh_s=refresh,
        alerts_n=alerts,
        thresholds=_monitor_thresholds(alert_thresholds),
        once=once,
    )


@app.command()
def report(
    monitor_dir: MonitorDir = None,
    state_dir: StateDir = STATE_DIR,
    run: Annotated[
        str | None,
        typer.Option(
            help="The run to report (its id or a prefix; see --list). Default: the latest.",
            parser=parse(RUN_ID),
        ),
    ] = None,
    list_runs: Annotated[
        bool, typer.Option("--list", help="List the runs of the monitor directory and exit.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Report directory. Default: <monitor-dir>/runs/<run id>/report.",
            parser=parse(OutputDir("a directory for the report")),
        ),
    ] = None,
    alert_thresholds: AlertThresholds = None,
) -> None:
    """An HTML report of one run (one job process; the latest unless --run) from its monitoring
    history (<monitor-dir>/runs/<run id>/history.jsonl and alerts.jsonl): throughput, latency,
    drift, data quality over time, and the alerts."""
    from pipelines.app.run_report import (
        NoHistory,
        UnknownRun,
        pick_run,
        runs_lines,
        runs_table,
        write_run_report,
    )
    from pipelines.local_runner.snapshot import run_dir

    directory = monitor_dir or state_dir / "monitor"
    no_history = (
        "run a job with --monitor_dir=DIR ('rillet run' writes <state-dir>/monitor) and pass "
        "that DIR"
    )
    if list_runs:
        rows = runs_table(directory)
        if not rows:
            raise UserError(
                f"--monitor-dir {directory}: no run's monitoring history there", no_history
            )
        for line in runs_lines(rows):
            typer.echo(line)
        return
    try:
        run_id = pick_run(directory, run)
        page = write_run_report(
            run_dir(directory, run_id), out, _monitor_thresholds(alert_thresholds)
        )
    except NoHistory as exc:
        raise UserError(
            f"--monitor-dir {directory}: no run's monitoring history there", no_history
        ) from exc
    except UnknownRun as exc:
        raise UserError(str(exc), "list the runs with 'rillet report --list'") from exc
    typer.echo(f"report of run {run_id}: {page}")


@app.command()
def publish(
    input: DatasetDir = None,
    rate: Annotated[
        float, typer.Option(min=0, help="Events per second (0: as fast as possible).")
    ] = 1000,
    limit: Annotated[int, typer.Option(min=0, help="Only the first N transactions (0: all).")] = 0,
    first_day: Annotated[
        str | None,
        typer.Option(help="Only transactions from this UTC day (YYYY-MM-DD).", parser=parse(Day())),
    ] = None,
    last_day: Annotated[
        str | None,
        typer.Option(help="Only transactions up to this UTC day, inclusive.", parser=parse(Day())),
    ] = None,
    labels: Annotated[
        bool, typer.Option(help="Also publish the labels, 7 days of event time later.")
    ] = True,
    project: ProjectOption = "rillet-local",
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Replay a dataset to the transaction and label topics at a given rate."""
    from pipelines.app.publisher import publish_events, replay_events
    from pipelines.app.simulator import read_dataset

    input = input or latest_dataset(state_dir)
    if not (input / "transactions.parquet").exists() or not (input / "labels.parquet").exists():
        raise UserError(
            f"--input {input} has no transactions.parquet and labels.parquet", _DATASET_FIX
        )
    frame = read_dataset(input)
    if first_day or last_day:
        from models.evaluation import rows_in

        whole = frame
        frame = rows_in(frame, (first_day or "0000-01-01", last_day or "9999-12-31"))
        if frame.empty:
            span = (
                f"{whole.TX_DATETIME.min():%Y-%m-%d}..{whole.TX_DATETIME.max():%Y-%m-%d}"
                if len(whole)
                else "nothing"
            )
            raise UserError(
                f"no transaction from --first-day {first_day or '(any)'} to --last-day "
                f"{last_day or '(any)'}; {input} covers {span}",
                "choose days inside that span",
            )
    if limit:
        frame = frame.iloc[:limit]
    if frame.empty:
        raise UserError(f"{input} holds no transaction", _DATASET_FIX)
    if project == "rillet-local":
        use_local_stack(state_dir)
    events = replay_events(frame, include_labels=labels)
    topics = {
        "transactions": f"projects/{project}/topics/transactions",
        "labels": f"projects/{project}/topics/labels",
    }
    n = publish_events(events, topics, rate)
    typer.echo(f"published {n:,} events")


@app.command()
def tail(
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="key=value or key!=value on an attribute (risk_band, model_version, "
            "correction, schema_version, transaction_id; with --dead-letters: reason, stage, "
            "source, original_message_id); repeatable: different keys all hold, one key's "
            "values are alternatives.",
            parser=parse(Text("key=value or key!=value")),
        ),
    ] = None,
    subscription: Annotated[
        str | None,
        typer.Option(
            help="Read this subscription (default: a new tail-<random>, deleted after).",
            parser=parse(PUBSUB_NAME),
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="Stop after N predictions or dead letters (0: no limit).")
    ] = 0,
    timeout: Annotated[
        float, typer.Option(min=0, help="Stop after S seconds without one (0: until Ctrl-C).")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the message data as JSON lines.")
    ] = False,
    project: ProjectOption = "rillet-local",
    topic: Annotated[
        str | None,
        typer.Option(
            help="The topic (default: predictions, or dead-letter with --dead-letters).",
            parser=parse(PUBSUB_NAME),
        ),
    ] = None,
    dead_letters: Annotated[
        bool,
        typer.Option(
            "--dead-letters",
            help="Follow dead letters (their reason, stage, source, detail), not predictions; "
            "implied by --topic dead-letter.",
        ),
    ] = False,
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Follow the predictions as a downstream service does: subscribe (optionally filtered on
    the attributes), keep the highest revision per transaction, print each new prediction or
    update, then a summary (see docs/specs/messages.md). With --dead-letters: the rejected
    messages and why."""
    from pipelines.app.tail import (
        DEAD_LETTER_FILTER_KEYS,
        FILTER_KEYS,
        TailConfig,
        parse_filters,
        run_tail,
    )

    dead_letters = dead_letters or topic == "dead-letter"
    topic = topic or ("dead-letter" if dead_letters else "predictions")
    conditions = parse_filters(
        filters or [], DEAD_LETTER_FILTER_KEYS if dead_letters else FILTER_KEYS
    )
    if project == "rillet-local":
        use_local_stack(state_dir)
    run_tail(
        TailConfig(
            project,
            topic,
            conditions,
            subscription,
            limit,
            timeout,
            as_json,
            dead_letters=dead_letters,
        )
    )


@app.command()
def demo(
    workload: Annotated[
        str,
        typer.Option(
            help="The workload to run: its definitions file pipelines/workloads/NAME.yaml and "
            "its simulator (" + " | ".join(workload_names()) + ").",
            parser=parse(Choice(workload_names())),
        ),
    ] = "handbook",
    preset: Annotated[str, typer.Option(help="Simulator preset to replay.", parser=PRESET)] = (
        "small"
    ),
    rate: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="Replay rate, events per second. Default: the workload's (handbook 400, "
            "payments 200: what the job sustains here with room to spare).",
        ),
    ] = None,
    work_dir: Annotated[
        Path,
        typer.Option(
            help="Where data, models, logs and state go.",
            parser=parse(OutputDir("the local state folder")),
        ),
    ] = STATE_DIR,
    timeout: Annotated[
        float, typer.Option(min=10, help="Seconds to wait for all predictions.")
    ] = 600,
) -> None:
    """The whole product on the emulators: simulate, train, stream, predict, summarise, for
    a workload of pipelines/workloads/ (the job runs with --definitions=<its file>)."""
    from pipelines.app.demo import DemoConfig, demo_presets, run_demo
    from pipelines.app.local import StackError

    presets = demo_presets(workload)
    if preset not in presets:
        raise UserError(
            f"the {workload} workload has no preset {preset!r}",
            fix="pass --preset " + " | ".join(presets),
        )
    _quiet_tensorflow()
    try:
        summary = run_demo(
            DemoConfig(
                preset=preset, rate=rate, work_dir=work_dir, timeout_s=timeout, workload=workload
            )
        )
    except StackError as exc:
        raise UserError(str(exc), exit_code=RUNTIME) from exc
    if not summary["complete"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    main()
