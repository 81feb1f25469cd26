"""Every user mistake gets one clear line: each case runs ``rillet`` as a real subprocess and
checks the exit code (2: usage, 1: run time), that no traceback is printed, and that the message
names the problem and the fix. No emulator is needed: "not running" is the case under test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.definitions import MODEL_INPUTS
from tests.cards import card_fields

ROOT = Path(__file__).resolve().parents[2]


def rillet(*args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset, a fake model version, a fake backfill output and a state dir whose recorded
    emulators are on closed ports."""
    from pipelines.app.simulator import PRESETS, simulate, write_dataset

    root = tmp_path_factory.mktemp("cli")
    write_dataset(simulate(PRESETS["tiny"]).head(50), root / "data")
    card = {"version": "v1", **card_fields(MODEL_INPUTS)}
    (root / "models" / "v1").mkdir(parents=True)
    (root / "models" / "v1" / "model_card.json").write_text(json.dumps(card))
    (root / "out" / "features").mkdir(parents=True)
    (root / "out" / "manifest.json").write_text("{}")
    for name, days in (("short", 21), ("long", 56)):
        (root / name).mkdir()
        times = pd.date_range("2018-04-01", periods=days * 10, freq="144min", tz="UTC")
        pd.DataFrame({"TRANSACTION_ID": range(len(times)), "TX_DATETIME": times}).to_parquet(
            root / name / "part-0.parquet"
        )
    # A registry: two good versions, one without saved_model/, one needing a feature the
    # handbook's file does not declare (a_*: older names, never the implicit champion).
    other = {"features": ["NEW"], "feature_fingerprints": {"NEW": "0" * 12}}
    for name, fields in (("r1", card_fields()), ("r2", card_fields()), ("a_other", other)):
        (root / "reg" / name / "saved_model").mkdir(parents=True)
        (root / "reg" / name / "saved_model" / "saved_model.pb").write_bytes(b"fake")
        card = {"version": name, **fields}
        (root / "reg" / name / "model_card.json").write_text(json.dumps(card))
    (root / "reg" / "a_broken").mkdir()
    (root / "reg" / "a_broken" / "model_card.json").write_text(json.dumps(card))
    state = {"ports": {n: closed_port() for n in ("pubsub", "bigtable", "datastore")}, "pids": {}}
    (root / "state").mkdir()
    (root / "state" / "local.json").write_text(json.dumps(state))
    return root


CASES = {
    "backfill, missing input": (
        ["backfill", "--input", "/nonexistent", "--output", "x"],
        2,
        ["--input /nonexistent: no such directory", "rillet simulate"],
    ),
    "backfill, input without transactions": (
        ["backfill", "--input", "models", "--output", "x"],
        2,
        ["has no transactions* file", "rillet simulate"],
    ),
    "backfill, nothing before --until": (
        ["backfill", "--input", "data", "--output", "empty", "--until", "2000-01-01"],
        1,
        ["no transaction in data before --until 2000-01-01"],
    ),
    "publish, missing input": (
        ["publish", "--input", "/nonexistent", "--limit", "5"],
        2,
        ["no such directory", "rillet simulate"],
    ),
    "publish, days outside the data": (
        ["publish", "--input", "data", "--first-day", "2019-01-01", "--state-dir", "state"],
        2,
        ["no transaction from --first-day 2019-01-01", "covers 2018-04-01.."],
    ),
    "publish, emulators down": (
        ["publish", "--input", "data", "--limit", "5", "--state-dir", "state"],
        1,
        ["the local emulators are not running", "rillet local up"],
    ),
    "tail, unknown filter attribute": (
        ["tail", "--filter", "band=high", "--state-dir", "state"],
        2,
        ["--filter 'band=high': unknown attribute 'band'", "risk_band, model_version, correction"],
    ),
    "tail, emulators down": (
        ["tail", "--filter", "risk_band=high", "--state-dir", "state"],
        1,
        ["the local emulators are not running", "rillet local up"],
    ),
    "train, missing features": (
        ["train", "--features", "/nonexistent"],
        2,
        ["--features /nonexistent: no such directory", "rillet backfill"],
    ),
    "train, the backfill's output directory": (
        ["train", "--features", "out"],
        2,
        ["is the backfill's output directory", "pass --features out/features"],
    ),
    "train, the other spelling of an option": (
        ["train", "--features", "/nonexistent", "--model_dir", "x"],
        2,
        ["--features /nonexistent: no such directory"],
    ),
    "train, unknown --register": (
        ["train", "--features", "long", "--register", "boss"],
        2,
        ["--register 'boss': expected one of champion, challenger, none"],
    ),
    "train, data too short for the protocol": (
        ["train", "--features", "short"],
        2,
        ["covers 21 days", "need at least 42", "--preset handbook (183 days) or small (56 days)"],
    ),
    "train, an input the definitions do not declare": (
        ["train", "--features", "long", "--inputs", "TX_AMOUNT,NOPE"],
        2,
        ["--inputs: NOPE not declared in the definitions 'handbook'", "TX_AMOUNT,TX_DURING"],
    ),
    "train, inputs the feature table lacks": (
        ["train", "--features", "long", "--train-start", "2018-04-22", "--inputs", "TX_AMOUNT"],
        2,
        ["the feature table has no column TX_AMOUNT", "rillet backfill"],
    ),
    "train, start before the data": (
        ["train", "--features", "long", "--train-start", "2017-01-01"],
        2,
        ["before the data starts (2018-04-01)", "the earliest --train-start for this table is"],
    ),
    "run, misspelt option": (
        ["run", "--bigtable_tabel=x", "--state-dir", "state"],
        2,
        ["unknown argument(s) --bigtable_tabel=x (did you mean --bigtable_table?)"],
    ),
    "run, the other spelling of an option": (
        ["run", "--model-dir=nonexistent", "--state-dir", "state"],
        2,
        ["--model-dir nonexistent: no such directory"],  # as typed
    ),
    "run, missing model directory": (
        ["run", "--model_dir=nonexistent", "--state-dir", "state"],
        2,
        ["--model_dir nonexistent: no such directory", "rillet train"],
    ),
    "run, unknown model version": (
        ["run", "--model_dir=models", "--model_version=v999", "--state-dir", "state"],
        2,
        ["--model_version v999: not in models; available: v1"],
    ),
    "run, misspelt runner": (
        ["run", "--runner=DirectRuner", "--model_dir=models", "--state-dir", "state"],
        2,
        ["unknown runner 'DirectRuner'; did you mean --runner=DirectRunner?"],
    ),
    "run, stray positional": (
        ["run", "--model_dir=models", "extra_positional", "--state-dir", "state"],
        2,
        ["unexpected argument(s) extra_positional"],
    ),
    "models, unknown version": (
        ["models", "show", "nope", "--model-dir", "reg"],
        2,
        [
            "unknown model version 'nope' in reg: known versions are a_broken, a_other, r1, r2",
            "list",
        ],
    ),
    "models, nothing to roll back": (
        ["models", "rollback", "--model-dir", "reg"],
        2,
        ["rillet models rollback: nothing to roll back in reg"],
    ),
    "models, no challenger to promote": (
        ["models", "promote", "--model-dir", "reg"],
        2,
        ["rillet models promote: no challenger to promote in reg", "rillet models challenge"],
    ),
    "models, missing files": (
        ["models", "challenge", "a_broken", "--model-dir", "reg"],
        2,
        ["model version 'a_broken' in reg is incomplete: no saved_model/; expected"],
    ),
    "models, feature mismatch": (
        ["models", "promote", "a_other", "--model-dir", "reg"],
        2,
        [
            "model version 'a_other' cannot be served with the definitions 'handbook' (",
            "handbook.yaml): NEW: not declared in the definitions",
        ],
    ),
    "models, missing model directory": (
        ["models", "list", "--model-dir", "/nonexistent"],
        2,
        ["--model-dir /nonexistent: no such directory", "rillet train"],
    ),
    "models, bad policy": (
        ["models", "policy", "--metric", "f1", "--model-dir", "reg"],
        2,
        ["--metric 'f1': expected one of ap, auc, cp100"],
    ),
    "models compare, emulators down": (
        ["models", "compare", "--model-dir", "reg", "--state-dir", "state"],
        1,
        ["the local emulators are not running", "rillet local up"],
    ),
    "retrain, missing history": (
        ["retrain", "--history", "/nonexistent", "--model-dir", "reg"],
        2,
        ["--history /nonexistent: no such directory", "rillet simulate"],
    ),
    "retrain, unknown role": (
        ["retrain", "--history", "data", "--register", "boss", "--model-dir", "reg"],
        2,
        ["--register 'boss': expected one of challenger, champion, none"],
    ),
    "retrain, --now not ISO 8601": (
        ["retrain", "--history", "data", "--model-dir", "reg", "--now", "26/05/2018"],
        2,
        ["--now '26/05/2018': expected an ISO 8601 day or time"],
    ),
    "retrain, --now after the history": (
        ["retrain", "--history", "data", "--model-dir", "reg", "--now", "2019-01-01"],
        2,
        [
            "--now 2019-01-01 is after the history: it ends 2018-04-01",
            "within 2018-04-01..2018-04-09",
        ],
    ),
    "run, emulators down": (
        ["run", "--model_dir=models", "--state-dir", "state"],
        1,
        ["the local emulators are not running", "rillet local up"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_mistake_gets_a_clear_message(work: Path, case: str) -> None:
    args, code, expected = CASES[case]
    started = time.monotonic()
    result = rillet(*args, cwd=work)
    took = time.monotonic() - started
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    for text in expected:
        assert text in result.stderr, (text, result.stderr[-2000:])
    # One or two lines of our own (the libraries' start-up noise aside), and no silent wait.
    ours = [line for line in result.stderr.splitlines() if line.startswith("rillet ")]
    assert len(ours) == 1, result.stderr[-2000:]
    assert took < 60, f"{case} took {took:.0f} s"


def test_run_help_lists_the_pipeline_options(work: Path) -> None:
    result = rillet("run", "--help", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    for option in ("--status-every", "--model_dir", "--bigtable_table", "--max_batch_size"):
        assert option in result.stdout, option


def test_debug_shows_the_traceback_and_keeps_the_exit_code(work: Path) -> None:
    args = ["backfill", "--input", "/nonexistent", "--output", "x"]
    plain = rillet(*args, cwd=work)
    result = rillet("--debug", *args, cwd=work)
    assert plain.returncode == result.returncode == 2
    assert "Traceback" in result.stderr and "BadParameter" in result.stderr
    assert result.stderr.strip().splitlines()[-2:] == plain.stderr.strip().splitlines()


def test_the_console_script_is_the_wrapper() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rillet"] == "pipelines.app.cli:main"
