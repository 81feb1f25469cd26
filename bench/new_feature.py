"""``make bench-new-feature``: a feature added to a live system (issue 23).

The payments workload (pipelines/workloads/payments.yaml) without ``device_id`` runs first: its
stream lacks the field, so it has no card x device entity and none of the features reading the
device (``without_field``). The full file then adds CARD_NB_DEVICES_30D (a distinct count of a
field the stored cells do not hold) and CARD_DEVICE_NB_TX_30D (an entity with no stored rows).
The sequence: declare; backfill only the new columns (``--features``); warm the store
(pipelines/backfill/warm.py); train a challenger with the new inputs; restart the job on the new
file; shadow; promote. The last stdout line is one JSON object (README, "A new feature on a live
system").

``backfill_s`` and ``full_backfill_s``: the new columns' backfill and the whole new file's, each
the best of ``--repeat`` interleaved runs on the payments data, timed before the job starts (on a
2-core machine the running job's load would weigh on whichever ran while it replays). The store
is warm-started with everything before the last ``--replay-days`` (``rillet features warm`` on an
empty store), which are replayed: the old schema's part, then the new one's after the restart.
``lost``/``duplicated`` count the replayed transactions without an original prediction (topic
and Datastore) and those with two by one model version; ``served_equals_backfill``: every
prediction of the job on the new file (every feature it carries) equals the full backfill's row.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = [
    "NEW_FEATURES",
    "NEW_FIELD",
    "Config",
    "counts",
    "run",
    "served_mismatches",
    "without_field",
]

NEW_FIELD = "device_id"


def without_field(data: dict[str, Any], name: str) -> dict[str, Any]:
    """A definitions file's data without the event field ``name``: without the entities keyed by
    it, the window features reading it (operation field or filter), the row features reading it
    and the derived inputs of any dropped feature (transitively); the labels stream loses it too.
    """
    from pipelines.core.declarations import parse_definitions

    out = copy.deepcopy(data)
    out["name"] = f"{data.get('name', 'definitions')}_without_{name}"
    for stream in ("events", "labels"):
        if stream in out:
            out[stream]["fields"].pop(name, None)
    dropped_entities = {e for e, spec in out["entities"].items() if name in spec["keys"]}
    for e in dropped_entities:
        del out["entities"][e]
    full = parse_definitions(data, "full")
    dropped: set[str] = set()
    for f in full.features:
        reads = {getattr(f, "field", None), getattr(f, "value", None)}
        for attr in ("where", "when"):
            predicate = getattr(f, attr, None)
            if predicate is not None:
                reads |= set(predicate.fields)
        entity = getattr(f, "entity", None)
        if name in reads or (entity is not None and entity.name in dropped_entities):
            dropped.add(f.name)
    changed = True
    while changed:
        changed = False
        for spec in out["features"]:
            inputs = spec.get("ratio") or spec.get("difference") or []
            if spec["name"] not in dropped and set(inputs) & dropped:
                dropped.add(spec["name"])
                changed = True
    out["features"] = [spec for spec in out["features"] if spec["name"] not in dropped]
    return out


# -- the bench -------------------------------------------------------------------------------

NEW_FEATURES = ("CARD_NB_DEVICES_30D", "CARD_DEVICE_NB_TX_30D")


@dataclass
class Config:
    """The run: the payments preset, the replay rate, when the change starts."""

    work_dir: Path
    preset: str = "small"
    replay_days: int = 7  # the stream's last days, replayed; the store warm-started before them
    rate: float = 300.0
    change_at: float = 0.25  # share of the old-format stream predicted when the change starts
    switch_at: float = 0.6  # share of the events replayed in the old format (the rest: new)
    repeat: int = 5  # backfill timings: the best of
    timeout_s: float = 1800.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cli(*args: str) -> str:
    """Runs a ``rillet`` command in this process; its JSON answer (raises on a non-zero
    exit)."""
    from typer.testing import CliRunner

    from pipelines.app.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise RuntimeError(
            f"rillet {' '.join(args)}: exit {result.exit_code}\n{result.output}"
        ) from result.exception
    # Its JSON answer is the last line starting with "{" (libraries may log after it).
    answers = [line for line in str(result.output).splitlines() if line.startswith("{")]
    return answers[-1] if answers else ""


def _best_backfill(data: Path, out: Path, args: list[str], repeat: int) -> float:
    return _best_backfills(data, [(out, args)], repeat)[0]


def _best_backfills(data: Path, runs: list[tuple[Path, list[str]]], repeat: int) -> list[float]:
    """The best of ``repeat`` timings of each backfill (output, arguments), interleaved so that
    they all see the same load of this shared machine."""
    from pipelines.backfill.backfill import run_backfill

    best = [math.inf] * len(runs)
    for _ in range(repeat):
        for i, (out, args) in enumerate(runs):
            shutil.rmtree(out, ignore_errors=True)
            t = time.monotonic()
            run_backfill(str(data), str(out), args)
            best[i] = min(best[i], time.monotonic() - t)
    return [round(b, 3) for b in best]


def _stored_ids(project: str, kind: str) -> set[str]:
    from google.cloud import datastore

    query = datastore.Client(project=project).query(kind=kind)
    query.keys_only()
    return {str(e.key.name) for e in query.fetch()}


def counts(
    predictions: Sequence[Mapping[str, Any]], tx_ids: Sequence[str], stored: set[str]
) -> dict[str, int]:
    """``lost``: published transactions without an original (non-correction) prediction on the
    topic or without a stored one; ``duplicated``: transactions with more than one original
    prediction by the same model version."""
    per: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    for p in predictions:
        if p.get("correction"):
            continue
        tx_id = str(p.get("transaction_id"))
        seen.add(tx_id)
        key = (tx_id, str(p.get("model_version")))
        per[key] = per.get(key, 0) + 1
    return {
        "lost": sum(1 for i in tx_ids if i not in seen or i not in stored),
        "duplicated": sum(1 for n in per.values() if n > 1),
    }


def served_mismatches(
    predictions: Sequence[Mapping[str, Any]], table: pd.DataFrame, id_column: str
) -> tuple[int, int]:
    """(predictions compared, those whose served features differ from the backfill's row): the
    latest revision of each transaction's prediction, every feature it carries."""
    latest: dict[str, Mapping[str, Any]] = {}
    for p in predictions:
        tx_id = str(p.get("transaction_id"))
        if tx_id not in latest or p.get("revision", 0) >= latest[tx_id].get("revision", 0):
            latest[tx_id] = p
    rows = table.set_index(table[id_column].astype(str))
    bad = compared = 0
    for tx_id, p in latest.items():
        served = p.get("features") or {}
        if tx_id not in rows.index:
            continue
        compared += 1
        row = rows.loc[tx_id]
        if any(float(value) != float(row[name]) for name, value in served.items()):
            bad += 1
    return compared, bad


def run(config: Config) -> dict[str, Any]:
    from pipelines.app.local_run import LocalRun
    from pipelines.app.payments_simulator import DEFINITIONS, PRESETS, simulate, write_dataset
    from pipelines.app.publisher import replay_events
    from pipelines.core.declarations import load_definitions, parse_definitions
    from pipelines.stores.model_registry import ModelRegistry

    work = config.work_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    full = load_definitions(DEFINITIONS)
    before_file = work / "payments_before.yaml"
    before_file.write_text(
        yaml.safe_dump(without_field(yaml.safe_load(Path(DEFINITIONS).read_text()), NEW_FIELD))
    )
    before = parse_definitions(yaml.safe_load(before_file.read_text()), str(before_file))
    assert set(full.names) - set(before.names) == set(NEW_FEATURES)
    frame = simulate(PRESETS[config.preset])
    data = work / "data"
    write_dataset(frame, data)
    (data / "dataset.json").write_text(json.dumps({"workload": "payments"}))
    log(f"{len(frame):,} transactions of the '{config.preset}' payments preset -> {data}")

    # Before: the table and the champion of the file without device_id.
    models = work / "models"
    shards = "--shards=4"
    _best_backfill(data, work / "bf-before", [shards, f"--definitions={before_file}"], 1)
    _cli(
        "train",
        "--features",
        str(work / "bf-before" / "features"),
        "--model-dir",
        str(models),
        "--definitions",
        str(before_file),
        "--no-select",
        "--quick",
        "--register",
        "champion",
    )
    registry = ModelRegistry(str(models), definitions=before)
    champion = registry.pointer().champion
    log(f"champion {champion} (the file without {NEW_FIELD})")

    # The job starts from a store warmed with everything before the replayed days ('rillet
    # features warm' on an empty store: every entity's state, as a backfill --to_bigtable).
    start = frame.tx_time.max().normalize() - pd.Timedelta(days=config.replay_days - 1)
    replayed = frame[frame.tx_time >= start].reset_index(drop=True)
    history = work / "history"
    write_dataset(frame[frame.tx_time < start], history)
    old_events = replay_events(replayed, before)
    new_events = replay_events(replayed, full)
    switch = int(len(old_events) * config.switch_at)
    stream = [*old_events[:switch], *new_events[switch:]]
    tx_ids = [str(i) for i in replayed.transaction_id]
    n_old = sum(1 for e in old_events[:switch] if e.topic == "transactions")
    result: dict[str, Any] = {"feature": NEW_FEATURES[0]}
    # The new columns only vs the whole new file's table, timed on a machine without the job.
    partial = [shards, f"--definitions={DEFINITIONS}", f"--features={','.join(NEW_FEATURES)}"]
    result["backfill_s"], result["full_backfill_s"] = _best_backfills(
        data,
        [(work / "bf-new", partial), (work / "bf-full", [shards, f"--definitions={DEFINITIONS}"])],
        config.repeat,
    )
    log(f"backfill of the new columns {result['backfill_s']} s, full {result['full_backfill_s']} s")
    with LocalRun(work / "stack", fresh="newfeat", log_path=work / "logs" / "pipeline.log") as lr:
        checkpoint = work / "recovery.json"
        common = [
            f"--model_dir={models}",
            "--model_poll_s=2",
            f"--recovery_checkpoint={checkpoint}",
        ]
        topo = lr.topology
        store_args = ["--project", topo.project, "--bigtable-instance", topo.bigtable_instance]
        store_args += ["--bigtable-table", topo.bigtable_table]
        store_args += ["--state-dir", str(lr.stack.state_dir)]
        t = time.monotonic()
        start_state = _cli(
            "features",
            "warm",
            "--input",
            str(history),
            "--definitions",
            str(before_file),
            *store_args,
        )
        log(
            f"store warm-started before {start.date()} in {time.monotonic() - t:.1f} s: "
            + start_state.strip()
        )
        lr.start_job([*common, f"--definitions={before_file}"])
        lr.replay(stream[:switch], config.rate, first_alone=True, first_timeout_s=600)
        lr.wait_for(lambda: lr.predicted() >= n_old * config.change_at, config.timeout_s, "old")
        change_started = time.time()
        log(f"the change starts at {lr.predicted():,} predictions")
        # 1. Backfill only the new columns: once more (timed before the job started), for the
        # challenger's table.
        _best_backfill(data, work / "bf-new", partial, 1)
        # 2. Warm while the old job runs (the bulk).
        first_warm = json.loads(
            _cli(
                "features",
                "warm",
                "--input",
                str(data),
                "--definitions",
                str(DEFINITIONS),
                *store_args,
            )
        )
        log(f"warm while the old job runs: {first_warm}")
        # 3. The challenger: the old table joined with the new columns, on the full file.
        old_table = pd.read_parquet(work / "bf-before" / "features")
        new_cols = pd.read_parquet(work / "bf-new" / "features")
        id_col = full.events.field(full.events.id_field).dataset_column
        joined = old_table.merge(new_cols, on=id_col, how="left", validate="one_to_one")
        joined_dir = work / "bf-joined" / "features"
        joined_dir.mkdir(parents=True)
        joined.to_parquet(joined_dir / "part-00000-of-00001.parquet")
        _cli(
            "train",
            "--features",
            str(joined_dir),
            "--model-dir",
            str(models),
            "--definitions",
            str(DEFINITIONS),
            "--no-select",
            "--quick",
            "--register",
            "challenger",
        )
        challenger = ModelRegistry(str(models), definitions=full).pointer().challenger
        log(f"challenger {challenger} (with {', '.join(NEW_FEATURES)})")
        # 4. The old format's last events predicted, stop, warm what it wrote since, restart.
        lr.wait_predicted(n_old, config.timeout_s)
        assert lr.job is not None
        lr.job.stop()
        second_warm = json.loads(
            _cli(
                "features",
                "warm",
                "--input",
                str(data),
                "--definitions",
                str(DEFINITIONS),
                *store_args,
            )
        )
        log(f"warm after the stop: {second_warm}")
        restarted = time.time()
        lr.start_job([*common, f"--definitions={DEFINITIONS}"])
        lr.replay(stream[switch:], config.rate)
        n_tx = len(tx_ids)
        # 5. Shadow until a third of the new-format stream is predicted, then promote.
        target = n_old + (n_tx - n_old) // 3
        lr.wait_for(lambda: lr.predicted() >= target, config.timeout_s, "shadow")
        _cli("models", "promote", "--model-dir", str(models), "--definitions", str(DEFINITIONS))
        promoted_at = time.time()
        log(f"promoted {challenger}")
        lr.wait_predicted(n_tx, config.timeout_s)
        lr.wait_for(
            lambda: any(p.get("model_version") == challenger for p in lr.predictions.received),
            config.timeout_s,
            "a prediction by the promoted challenger",
        )
        time.sleep(5.0)
        lr.stop_monitors()
        predictions = list(lr.predictions.received)
        stored = _stored_ids(topo.project, lr.datastore_kind)
    table = pd.read_parquet(work / "bf-full" / "features")
    # Every prediction of the job on the new file: the champion's inputs until the promotion,
    # the challenger's (with the new features) after it.
    after = [p for p in predictions if _epoch_s(p.get("processing_time")) >= restarted]
    compared, bad = served_mismatches(after, table, id_col)
    result.update(
        {
            "served_equals_backfill": compared > 0 and bad == 0,
            "served_compared": compared,
            "served_mismatches": bad,
            "served_with_new_feature": sum(
                1 for p in after if NEW_FEATURES[0] in (p.get("features") or {})
            ),
            **counts(predictions, tx_ids, stored),
            "predictions_during_change": sum(
                1
                for p in predictions
                if not p.get("correction")
                and change_started <= _epoch_s(p.get("processing_time")) <= promoted_at
            ),
            "challenger_shadowed": sum(
                1 for p in predictions if p.get("challenger_version") == challenger
            ),
            "promoted": ModelRegistry(str(models), definitions=full).pointer().champion
            == challenger,
            "warm": {"running": first_warm, "stopped": second_warm},
        }
    )
    return result


def _epoch_s(stamp: Any) -> float:
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path(".rillet/bench-new-feature"))
    parser.add_argument("--preset", default="small", choices=["small", "large"])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--replay-days", type=int, default=7)
    args = parser.parse_args(argv)
    config = Config(
        args.work_dir,
        preset=args.preset,
        rate=args.rate,
        replay_days=args.replay_days,
        repeat=args.repeat,
    )
    result = run(config)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
