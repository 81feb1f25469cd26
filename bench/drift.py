"""``make bench-drift``: is a shift in the data alerted in time, and only then? (issue 15)

Two streaming replays on the emulators of the same stretch of the handbook dataset, one unchanged
("quiet") and one in which the data shifts at a known event time ``drift_at`` ("shifted"); the
job's Monitor stage (docs/specs/monitoring.md) judges every model input and the score by the PSI
of sliding event-time windows against the model card's reference histograms and publishes drift
alerts on the ``alerts`` topic.

Setup, shared by both runs:

1. the handbook dataset and its point-in-time feature table (bench.continual.build_table: simulate
   -> write_dataset -> Beam backfill; cached in the work directory);
2. a model trained on the ``--train-days`` (7) days ending on the last fully labelled day before
   the stretch (pipelines.app.retrain.last_labelled_day), exported with its card (which holds the
   reference histograms of its training rows, models.reference) and registered as the champion.

The shift (:func:`shift_amounts`): from ``drift_at`` on, a fixed random group of ``--share``
(50%) of the customers spend ``--factor`` (3x) their usual amounts. TX_AMOUNT moves at once, the
customers' average-amount windows follow (the 1-day one within hours, the 7- and 30-day ones
slowly) and so does the score (the handbook's first fraud scenario makes large amounts risky).
With 30% of the customers at 3x, the hourly PSI of TX_AMOUNT peaks at 0.22-0.25, under the
packaged threshold (0.25): no alert; half of them is a shift the thresholds are meant to catch.

Each run (:func:`stream_run`) has its own private emulator stack (free loopback ports), so the two
replays share nothing: the store is warmed the same way for each (LocalRun.warm_store: the
backfill ``--until`` the stretch's start, i.e. the state a job streaming the dataset until then
would have left), an alerts subscription exists before the job starts, the job serves the
champion, and the stretch's transactions are replayed in event-time order at ``--rate`` events/s.
Labels are left out: a label is due 7 days of event time after its transaction, after the end of
a stretch of two days, and the only label-based features (terminal risk) read transactions at
least 7 days older than the event, all before the stretch, whose labels the warm store holds.
The run ends when every transaction has a prediction and no alert has come for ``--quiet-s``
seconds (at least ``--settle-s`` after the last prediction). A window closes when its key has seen
an event ``lateness_s`` past the window's end, so the windows ending in the stretch's last
minutes never close: the stretch ends hours after ``drift_at`` for that reason.

Figures (:func:`summarize`, the last stdout line, one JSON object):

- drift_at; first_alert_at: the event-time clock at which the first drift alert after drift_at
  was raised, its window_end + lateness_s (a window closes when its key sees that time);
  detection_delay_event_s = first_alert_at - drift_at (also first_alert_window_end_minus_drift_s);
- alerts_before_drift: drift alerts of the shifted run whose window ended at or before drift_at
  (a window ending later holds shifted data);
- drifted_features_alerted: the features with a drift alert after drift_at in the shifted run;
- quiet_run_alerts: every alert of the unchanged run, any kind (quiet_run_drift_alerts: those of
  kind drift); alerts_on_topic: the alert messages the shifted run received (distinct ids in
  alerts_distinct);
- touched_features: the inputs (and score) the shift really moves: those whose PSI between the
  shifted and the unchanged run's served values after drift_at, on the card's reference bins
  (models.reference), is at or above the drift threshold;
- offline_windows: the same sliding windows recomputed here from the served values against the
  card's reference (models.reference.bin_counts/psi): per feature, the highest PSI before
  drift_at in each run and the first streak of K windows after it (what the Monitor should see);
- goal: detection within 2 hours of event time on every touched feature, no alert before the
  shift or in the unchanged run.

Progress and the human summary go to stderr, the JSON line to stdout.

    python -m bench.drift [--work-dir .rillet/drift] [--start 2018-08-15]
                          [--drift-at 2018-08-16T10:00:00Z] [--end 2018-08-16T22:00:00Z]
                          [--share 0.5] [--factor 3] [--rate 300] [--alert-thresholds FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.drift import ClosedWindow, DriftWindows, bin_counts, psi
from pipelines.core.schema import format_rfc3339, parse_rfc3339
from pipelines.core.thresholds import DriftThresholds, Thresholds, load_thresholds

__all__ = [
    "DriftConfig",
    "RunResult",
    "main",
    "replay_windows",
    "run_bench",
    "shift_amounts",
    "stream_run",
    "summarize",
    "touched_features",
]

S_US = 1_000_000
GOAL_DELAY_S = 2 * 3600
SCORE = "score"


def _log(message: str) -> None:
    print(f"[bench-drift] {message}", file=sys.stderr, flush=True)


@dataclass
class DriftConfig:
    """The bench: the stretch, the shift, the replay."""

    work_dir: Path = Path(".rillet/drift")
    preset: str = "handbook"
    start: str = "2018-08-15"  # the stretch's first second (midnight UTC: the warm store's end)
    drift_at: str = "2018-08-16T10:00:00Z"  # an hour boundary, in the busy hours of a day
    end: str = "2018-08-16T22:00:00Z"  # exclusive
    share: float = 0.5  # of the customers (0.3 moved the hourly TX_AMOUNT PSI to 0.22-0.25 only)
    factor: float = 3.0  # their amounts from drift_at on
    seed: int = 15
    train_days: int = 7
    config_index: int = 0  # models.selection.GRID
    rate: float = 300.0  # events/s
    alert_thresholds: str = ""  # empty: the packaged file
    monitor_every_s: float = 5.0
    settle_s: float = 20.0  # after the last prediction, at least
    quiet_s: float = 10.0  # then until no alert came for that long
    timeout_s: float = 1200.0
    rebuild: bool = False
    runs: tuple[str, ...] = ("quiet", "shifted")


# -- the shift --------------------------------------------------------------------------------


def shift_amounts(
    frame: pd.DataFrame, drift_at_us: int, share: float, factor: float, seed: int
) -> tuple[pd.DataFrame, list[int]]:
    """A copy of ``frame`` (simulate()-style) in which a fixed random group of ``share`` of its
    customers (drawn with ``seed`` from the sorted customer ids: the same frame and seed give the
    same group) spend ``factor`` times their amount (rounded to cents) at and after
    ``drift_at_us``; nothing else changes. Returns (shifted frame, the group's ids, sorted)."""
    from pipelines.core.training_data import to_epoch_us

    customers = np.unique(frame["CUSTOMER_ID"].to_numpy(np.int64))
    size = round(share * len(customers))
    group = np.sort(np.random.default_rng(seed).choice(customers, size=size, replace=False))
    moved = (to_epoch_us(frame["TX_DATETIME"]) >= drift_at_us) & np.isin(
        frame["CUSTOMER_ID"].to_numpy(np.int64), group
    )
    out = frame.copy()
    amounts = out["TX_AMOUNT"].to_numpy(np.float64).copy()
    amounts[moved] = np.round(amounts[moved] * factor, 2)
    out["TX_AMOUNT"] = amounts
    return out, [int(c) for c in group]


# -- the Monitor's windows, replayed offline for the report ----------------------------------


def replay_windows(
    times_us: np.ndarray, values: np.ndarray, hist: Mapping[str, Any], d: DriftThresholds
) -> list[ClosedWindow]:
    """The windows the Monitor's drift judge closes over these values: the same
    pipelines.core.drift.DriftWindows, fed one ``period_s`` bucket at a time in event-time
    order (no grace: nothing is in flight here)."""
    windows = DriftWindows(
        reference=[int(c) for c in hist["counts"]],
        window_s=d.window_s,
        period_s=d.period_s,
        lateness_s=d.lateness_s,
        threshold=d.threshold,
        consecutive=d.consecutive,
        min_count=d.min_count,
    )
    order = np.argsort(times_us, kind="stable")
    t_s = np.asarray(times_us, dtype=np.int64)[order] // S_US
    x = np.asarray(values, dtype=np.float64)[order]
    buckets = t_s // d.period_s * d.period_s
    closed: list[ClosedWindow] = []
    for lo, hi in _runs(buckets):
        counts = bin_counts(x[lo:hi], hist)
        closed += windows.add({int(buckets[lo]): counts}, int(t_s[hi - 1]), 0.0)
    return closed


def _runs(sorted_keys: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) of each run of equal values in a sorted array."""
    if not len(sorted_keys):
        return []
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    bounds = [0, *cuts.tolist(), len(sorted_keys)]
    return list(itertools.pairwise(bounds))


# -- what the shift touches -------------------------------------------------------------------


def _served_values(predictions: Iterable[dict[str, Any]], feature: str) -> dict[str, float]:
    return {
        p["transaction_id"]: float(p["score"] if feature == SCORE else p["features"][feature])
        for p in predictions
    }


def _reference(card: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    ref = card["reference"]
    return {**ref["inputs"], SCORE: ref["score"]}


def touched_features(
    shifted: Sequence[dict[str, Any]],
    quiet: Sequence[dict[str, Any]],
    card: Mapping[str, Any],
    drift_at_us: int,
) -> dict[str, float]:
    """PSI, on the card's reference bins, between the two runs' served values (latest prediction
    per transaction) of the transactions at or after ``drift_at_us``, per input and the score;
    a feature is touched when it is at or above its drift threshold (the caller filters)."""
    after = lambda ps: [p for p in ps if parse_rfc3339(p["event_time"]) >= drift_at_us]  # noqa: E731
    s_rows, q_rows = after(shifted), after(quiet)
    out = {}
    for name, hist in _reference(card).items():
        if not hist.get("counts"):
            continue
        s = np.fromiter(_served_values(s_rows, name).values(), np.float64)
        q = np.fromiter(_served_values(q_rows, name).values(), np.float64)
        out[name] = round(psi(bin_counts(q, hist), bin_counts(s, hist)), 4)
    return out


def offline_windows(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    card: Mapping[str, Any],
    drift_at_us: int,
    thresholds: DriftThresholds,
) -> dict[str, dict[str, Any]]:
    """Per feature and run, from the served values through :func:`replay_windows`: the highest
    window PSI ending at or before drift_at and after it, and the end of the first window that
    raises an alert after it (what the Monitor should have done)."""
    drift_at_s = drift_at_us // S_US
    out: dict[str, dict[str, Any]] = {}
    for name, hist in _reference(card).items():
        d = thresholds.for_feature(name)
        if not d.enabled or not hist.get("counts"):
            continue
        row: dict[str, Any] = {}
        for run, predictions in runs.items():
            ps = list(predictions)
            times = np.array([parse_rfc3339(p["event_time"]) for p in ps], dtype=np.int64)
            values = np.fromiter(_served_values(ps, name).values(), np.float64, len(ps))
            closed = [w for w in replay_windows(times, values, hist, d) if w.psi is not None]
            before = [w.psi for w in closed if w.end_s <= drift_at_s and w.psi is not None]
            after = [w.psi for w in closed if w.end_s > drift_at_s and w.psi is not None]
            alerts = [w.end_s for w in closed if w.alert]
            row[f"{run}_max_psi_before"] = round(max(before), 4) if before else None
            row[f"{run}_max_psi_after"] = round(max(after), 4) if after else None
            row[f"{run}_alerts_before"] = sum(1 for e in alerts if e <= drift_at_s)
            first = next((e for e in alerts if e > drift_at_s), None)
            row[f"{run}_first_alert_window_end"] = (
                None if first is None else format_rfc3339(first * S_US)
            )
        out[name] = row
    return out


# -- the figures ------------------------------------------------------------------------------


def _distinct(alerts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One alert per alert_id (delivery is at least once), in window_end order."""
    seen: dict[str, dict[str, Any]] = {}
    for a in alerts:
        seen.setdefault(str(a.get("alert_id")), a)
    return sorted(seen.values(), key=lambda a: (str(a.get("window_end")), str(a.get("feature"))))


def _by_kind(alerts: Iterable[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in alerts:
        out[str(a.get("kind"))] = out.get(str(a.get("kind")), 0) + 1
    return dict(sorted(out.items()))


def summarize(
    drift_at_us: int,
    shifted_alerts: Sequence[dict[str, Any]],
    quiet_alerts: Sequence[dict[str, Any]],
    thresholds: DriftThresholds,
    touched: Iterable[str] = (),
) -> dict[str, Any]:
    """The bench's figures from the two runs' alert messages (as received: duplicates allowed);
    see the module docstring. ``touched``: the features the shift moves (goal: all alerted)."""
    shifted = _distinct(shifted_alerts)
    quiet = _distinct(quiet_alerts)
    drift = [a for a in shifted if a.get("kind") == "drift"]
    before = [a for a in drift if parse_rfc3339(a["window_end"]) <= drift_at_us]
    per_feature: dict[str, dict[str, Any]] = {}
    for a in drift:
        end_us = parse_rfc3339(a["window_end"])
        feature = str(a.get("feature"))
        if end_us <= drift_at_us or feature in per_feature:
            continue
        seen_at = end_us + thresholds.for_feature(feature).lateness_s * S_US
        per_feature[feature] = {
            "window_end": a["window_end"],
            "alert_at": format_rfc3339(seen_at),
            "delay_event_s": (seen_at - drift_at_us) / S_US,
            "window_end_minus_drift_s": (end_us - drift_at_us) / S_US,
            "value": a.get("value"),
            "threshold": a.get("threshold"),
            "consecutive": a.get("consecutive"),
            "raised_at": a.get("raised_at"),
        }
    first = min(per_feature.items(), key=lambda kv: kv[1]["delay_event_s"], default=None)
    touched = sorted(touched)
    late = [f for f in touched if per_feature.get(f, {}).get("delay_event_s", 1e18) > GOAL_DELAY_S]
    quiet_drift = [a for a in quiet if a.get("kind") == "drift"]
    return {
        "drift_at": format_rfc3339(drift_at_us),
        "first_alert_at": first[1]["alert_at"] if first else None,
        "detection_delay_event_s": first[1]["delay_event_s"] if first else None,
        "alerts_before_drift": len(before),
        "drifted_features_alerted": sorted(per_feature),
        "quiet_run_alerts": len(quiet),
        "alerts_on_topic": len(shifted_alerts),
        "first_alert_feature": first[0] if first else None,
        "first_alert_window_end": first[1]["window_end"] if first else None,
        "first_alert_window_end_minus_drift_s": (
            first[1]["window_end_minus_drift_s"] if first else None
        ),
        "per_feature": per_feature,
        "alerts_distinct": len(shifted),
        "shifted_alerts_by_kind": _by_kind(shifted),
        "shifted_alerts_before_drift": [_brief(a) for a in before],
        "quiet_run_drift_alerts": len(quiet_drift),
        "quiet_run_alerts_by_kind": _by_kind(quiet),
        "quiet_run_alert_list": [_brief(a) for a in quiet],
        "touched_features": touched,
        "touched_not_alerted_in_2h": late,
        "alerted_not_touched": sorted(set(per_feature) - set(touched)),
        "goal": {
            "detected_within_2h": first is not None and first[1]["delay_event_s"] <= GOAL_DELAY_S,
            "every_touched_feature_within_2h": bool(touched) and not late,
            "no_alert_before_drift": not before,
            "no_alert_in_quiet_run": not quiet,
        },
    }


def _brief(alert: dict[str, Any]) -> dict[str, Any]:
    keys = ("kind", "metric", "feature", "value", "threshold", "window_start", "window_end")
    return {k: alert.get(k) for k in keys}


# -- one streaming run ------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one replay left: its alert messages, the predictions (latest per transaction), the
    job's monitoring history (``--monitor_dir``, when the job writes it) and timings."""

    name: str
    alerts: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stream_run(
    name: str, frame: pd.DataFrame, data_dir: Path, model_dir: Path, config: DriftConfig
) -> RunResult:
    """One replay of ``frame`` (the stretch, transactions only) on a private stack warmed up to
    the stretch's start, serving the registry's champion in ``model_dir``."""
    from pipelines.app.local_run import LocalRun, Monitor
    from pipelines.app.publisher import replay_events
    from pipelines.transforms.sinks import latest_per_transaction

    work = config.work_dir / name
    if work.exists():
        shutil.rmtree(work)
    timings: dict[str, float] = {}
    events = replay_events(frame, include_labels=False)
    with LocalRun(work / "stack", log_path=work / "pipeline.log") as run:
        topo = run.topology
        t = time.monotonic()
        run.warm_store(data_dir, work / "backfill-warm", config.start)
        timings["warm_store_s"] = round(time.monotonic() - t, 1)
        _log(f"{name}: store warmed until {config.start} in {timings['warm_store_s']} s")
        alerts = Monitor(f"projects/{topo.project}/subscriptions/{topo.alerts_subscription}")
        puller = threading.Thread(target=alerts.run, daemon=True)
        puller.start()  # the subscription exists (create_resources) before the job starts
        args = [
            f"--model_dir={model_dir}",
            f"--monitor_every_s={config.monitor_every_s}",
            f"--monitor_dir={work / 'monitor'}",
        ]
        if config.alert_thresholds:
            args.append(f"--alert_thresholds={config.alert_thresholds}")
        try:
            run.start_job(args)
            run.replay(events, config.rate, first_alone=True, first_timeout_s=config.timeout_s)
            elapsed = run.wait_predicted(len(frame), config.timeout_s)
            timings["stream_s"] = round(elapsed, 1)
            timings["events_per_s"] = round(len(events) / elapsed, 1)
            _log(f"{name}: {len(frame):,} transactions predicted in {elapsed:.1f} s")
            t = time.monotonic()
            run.sleep(config.settle_s)
            seen = -1
            while len(alerts.received) != seen:  # until no alert came for quiet_s
                seen = len(alerts.received)
                run.sleep(config.quiet_s)
            timings["settle_s"] = round(time.monotonic() - t, 1)
            run.stop(settle_s=1.0)
        finally:
            alerts.stop.set()
            puller.join(timeout=10)
        predictions = list(latest_per_transaction(run.predictions.received).values())
    with open(work / "predictions.jsonl", "w") as out:  # for a look afterwards
        out.writelines(json.dumps(p, separators=(",", ":")) + "\n" for p in predictions)
    with open(work / "alerts.jsonl", "w") as out:
        out.writelines(json.dumps(a, separators=(",", ":")) + "\n" for a in alerts.received)
    _log(f"{name}: {len(alerts.received)} alert message(s)")
    from pipelines.local_runner.snapshot import HISTORY_FILE, run_dir, run_ids

    runs = run_ids(work / "monitor")  # this job's run is the latest
    history = _read_jsonl(run_dir(work / "monitor", runs[-1]) / HISTORY_FILE) if runs else []
    return RunResult(name, list(alerts.received), predictions, history, timings)


def job_drift_gauges(history: Sequence[dict[str, Any]], drift_at_us: int) -> dict[str, Any]:
    """From the job's local monitoring history (docs/specs/monitoring.md, ``drift``): per
    feature, the highest PSI it reported for a window ending at or before drift_at and after."""
    out: dict[str, dict[str, float | None]] = {}
    for snapshot in history:
        for features in (snapshot.get("drift") or {}).values():
            for feature, g in features.items():
                if g.get("psi") is None or not g.get("window_end"):
                    continue
                side = "before" if parse_rfc3339(g["window_end"]) <= drift_at_us else "after"
                row = out.setdefault(feature, {"max_psi_before": None, "max_psi_after": None})
                key = f"max_psi_{side}"
                row[key] = max(float(g["psi"]), row[key] or float("-inf"))
    return {
        f: {k: None if v is None else round(v, 4) for k, v in r.items()} for f, r in out.items()
    }


# -- the bench --------------------------------------------------------------------------------


def _train(
    table_dir: Path, config: DriftConfig, start: pd.Timestamp
) -> tuple[Path, dict[str, Any]]:
    """The champion: trained on the ``train_days`` fully labelled days before the stretch."""
    from bench.continual import export_week
    from models.selection import GRID
    from pipelines.app.retrain import label_delay_days, last_labelled_day
    from pipelines.backfill.backfill import read_feature_table
    from pipelines.core.declarations import load_definitions
    from pipelines.stores.model_registry import ModelRegistry

    last = last_labelled_day(start, label_delay_days(load_definitions()))
    train_range = ((last - dt.timedelta(days=config.train_days - 1)).isoformat(), last.isoformat())
    model_dir = config.work_dir / "registry"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    table = read_feature_table(table_dir)
    version_dir, card = export_week(
        table, train_range, model_dir, GRID[config.config_index], {"purpose": "bench-drift"}
    )
    ModelRegistry(model_dir).register(version_dir.name, as_="champion", by="bench-drift")
    _log(f"champion {version_dir.name} trained on {train_range[0]}..{train_range[1]}")
    return model_dir, card


def _stretch(config: DriftConfig) -> tuple[int, int, int]:
    start, drift_at, end = (
        parse_rfc3339(_as_time(v)) for v in (config.start, config.drift_at, config.end)
    )
    if not start < drift_at < end:
        raise ValueError("expected --start < --drift-at < --end")
    if drift_at % (3600 * S_US):
        raise ValueError("--drift-at must be an hour boundary")
    return start, drift_at, end


def _as_time(value: str) -> str:
    return value if "T" in value else f"{value}T00:00:00Z"


def run_bench(config: DriftConfig) -> dict[str, Any]:
    from bench.continual import build_table
    from pipelines.app.simulator import read_dataset
    from pipelines.core.training_data import to_epoch_us

    started = time.monotonic()
    timings: dict[str, float] = {}
    start_us, drift_at_us, end_us = _stretch(config)
    thresholds: Thresholds = load_thresholds(config.alert_thresholds or None)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    table_dir, _ = build_table(config.work_dir, config.preset, config.rebuild)
    data_dir = config.work_dir / "data"
    timings["data_s"] = round(time.monotonic() - started, 1)
    t = time.monotonic()
    model_dir, card = _train(table_dir, config, pd.Timestamp(start_us, unit="us", tz="UTC"))
    timings["train_s"] = round(time.monotonic() - t, 1)
    frame = read_dataset(data_dir)
    times = to_epoch_us(frame["TX_DATETIME"])
    stretch = frame[(times >= start_us) & (times < end_us)].reset_index(drop=True)
    del frame
    shifted, group = shift_amounts(stretch, drift_at_us, config.share, config.factor, config.seed)
    moved = int((shifted["TX_AMOUNT"] != stretch["TX_AMOUNT"]).sum())
    _log(
        f"stretch {format_rfc3339(start_us)} .. {format_rfc3339(end_us)}: {len(stretch):,} "
        f"transactions; from {format_rfc3339(drift_at_us)} {len(group)} customers "
        f"({config.share:.0%}) spend x{config.factor:g}: {moved:,} amounts changed"
    )
    frames = {"quiet": stretch, "shifted": shifted}
    results: dict[str, RunResult] = {}
    for name in config.runs:
        t = time.monotonic()
        results[name] = stream_run(name, frames[name], data_dir, model_dir, config)
        timings[f"{name}_run_s"] = round(time.monotonic() - t, 1)
    quiet, shifted_run = results.get("quiet"), results.get("shifted")
    drift = thresholds.drift
    psi_vs_quiet = (
        touched_features(shifted_run.predictions, quiet.predictions, card, drift_at_us)
        if quiet and shifted_run
        else {}
    )
    touched = [f for f, v in psi_vs_quiet.items() if v >= drift.for_feature(f).threshold]
    result = summarize(
        drift_at_us,
        shifted_run.alerts if shifted_run else [],
        quiet.alerts if quiet else [],
        drift,
        touched,
    )
    result.update(
        {
            "stretch": [format_rfc3339(start_us), format_rfc3339(end_us)],
            "n_transactions": len(stretch),
            "shifted_transactions": moved,
            "shift": {
                "share": config.share,
                "factor": config.factor,
                "customers": len(group),
                "seed": config.seed,
            },
            "psi_shifted_vs_quiet_after_drift": psi_vs_quiet,
            "offline_windows": offline_windows(
                {r.name: r.predictions for r in results.values()}, card, drift_at_us, drift
            ),
            "job_drift_gauges": {
                r.name: job_drift_gauges(r.history, drift_at_us) for r in results.values()
            },
            "predicted": {r.name: len(r.predictions) for r in results.values()},
            "thresholds": {k: v for k, v in dataclasses.asdict(drift).items() if k != "features"}
            | {"overrides": drift.features, "file": config.alert_thresholds or "packaged"},
            "model_version": card.get("version"),
            "training_range": card.get("training_range"),
            "rate": config.rate,
            "runs": {r.name: r.timings for r in results.values()},
        }
    )
    timings["total_s"] = round(time.monotonic() - started, 1)
    result["timings_s"] = timings
    return result


def _report(result: dict[str, Any]) -> None:
    """The human summary (stderr)."""
    _log(f"drift at {result['drift_at']}; touched: {', '.join(result['touched_features'])}")
    for feature, f in result["per_feature"].items():
        _log(
            f"  alert {feature}: window ending {f['window_end']} (PSI {f['value']}), "
            f"{f['delay_event_s'] / 60:.0f} min of event time after the shift"
        )
    _log(
        f"first alert at {result['first_alert_at']} (delay {result['detection_delay_event_s']} s "
        f"of event time); alerts before drift: {result['alerts_before_drift']}; quiet run: "
        f"{result['quiet_run_alerts']} alert(s); on the topic: {result['alerts_on_topic']}"
    )
    _log("goal: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["goal"].items()))
    _log(f"took {result['timings_s']['total_s']} s")


def _parse(argv: Sequence[str] | None) -> DriftConfig:
    d = DriftConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=d.work_dir)
    parser.add_argument("--preset", default=d.preset)
    parser.add_argument("--start", default=d.start, help="the stretch's start (date: midnight)")
    parser.add_argument("--drift-at", default=d.drift_at, help="when the data shifts (an hour)")
    parser.add_argument("--end", default=d.end, help="the stretch's end (exclusive)")
    parser.add_argument("--share", type=float, default=d.share, help="of the customers")
    parser.add_argument("--factor", type=float, default=d.factor, help="their amounts' factor")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--train-days", type=int, default=d.train_days)
    parser.add_argument("--rate", type=float, default=d.rate, help="events/s of the replays")
    parser.add_argument("--alert-thresholds", default=d.alert_thresholds)
    parser.add_argument("--monitor-every-s", type=float, default=d.monitor_every_s)
    parser.add_argument("--timeout-s", type=float, default=d.timeout_s)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached dataset")
    a = parser.parse_args(argv)
    return DriftConfig(
        work_dir=a.work_dir,
        preset=a.preset,
        start=a.start,
        drift_at=a.drift_at,
        end=a.end,
        share=a.share,
        factor=a.factor,
        seed=a.seed,
        train_days=a.train_days,
        rate=a.rate,
        alert_thresholds=a.alert_thresholds,
        monitor_every_s=a.monitor_every_s,
        timeout_s=a.timeout_s,
        rebuild=a.rebuild,
    )


def main(argv: Sequence[str] | None = None) -> int:
    result = run_bench(_parse(argv))
    _report(result)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
