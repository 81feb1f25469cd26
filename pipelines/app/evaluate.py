"""``rillet evaluate``: a model version scored offline and as served, with feature consistency.

Two sets of scores over the same test set (models.evaluation.test_set: the test week minus the
cards already known compromised):

* offline: the exported SavedModel applied to the backfill's feature table;
* served: the scores the streaming pipeline wrote to Datastore while the test week was replayed.

The served side also carries the features the pipeline used, so every replayed transaction's
features are compared with the backfill's (mismatch count and max abs difference per feature).
Both scores come from the job's own scorer (pipelines.transforms.inference.load_model_version), so
with identical features they can differ only by float rounding (max_abs_score_diff <= 1e-5).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.declarations import Definitions
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.transforms.inference import load_model_version

__all__ = [
    "EvaluationConfig",
    "consistency",
    "evaluate",
    "read_served",
]

SCORE_TOLERANCE = 1e-5
_LOOKUP_CHUNK = 1000


@dataclass
class EvaluationConfig:
    """What to evaluate and where the served predictions are."""

    feature_table: Path
    model_dir: Path
    model_version: str = "champion"
    served: bool = True
    project: str = "rillet-local"
    kind: str = "Prediction"
    namespace: str | None = None
    report_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    replay: dict[str, Any] | None = None
    prediction_logs: Path | None = None
    # The definitions the model must be servable with (None: the handbook's file).
    definitions: Definitions | None = None


def read_served(
    ids: Sequence[str], project: str, kind: str = "Prediction", namespace: str | None = None
) -> pd.DataFrame:
    """The predictions stored in Datastore for these transaction ids, one row per id found:
    TRANSACTION_ID (str), score, revision, model_version, challenger_score and
    challenger_version (None without a challenger), publish_time_us, processing_time_us and the
    MODEL_INPUTS the pipeline used."""
    from google.cloud import datastore

    client = datastore.Client(project=project, namespace=namespace)
    rows = []
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        keys = [client.key(kind, str(i)) for i in ids[start : start + _LOOKUP_CHUNK]]
        for entity in client.get_multi(keys):
            features = json.loads(entity["features"])
            rows.append(
                {
                    "TRANSACTION_ID": entity.key.name,
                    "score": float(entity["score"]),
                    "revision": int(entity.get("revision", 0)),
                    "model_version": entity.get("model_version"),
                    "challenger_score": entity.get("challenger_score"),
                    "challenger_version": entity.get("challenger_version"),
                    "publish_time_us": _micros(entity.get("publish_time")),
                    "processing_time_us": _micros(entity.get("processing_time")),
                    **{name: float(features[name]) for name in MODEL_INPUTS},
                }
            )
    return pd.DataFrame(rows, columns=_SERVED_COLUMNS)


_SERVED_COLUMNS = [
    "TRANSACTION_ID",
    "score",
    "revision",
    "model_version",
    "challenger_score",
    "challenger_version",
    "publish_time_us",
    "processing_time_us",
    *MODEL_INPUTS,
]


def write_prediction_logs(model: Any, frame: pd.DataFrame, path: Path) -> dict[str, Any]:
    """The rows' PredictionLogs (request: the tf.Example, response: the score), scored through
    tfx-bsl's RunInference handler (model_serving.TfxBslScorer), as one TFRecord file; returns
    {path, n, max_abs_diff} (the difference to the job's scorer, which must be float noise)."""
    import tensorflow as tf

    from pipelines.transforms.model_serving import TfxBslScorer

    rows = frame[list(model.features)].to_numpy()
    loaded = load_model_version(model)
    scorer = TfxBslScorer.local(model.path, model.features)
    path.parent.mkdir(parents=True, exist_ok=True)
    diff, n = 0.0, 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            logs = scorer.prediction_logs(chunk[:, loaded.columns].astype(np.float32))
            served = loaded.score(chunk)
            for log, expected in zip(logs, served, strict=True):
                writer.write(log.SerializeToString())
                got = log.predict_log.response.outputs["score"].float_val[0]
                diff = max(diff, abs(got - expected))
                n += 1
    return {"path": str(path), "n": n, "max_abs_diff": diff}


def _micros(value: Any) -> int:
    if value is None:
        return 0
    return int(pd.Timestamp(value).as_unit("us").value // 1000)


def consistency(expected: pd.DataFrame, served: pd.DataFrame) -> pd.DataFrame:
    """Per model input: how many served transactions were compared, how many differ from the
    backfill's value, and the max abs difference. Both frames are keyed by TRANSACTION_ID."""
    left = expected.set_index(expected["TRANSACTION_ID"].astype(str))
    right = served.set_index("TRANSACTION_ID")
    common = left.index.intersection(right.index)
    rows = []
    for name in MODEL_INPUTS:
        a = left.loc[common, name].to_numpy(np.float64)
        b = right.loc[common, name].to_numpy(np.float64)
        diff = np.abs(a - b)
        rows.append(
            {
                "feature": name,
                "compared": len(common),
                "mismatches": int((a != b).sum()),
                "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
            }
        )
    return pd.DataFrame(rows)


def _metrics(frame: pd.DataFrame) -> dict[str, Any]:
    from models.evaluation import evaluate_scores

    m = evaluate_scores(frame)
    return {
        "auc": round(float(m["auc"]), 6),
        "ap": round(float(m["ap"]), 6),
        "cp100": round(float(m["cp100"]), 6),
        "cp100_per_day": [round(float(x), 4) for x in m["cp100_per_day"]],
    }


def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Scores the test week offline (and as served); writes the report; returns the result."""
    from models.evaluation import Protocol, rows_in, test_set
    from pipelines.app.features import load_features
    from pipelines.transforms.inference import resolve_model

    model = resolve_model(str(config.model_dir), config.model_version, config.definitions)
    card = json.loads((Path(model.path).parent / "model_card.json").read_text())
    if not card.get("protocol"):
        raise ValueError(
            "the model card has no evaluation protocol; train it with 'rillet train' on a "
            "backfill table"
        )
    protocol = Protocol.from_dict(card["protocol"])
    table = load_features(config.feature_table, config.definitions)  # a table, or a dataset
    test = test_set(table, protocol).copy()
    if test.empty:
        raise ValueError(f"no test transactions in {protocol.test_range} in {config.feature_table}")
    test["score"] = load_model_version(model).score(test[list(model.features)].to_numpy())
    logs = None
    if config.prediction_logs is not None:
        logs = write_prediction_logs(model, test, config.prediction_logs)
    result: dict[str, Any] = {
        "model_version": model.version,
        "protocol": {"train": protocol.train_range, "test": protocol.test_range},
        "offline": _metrics(test),
        "n_test": len(test),
        "n_test_frauds": int(test["TX_FRAUD"].sum()),
    }
    if logs is not None:
        result["prediction_logs"] = logs
    served_test = None
    table_consistency = None
    timing = None
    if config.served:
        replayed = rows_in(table, protocol.test_range)
        served = read_served(
            replayed["TRANSACTION_ID"].astype(str).tolist(),
            config.project,
            config.kind,
            config.namespace,
        )
        table_consistency = consistency(replayed, served)
        by_id = served.set_index("TRANSACTION_ID")
        test_ids = test["TRANSACTION_ID"].astype(str)
        present = test_ids.isin(by_id.index).to_numpy()
        served_test = test.loc[present].copy()
        served_test["score"] = by_id.loc[test_ids[present], "score"].to_numpy()
        diff = np.abs(served_test["score"].to_numpy() - test.loc[present, "score"].to_numpy())
        result.update(
            {
                "served": _metrics(served_test) if present.all() else None,
                "n_served": int(present.sum()),
                "max_abs_score_diff": float(diff.max()) if len(diff) else None,
                "consistency": {
                    "replayed": len(replayed),
                    "with_prediction": len(served),
                    "mismatches": int(table_consistency["mismatches"].sum()),
                    "max_abs_diff": float(table_consistency["max_abs_diff"].max()),
                },
            }
        )
        result["ok"] = bool(
            present.all()
            and len(served) == len(replayed)
            and result["max_abs_score_diff"] is not None
            and result["max_abs_score_diff"] <= SCORE_TOLERANCE
        )
        timing, latency = _timing(served)
        result["latency_ms"] = latency
    if config.replay:
        result["replay"] = config.replay
    if config.report_dir is not None:
        report = _write_report(
            config, card, protocol, test, served_test, result, table_consistency, timing
        )
        result["report"] = str(report)
    return result


def _timing(served: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Publish and processing times of the predictions that measure the pipeline's latency.

    Left out: corrections (their publish time is not the original event's), and messages
    published before the first prediction came out: the job was still starting (loading the
    model, opening clients), which is start-up time, not steady-state latency.
    """
    from pipelines.app.local_run import percentiles

    timing = served.loc[served["publish_time_us"] > 0, ["publish_time_us", "processing_time_us"]]
    first_out = int(timing["processing_time_us"].min()) if len(timing) else 0
    steady = timing[timing["publish_time_us"] >= first_out]
    latency = (steady["processing_time_us"] - steady["publish_time_us"]).to_numpy() / 1000.0
    summary: dict[str, Any] = {
        "measured": len(steady),
        "excluded_start_up": len(timing) - len(steady),
        "excluded_corrections": len(served) - len(timing),
    }
    if len(latency):
        p50, p95, p99 = percentiles(list(latency))
        summary.update({"p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1)})
    return steady, summary


def _write_report(
    config: EvaluationConfig,
    card: dict[str, Any],
    protocol: Any,
    offline: pd.DataFrame,
    served: pd.DataFrame | None,
    result: dict[str, Any],
    table_consistency: pd.DataFrame | None,
    timing: pd.DataFrame | None,
) -> Path:
    from models.report import ReportData, write_report

    assert config.report_dir is not None
    metrics = {k: v for k, v in result.items() if k != "protocol"}
    data = ReportData(
        title=f"rillet evaluation: model {result['model_version']}",
        protocol=protocol,
        model_card=card,
        offline=offline,
        served=served,
        metrics=metrics,
        consistency=table_consistency,
        timing=timing,
        notes=config.notes,
    )
    return Path(write_report(config.report_dir, data))
