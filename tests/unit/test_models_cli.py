"""``rillet models`` in process: list, show, promote, challenge, rollback, policy on a fake model
directory, and compare / auto-promote with a fake Datastore client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.app.cli import app
from pipelines.stores.model_registry import ModelRegistry
from tests.unit.test_model_registry import FakeDatastore, make_version


@pytest.fixture
def models(tmp_path: Path) -> Path:
    for i, version in enumerate(("v1", "v2", "v3")):
        make_version(
            tmp_path,
            version,
            validation_metrics={"auc": 0.8 + i / 100, "ap": 0.5 + i / 100, "cp100": 0.2},
        )
    return tmp_path


def rillet(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_list_show_and_roles(models: Path) -> None:
    d = str(models)
    out = rillet("models", "list", "--model-dir", d).output
    assert "no registry.json: the newest version serves" in out
    assert "* champion" in out and "0.8200" in out and "2018-04-01..2018-04-07" in out
    assert (
        "challenging: champion v3, challenger v2"
        in rillet("models", "challenge", "v2", "--model-dir", d).output
    )
    listed = json.loads(rillet("models", "list", "--model-dir", d, "--json").output)
    assert [r["role"] for r in listed["versions"]] == ["", "challenger", "champion"]
    assert listed["pointer"]["generation"] == 1
    assert (
        json.loads(rillet("models", "show", "v2", "--model-dir", d, "--json").output)["version"]
        == "v2"
    )
    out = rillet("models", "promote", "--challenger", "v1", "--model-dir", d).output
    assert out.startswith("promoted: champion v2, challenger v1 (generation 2)")
    assert (
        "rolled back: champion v3, challenger v2"
        in rillet("models", "rollback", "--model-dir", d).output
    )
    assert (
        "cleared: champion v3, challenger (none)"
        in rillet("models", "challenge", "--clear", "--model-dir", d).output
    )
    out = rillet("models", "policy", "--mode", "auto", "--min-days", "2", "--model-dir", d).output
    assert '"mode": "auto", "min_days": 2' in out
    assert ModelRegistry(d).pointer().generation == 5


def field(out: str, key: str) -> str:
    """The value of a ``models show`` line."""
    return next(line.split(None, 1)[1] for line in out.splitlines() if line.split()[0] == key)


def test_show_is_a_summary_and_json_the_whole_card(models: Path) -> None:
    """A few lines a person reads (no reference histograms), --json every field; champion,
    challenger and latest name a version here as everywhere."""
    d = str(models)
    ModelRegistry(d).challenge("v2")
    card = json.loads((models / "v3" / "model_card.json").read_text())
    card["reference"] = {"TX_AMOUNT": {"edges": list(range(100)), "counts": [1] * 99}}
    card["validation_ranges"] = [["2018-04-15", "2018-04-21"], ["2018-04-08", "2018-04-14"]]
    card["config"] = {"max_depth": 4, "num_trees": 100}
    (models / "v3" / "model_card.json").write_text(json.dumps(card))
    out = rillet("models", "show", "--model-dir", d).output  # the champion by default
    lines = out.splitlines()
    assert lines[0].split() == ["version", "v3", "(champion)"] and len(lines) < 15, out
    assert "AUC 0.8200, AP 0.5200, CP@100 0.2000 on 2 validation weeks" in out
    assert field(out, "training") == "2018-04-01..2018-04-07"
    assert field(out, "config") == "max_depth=4, num_trees=100"
    assert field(out, "features") == "15 model inputs declared in handbook (handbook.yaml)"
    assert field(out, "serves") == "yes, with handbook: every input declared the same"
    assert "edges" not in out and f"{d}/v3/model_card.json (--json prints all of it)" in out
    assert rillet("models", "show", "latest", "--model-dir", d).output == out
    assert "v2 (challenger)" in rillet("models", "show", "challenger", "--model-dir", d).output
    whole = json.loads(rillet("models", "show", "champion", "--model-dir", d, "--json").output)
    assert whole["reference"]["TX_AMOUNT"]["counts"] == [1] * 99
    bare = rillet("models", "show", "v1", "--model-dir", d).output
    assert field(bare, "validation").startswith("AUC 0.8000")
    (models / "v1" / "model_card.json").write_text(
        json.dumps({**json.loads((models / "v1" / "model_card.json").read_text()),
                    "validation_metrics": {}})
    )  # fmt: skip
    bare = rillet("models", "show", "v1", "--model-dir", d).output
    assert field(bare, "validation") == "none (trained without validation)"


def test_role_names_are_versions_in_promote_and_challenge(models: Path) -> None:
    d = str(models)
    from pipelines.app.errors import UserError

    with pytest.raises(UserError, match="'v3' is the champion"):  # latest is v3
        rillet("models", "challenge", "latest", "--model-dir", d)
    assert "challenging: champion v3, challenger v1" in (
        rillet("models", "challenge", "v1", "--model-dir", d).output
    )
    out = rillet("models", "promote", "challenger", "--challenger", "champion", "--model-dir", d)
    assert out.output.startswith("promoted: champion v1, challenger v3"), out.output
    out = rillet("models", "show", "challenger", "--model-dir", d, "--json")
    assert json.loads(out.output)["version"] == "v3"


def evaluations(days: int, champion_ap: float, challenger_ap: float) -> list[dict[str, Any]]:
    rows = []
    for i in range(1, days + 1):
        for version, ap in (("v3", champion_ap), ("v2", challenger_ap)):
            day = f"2024-05-0{i}"
            rows.append(
                {"version": version, "day": day, "n": 1000, "frauds": 9, "auc": 0.9, "ap": ap}
                | {"cp100": 0.3}
            )
    return rows


def test_compare_and_auto_promote(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import datastore

    d = str(models)
    entities = evaluations(3, 0.50, 0.55)
    made: list[dict[str, Any]] = []

    def client(**kwargs: Any) -> FakeDatastore:
        made.append(kwargs)
        return FakeDatastore(entities)

    monkeypatch.setattr(datastore, "Client", client)
    registry = ModelRegistry(d)
    registry.challenge("v2")
    common = ("--model-dir", d, "--project", "my-project", "--datastore-namespace", "ns")
    out = rillet("models", "compare", *common).output
    assert made == [{"project": "my-project", "namespace": "ns"}]
    assert "2024-05-03" in out and "0.5500" in out and "1,000" in out
    assert "decision: keep:" in out and "the policy is manual" in out
    out = rillet("models", "auto-promote", *common).output
    assert out.startswith("kept: champion v3, challenger v2:")
    registry.set_policy(mode="auto")
    compared = json.loads(rillet("models", "compare", *common, "--json").output)
    assert compared["promote"] is True and len(compared["days"]) == 3
    out = rillet("models", "auto-promote", *common).output
    assert out.startswith("promoted: champion v2, challenger (none): challenger v2 beat")
    pointer = registry.pointer()
    assert pointer.champion == "v2" and pointer.history[-1]["by"].startswith("auto-promote")
    out = rillet("models", "auto-promote", *common).output
    assert out.startswith("kept: champion v2, challenger (none): no challenger")


@pytest.mark.parametrize(
    "command",
    [["promote", "v1"], ["challenge", "v1"], ["rollback"], ["policy", "--mode", "auto"]],
)
def test_a_change_that_loses_a_race_is_one_line_and_exit_1(
    models: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Another operator's change lands between the command's read of the pointer and its
    write: nothing is written, one line says so and what to do, exit 1, no traceback."""
    from pipelines.app.cli import main
    from pipelines.stores import model_registry

    d = str(models)
    ModelRegistry(d).challenge("v2")
    ModelRegistry(d).promote()
    write_if = model_registry._LocalPointerFile.write_if

    def another_writer_first(self: Any, data: bytes, token: Any) -> bool:
        monkeypatch.setattr(model_registry._LocalPointerFile, "write_if", write_if)
        ModelRegistry(d).set_policy(margin=0.05, by="someone else")
        return bool(write_if(self, data, token))

    monkeypatch.setattr(model_registry._LocalPointerFile, "write_if", another_writer_first)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["models", *command, "--model-dir", d])
    assert exited.value.code == 1
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"rillet models {command[0]}: {d}/registry.json changed meanwhile (generation 2 -> 3): "
        "another change was written first and this one was not; run the command again"
    ]
    assert out.out == ""
    pointer = ModelRegistry(d).pointer()
    assert pointer.generation == 3 and pointer.history[-1]["by"] == "someone else"


def test_list_and_show_name_what_the_definitions_cannot_serve(models: Path) -> None:
    """A card from before per-input fingerprints: listed with the reason, and 'show' says it
    does not serve and what to do."""
    d = str(models)
    path = models / "v1" / "model_card.json"
    card = json.loads(path.read_text())
    del card["feature_fingerprints"]
    path.write_text(json.dumps(card))
    listed = rillet("models", "list", "--model-dir", d).output
    assert "v1: model version 'v1' cannot be served with the definitions 'handbook'" in listed
    assert "retrain it" in listed and "v2: " not in listed
    shown = rillet("models", "show", "v1", "--model-dir", d).output
    assert field(shown, "serves").startswith("no, with handbook: its model card records no")
    assert field(shown, "features").endswith(
        "(no fingerprint per input: a card from before definitions files)"
    )
