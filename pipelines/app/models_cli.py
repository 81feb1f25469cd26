"""``rillet models``: the model registry of a model directory (pipelines/stores/model_registry.py).

list, show, promote, challenge, rollback, policy change the pointer file; compare and
auto-promote read the online evaluation (Datastore kind ``ModelEvaluation``) of the champion and
the challenger and apply the promotion policy.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.app.errors import RUNTIME, UserError
from pipelines.app.parsing import (
    PROJECT,
    STATE_DIR,
    DefinitionsOption,
    ModelDirIn,
    StateDir,
    definitions_for,
    parse,
)
from pipelines.core.job_arguments import NAMESPACE
from pipelines.core.values import Choice, Version

models_app = typer.Typer(
    help="The model registry: versions, champion, challenger, promotion.", no_args_is_help=True
)

ModelDir = ModelDirIn
_MODEL_DIR = ".rillet/models"
_FIX = "train one with 'rillet train --features OUT/features --model-dir {}'"


@contextmanager
def _user_errors() -> Iterator[None]:
    from pipelines.stores.model_registry import RegistryConflict, RegistryError

    try:
        yield
    except RegistryConflict as exc:  # a lost race, not a wrong argument: exit 1
        raise UserError(str(exc), exit_code=RUNTIME) from exc
    except RegistryError as exc:
        raise UserError(str(exc)) from exc


def _registry(model_dir: str, definitions: Any = None) -> Any:
    """The registry of ``model_dir``; its versions are checked against ``definitions`` (a
    ``Definitions``; None: the handbook's file)."""
    from pipelines.stores.model_registry import ModelRegistry

    if not model_dir.startswith("gs://") and not Path(model_dir).is_dir():
        raise UserError(
            f"--model-dir {model_dir}: no such directory; expected <version>/saved_model/ and "
            f"<version>/model_card.json",
            _FIX.format(model_dir),
        )
    return ModelRegistry(model_dir, definitions=definitions)


def _who() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "unknown"


def _roles(pointer: Any) -> str:
    return f"champion {pointer.champion or '(none)'}, challenger {pointer.challenger or '(none)'}"


def _created(version: str, card: dict[str, Any]) -> str:
    if card.get("created_at"):
        return str(card["created_at"])
    try:
        when = dt.datetime.strptime(version, "%Y%m%dT%H%M%S%fZ")
    except ValueError:
        return ""
    return when.strftime("%Y-%m-%d %H:%M")


def _offline(card: dict[str, Any]) -> dict[str, float | None]:
    """The card's offline metrics: the chosen configuration's validation means."""
    metrics = card.get("validation_metrics") or {}
    return {k: metrics.get(k) for k in ("auc", "ap", "cp100")}


def _console() -> Any:
    """A rich console; not on a terminal, wide enough for the tables' rows on one line."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def version_rows(registry: Any) -> list[dict[str, Any]]:
    """One row per version: version, role, created, training_range, auc, ap, cp100, problem
    (an incomplete version, or one the registry's definitions cannot serve: which inputs)."""
    from pipelines.stores.model_registry import RegistryError, check_card

    pointer = registry.pointer()
    rows = []
    for version in registry.versions():
        role = {pointer.champion: "champion", pointer.challenger: "challenger"}.get(version, "")
        row: dict[str, Any] = {"version": version, "role": role, "problem": None}
        card: dict[str, Any] = {}
        try:
            card = registry.card(version)
            check_card(version, card, registry.definitions)
        except RegistryError as exc:
            row["problem"] = str(exc)
        span = card.get("training_range") or []
        row.update(
            created=_created(version, card),
            training_range=list(span),
            **_offline(card),
        )
        rows.append(row)
    return rows


@models_app.command("list")
def list_versions(
    model_dir: ModelDir = _MODEL_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The versions, oldest first, with the champion and challenger marked, when each was
    trained, its training range and its offline (validation) AUC, AP and CP@100."""
    registry = _registry(model_dir)
    with _user_errors():
        pointer = registry.pointer()
        rows = version_rows(registry)
    if as_json:
        typer.echo(json.dumps({"pointer": pointer.to_json(), "versions": rows}))
        return
    if not rows:
        typer.echo(f"no model version in {model_dir}; {_FIX.format(model_dir)}")
        return
    from rich.table import Table

    typer.echo(
        f"{model_dir}: "
        + (
            f"registry generation {pointer.generation}, updated {pointer.updated_at}"
            if pointer.updated_at
            else "no registry.json: the newest version serves"
        )
    )
    table = Table()
    for column in ("", "version", "created", "training range", "AUC", "AP", "CP@100"):
        table.add_column(column)
    marks = {"champion": "* champion", "challenger": "+ challenger"}
    for row in rows:
        span = row["training_range"]
        table.add_row(
            marks.get(row["role"], ""),
            row["version"],
            row["created"],
            f"{span[0]}..{span[-1]}" if span else "-",
            *(_fmt(row[k]) for k in ("auc", "ap", "cp100")),
        )
    console = _console()
    console.print(table)
    for row in rows:
        if row["problem"]:
            typer.echo(f"{row['version']}: {row['problem']}")


VersionName = Annotated[
    str,
    typer.Argument(
        help="A version (see 'rillet models list'), or champion, challenger or latest.",
        parser=parse(Version()),
    ),
]


def _resolve(registry: Any, name: str | None) -> str | None:
    """The version ``name`` stands for (champion, challenger, latest: the registry's)."""
    if name is None:
        return None
    with _user_errors():
        return str(registry.resolve(name))


def _metrics_line(metrics: dict[str, Any]) -> str:
    shown = [
        f"{label} {float(metrics[key]):.4f}"
        for key, label in (("auc", "AUC"), ("ap", "AP"), ("cp100", "CP@100"))
        if metrics.get(key) is not None
    ]
    return ", ".join(shown) or "none (trained without validation)"


def card_summary(card: dict[str, Any], role: str, card_path: str) -> list[tuple[str, str]]:
    """The lines of ``models show``: what a version is, what it was trained on, how it
    validated; the reference histograms and per-fold figures stay in the card (--json)."""
    span = card.get("training_range") or []
    rows: list[tuple[str, str]] = [
        ("version", f"{card.get('version', '?')}" + (f" ({role})" if role else "")),
        ("created", _created(str(card.get("version", "")), card) or "-"),
        ("framework", str(card.get("framework") or "-")),
    ]
    training = f"{span[0]}..{span[-1]}" if span else "-"
    if card.get("training_rows") is not None:
        training += f" ({int(card['training_rows']):,} rows"
        if card.get("training_frauds") is not None:
            training += f", {int(card['training_frauds']):,} frauds"
        training += ")"
    rows.append(("training", training))
    metrics = card.get("validation_metrics") or {}
    validation = _metrics_line(metrics)
    ranges = card.get("validation_ranges") or []
    if ranges and metrics:
        validation += f" on {len(ranges)} validation week" + ("s" if len(ranges) > 1 else "")
        validation += " (" + ", ".join(f"{r[0]}..{r[-1]}" for r in ranges) + ")"
    rows.append(("validation", validation))
    config = card.get("config") or {}
    if config:
        rows.append(("config", ", ".join(f"{k}={v}" for k, v in config.items())))
    selection = card.get("selection") or {}
    if selection.get("candidates"):
        rows.append(("selection", f"best mean AP of {len(selection['candidates'])} candidates"))
    features = f"{len(card.get('features') or [])} model inputs"
    definitions = card.get("definitions") or {}
    if card.get("feature_fingerprints") and definitions.get("name"):
        features += f" declared in {definitions['name']}"
        features += f" ({definitions['file']})" if definitions.get("file") else ""
    elif not card.get("feature_fingerprints"):
        features += " (no fingerprint per input: a card from before definitions files)"
    rows.append(("features", features))
    for key in ("parent", "preset"):
        if card.get(key):
            rows.append((key, str(card[key])))
    rows.append(("card", f"{card_path} (--json prints all of it)"))
    return rows


@models_app.command()
def show(
    version: VersionName = "champion",
    model_dir: ModelDir = _MODEL_DIR,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole model card as one JSON object.")
    ] = False,
) -> None:
    """A version's model card, summarised: role, training range, validation metrics,
    configuration, features (--json: the whole card)."""
    registry = _registry(model_dir)
    name = _resolve(registry, version)
    with _user_errors():
        card = registry.card(name)
        pointer = registry.pointer()
    if as_json:
        typer.echo(json.dumps(card, default=str))
        return
    role = {pointer.champion: "champion", pointer.challenger: "challenger"}.get(name, "")
    rows = card_summary(card, role, f"{registry.model_dir}/{name}/model_card.json")
    from pipelines.core.model_inputs import input_problems

    problems = input_problems(card, registry.definitions)
    rows.insert(
        -1,
        ("serves", f"no, with {registry.definitions.name}: " + "; ".join(problems))
        if problems
        else ("serves", f"yes, with {registry.definitions.name}: every input declared the same"),
    )
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@models_app.command()
def promote(
    version: Annotated[
        str | None,
        typer.Argument(
            help="The new champion (default: the challenger); a version or latest.",
            parser=parse(Version()),
        ),
    ] = None,
    challenger: Annotated[
        str | None,
        typer.Option(help="The new challenger, set in the same write.", parser=parse(Version())),
    ] = None,
    no_challenger: Annotated[
        bool, typer.Option("--no-challenger", help="No challenger afterwards (the default).")
    ] = False,
    model_dir: ModelDir = _MODEL_DIR,
    definitions: DefinitionsOption = None,
) -> None:
    """Make a version (default: the challenger) the champion; a running job with --model_version
    champion follows it. The old champion stays in the history ('rillet models rollback').
    The versions are checked against --definitions (the job's file)."""
    if challenger and no_challenger:
        raise UserError("--challenger and --no-challenger together: choose one")
    registry = _registry(model_dir, definitions_for(definitions))
    version, challenger = _resolve(registry, version), _resolve(registry, challenger)
    with _user_errors():
        pointer = registry.promote(version, challenger=challenger, by=_who())
    typer.echo(f"promoted: {_roles(pointer)} (generation {pointer.generation})")


@models_app.command()
def challenge(
    version: Annotated[
        str | None,
        typer.Argument(help="The new challenger: a version or latest.", parser=parse(Version())),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Retire the challenger.")] = False,
    model_dir: ModelDir = _MODEL_DIR,
    definitions: DefinitionsOption = None,
) -> None:
    """Set the challenger (scored next to the champion), or --clear it; checked against
    --definitions (the job's file)."""
    if (version is None) == (not clear):
        raise UserError(
            "name the challenger or pass --clear (not both)",
            "rillet models challenge VERSION, or rillet models challenge --clear",
        )
    registry = _registry(model_dir, definitions_for(definitions))
    version = _resolve(registry, version)
    with _user_errors():
        pointer = registry.challenge(None if clear else version, by=_who())
    typer.echo(f"{'cleared' if clear else 'challenging'}: {_roles(pointer)}")


@models_app.command()
def rollback(model_dir: ModelDir = _MODEL_DIR) -> None:
    """Restore the champion and challenger from before the last promotion."""
    registry = _registry(model_dir)
    with _user_errors():
        pointer = registry.rollback(by=_who())
    typer.echo(f"rolled back: {_roles(pointer)} (generation {pointer.generation})")


@models_app.command()
def policy(
    mode: Annotated[
        str | None, typer.Option(help="manual | auto", parser=parse(Choice(("manual", "auto"))))
    ] = None,
    min_days: Annotated[
        int | None, typer.Option(min=1, help="Consecutive label days the challenger must win.")
    ] = None,
    margin: Annotated[
        float | None, typer.Option(help="By how much it must win each day (metric units).")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="ap | auc | cp100", parser=parse(Choice(("ap", "auc", "cp100")))),
    ] = None,
    model_dir: ModelDir = _MODEL_DIR,
) -> None:
    """Show the promotion policy, or change fields of it."""
    registry = _registry(model_dir)
    changes = {
        k: v
        for k, v in {"mode": mode, "min_days": min_days, "margin": margin, "metric": metric}.items()
        if v is not None
    }
    with _user_errors():
        pointer = registry.set_policy(by=_who(), **changes) if changes else registry.pointer()
    typer.echo(f"policy: {json.dumps(dict(pointer.policy))}")


Project = Annotated[
    str,
    typer.Option(
        help="Google Cloud project of the Datastore (rillet-local: the local emulator).",
        parser=parse(PROJECT),
    ),
]
Namespace = Annotated[
    str, typer.Option(help="Datastore namespace (empty: default).", parser=parse(NAMESPACE))
]


def _evaluations(model_dir: str, project: str, namespace: str, state_dir: Path) -> Any:
    """The registry, its pointer and the champion's and challenger's daily metrics."""
    from pipelines.stores.model_registry import daily_metrics

    registry = _registry(model_dir)
    with _user_errors():
        pointer = registry.pointer()
    if pointer.champion is None:
        raise UserError(f"no champion in {model_dir}", "rillet models promote VERSION")
    if project == "rillet-local":
        from pipelines.app.cli import use_local_stack

        use_local_stack(state_dir)
    from google.cloud import datastore

    client = datastore.Client(project=project, namespace=namespace or None)
    versions = [v for v in (pointer.champion, pointer.challenger) if v]
    return registry, pointer, daily_metrics(client, versions)


def comparison_rows(pointer: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per label day: the champion's and the challenger's metrics side by side."""
    days: dict[str, dict[str, Any]] = {}
    for row in rows:
        side = "champion" if row["version"] == pointer.champion else "challenger"
        days.setdefault(str(row["day"]), {"day": str(row["day"])})[side] = row
    return [days[d] for d in sorted(days)]


def _decision(pointer: Any, rows: list[dict[str, Any]]) -> tuple[bool, str]:
    from pipelines.stores.model_registry import decide_promotion

    return decide_promotion(
        pointer.policy, rows, champion=pointer.champion, challenger=pointer.challenger
    )


@models_app.command()
def compare(
    model_dir: ModelDir = _MODEL_DIR,
    project: Project = "rillet-local",
    datastore_namespace: Namespace = "",
    state_dir: StateDir = STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The champion and the challenger per label day (online AUC, AP, CP@100, labelled
    transactions), from Datastore, and what the promotion policy decides."""
    _, pointer, rows = _evaluations(model_dir, project, datastore_namespace, state_dir)
    promote_now, reason = _decision(pointer, rows)
    days = comparison_rows(pointer, rows)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "champion": pointer.champion,
                    "challenger": pointer.challenger,
                    "policy": dict(pointer.policy),
                    "days": days,
                    "promote": promote_now,
                    "reason": reason,
                },
                default=str,
            )
        )
        return
    from rich.table import Table

    table = Table(title=f"champion {pointer.champion} vs challenger {pointer.challenger or '-'}")
    table.add_column("label day")
    for side in ("champion", "challenger"):
        for metric in ("AUC", "AP", "CP@100", "n"):
            table.add_column(f"{side[:5]}. {metric}")
    for day in days:
        cells = [day["day"]]
        for side in ("champion", "challenger"):
            m = day.get(side) or {}
            cells += [_fmt(m.get("auc")), _fmt(m.get("ap")), _fmt(m.get("cp100"))]
            cells.append("-" if m.get("n") is None else f"{int(m['n']):,}")
        table.add_row(*cells)
    console = _console()
    if days:
        console.print(table)
    else:
        console.print(
            f"no online evaluation (Datastore kind ModelEvaluation) for {pointer.champion}"
        )
    typer.echo(f"policy {json.dumps(dict(pointer.policy))}")
    typer.echo(f"decision: {'promote' if promote_now else 'keep'}: {reason}")


@models_app.command("auto-promote")
def auto_promote(
    model_dir: ModelDir = _MODEL_DIR,
    project: Project = "rillet-local",
    datastore_namespace: Namespace = "",
    state_dir: StateDir = STATE_DIR,
) -> None:
    """Apply the promotion policy once: promote the challenger if it won (see 'rillet models
    compare'), and say why or why not."""
    registry, pointer, rows = _evaluations(model_dir, project, datastore_namespace, state_dir)
    promote_now, reason = _decision(pointer, rows)
    if not promote_now:
        typer.echo(f"kept: {_roles(pointer)}: {reason}")
        return
    with _user_errors():
        after = registry.promote(pointer.challenger, by=f"auto-promote ({_who()})")
    typer.echo(f"promoted: {_roles(after)}: {reason}")
