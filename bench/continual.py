"""``make bench-continual``: a model trained once against one retrained every week (issue 14).

Offline part, on the handbook dataset (built from scratch with the project's own code: simulate
-> write_dataset -> the Beam backfill's point-in-time feature table; cached in the work
directory, ``--rebuild`` to redo it):

* **week layout** (:func:`week_layout`): the handbook's protocol layout, a training week W0, a
  delay week, then ``--weeks`` (8) consecutive test weeks. W0 is placed so that the last test week
  ends on the dataset's last day (handbook: W0 = 2018-07-23, test weeks 2018-08-06 ..
  2018-09-30).
* **static**: trained once on W0 (one week of data, as the handbook's protocol) and scored on
  every test week.
* **continual**: retrained at the start of each test week ("now"), on the labelled history only:
  the ``--window-weeks`` (3) weeks ending on pipelines.app.retrain.last_labelled_day(now), i.e.
  nothing after now minus the 7-day label delay. For the first test week it ends on W0's last
  day, like the static model; each later week it slides one week.

  Why 3 weeks: a compromised terminal stays compromised for 28 days and a compromised card for
  14 (the simulator's fraud scenarios), and the terminal-risk features look back up to 30 days
  past the delay: a 3-week window holds whole episodes and ~3x the frauds of one week (a week of
  the handbook has ~550 frauds, few for a neural network), while still dropping data older than a
  month. ``--window-weeks 1`` gives the same training-set size as the static model (the effect of
  freshness alone); ``--also-one-week`` runs that arm too (``continual_1w`` in the JSON).

* each test week is scored with the protocol's test-set rules (models.evaluation.test_set with a
  Protocol whose test block is that week: cards known compromised by then are removed), the same
  rows for every model; metrics are models.evaluation.evaluate_scores' auc, ap and cp100.

Every fit uses one fixed configuration (``--config-index`` into models.selection.GRID, default
0): no per-week selection, so the weekly cost is one fit. Models are trained and scored in memory
(models.train.train_model / predict); :func:`export_week` is the same fit exported as a model
version (select_and_train), for a streaming run that registers the weekly models.

Streaming part (:func:`streaming`, bench/continual_stream.py): the static model and the first
three weekly models exported as versions of one registry, and a real streaming run on the
emulators over ``--stream-days`` (2) days of the fourth test week at ``--stream-rate`` (400)
events/s, during which the registry is changed (two promotions, one rollback) and the challenger
shadows every prediction: swaps, lost, duplicated, predictions_by_version, shadow_coverage and
online_vs_offline_max_diff.

The last stdout line is one JSON object: weeks (test week start dates), static / continual
(per-week auc, ap, cp100 lists), mean, details, and the streaming part's keys (parts after the
offline part are the callables in :data:`EXTRA_PARTS`). Progress goes to stderr.

    python -m bench.continual [--preset handbook] [--work-dir .rillet/continual] [--weeks 8]
                              [--window-weeks 3] [--config-index 0] [--also-one-week] [--rebuild]
                              [--stream-days 2] [--stream-rate 400] [--no-stream]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.evaluation import DayRange, Protocol, evaluate_scores, rows_in, test_set
from pipelines.app.retrain import label_delay_days, last_labelled_day, training_protocol
from pipelines.core.declarations import load_definitions
from pipelines.core.definitions import LABEL_DELAY_DAYS

__all__ = [
    "EXTRA_PARTS",
    "BenchContext",
    "Layout",
    "Week",
    "build_table",
    "export_week",
    "main",
    "offline_part",
    "train_week",
    "week_layout",
]

METRICS = ("auc", "ap", "cp100")
WEEK = 7
# The bench runs the handbook's workload: its file's label delay (7 days).
HANDBOOK_DELAY_DAYS = label_delay_days(load_definitions())


def _log(message: str) -> None:
    print(f"[bench-continual] {message}", file=sys.stderr, flush=True)


def _iso_range(first: dt.date, last: dt.date) -> DayRange:
    return (first.isoformat(), last.isoformat())


# -- the week layout ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Week:
    """One test week: the continual model is retrained at ``now`` on ``continual_train``."""

    index: int
    now: dt.datetime  # midnight UTC starting the test week
    test_protocol: Protocol  # its test block is this week (for test_set's card removal)
    continual_train: DayRange

    @property
    def test_range(self) -> DayRange:
        return self.test_protocol.test_range


@dataclass(frozen=True)
class Layout:
    static_train: DayRange
    weeks: tuple[Week, ...]
    window_weeks: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "static_train": list(self.static_train),
            "window_weeks": self.window_weeks,
            "continual_train": [list(w.continual_train) for w in self.weeks],
            "test": [list(w.test_range) for w in self.weeks],
        }


def week_layout(start_date: str, n_days: int, n_weeks: int = 8, window_weeks: int = 3) -> Layout:
    """The static training week and the ``n_weeks`` test weeks, the last ending on the dataset's
    last day; the first test week starts two weeks after the static training week (the protocol's
    train | delay | test layout). Raises ValueError when they, or the first continual window, do
    not fit in the dataset."""
    if n_weeks < 1 or window_weeks < 1:
        raise ValueError("n_weeks and window_weeks must be at least 1")
    first_day = pd.Timestamp(start_date)
    first_day = first_day.tz_localize("UTC") if first_day.tzinfo is None else first_day
    first = first_day.tz_convert("UTC").date()
    static_start = first + dt.timedelta(days=n_days - 2 * WEEK - n_weeks * WEEK)
    weeks = []
    for k in range(n_weeks):
        test_start = static_start + dt.timedelta(days=2 * WEEK + k * WEEK)
        now = dt.datetime.combine(test_start, dt.time(), tzinfo=dt.UTC)
        last = last_labelled_day(now, HANDBOOK_DELAY_DAYS)
        train_first = last - dt.timedelta(days=window_weeks * WEEK - 1)
        protocol = Protocol(train_start=test_start - dt.timedelta(days=2 * WEEK))
        weeks.append(Week(k, now, protocol, _iso_range(train_first, last)))
    earliest = dt.date.fromisoformat(weeks[0].continual_train[0])
    if min(static_start, earliest) < first:
        raise ValueError(
            f"{n_weeks} test weeks after a training week, with a {window_weeks}-week continual "
            f"window, need {2 * WEEK + n_weeks * WEEK + (window_weeks - 1) * WEEK} days; the "
            f"dataset has {n_days}"
        )
    static_train = _iso_range(static_start, static_start + dt.timedelta(days=WEEK - 1))
    return Layout(static_train, tuple(weeks), window_weeks)


# -- the weekly fit ---------------------------------------------------------------------------


def train_week(table: pd.DataFrame, train_range: DayRange, config: Any) -> Any:
    """The model fitted (models.train.train_model, no validation) on the rows of
    ``train_range``."""
    from models.train import train_model

    train = rows_in(table, train_range)
    if train.empty:
        raise ValueError(f"no transactions in {train_range}")
    model, _ = train_model(train, None, config)
    return model


def export_week(
    table: pd.DataFrame,
    train_range: DayRange,
    model_dir: str | Path,
    config: Any,
    card: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The same fit as :func:`train_week`, exported as a model version (select_and_train with a
    one-candidate grid); returns (version directory, model card). For registering the weekly
    models as registry versions."""
    from models.selection import select_and_train

    first, last = (dt.date.fromisoformat(d) for d in train_range)
    protocol = training_protocol(last, (last - first).days + 1, HANDBOOK_DELAY_DAYS)
    return select_and_train(table, protocol, model_dir, (config,), card)


# -- data -------------------------------------------------------------------------------------


def build_table(work_dir: Path, preset: str, rebuild: bool = False) -> tuple[Path, Any]:
    """The preset's point-in-time feature table (simulate -> write_dataset -> backfill), built
    in ``work_dir`` or reused from an earlier run of the same preset; returns (table dir,
    SimulatorConfig)."""
    from pipelines.app.simulator import PRESETS, simulate, write_dataset
    from pipelines.backfill.backfill import run_backfill

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    sim = PRESETS[preset]
    stamp = work_dir / "source.json"
    source = {"preset": preset, "simulator": repr(sim)}
    manifest = work_dir / "backfill" / "manifest.json"
    reusable = not rebuild and manifest.exists() and stamp.exists()
    if reusable and json.loads(stamp.read_text()) == source:
        _log(f"reusing the feature table in {work_dir / 'backfill'}")
        return Path(json.loads(manifest.read_text())["feature_table"]), sim
    stamp.unlink(missing_ok=True)
    started = time.monotonic()
    _log(f"simulating {preset!r}")
    write_dataset(simulate(sim), work_dir / "data")
    _log("backfill (Beam, DirectRunner)")
    table_dir = run_backfill(str(work_dir / "data"), str(work_dir / "backfill"), ["--shards=8"])
    stamp.write_text(json.dumps(source))
    _log(f"feature table built in {time.monotonic() - started:.1f} s")
    return table_dir, sim


# -- the offline part -------------------------------------------------------------------------


@dataclass
class BenchContext:
    """What the parts share: the table, the layout, the fixed configuration, the work dir."""

    work_dir: Path
    preset: str
    table: pd.DataFrame
    layout: Layout
    config: Any
    args: argparse.Namespace
    timings: dict[str, float] = field(default_factory=dict)


def _scores(model: Any, frame: pd.DataFrame) -> dict[str, float]:
    from models.train import predict

    metrics = evaluate_scores(frame.assign(score=predict(model, frame)))
    return {name: round(float(metrics[name]), 6) for name in METRICS}


def _arm(weekly: list[dict[str, float]]) -> dict[str, list[float]]:
    return {name: [w[name] for w in weekly] for name in METRICS}


def offline_part(
    context: BenchContext,
    train: Callable[[pd.DataFrame, DayRange, Any], Any] = train_week,
) -> dict[str, Any]:
    """Per-week auc/ap/cp100 of the static and the continual model(s)."""
    table, layout, config = context.table, context.layout, context.config
    windows = {"continual": layout.window_weeks}
    if context.args.also_one_week and layout.window_weeks != 1:
        windows["continual_1w"] = 1
    started = time.monotonic()
    _log(f"static: training on {layout.static_train[0]}..{layout.static_train[1]}")
    static_model = train(table, layout.static_train, config)
    arms: dict[str, list[dict[str, float]]] = {"static": [], **{name: [] for name in windows}}
    details = []
    for week in layout.weeks:
        test = test_set(table, week.test_protocol)
        row: dict[str, Any] = {
            "test_range": list(week.test_range),
            "now": week.now.isoformat(),
            "n": len(test),
            "frauds": int(test["TX_FRAUD"].sum()),
        }
        arms["static"].append(_scores(static_model, test))
        for name, window_weeks in windows.items():
            last = dt.date.fromisoformat(week.continual_train[1])
            train_range = _iso_range(last - dt.timedelta(days=window_weeks * WEEK - 1), last)
            model = train(table, train_range, config)
            arms[name].append(_scores(model, test))
            row[f"{name}_train"] = list(train_range)
            row[f"{name}_train_rows"] = len(rows_in(table, train_range))
        _log(
            f"week {week.index} {week.test_range[0]}: "
            + ", ".join(f"{name} ap {arms[name][-1]['ap']:.3f}" for name in arms)
        )
        details.append(row)
    context.timings["offline_s"] = round(time.monotonic() - started, 1)
    result: dict[str, Any] = {"weeks": [w.test_range[0] for w in layout.weeks]}
    result.update({name: _arm(weekly) for name, weekly in arms.items()})
    result["mean"] = {
        name: {m: round(float(np.mean([w[m] for w in weekly])), 6) for m in METRICS}
        for name, weekly in arms.items()
    }
    result["continual_better_weeks"] = {
        m: sum(c[m] > s[m] for c, s in zip(arms["continual"], arms["static"], strict=True))
        for m in METRICS
    }
    result["details"] = {
        "preset": context.preset,
        "layout": layout.to_dict(),
        "label_delay_days": LABEL_DELAY_DAYS,
        "config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
        "static_train_rows": len(rows_in(table, layout.static_train)),
        "per_week": details,
    }
    return result


def streaming(context: BenchContext) -> dict[str, Any]:
    """The streaming part (bench/continual_stream.py): the static model and the first three
    weekly continual models exported as registry versions, swapped (two promotions, one
    rollback) in a real streaming run over ``--stream-days`` days from the fourth test week, with
    the challenger shadowing every prediction and the online evaluation checked offline."""
    from bench.continual_stream import StreamConfig, streaming_part
    from pipelines.app.simulator import read_dataset

    args, layout, table = context.args, context.layout, context.table
    started = time.monotonic()
    model_dir = context.work_dir / "registry"
    if model_dir.exists():
        import shutil

        shutil.rmtree(model_dir)
    ranges = [layout.static_train]
    for week in layout.weeks[:3]:
        last = dt.date.fromisoformat(week.continual_train[1])
        ranges.append(_iso_range(last - dt.timedelta(days=layout.window_weeks * WEEK - 1), last))
    versions = []
    for i, train_range in enumerate(ranges):
        role = "static" if i == 0 else f"continual week {i - 1}"
        version_dir, _ = export_week(table, train_range, model_dir, context.config, {"arm": role})
        versions.append(version_dir.name)
        _log(f"exported {role} ({train_range[0]}..{train_range[1]}) as {version_dir.name}")
    frame = read_dataset(context.work_dir / "data")
    config = StreamConfig(
        first_day=layout.weeks[3].test_range[0], days=args.stream_days, rate=args.stream_rate
    )
    result = streaming_part(
        context.work_dir / "stream",
        context.work_dir / "data",
        frame,
        model_dir,
        versions,
        config,
        log=_log,
    )
    context.timings["streaming_s"] = round(time.monotonic() - started, 1)
    return result


EXTRA_PARTS: list[Callable[[BenchContext], dict[str, Any]]] = [streaming]
"""Parts run after the offline part, in order; each returns keys merged into the JSON line
(``--no-stream`` skips them)."""


# -- main -------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.continual", description=__doc__)
    parser.add_argument("--preset", default="handbook")
    parser.add_argument("--work-dir", type=Path, default=Path(".rillet/continual"))
    parser.add_argument("--weeks", type=int, default=8, help="test weeks (default 8)")
    parser.add_argument(
        "--window-weeks", type=int, default=3, help="continual training window (default 3)"
    )
    parser.add_argument(
        "--config-index", type=int, default=0, help="the fixed configuration: GRID[i]"
    )
    parser.add_argument(
        "--also-one-week",
        action="store_true",
        help="also a continual arm on a one-week window (continual_1w)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the feature table")
    parser.add_argument(
        "--stream-days", type=int, default=2, help="days replayed in the streaming part"
    )
    parser.add_argument(
        "--stream-rate", type=float, default=400.0, help="events/s of the streaming replay"
    )
    parser.add_argument("--no-stream", action="store_true", help="the offline part only")
    return parser.parse_args(argv)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from models.selection import GRID
    from pipelines.backfill.backfill import read_feature_table

    started = time.monotonic()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    table_dir, sim = build_table(args.work_dir, args.preset, args.rebuild)
    layout = week_layout(sim.start_date, sim.n_days, args.weeks, args.window_weeks)
    table = read_feature_table(table_dir)
    config = GRID[args.config_index]
    context = BenchContext(args.work_dir, args.preset, table, layout, config, args)
    context.timings["data_s"] = round(time.monotonic() - started, 1)
    result = offline_part(context)
    for part in [] if args.no_stream else EXTRA_PARTS:
        result.update(part(context))
    context.timings["total_s"] = round(time.monotonic() - started, 1)
    result["timings_s"] = context.timings
    return result


def main(argv: Sequence[str] | None = None) -> int:
    result = run_bench(_parse(argv))
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
