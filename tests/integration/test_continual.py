"""Continual learning on the emulators: the running job follows the registry (a promotion is
served without a restart), the challenger shadows every prediction, and the online evaluation
equals the same figures computed offline from the stored scores.

The versions are linear SavedModels with known weights (tests/linear_models.py): a stored score
tells which version computed it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.schema import parse_rfc3339

pytestmark = pytest.mark.integration

N = len(MODEL_INPUTS)
WEIGHTS = {
    "v1": (np.full(N, 0.01), -2.0),
    "v2": (np.linspace(0.0, 0.02, N), -1.0),
    "v3": (np.linspace(0.02, 0.0, N), -3.0),
}


def test_promotion_is_hot_swapped_and_shadow_scores_are_evaluated_online(
    tiny_frame, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from google.cloud import datastore

    from bench.continual_stream import offline_day_quality, swap_seconds
    from pipelines.app.evaluate import read_served
    from pipelines.app.local_run import LocalRun
    from pipelines.app.publisher import replay_events
    from pipelines.stores.model_registry import ModelRegistry, daily_metrics
    from tests.linear_models import linear_scores, write_linear_version

    model_dir = tmp_path / "models"
    for version, (w, b) in WEIGHTS.items():
        write_linear_version(model_dir, version, w, b)
    registry = ModelRegistry(str(model_dir))
    registry.register("v1", as_="champion")
    registry.register("v2", as_="challenger")
    registry.register("v3")

    events = replay_events(tiny_frame)
    half = len(events) // 2
    first_tx = sum(e.topic == "transactions" for e in events[:half])
    evaluation_kind = f"Eval{int(time.time() * 1000)}"
    # A private stack: the session's topics feed the default subscriptions of the other tests,
    # which would find these transactions there (the same ids) as duplicates.
    with LocalRun(tmp_path / "stack") as run:
        run.start_pipeline(
            [
                f"--model_dir={model_dir}",
                "--model_poll_s=1",
                "--eval_every_s=2",
                f"--evaluation_kind={evaluation_kind}",
            ]
        )
        run.publish(events[:half])
        run.wait_predicted(first_tx, timeout_s=240)
        changed_at = time.time()
        registry.promote("v2", challenger="v3")
        # The rest as a paced replay, so that predictions flow while the job swaps.
        run.replay(events[half:], rate=100)
        run.wait_predicted(len(tiny_frame), timeout_s=240)
        ids = tiny_frame.TRANSACTION_ID.astype(str).tolist()
        served = read_served(ids, run.topology.project, run.datastore_kind)
        labels = tiny_frame[["TRANSACTION_ID", "CUSTOMER_ID", "TX_DATETIME", "TX_FRAUD"]].assign(
            TRANSACTION_ID=lambda f: f.TRANSACTION_ID.astype(str)
        )
        expected = offline_day_quality(served, labels)
        client = datastore.Client(project=run.topology.project)

        def online() -> dict:
            rows = daily_metrics(client, WEIGHTS, kind=evaluation_kind)
            return {(r["version"], r["day"]): r for r in rows}

        run.wait_for(
            lambda: all(k in online() and online()[k]["n"] == v["n"] for k, v in expected.items()),
            120,
            lambda: (
                "the online evaluation never covered every label: "
                + json.dumps(
                    {
                        f"{k[0]}|{k[1]}": [v["n"], online().get(k, {}).get("n")]
                        for k, v in expected.items()
                    }
                )
            ),
        )
        evaluated = online()
        messages = list(run.predictions.received)

    # The swap: within the poll interval plus a load, no restart (the same in-process job).
    swap_s = swap_seconds(changed_at, "v2", messages)
    assert swap_s is not None and swap_s < 60
    # The swap is one moment for every prediction: each message (originals and corrections) is
    # stamped when it was scored; none names v2 before the promotion was written; from the first
    # that does (the job served v2 from then on), every one is scored by v2 and shadowed by v3,
    # every one before by v1 shadowed by v2, and the first half was published before the swap.
    scored = [
        (parse_rfc3339(m["processing_time"]), m["model_version"], m["challenger_version"])
        for m in messages
    ]
    swap_us = min(t for t, version, _ in scored if version == "v2")
    assert swap_us >= changed_at * 1e6
    assert {(v, c) for t, v, c in scored if t < swap_us} == {("v1", "v2")}
    assert {(v, c) for t, v, c in scored if t >= swap_us} == {("v2", "v3")}
    # The same for the stored predictions (the final state): each names the pair of the moment it
    # was scored, and every transaction published after the swap was scored by v2.
    assert len(served) == len(ids)
    assert served.challenger_version.notna().all()
    after = served.processing_time_us >= swap_us
    pairs = list(zip(served.model_version, served.challenger_version, strict=True))
    assert {p for p, late in zip(pairs, after, strict=True) if not late} == {("v1", "v2")}
    assert {p for p, late in zip(pairs, after, strict=True) if late} == {("v2", "v3")}
    assert (served.model_version[served.publish_time_us >= swap_us] == "v2").all()
    assert (served.publish_time_us >= swap_us).sum() > 0
    rows = served[list(MODEL_INPUTS)].to_numpy()
    for version, (w, b) in WEIGHTS.items():
        champion = served.model_version == version
        np.testing.assert_allclose(
            served.score[champion], linear_scores(rows[champion], w, b), atol=1e-6
        )
        shadow = served.challenger_version == version
        np.testing.assert_allclose(
            served.challenger_score[shadow].astype(float),
            linear_scores(rows[shadow], w, b),
            atol=1e-6,
        )
    # The risk band follows the champion's score alone.
    for m in messages:
        band = "high" if m["score"] >= 0.5 else "medium" if m["score"] >= 0.2 else "low"
        assert m["risk_band"] == band
    # Online == offline (scikit-learn, models.evaluation) on the same stored scores.
    assert set(evaluated) == set(expected)
    for key, want in expected.items():
        got = evaluated[key]
        assert got["n"] == want["n"]
        for metric in ("auc", "ap", "cp100"):
            if want[metric] is None:
                assert got[metric] is None, (key, metric)
            else:
                assert abs(got[metric] - want[metric]) <= 1e-6, (key, metric, json.dumps(got))
