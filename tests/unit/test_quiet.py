"""quiet_libraries: the libraries' logging, warnings and C++ lines go to the command's log file;
rillet's own lines, a bug's traceback and the user's own verbosity settings stay as they were.
Each case is a child process (the function changes process-wide state: the root logger,
warnings, file descriptor 2), writing what each library writes, the way it writes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.app.quiet import log_path

ROOT = Path(__file__).resolve().parents[2]

# As the libraries do: Beam's logger, Beam's root-logger warning (which installs a stderr
# handler when the root has none), the Bigtable client's RuntimeWarning, YDF's absl line on
# descriptor 2; then rillet's own lines.
CHILD = """
import logging, os, sys, warnings
from pathlib import Path

import typer

from pipelines.app.quiet import quiet_libraries

print(quiet_libraries(Path(sys.argv[1]), sys.argv[2]))
logging.getLogger("apache_beam.transforms.core").warning("All input pcollections must have ...")
logging.warning("Resource module is not available for current platform")
warnings.warn("Connecting to Bigtable emulator at 127.0.0.1:1", RuntimeWarning)
os.write(2, b"I0000 00:00:1.0 12 kernel.cc:1212] Loading model from path\\n")
logging.getLogger("pipelines.local_runner.recovery").info("resumed from checkpoint")
logging.getLogger("apache_beam.runners").info("a library's info line")
typer.echo("rillet run: ready", err=True)
print("out", os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["GRPC_VERBOSITY"])
if len(sys.argv) > 3:
    raise RuntimeError("a bug in rillet")
"""
LIBRARY_LINES = (
    "All input pcollections must have",
    "Resource module is not available",
    "RuntimeWarning: Connecting to Bigtable emulator",
    "I0000 00:00:1.0 12 kernel.cc:1212] Loading model",
)


def child(
    log_dir: Path, command: str = "run", *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "PYTHONWARNINGS")
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(log_dir), command, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_library_lines_go_to_the_log_and_rillets_own_to_the_terminal(tmp_path: Path) -> None:
    logs = tmp_path / "state" / "logs"
    done = child(logs, "local up")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "rillet run: ready\n"
    assert done.stdout == f"{logs / 'local-up.log'}\nout 1 ERROR\n"
    log = (logs / "local-up.log").read_text()
    for line in LIBRARY_LINES:
        assert line in log
    # rillet's own INFO lines are kept; the libraries' INFO lines are not.
    assert "INFO pipelines.local_runner.recovery resumed from checkpoint" in log
    assert "a library's info line" not in log


def test_without_it_the_same_child_prints_every_library_line(tmp_path: Path) -> None:
    """The control: the lines the test above keeps off the terminal do reach it otherwise."""
    script = CHILD.replace("print(quiet_libraries(Path(sys.argv[1]), sys.argv[2]))", "")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    for line in LIBRARY_LINES:
        assert line in done.stderr


def test_a_bug_keeps_its_traceback_on_the_terminal(tmp_path: Path) -> None:
    done = child(tmp_path, "run", "raise")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: a bug in rillet" in done.stderr
    assert "Traceback" not in (tmp_path / "run.log").read_text()


def test_the_users_own_verbosity_is_kept(tmp_path: Path) -> None:
    done = child(tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "0", "GRPC_VERBOSITY": "DEBUG"})
    assert done.stdout.endswith("out 0 DEBUG\n")


def test_deploy_keeps_descriptor_2_for_docker_and_gcloud(tmp_path: Path) -> None:
    done = child(tmp_path, "deploy")
    assert "I0000 00:00:1.0 12 kernel.cc:1212] Loading model" in done.stderr
    assert "Resource module is not available" in (tmp_path / "deploy.log").read_text()


def test_an_unwritable_state_folder_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = child(tmp_path / "file" / "logs")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("None\n")
    for line in LIBRARY_LINES:
        assert line in done.stderr


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("run", "run.log"),
        ("local up", "local-up.log"),
        ("models list", "models-list.log"),
        ("", "rillet.log"),
    ],
)
def test_log_path(command: str, name: str) -> None:
    assert log_path(Path("logs"), command) == Path("logs") / name
