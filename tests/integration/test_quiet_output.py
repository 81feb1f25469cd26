"""Quiet by default: the normal output of ``rillet local up`` and ``rillet demo`` (a short replay:
the tiny preset) carries no library warning or log line; those go to the command's log file in
the state folder (``rillet run``'s own check is in test_cli_run.py). Subprocesses, as a user
runs them, with a user's environment (no TF_CPP_MIN_LOG_LEVEL: the test session sets one)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Python warnings, Beam's and the clients' logging (WARNING:...), absl/TensorFlow/YDF C++ lines.
NOISE = re.compile(r"Warning|WARNING|^[IWE]\d{4} ", re.MULTILINE)


def noise(text: str) -> list[str]:
    """The lines of ``text`` that a library printed."""
    return [line for line in text.splitlines() if NOISE.search(line)]


def rillet(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        env={
            **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
            "PYTHONPATH": str(ROOT),
        },
    )


def state_with_ports(state_dir: Path, ports: dict[str, int]) -> Path:
    """A state folder that records ``ports`` and no process of its own: the demo starts its
    emulators there (and stops them); 'local up' on those ports reuses the session's."""
    state_dir.mkdir(parents=True)
    (state_dir / "local.json").write_text(json.dumps({"ports": ports, "pids": {}}))
    return state_dir


def test_noise_matches_what_the_libraries_print() -> None:
    assert noise(
        "WARNING:root:Resource module is not available\n"
        "/x/client.py:364: RuntimeWarning: Connecting to Bigtable emulator at 127.0.0.1:1\n"
        "I0000 00:00:1796675512.570340   13682 kernel.cc:1212] Loading model\n"
        "W0000 00:00:1.0 1 x.cc:1] w\n"
        "rillet run: ready: reading ...\n"
    ) == [
        "WARNING:root:Resource module is not available",
        "/x/client.py:364: RuntimeWarning: Connecting to Bigtable emulator at 127.0.0.1:1",
        "I0000 00:00:1796675512.570340   13682 kernel.cc:1212] Loading model",
        "W0000 00:00:1.0 1 x.cc:1] w",
    ]


def test_local_up_prints_no_library_line(local_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ports = local_run.stack.ports()
    state = state_with_ports(tmp_path / "state", ports)
    done = rillet(
        "local",
        "up",
        "--state-dir",
        str(state),
        *(f"--{name}-port={port}" for name, port in ports.items()),
        timeout_s=120,
    )
    assert done.returncode == 0, done.stdout
    assert "bigtable: running" in done.stdout
    assert noise(done.stdout) == [], done.stdout
    # Creating the feature table made a Bigtable client: its warning is in the log file.
    log = (state / "logs" / "local-up.log").read_text()
    assert "RuntimeWarning: Connecting to Bigtable emulator" in log


def test_demo_prints_no_library_line(tmp_path: Path) -> None:
    from pipelines.app.local import DEFAULT_PORTS, free_port

    # Its own emulators (the demo replays on the default topics, which the session's tests
    # share), on free ports, started and stopped by the demo.
    work = state_with_ports(tmp_path / "demo", {name: free_port() for name in DEFAULT_PORTS})
    done = rillet(
        "demo",
        "--preset",
        "tiny",
        "--rate",
        "1000",
        "--work-dir",
        str(work),
        "--timeout",
        "180",
        timeout_s=400,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Result: complete, features exact" in done.stdout
    assert noise(done.stdout) == [], done.stdout
    assert (
        "RuntimeWarning: Connecting to Bigtable emulator"
        in (work / "logs" / "demo.log").read_text()
    )
