"""The streaming half of ``make bench-continual``: registry swaps and shadow scoring in a real run.

On a private emulator stack, the streaming job (DirectRunner, child process) serves the
registry's champion with a challenger shadowing it while a few days of the handbook dataset and
their labels are replayed; meanwhile the registry is changed as an operator would, with
``rillet models``' own functions: promote the challenger (naming the next challenger), again,
then roll back. Afterwards:

- swaps: for each change, the seconds from the pointer's write to the first prediction of the
  new champion (every one must be <= 60 s);
- lost / duplicated: transactions published without a stored prediction, and transactions with
  more than one original (non-correction) prediction message;
- predictions_by_version: the stored predictions per champion version;
- shadow_coverage: the share of stored predictions carrying the challenger's score (a challenger
  is assigned during the whole run, so 1.0 means none was scored without its shadow);
- online_vs_offline_max_diff: the job's ModelEvaluation figures (per version and day of labels)
  against the same figures recomputed here from the stored scores with scikit-learn and
  models.evaluation's Card Precision@100.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["StreamConfig", "offline_day_quality", "streaming_part", "swap_seconds"]


@dataclass
class StreamConfig:
    """The run: which days to replay, how fast, when to change the registry."""

    first_day: str
    days: int = 2
    rate: float = 400.0
    poll_s: float = 5.0
    eval_every_s: float = 5.0
    timeout_s: float = 1800.0


def swap_seconds(
    changed_at: float, champion: str, predictions: list[dict[str, Any]]
) -> float | None:
    """Seconds from ``changed_at`` (epoch s) to the first prediction scored by ``champion`` at or
    after it (None if there is none)."""
    times = [
        _epoch_s(p["processing_time"])
        for p in predictions
        if p.get("model_version") == champion and _epoch_s(p["processing_time"]) >= changed_at
    ]
    return round(min(times) - changed_at, 3) if times else None


def _epoch_s(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _reached(run: Any, n: int) -> bool:
    return bool(run.predicted() >= n)


def offline_day_quality(served: pd.DataFrame, labels: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """Per (version, day of the labelled transactions): AUC and AP with scikit-learn and CP@100
    with models.evaluation, from the stored champion and challenger scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from models.evaluation import card_precision_at_k

    # Card ids are strings on the wire (the online side ranks ties at the top-100 boundary by
    # card id as text): the same ids here, or equal scores of cards 99 and 100 could be ranked
    # the other way (numbers sort 9 < 10, text "10" < "9").
    joined = served.merge(
        labels.assign(CUSTOMER_ID=labels["CUSTOMER_ID"].astype(str)), on="TRANSACTION_ID"
    )
    rows = [
        joined[["TRANSACTION_ID", "CUSTOMER_ID", "TX_DATETIME", "TX_FRAUD"]].assign(
            version=joined["model_version"], score=joined["score"]
        )
    ]
    shadow = joined[joined["challenger_version"].notna()]
    rows.append(
        shadow[["TRANSACTION_ID", "CUSTOMER_ID", "TX_DATETIME", "TX_FRAUD"]].assign(
            version=shadow["challenger_version"], score=shadow["challenger_score"].astype(float)
        )
    )
    frame = pd.concat(rows, ignore_index=True)
    frame["day"] = pd.to_datetime(frame["TX_DATETIME"]).dt.strftime("%Y-%m-%d")
    out = {}
    for (version, day), group in frame.groupby(["version", "day"]):
        y, s = group["TX_FRAUD"].to_numpy(int), group["score"].to_numpy(float)
        two_classes = 0 < y.sum() < len(y)
        out[(str(version), str(day))] = {
            "n": len(group),
            "auc": float(roc_auc_score(y, s)) if two_classes else None,
            "ap": float(average_precision_score(y, s)) if y.sum() else None,
            "cp100": card_precision_at_k(group, "score", 100)[0],
        }
    return out


def _read_evaluations(project: str, versions: list[str]) -> dict[tuple[str, str], dict]:
    """The job's ModelEvaluation rows by (version, day)."""
    from google.cloud import datastore

    from pipelines.stores.model_registry import daily_metrics

    rows = daily_metrics(datastore.Client(project=project), versions)
    return {(r["version"], r["day"]): r for r in rows}


def streaming_part(
    work: Path,
    data_dir: Path,
    frame: pd.DataFrame,
    model_dir: Path,
    versions: list[str],
    config: StreamConfig,
    log: Any = print,
) -> dict[str, Any]:
    """Runs the job over ``config.days`` days of ``frame`` (the dataset written in ``data_dir``)
    from ``config.first_day`` with ``versions`` (at least 4, oldest first) in the registry
    ``model_dir``; returns the streaming fields of the bench's JSON (module docstring)."""
    from models.evaluation import rows_in
    from pipelines.app.evaluate import read_served
    from pipelines.app.local_run import LocalRun
    from pipelines.app.publisher import replay_events
    from pipelines.stores.model_registry import ModelRegistry

    assert len(versions) >= 4, "needs four versions: two promotions and a rollback"
    registry = ModelRegistry(str(model_dir))
    registry.promote(versions[0], challenger=versions[1])
    first = dt.date.fromisoformat(config.first_day)
    last = first + dt.timedelta(days=config.days - 1)
    span = rows_in(frame, (first.isoformat(), last.isoformat()))
    events = replay_events(span)
    with LocalRun(work / "stack", log_path=work / "logs" / "pipeline.log") as run:
        topo = run.topology
        t0 = time.monotonic()
        run.warm_store(data_dir, work / "backfill-warm", first.isoformat())
        log(f"  warm store until {first}: {time.monotonic() - t0:.1f} s")
        run.start_job(
            [
                f"--model_dir={model_dir}",
                f"--model_poll_s={config.poll_s}",
                f"--eval_every_s={config.eval_every_s}",
            ]
        )
        run.replay(events, config.rate, first_alone=True, first_timeout_s=config.timeout_s)
        n_tx = len(span)
        changes: list[dict[str, Any]] = []
        plan: list[tuple[str, Callable[[], Any]]] = [
            ("promote", lambda: registry.promote(versions[1], challenger=versions[2])),
            ("promote", lambda: registry.promote(versions[2], challenger=versions[3])),
            ("rollback", registry.rollback),
        ]
        for i, (action, change) in enumerate(plan, start=1):
            target = n_tx * i // (len(plan) + 1)
            run.wait_for(partial(_reached, run, target), config.timeout_s, "predictions")
            at = time.time()
            pointer = change()
            changes.append(
                {
                    "action": action,
                    "at": at,
                    "champion": pointer.champion,
                    "challenger": pointer.challenger,
                }
            )
            log(f"  {action}: champion {pointer.champion}, challenger {pointer.challenger}")
        elapsed = run.wait_predicted(n_tx, config.timeout_s)
        log(f"  {n_tx:,} transactions predicted in {elapsed:.1f} s")
        ids = span["TRANSACTION_ID"].astype(str).tolist()
        labels = span[["TRANSACTION_ID", "CUSTOMER_ID", "TX_DATETIME", "TX_FRAUD"]].assign(
            TRANSACTION_ID=lambda f: f["TRANSACTION_ID"].astype(str)
        )
        served = read_served(ids, topo.project, run.datastore_kind)
        expected = offline_day_quality(served, labels)
        # The last labels come after the last transaction: wait until the job's figures cover
        # every labelled score (or time out and report the difference as it stands).
        deadline = time.monotonic() + config.timeout_s

        def covered() -> dict[tuple[str, str], dict]:
            online = _read_evaluations(topo.project, versions)
            return (
                online
                if all(k in online and online[k]["n"] == v["n"] for k, v in expected.items())
                else {}
            )

        online: dict[tuple[str, str], dict] = {}
        while not online and time.monotonic() < deadline:
            run.check()
            online = covered()
            if not online:
                time.sleep(2)
        online = online or _read_evaluations(topo.project, versions)
        run.stop(settle_s=1.0)
        messages = list(run.predictions.received)
    originals: dict[str, int] = {}
    for m in messages:
        if not m.get("correction"):
            originals[m["transaction_id"]] = originals.get(m["transaction_id"], 0) + 1
    diffs = [
        abs(online[k][m] - v[m])
        for k, v in expected.items()
        if k in online
        for m in ("auc", "ap", "cp100")
        if v[m] is not None and online[k][m] is not None
    ]
    undefined_mismatch = sum(
        1
        for k, v in expected.items()
        if k in online
        for m in ("auc", "ap", "cp100")
        if (v[m] is None) != (online[k][m] is None)
    )
    swaps = [swap_seconds(c["at"], c["champion"], messages) for c in changes]
    return {
        "swaps": len(changes),
        "swap_s": swaps,
        "max_swap_s": max((s for s in swaps if s is not None), default=None)
        if all(s is not None for s in swaps)
        else None,
        "swap_actions": [c["action"] for c in changes],
        "lost": len(set(ids) - set(served["TRANSACTION_ID"])),
        "duplicated": sum(1 for n in originals.values() if n > 1),
        "predictions_by_version": {
            str(k): int(v) for k, v in served["model_version"].value_counts().sort_index().items()
        },
        "shadow_coverage": round(float(served["challenger_version"].notna().mean()), 6),
        "online_days": len(online),
        "offline_days": len(expected),
        "online_missing": sorted(f"{v}|{d}" for v, d in set(expected) - set(online)),
        "online_vs_offline_max_diff": max(diffs) if diffs else None,
        "online_undefined_mismatches": undefined_mismatch,
        "stream_transactions": len(ids),
        "stream_events": len(events),
        "stream_rate": config.rate,
        "online_eval": {
            f"{v}|{d}": {m: online[(v, d)][m] for m in ("n", "auc", "ap", "cp100")}
            for v, d in sorted(online)
        },
    }
