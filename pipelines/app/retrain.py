"""The core of ``rillet retrain``: a new model version from the labelled history, compared offline
with the champion.

Labels arrive the label stream's declared delay (the handbook's 7 days) after their transaction,
so at time ``now`` only the days that ended by ``now`` minus that delay are labelled
(:func:`last_labelled_day`). From an event history (the Parquet transactions/labels layout
``rillet simulate`` writes) the point-in-time feature table is built with the backfill
(pipelines.backfill, the streaming pipeline's feature code) up to the end of the last labelled
day; an existing feature table can be given instead.

Two models are trained with models.selection.select_and_train, same recipe (grid), two windows:

* the **challenger** (exported to ``model_dir``): trained on the latest labelled ``train_days``
  (default: the longest window the history holds, up to MAX_TRAIN_DAYS); this is the version to
  register;
* a **holdout** fit, trained on the same-length window that ends ``eval_days`` earlier (exported
  to a scratch directory, never registered). The last ``eval_days`` labelled days (known-
  compromised cards removed, models.evaluation.test_set) are unseen by it and, normally, by the
  champion (trained a week or more ago): both are scored there with the serving path
  (pipelines.transforms.inference.load_model_version: the job's own scorer). Scoring the
  challenger itself on those days would be scoring it on its own training data.

So the comparison is "this week's recipe, applied ``eval_days`` ago" against the champion; the
result says whether the champion's training range overlaps the evaluation days (then its scores
there are optimistic).

The holdout fit, its validation folds (with more than one candidate) and the evaluation days must
lie in the labelled history (:func:`labelled_days_needed`). That is checked from the history's
first and last transaction times, before the backfill: :func:`fit_train_days` picks the window,
or refuses with the values that would fit.

Registering the challenger is a separate step (:func:`register`): the CLI calls it after
:func:`retrain` when asked to (``--register challenger``).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.app.errors import UserError
from pipelines.app.parsing import parse_when
from pipelines.core.declarations import Definitions
from pipelines.core.definitions import DAY_US, LABEL_DELAY_DAYS

__all__ = [
    "MAX_TRAIN_DAYS",
    "RetrainConfig",
    "fit_train_days",
    "labelled_days_needed",
    "last_labelled_day",
    "longest_train_days",
    "register",
    "retrain",
    "training_protocol",
]

MAX_TRAIN_DAYS = 21
"""The longest window retrain picks by itself (three weeks: they beat one in make
bench-continual); a shorter history gets the longest window that fits it."""


def label_delay_days(definitions: Definitions) -> int:
    """The label delay of the definitions' label stream, in whole days (rounded up): a day is
    labelled that long after its end (a file without labels: the handbook's delay, which no
    model of it can use anyway)."""
    if definitions.labels is None:
        return LABEL_DELAY_DAYS
    return -(-definitions.labels.delay_us // DAY_US)


def last_labelled_day(now: pd.Timestamp | dt.datetime | str, delay_days: int) -> dt.date:
    """The last calendar day (UTC) whose every transaction is labelled at ``now``.

    A transaction's label arrives ``delay_days`` (the definitions' label delay,
    ``label_delay_days``; the handbook's 7) after it, so day D is fully
    labelled once ``now >= D + 1 day + delay_days``: at 2018-09-30 23:59 that is 2018-09-22, at
    2018-10-01 00:00 it is 2018-09-23.
    """
    stamp = pd.Timestamp(now)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    labelled_end = (stamp - pd.Timedelta(days=delay_days)).floor("D")  # exclusive
    day: dt.date = (labelled_end - pd.Timedelta(days=1)).date()
    return day


def training_protocol(last_day: dt.date, train_days: int, delay_days: int) -> Any:
    """The models.evaluation.Protocol whose training block is the ``train_days`` days ending on
    ``last_day`` (its delay and test blocks are the future the model will serve; selection uses
    only its validation folds, which end with the training block)."""
    from models.evaluation import Protocol

    return Protocol(
        train_start=last_day - dt.timedelta(days=train_days - 1),
        train_days=train_days,
        delay_days=delay_days,
        test_days=7,
    )


def labelled_days_needed(train_days: int, eval_days: int, select: bool, delay_days: int) -> int:
    """How many labelled days, ending on the last labelled day, a retrain reads: the holdout
    fit's training window (``eval_days`` before the challenger's) and, with selection (more
    than one candidate), that fit's validation folds before it. The challenger's window and the
    evaluation days lie within."""
    last = dt.date(2000, 1, 1)  # any day: the count depends only on the lengths
    holdout = training_protocol(last - dt.timedelta(days=eval_days), train_days, delay_days)
    first: dt.date = holdout.earliest_day if select else holdout.train_start
    return (last - first).days + 1


def longest_train_days(
    labelled_days: int, eval_days: int, select: bool, cap: int, delay_days: int
) -> int:
    """The longest ``train_days`` up to ``cap`` that ``labelled_days`` hold (0: none does)."""
    fits = (
        t
        for t in range(cap, 0, -1)
        if labelled_days_needed(t, eval_days, select, delay_days) <= labelled_days
    )
    return next(fits, 0)


def fit_train_days(
    span: tuple[pd.Timestamp, pd.Timestamp],
    now: pd.Timestamp,
    train_days: int | None,
    eval_days: int,
    select: bool,
    now_given: bool = False,
    *,
    delay_days: int,
) -> int:
    """The training window for a history spanning ``span`` (its first and last transaction
    times, UTC) labelled as of ``now``: ``train_days``, or when None the longest that fits up
    to MAX_TRAIN_DAYS. A UserError when it does not fit says which values would (computed from
    the history): fewer --train-days or --eval-days, --no-select, a later --now (when given),
    a longer history."""
    first_day = span[0].date()
    last_day = last_labelled_day(now, delay_days)
    labelled = max(0, (last_day - first_day).days + 1)
    wanted = train_days if train_days is not None else MAX_TRAIN_DAYS
    fitted = longest_train_days(labelled, eval_days, select, wanted, delay_days)
    if (train_days is None and fitted) or fitted == wanted:
        return fitted
    raise _does_not_fit(span, now, labelled, train_days, eval_days, select, now_given, delay_days)


def _does_not_fit(
    span: tuple[pd.Timestamp, pd.Timestamp],
    now: pd.Timestamp,
    labelled: int,
    train_days: int | None,
    eval_days: int,
    select: bool,
    now_given: bool,
    delay_days: int,
) -> UserError:
    """The error of :func:`fit_train_days`: what the options need, what the history has as of
    ``now``, and every change that would fit."""
    first_day, end_day = span[0].date(), span[1].date()
    at = f"--now {now:%Y-%m-%dT%H:%M}" if now_given else f"its last transaction ({now:%Y-%m-%d})"
    delay = f"labels arrive {delay_days} days after their transaction"
    days = (
        f"{first_day}..{last_labelled_day(now, delay_days)}"
        if labelled
        else f"it starts {first_day}"
    )
    have = f"at {at} the history has {labelled} ({days}; {delay})"
    folds = " and selection's validation folds" if select else ""
    need = labelled_days_needed(train_days or 1, eval_days, select, delay_days)
    if train_days is not None:
        problem = f"--train-days {train_days} with --eval-days {eval_days}{folds} needs {need}"
    else:
        problem = f"retraining with --eval-days {eval_days}{folds} needs at least {need}"
    fixes = []
    shorter = longest_train_days(labelled, eval_days, select, labelled, delay_days)
    if train_days is not None and shorter:
        fixes.append(f"--train-days {shorter} or less")
    alone = longest_train_days(labelled, eval_days, False, labelled, delay_days)
    if select and alone:
        fixes.append(
            f"--no-select (one candidate, no validation folds: up to {alone} training days)"
        )
    fewer = [
        e
        for e in range(eval_days - 1, 0, -1)
        if labelled_days_needed(train_days or 1, e, select, delay_days) <= labelled
    ]
    if not fixes and fewer:
        fixes.append(f"--eval-days {fewer[0]} or less")
    # The earliest midnight at which the last labelled day is the need-th day of the history.
    earliest = first_day + dt.timedelta(days=need + delay_days)
    if now_given and earliest <= end_day:
        fixes.append(f"--now {earliest} or later (the history ends {end_day})")
    else:
        fixes.append(_longer_history(need + delay_days + 1))
    return UserError(f"{problem} labelled days; {have}", "pass " + ", or ".join(fixes))


def _longer_history(days: int) -> str:
    """A history of ``days`` days or more, naming the smallest simulator preset that long."""
    from pipelines.app.simulator import PRESETS

    presets = sorted((c.n_days, name) for name, c in PRESETS.items() if c.n_days >= days)
    example = (
        f" (rillet simulate --preset {presets[0][1]}: {presets[0][0]} days)" if presets else ""
    )
    return f"a history of {days} days or more{example}"


def _check_now(
    now: pd.Timestamp,
    span: tuple[pd.Timestamp, pd.Timestamp],
    text: str,
    delay_days: int,
) -> None:
    """A UserError when ``now`` (``--now`` as typed: ``text``) is before the history's first day,
    or later than the day its last day is labelled: after that, days the history does not hold
    would count as labelled. (A feature table cut at the last labelled day, retrain's own
    backfill, is retrained from with the same ``now``.)"""
    first, last = span[0].date(), span[1].date()
    labelled_by = last + dt.timedelta(days=delay_days + 1)
    if now.date() > labelled_by:
        where = f"after the history: it ends {last}, all labelled by {labelled_by}"
    elif now.date() < first:
        where = f"before the history starts ({first})"
    else:
        return
    raise UserError(
        f"--now {text} is {where}",
        f"pass --now within {first}..{labelled_by} (default: the last transaction, "
        f"{span[1]:%Y-%m-%dT%H:%M})",
    )


@dataclass
class RetrainConfig:
    """What ``rillet retrain`` reads and writes.

    ``history``: a directory (local or gs://) with transactions*/labels* event files, or a
    backfill feature table (a ``features/`` directory of part-*.parquet, or its parent).
    ``champion``: a version directory (``<model_dir>/<version>``) to compare with, or None.
    ``now``: the retraining time, ISO 8601 (default: the last transaction's time); within the
    history's days.
    ``train_days``: the training window (default: the longest that fits, up to MAX_TRAIN_DAYS).
    ``grid``: the candidate configurations (default models.selection.GRID; one candidate skips
    selection, so the history needs no validation folds).
    ``work_dir``: where the backfill and the holdout fit are written (default: a temporary
    directory, removed afterwards).
    ``inputs``: the new model's inputs, in its input order (default: every declared feature);
    ``definitions``: where they are declared (default: the handbook's file); the champion is
    compared only if it can be served with them.
    """

    history: str
    model_dir: str
    champion: str | None = None
    now: str | None = None
    train_days: int | None = None
    eval_days: int = 7
    grid: Sequence[Any] | None = None
    work_dir: str | None = None
    shards: int = 8
    card: dict[str, Any] = field(default_factory=dict)
    inputs: Sequence[str] | None = None
    definitions: Definitions | None = None


def _is_event_history(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(path, "transactions*")
    return bool(FileSystems.match([pattern])[0].metadata_list)


def _feature_table_dir(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    from pipelines.backfill.backfill import FEATURE_TABLE_DIR

    nested = FileSystems.join(path, FEATURE_TABLE_DIR)
    if FileSystems.match([FileSystems.join(nested, "*.parquet")])[0].metadata_list:
        return nested
    if FileSystems.match([FileSystems.join(path, "*.parquet")])[0].metadata_list:
        return path
    raise FileNotFoundError(
        f"{path!r} holds neither transactions*/labels* event files nor a feature table "
        "(part-*.parquet, or features/part-*.parquet)"
    )


def _history_span(
    history: str, definitions: Definitions | None = None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last transaction times (UTC) of an event history's transactions* files."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines.backfill.event_tables import read_tables, times_us

    pattern = FileSystems.join(history, "transactions*")
    lows: list[int] = []
    highs: list[int] = []
    for path in (m.path for m in FileSystems.match([pattern])[0].metadata_list):
        with FileSystems.open(path) as stream:
            for table in read_tables(path, stream):
                events = definitions.events if definitions is not None else None
                times = times_us(table, path, events).to_numpy()
                if len(times):
                    lows.append(int(times.min()))
                    highs.append(int(times.max()))
    if not lows:
        raise ValueError(f"no transactions in {history!r}")
    return (
        pd.Timestamp(min(lows), unit="us", tz="UTC"),
        pd.Timestamp(max(highs), unit="us", tz="UTC"),
    )


def _table_span(table: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    if table.empty:
        raise ValueError("the feature table has no rows")
    times = pd.to_datetime(table["TX_DATETIME"], utc=True)
    return times.min(), times.max()


def _now(
    config: RetrainConfig, span: tuple[pd.Timestamp, pd.Timestamp], delay_days: int
) -> pd.Timestamp:
    """``config.now`` (checked: ISO 8601, within the history's days), else the last transaction."""
    if not config.now:
        return span[1]
    now = pd.Timestamp(parse_when(config.now, "--now"))
    _check_now(now, span, config.now, delay_days)
    return now


def _score(version_dir: str, frame: pd.DataFrame, definitions: Definitions | None) -> Any:
    """Scores of an exported version on ``frame`` through the serving path (a RegistryError
    when ``definitions`` cannot serve it)."""
    from pipelines.transforms.inference import load_model_version, resolve_model

    base = version_dir.rstrip("/")
    parent, version = base.rsplit("/", 1) if "/" in base else (".", base)
    info = resolve_model(parent, version, definitions)
    return load_model_version(info).score(frame[list(info.features)].to_numpy())


def _card(version_dir: str) -> dict[str, Any]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(f"{version_dir.rstrip('/')}/model_card.json") as handle:
        card: dict[str, Any] = json.loads(handle.read().decode())
    return card


def _set_validation(version_dir: Path, metrics: dict[str, Any], days: list[str]) -> None:
    """Writes ``metrics`` (of the holdout fit, on ``days``) as the card's validation figures;
    before the version is registered, so no reader sees the card change."""
    path = version_dir / "model_card.json"
    card = json.loads(path.read_text())
    card["validation_metrics"] = {k: metrics[k] for k in ("auc", "ap", "cp100")}
    card["validation_ranges"] = [days]
    card["validation"] = "holdout: the same recipe fit on the window before, scored on these days"
    path.write_text(json.dumps(card, indent=2))


def _metrics(frame: pd.DataFrame, scores: Any) -> dict[str, Any]:
    from models.evaluation import evaluate_scores

    scored = frame.assign(score=scores)
    m = evaluate_scores(scored)
    return {
        "auc": round(float(m["auc"]), 6),
        "ap": round(float(m["ap"]), 6),
        "cp100": round(float(m["cp100"]), 6),
        "cp100_per_day": [round(float(x), 4) for x in m["cp100_per_day"]],
    }


def _overlaps(training_range: Sequence[str] | None, days: tuple[str, str]) -> bool | None:
    if not training_range:
        return None
    return not (training_range[1] < days[0] or training_range[0] > days[1])


def retrain(config: RetrainConfig) -> dict[str, Any]:
    """Builds the training data as of ``now``, trains and exports the challenger, scores the
    holdout fit and the champion on the latest labelled days; returns the result (JSON-ready):

    ``now``, ``last_labelled_day``, ``feature_table``, ``version``, ``version_dir`` (the
    challenger, in ``model_dir``), ``training_range``, ``config`` (the chosen candidate),
    ``evaluation``: {``days``, ``n``, ``frauds``, ``holdout_training_range``, ``challenger``
    (the holdout fit's auc/ap/cp100), ``champion`` (same, or None without one),
    ``champion_version``, ``champion_training_range``, ``champion_trained_on_eval_days``}.
    """
    if (config.train_days is not None and config.train_days < 1) or config.eval_days < 1:
        raise ValueError("train_days and eval_days must be at least 1")
    with tempfile.TemporaryDirectory(prefix="rillet-retrain-") as scratch:
        work = config.work_dir or scratch
        return _retrain(config, work)


def _retrain(config: RetrainConfig, work: str) -> dict[str, Any]:
    from models.evaluation import Protocol, day_of, test_set
    from models.selection import GRID, select_and_train
    from pipelines.app.features import training_roles
    from pipelines.backfill.backfill import read_feature_table, run_backfill
    from pipelines.core.declarations import load_definitions

    grid = tuple(config.grid) if config.grid is not None else GRID
    definitions = config.definitions or load_definitions()
    delay_days = label_delay_days(definitions)
    # The window is checked against the history's span before the backfill, the long part.
    if _is_event_history(config.history):
        span = _history_span(config.history, definitions)
        table = None
    else:
        table_dir = _feature_table_dir(config.history)
        table = training_roles(read_feature_table(table_dir, definitions), definitions)
        span = _table_span(table)
    now = _now(config, span, delay_days)
    last_day = last_labelled_day(now, delay_days)
    train_days = fit_train_days(
        span,
        now,
        config.train_days,
        config.eval_days,
        len(grid) > 1,
        bool(config.now),
        delay_days=delay_days,
    )
    if table is None:
        until = (last_day + dt.timedelta(days=1)).isoformat()
        args = [f"--until={until}", f"--shards={config.shards}"]
        if definitions.source:
            args.append(f"--definitions={definitions.source}")
        table_dir = str(run_backfill(config.history, f"{work.rstrip('/')}/backfill", args))
        table = training_roles(read_feature_table(table_dir, definitions), definitions)
    labelled = table[day_of(table) <= last_day.isoformat()]

    protocol = training_protocol(last_day, train_days, delay_days)
    eval_last = last_day
    eval_first = last_day - dt.timedelta(days=config.eval_days - 1)
    holdout = training_protocol(eval_first - dt.timedelta(days=1), train_days, delay_days)

    card = {
        "retrain": {"now": now.isoformat(), "last_labelled_day": last_day.isoformat()},
        **config.card,
    }
    inputs = tuple(config.inputs) if config.inputs is not None else definitions.names
    absent = [n for n in inputs if n not in table.columns]
    if absent:
        raise ValueError(f"the feature table {table_dir} has no column {', '.join(absent)}")
    version_dir, challenger_card = select_and_train(
        labelled, protocol, config.model_dir, grid, card, inputs=inputs, definitions=definitions
    )
    holdout_dir, holdout_card = select_and_train(
        labelled,
        holdout,
        f"{work.rstrip('/')}/holdout",
        grid,
        {**card, "holdout": True},
        inputs=inputs,
        definitions=definitions,
    )

    # The evaluation days as a test block: known-compromised cards (frauds from the holdout's
    # training start up to the day before each evaluation day) are removed, as in the protocol.
    eval_protocol = Protocol(
        train_start=holdout.train_start,
        train_days=train_days,
        delay_days=0,
        test_days=config.eval_days,
    )
    days = (eval_first.isoformat(), eval_last.isoformat())
    assert eval_protocol.test_range == days, (eval_protocol.test_range, days)
    evaluation_rows = test_set(labelled, eval_protocol)
    if evaluation_rows.empty:
        raise ValueError(f"no transactions to evaluate on {days[0]}..{days[1]}")
    evaluation: dict[str, Any] = {
        "days": list(days),
        "n": len(evaluation_rows),
        "frauds": int(evaluation_rows["TX_FRAUD"].sum()),
        "holdout_training_range": holdout_card["training_range"],
        "challenger": _metrics(
            evaluation_rows, _score(str(holdout_dir), evaluation_rows, definitions)
        ),
        "champion": None,
        "champion_version": None,
        "champion_training_range": None,
        "champion_trained_on_eval_days": None,
    }
    if not challenger_card.get("validation_metrics"):
        # One candidate, no validation folds: the holdout fit of the same recipe, scored on the
        # evaluation days, is the version's validation (so 'rillet models list' shows figures).
        _set_validation(Path(version_dir), evaluation["challenger"], list(days))
    if config.champion:
        from pipelines.stores.model_registry import RegistryError

        champion_card = _card(config.champion)
        champion_range = champion_card.get("training_range")
        evaluation.update(
            {
                "champion_version": champion_card.get("version"),
                "champion_training_range": champion_range,
                "champion_trained_on_eval_days": _overlaps(champion_range, days),
            }
        )
        try:
            scores = _score(config.champion, evaluation_rows, definitions)
        except RegistryError as exc:
            # A champion the definitions no longer serve (a card from before per-input
            # fingerprints, a changed input) is not compared: the new version replaces it.
            evaluation["champion_refused"] = str(exc)
        else:
            evaluation["champion"] = _metrics(evaluation_rows, scores)
    return {
        "now": now.isoformat(),
        "last_labelled_day": last_day.isoformat(),
        "feature_table": table_dir,
        "version": Path(version_dir).name,
        "version_dir": str(version_dir),
        "train_days": train_days,
        "training_range": challenger_card["training_range"],
        "training_rows": challenger_card["training_rows"],
        "config": challenger_card["config"],
        "evaluation": evaluation,
    }


def copy_version(version_dir: str | Path, model_dir: str) -> str:
    """Copies a version written locally into ``model_dir`` (e.g. gs://), file by file through
    Beam's FileSystems, the model card last (a version without its card is not listed, so a
    half-copied version is never served); refuses a version that exists there."""
    from apache_beam.io.filesystems import FileSystems

    source = Path(version_dir)
    target = FileSystems.join(model_dir, source.name)
    if FileSystems.exists(FileSystems.join(target, "model_card.json")):
        raise FileExistsError(
            f"version {source.name} exists in {model_dir}: versions are immutable"
        )
    files = sorted(p for p in source.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "model_card.json")
    for path in files:
        destination = FileSystems.join(target, *path.relative_to(source).parts)
        with path.open("rb") as src, FileSystems.create(destination) as dst:
            dst.write(src.read())
    return target


def register(
    result: dict[str, Any],
    model_dir: str,
    as_: str = "challenger",
    definitions: Definitions | None = None,
) -> Any:
    """Registers the version :func:`retrain` exported (``result["version"]``) in the model
    registry of ``model_dir`` as ``as_``, checked against ``definitions`` (default: the
    handbook's file); returns the registry's new pointer."""
    from pipelines.stores.model_registry import ModelRegistry

    registry = ModelRegistry(model_dir, definitions=definitions)
    return registry.register(result["version"], as_=as_)
