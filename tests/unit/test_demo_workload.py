"""rillet demo --workload NAME: its choices are the shipped workloads, each with a default
replay rate, and the command hands the demo the workload, its preset and rate."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.app import demo
from pipelines.app.cli import app
from pipelines.app.errors import UserError
from pipelines.app.parsing import workload_names


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    configs: list[Any] = []

    def fake_run_demo(config: Any) -> dict[str, Any]:
        configs.append(config)
        return {"complete": True}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.setattr("pipelines.app.cli._quiet_tensorflow", lambda: None)
    return configs


def test_the_help_lists_every_shipped_workload() -> None:
    out = CliRunner().invoke(app, ["demo", "--help"])
    assert out.exit_code == 0, out.output
    names = workload_names()
    assert {"handbook", "payments"} <= set(names)
    text = " ".join(out.output.replace("│", " ").split())  # the help box wraps lines
    assert "--workload" in text and "(" + " | ".join(names) + ")" in text


def test_every_workload_has_a_default_rate_of_at_least_200_events_per_s() -> None:
    assert set(demo.DEMO_RATES) == set(workload_names())
    assert all(rate >= 200 for rate in demo.DEMO_RATES.values())
    assert demo.DEMO_RATES["handbook"] == 400  # make demo unchanged


def test_the_workload_preset_and_rate_reach_the_demo(tmp_path: Any, captured: list[Any]) -> None:
    runner = CliRunner()
    work = ["--work-dir", str(tmp_path)]
    assert runner.invoke(app, ["demo", *work]).exit_code == 0
    assert (
        runner.invoke(app, ["demo", "--workload", "payments", "--preset", "tiny", *work]).exit_code
        == 0
    )
    assert (
        runner.invoke(app, ["demo", "--workload=payments", "--rate", "300", *work]).exit_code == 0
    )
    got = [(c.workload, c.preset, c.rate) for c in captured]
    assert got == [
        ("handbook", "small", None),
        ("payments", "tiny", None),
        ("payments", "small", 300),
    ]


def test_an_unknown_workload_or_a_preset_it_lacks_is_refused(captured: list[Any]) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["demo", "--workload", "shop"])
    assert unknown.exit_code == 2 and not captured
    missing = runner.invoke(app, ["demo", "--workload", "payments", "--preset", "handbook"])
    assert isinstance(missing.exception, UserError), missing.output
    assert missing.exception.message == "the payments workload has no preset 'handbook'"
    assert missing.exception.fix == "pass --preset tiny | small | large"
    assert not captured
