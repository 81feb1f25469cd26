"""``rillet run`` says what it is doing: a ready line naming its inputs, model and outputs, then
status lines counting what it did, against the real emulators (a subprocess, as a user runs it).
The job gets topics, subscriptions, table and kind of its own, so no other test sees its
messages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_quiet_output import noise

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_rillet_run_prints_its_ready_line_and_status(local_run, model_dir, tiny_frame) -> None:  # type: ignore[no-untyped-def]
    from pipelines.app.job_lock import hold_table_lock
    from pipelines.app.local import create_resources
    from pipelines.app.publisher import publish_events, replay_events

    tag = uuid.uuid4().hex[:6]
    topo = dataclasses.replace(
        local_run.topology,
        transactions_topic=f"cli-tx-{tag}",
        labels_topic=f"cli-labels-{tag}",
        predictions_topic=f"cli-predictions-{tag}",
        dead_letter_topic=f"cli-dead-{tag}",
        transactions_subscription=f"cli-tx-sub-{tag}",
        labels_subscription=f"cli-labels-sub-{tag}",
        predictions_subscription=f"cli-predictions-sub-{tag}",
        dead_letter_subscription=f"cli-dead-sub-{tag}",
        bigtable_table=f"cli_{tag}",
    )
    create_resources(topo)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.app.cli",
            "run",
            "--state-dir",
            str(local_run.stack.state_dir),
            "--status-every",
            "2",
            "--no-resume",
            f"--model_dir={model_dir}",
            f"--transactions_subscription={topo.transactions_subscription}",
            f"--labels_subscription={topo.labels_subscription}",
            f"--predictions_topic={topo.predictions_topic}",
            f"--dead_letter_topic={topo.dead_letter_topic}",
            f"--bigtable_table={topo.bigtable_table}",
            f"--datastore_kind=CliRun{tag}",
            f"--recovery_checkpoint={local_run.stack.state_dir / f'cli-{tag}.json'}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As a user's shell has it: no TF_CPP_MIN_LOG_LEVEL (the test session sets one).
        env={
            **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
            "PYTHONPATH": str(ROOT),
        },
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()

    def wait_for(predicate, what: str, timeout_s: float = 180) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)[-3000:]
            if any(predicate(line) for line in list(lines)):
                return
            time.sleep(0.5)
        raise AssertionError(f"no {what} within {timeout_s} s:\n" + "".join(lines)[-3000:])

    try:
        wait_for(lambda line: line.startswith("rillet run: ready: reading"), "ready line")
        text = "".join(lines)
        assert f"projects/rillet-local/subscriptions/{topo.transactions_subscription}" in text
        model = json.loads(next(model_dir.glob("*/model_card.json")).read_text())["version"]
        assert f"model {model} from {model_dir}" in text
        assert f"predictions -> projects/rillet-local/topics/{topo.predictions_topic}" in text
        assert "Traceback" not in text
        # TensorFlow's start-up notes stay out of the user's terminal.
        assert "oneDNN" not in text and "cpu_feature_guard" not in text
        events = [e for e in replay_events(tiny_frame.head(5)) if e.topic == "transactions"]
        publish_events(events, topo.topic_paths(), 0)
        wait_for(
            lambda line: (
                line.startswith("rillet run: events in 5 (5 transactions, 0 labels")
                and "| predictions 5 |" in line
            ),
            "status line counting the 5 transactions and their predictions",
        )
        # A second job on this table is refused while this one runs (one job per table).
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.app.cli",
                "run",
                "--state-dir",
                str(local_run.stack.state_dir),
                f"--model_dir={model_dir}",
                f"--bigtable_table={topo.bigtable_table}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.startswith(f"rillet run: another rillet job (pid {proc.pid}, ")
        assert "Traceback" not in second.stderr
        # A plain kill (SIGTERM) stops the job as Ctrl-C does, with a last word.
        proc.terminate()
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
        reader.join(timeout=10)
        assert lines[-1].startswith("rillet run: stopped"), "".join(lines)[-3000:]
        assert "oneDNN" not in "".join(lines) and "absl::InitializeLog" not in "".join(lines)
        # The table is free again once the job has stopped.
        with hold_table_lock(
            local_run.stack.state_dir, topo.project, topo.bigtable_instance, topo.bigtable_table
        ):
            pass
        # Quiet: no library warning or log line (Beam's, the Bigtable client's, YDF's model
        # loads); they are in the command's log file in the state folder.
        assert noise("".join(lines)) == [], "".join(lines)[-3000:]
        log = (local_run.stack.state_dir / "logs" / "run.log").read_text()
        assert "Connecting to Bigtable emulator" in log and "Loading model" in log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=10)


def _start_cli(args: list[str]) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.app.cli", "run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    return proc, lines, reader


def _wait_line(
    proc: Any, lines: list[str], predicate: Any, what: str, timeout_s: float = 180
) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "".join(lines)[-3000:]
        found = [line for line in list(lines) if predicate(line)]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout_s} s:\n" + "".join(lines)[-3000:])


def _stop(proc: Any, reader: threading.Thread) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=60)
    reader.join(timeout=10)


def test_rillet_run_announces_a_promotion_and_a_resume_without_duplicate_alerts(  # type: ignore[no-untyped-def]
    local_run, tiny_frame, tmp_path
) -> None:
    """The ready line names the challenger; a promotion prints one line (from, to, when) once
    the job scores with the new pair; the job is stopped with two duplicates among the last
    messages and restarted: it says it resumed from its checkpoint and how many messages came
    again, the replayed duplicates are dead-lettered again as redeliveries, and the replay's
    data-quality window (judged here at one event) has no duplicate or dead-letter rate and
    raises no alert."""
    import numpy as np

    from pipelines.app.local import create_resources
    from pipelines.app.publisher import publish_events, replay_events
    from pipelines.core.definitions import MODEL_INPUTS
    from pipelines.stores.model_registry import ModelRegistry
    from tests.linear_models import write_linear_version

    models = tmp_path / "models"
    for version, bias in (("v1", -2.0), ("v2", -1.0)):
        write_linear_version(models, version, np.full(len(MODEL_INPUTS), 0.01), bias)
    registry = ModelRegistry(str(models))
    registry.register("v1", as_="champion")
    registry.register("v2", as_="challenger")
    thresholds = json.loads((ROOT / "pipelines/core/alert_thresholds.json").read_text())
    thresholds["data_quality"].update(window_s=2, min_events=1)
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))

    tag = uuid.uuid4().hex[:6]
    topo = dataclasses.replace(
        local_run.topology,
        transactions_topic=f"cli2-tx-{tag}",
        labels_topic=f"cli2-labels-{tag}",
        predictions_topic=f"cli2-predictions-{tag}",
        dead_letter_topic=f"cli2-dead-{tag}",
        alerts_topic=f"cli2-alerts-{tag}",
        transactions_subscription=f"cli2-tx-sub-{tag}",
        labels_subscription=f"cli2-labels-sub-{tag}",
        predictions_subscription=f"cli2-predictions-sub-{tag}",
        dead_letter_subscription=f"cli2-dead-sub-{tag}",
        alerts_subscription=f"cli2-alerts-sub-{tag}",
        bigtable_table=f"cli2_{tag}",
    )
    create_resources(topo)
    monitor = tmp_path / "monitor"
    args = [
        "--state-dir",
        str(local_run.stack.state_dir),
        "--status-every",
        "2",
        f"--model_dir={models}",
        "--model_poll_s=1",
        "--monitor_every_s=1",
        f"--monitor_dir={monitor}",
        f"--alert_thresholds={tmp_path / 'thresholds.json'}",
        f"--alerts_topic={topo.alerts_topic}",
        f"--transactions_subscription={topo.transactions_subscription}",
        f"--labels_subscription={topo.labels_subscription}",
        f"--predictions_topic={topo.predictions_topic}",
        f"--dead_letter_topic={topo.dead_letter_topic}",
        f"--bigtable_table={topo.bigtable_table}",
        f"--datastore_kind=CliRun2{tag}",
        f"--recovery_checkpoint={tmp_path / 'checkpoint.json'}",
    ]
    txs = [e for e in replay_events(tiny_frame.head(10)) if e.topic == "transactions"]
    conflicting = json.loads(txs[0].data) | {"amount": 999.0}
    duplicates = [
        dataclasses.replace(txs[0], data=json.dumps(conflicting).encode()),
        dataclasses.replace(txs[1]),  # an exact copy, published again
    ]

    proc, lines, reader = _start_cli(args)
    try:
        _wait_line(proc, lines, lambda s: s.startswith("rillet run: ready"), "ready line")
        assert "challenger v2 shadows it" in "".join(lines)
        publish_events(txs[:5], topo.topic_paths(), 0)
        _wait_line(
            proc,
            lines,
            lambda s: "| predictions 5 |" in s and s.endswith("| model v1 (challenger v2)\n"),
            "status line naming the pair served",
        )
        registry.promote("v2")
        time.sleep(3)  # the watcher polls every second, then loads
        publish_events([*txs[5:], *duplicates], topo.topic_paths(), 0)
        promoted = _wait_line(
            proc, lines, lambda s: "champion v1 -> v2" in s, "promotion line", timeout_s=60
        )
        assert promoted.endswith("champion v1 -> v2 (promoted), challenger v2 -> none\n")
        _wait_line(proc, lines, lambda s: "| dead letters 2 |" in s, "the 2 duplicates")
        _stop(proc, reader)
    finally:
        _stop(proc, reader)

    proc, lines, reader = _start_cli(args)
    try:
        _wait_line(proc, lines, lambda s: s.startswith("rillet run: ready"), "ready line")
        text = "".join(lines)
        assert "model v2 from" in text and "no challenger" in text
        assert "  resumed from the checkpoint written at" in text
        resumed = _wait_line(
            proc, lines, lambda s: s.startswith("rillet run: resumed from checkpoint at"), "resume"
        )
        replayed = int(resumed.split("(")[1].split(" messages replayed")[0].replace(",", ""))
        assert replayed >= 7  # the 5 last transactions and the 2 duplicates, at least
        _wait_line(proc, lines, lambda s: "| dead letters 2 (2 replayed) |" in s, "redeliveries")
        time.sleep(4)  # the replay's data-quality window is judged and the snapshot written
        snapshot = json.loads((monitor / "snapshot.json").read_text())
    finally:
        _stop(proc, reader)
    assert snapshot["quality_rates"]["duplicate_rate"] == 0
    assert snapshot["quality_rates"]["dead_letter_rate"] == 0
    assert not snapshot["alerts_raised"], snapshot
    assert "Traceback" not in "".join(lines)
