"""Every ``rillet`` option's value kind, for typer, and the local state folder's defaults.

Options declare their value with ``typer.Option(parser=parse(KIND))`` (or one of the aliases
below), so typer refuses a malformed value while it reads the command line, before a command
imports Beam or TensorFlow; ``pipelines.app.cli.main`` prints the refusal as one line. The kinds
are pipelines/core/values.py, shared with the streaming job's own arguments.

The local state folder (``.rillet``, ``--state-dir``) holds what ``make demo`` makes and every
command reads by default: ``data/<preset>/`` (datasets), ``models/`` (versions and registry),
``monitor/`` (the job's snapshots, one history per run), ``logs/``, ``recovery/``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.core.values import (
    BadValue,
    Choice,
    InputDir,
    InputFile,
    Name,
    OutputDir,
    Project,
    Value,
    Version,
)

__all__ = [
    "JOB_NAME",
    "PRESET",
    "PROJECT",
    "REGION",
    "REPOSITORY",
    "RUN_ID",
    "STATE_DIR",
    "SUBNETWORK",
    "TAG",
    "DatasetDir",
    "ModelDirIn",
    "ModelDirOut",
    "ProjectOption",
    "StateDir",
    "VersionArg",
    "kind_of",
    "latest_dataset",
    "parse",
    "parse_when",
]

STATE_DIR = Path(".rillet")
MODELS = ".rillet/models"


def parse(kind: Value) -> Callable[[Any], Any]:
    """A typer ``parser`` for values of ``kind``: a malformed one is typer's BadParameter (a
    usage error, exit 2) carrying the kind's message."""

    def convert(text: Any) -> Any:
        try:
            return kind(text)
        except BadValue as exc:
            raise typer.BadParameter(str(exc)) from None

    convert.value_kind = kind  # type: ignore[attr-defined]  # for kind_of
    return convert


def kind_of(param: Any) -> Value | None:
    """The value kind a typer parameter declares (None: typer's own int, float, bool ...)."""
    info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
    return getattr(getattr(info, "parser", None), "value_kind", None)


# pipelines/app/simulator.py and payments_simulator.py PRESETS; the command checks the pair.
PRESET = parse(Choice(("handbook", "large", "small", "tiny")))
WORKLOAD = parse(Choice(("handbook", "payments")))  # pipelines/workloads/NAME.yaml
PROJECT = Project()
REGION = Name(r"[a-z]+-[a-z]+[0-9]+", "a Google Cloud region, e.g. europe-west1")
REPOSITORY = Name(r"[a-z][-a-z0-9]{0,62}", "an Artifact Registry repository id (lowercase)")
JOB_NAME = Name(r"[a-z]([-a-z0-9]{0,62}[a-z0-9])?", "a Dataflow job name (lowercase, digits, -)")
TAG = Name(r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,127}", "an image tag (letters, digits, _ . -)")
RUN_ID = Name(r"[-0-9A-Za-z_.]{1,64}", "a run id or its prefix (see 'rillet report --list')")
SUBNETWORK = Name(
    r"(https://www\.googleapis\.com/compute/v1/)?(projects/[^/\s]+/)?regions/[a-z0-9-]+/"
    r"subnetworks/[a-z]([-a-z0-9]*[a-z0-9])?",
    "a subnetwork as regions/REGION/subnetworks/NAME (or its full URL)",
)

StateDir = Annotated[
    Path,
    typer.Option(
        help="The local state folder: data, models and registry, monitoring, logs, the "
        "emulators' pids and ports.",
        parser=parse(OutputDir("a directory for rillet's local state")),
    ),
]
ModelDirIn = Annotated[
    str,
    typer.Option(
        help="The model directory (local or gs://): versions and registry.json.",
        parser=parse(
            InputDir(
                "models",
                "a model directory (<version>/saved_model, registry.json)",
                remote_ok=True,
                fix="'make demo' or 'rillet train' makes one in .rillet/models",
            )
        ),
    ),
]
ModelDirOut = Annotated[
    str,
    typer.Option(
        help="The model directory (local or gs://) the new version and registry go to.",
        parser=parse(OutputDir("a directory for model versions", remote_ok=True)),
    ),
]
DatasetDir = Annotated[
    Path | None,
    typer.Option(
        help="A dataset directory written by 'rillet simulate' (transactions/labels Parquet). "
        "Default: the newest under <state-dir>/data (what 'make demo' made).",
        parser=parse(
            InputDir(
                "dataset",
                "a dataset directory written by 'rillet simulate'",
                fix="make a dataset with 'rillet simulate --output DIR' and pass --input DIR",
            )
        ),
    ),
]
DefinitionsOption = Annotated[
    Path | None,
    typer.Option(
        "--definitions",
        help="The definitions file (docs/specs/definitions.md). Default: the workload's under "
        "pipelines/workloads/ (handbook.yaml).",
        parser=parse(InputFile("a definitions file (YAML, docs/specs/definitions.md)")),
    ),
]


def workload_names() -> tuple[str, ...]:
    """The workloads shipped under pipelines/workloads/ (their definitions files' stems)."""
    from pipelines.core.declarations import WORKLOADS

    return tuple(sorted(p.stem for p in WORKLOADS.glob("*.yaml")))


def definitions_for(path: Path | None = None, workload: str = "handbook") -> Any:
    """The checked definitions of ``path`` (or of the workload's shipped file); a file with
    mistakes is a UserError listing each with its place."""
    from pipelines.app.errors import UserError
    from pipelines.core.declarations import WORKLOADS, DefinitionsError, load_definitions

    try:
        return load_definitions(path if path is not None else WORKLOADS / f"{workload}.yaml")
    except DefinitionsError as error:
        raise UserError(
            f"{error.source}: " + "; ".join(error.errors),
            "fix the file (docs/specs/definitions.md documents every key)",
        ) from None


ProjectOption = Annotated[
    str,
    typer.Option(
        help="Google Cloud project (rillet-local: the local emulators).", parser=parse(PROJECT)
    ),
]
VersionArg = Annotated[
    str,
    typer.Argument(
        help="A model version, or champion, challenger, latest.", parser=parse(Version())
    ),
]


# A dataset of another workload than the handbook's names it in this file (absent: handbook).
WORKLOAD_MARK = "workload"


def workload_of(dataset: Path) -> str:
    """The workload a dataset folder was simulated for (``rillet simulate --workload``)."""
    mark = dataset / WORKLOAD_MARK
    return mark.read_text().strip() if mark.exists() else "handbook"


def latest_dataset(state_dir: Path, workload: str = "handbook") -> Path:
    """The newest dataset of ``workload`` under ``<state_dir>/data`` (the demo's), for commands
    given none."""
    from pipelines.app.errors import UserError

    found = sorted(
        (
            d
            for d in (state_dir / "data").glob("*")
            if (d / "transactions.parquet").exists() and workload_of(d) == workload
        ),
        key=lambda d: (d / "transactions.parquet").stat().st_mtime,
    )
    if not found:
        others = sorted(
            {workload_of(d) for d in (state_dir / "data").glob("*") if d.is_dir()} - {workload}
        )
        if others:
            raise UserError(
                f"no {workload} dataset in {state_dir / 'data'} (there is a {others[0]} one)",
                f"pass --definitions pipelines/workloads/{others[0]}.yaml for it",
            )
        raise UserError(
            f"no dataset in {state_dir / 'data'} (and no --input)",
            "run 'make demo' (or 'rillet simulate --output DIR') and pass --input DIR",
        )
    return found[-1]


_WHEN_EXPECTED = "an ISO 8601 date or date and time, e.g. 2018-05-26 or 2018-05-26T12:00:00Z"


def parse_when(text: str, option: str) -> dt.datetime:
    """``text`` as a UTC datetime: an ISO 8601 date (its midnight, UTC) or date and time (without
    an offset: UTC). Anything else (``26/05/2018``, ``2018-5-26``, ``2018-13-01``) is a
    UserError saying what ``option`` expects (for callers given the text by other means than
    the command line's When kind, e.g. a RetrainConfig)."""
    from pipelines.app.errors import UserError

    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        # fromisoformat's reason helps for a well-formed but impossible date ("month must be in
        # 1..12"); for a malformed one it only repeats the value.
        reason = str(exc)
        why = f" ({reason})" if not reason.startswith("Invalid isoformat") else ""
        raise UserError(f"{option} {text}: not a date{why}; expected {_WHEN_EXPECTED}") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)
