"""Environment mistakes against the real emulators: a misspelt project (its topics do not
exist) and a missing subscription are one line saying what and how to fix it, exit code 1, no
traceback (the parse mistakes are tests/unit/test_cli_values.py's; a missing --subscription is
not a mistake: tail creates it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def rillet(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, tiny_frame) -> Path:  # type: ignore[no-untyped-def]
    from pipelines.app.simulator import write_dataset

    home = tmp_path_factory.mktemp("cli-env")
    write_dataset(tiny_frame.head(20), home / ".rillet" / "data" / "tiny")
    return home


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "--project", "rillet-lcoal", "--limit", "5"],
        ["tail", "--project", "rillet-lcoal", "--timeout", "1"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_missing_resource_is_one_line(dataset: Path, local_run, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    args = [str(local_run.stack.state_dir) if a == "S" else a for a in args]
    result = rillet(args, dataset, local_run.env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "--project" in lines[1], result.stderr
    assert "not found" in lines[0] or "does not exist" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
