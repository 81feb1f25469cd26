"""Training, evaluation and retraining take any workload's definitions file: the payments
workload end to end in batch (simulate, train, evaluate, retrain), from its declarations only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.app.cli import app
from pipelines.app.errors import UserError
from pipelines.core.declarations import WORKLOADS

PAYMENTS = str(WORKLOADS / "payments.yaml")


@pytest.mark.slow
def test_payments_trains_and_evaluates_from_its_definitions(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    done = runner.invoke(app, ["simulate", "--workload", "payments", "--preset", "small", *state])
    assert done.exit_code == 0, done.output
    # Without the file, the handbook's commands find no handbook dataset and say what to pass.
    refused = runner.invoke(app, ["train", *state, "--no-select"])
    assert isinstance(refused.exception, UserError), refused.output
    assert "no handbook dataset" in refused.exception.message
    assert refused.exception.fix == "pass --definitions pipelines/workloads/payments.yaml for it"
    models = str(tmp_path / "models")
    trained = runner.invoke(
        app, ["train", *state, "--no-select", "--model-dir", models, "--definitions", PAYMENTS]
    )
    assert trained.exit_code == 0, trained.output
    card_result = json.loads(trained.output.strip().splitlines()[-1])
    assert card_result["inputs"] == 30
    evaluate = ["evaluate", *state, "--model-dir", models, "--no-served", "--json"]
    scored = runner.invoke(app, [*evaluate, "--definitions", PAYMENTS])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.output.strip().splitlines()[-1])
    # Four scenarios the declared features see (docs/specs/payments-workload.md): far above
    # chance on the test week.
    assert result["offline"]["auc"] > 0.85 and result["offline"]["ap"] > 0.5
    assert result["n_test_frauds"] > 50
    # Continual learning on it: its labels are known 3 days after (not the handbook's 7).
    retrained = runner.invoke(
        app,
        ["retrain", *state, "--model-dir", models, "--quick", "--definitions", PAYMENTS],
    )
    assert retrained.exit_code == 0, retrained.output
    step = json.loads(retrained.output.strip().splitlines()[-1])
    assert step["now"].startswith("2018-05-26") and step["last_labelled_day"] == "2018-05-22"
    assert step["evaluation"]["challenger"]["auc"] > 0.85
