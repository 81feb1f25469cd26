"""One local job per feature table (pipelines/app/job_lock.py): a second process is refused
while the first holds the table, another table is not, and a killed holder blocks nobody."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.app.errors import RUNTIME, UserError
from pipelines.app.job_lock import hold_table_lock, lock_path
from pipelines.core.definitions import MODEL_INPUTS
from tests.cards import card_fields

ROOT = Path(__file__).resolve().parents[2]
TABLE = ("rillet-local", "rillet", "features")
RESOURCE = "projects/rillet-local/instances/rillet/tables/features"

_HOLDER = """
import sys, time
from pipelines.app.job_lock import hold_table_lock
with hold_table_lock(sys.argv[1], *sys.argv[2:5]):
    print("held", flush=True)
    time.sleep(120)
"""


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding TABLE's lock in ``tmp_path/state`` (as a running job does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "state"), *TABLE],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_while_the_first_holds_the_table(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    state = tmp_path / "state"
    with pytest.raises(UserError) as refused, hold_table_lock(state, *TABLE):
        pytest.fail("the lock was taken twice")
    error = refused.value
    assert error.exit_code == RUNTIME
    assert error.message.startswith(f"another rillet job (pid {holder.pid}, started 20")
    assert f"runs on table {RESOURCE}" in error.message
    assert f"kill {holder.pid}" in error.fix and "--bigtable_table=" in error.fix
    # The holder's file names it; the refused process did not overwrite it.
    written = json.loads(lock_path(state, *TABLE).read_text())
    assert (written["pid"], written["table"]) == (holder.pid, RESOURCE)
    # Another table, instance or project is another lock.
    for other in (
        ("rillet-local", "rillet", "features-2"),
        ("rillet-local", "other", "features"),
        ("my-project", "rillet", "features"),
    ):
        with hold_table_lock(state, *other) as path:
            assert path != lock_path(state, *TABLE)
    # So is another state folder (the lock is per state folder, like the local stack).
    with hold_table_lock(tmp_path / "elsewhere", *TABLE):
        pass


def test_a_killed_job_blocks_nobody(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    state = tmp_path / "state"
    with hold_table_lock(state, *TABLE) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    # Released and emptied when the block ends: the next one takes it too.
    assert path.read_text() == ""
    with hold_table_lock(state, *TABLE):
        pass


def test_lock_names_do_not_collide() -> None:
    assert lock_path("s", "a+b", "c", "d") != lock_path("s", "a", "b+c", "d")
    assert lock_path("s", "p", "i", "../t").parent == Path("s/locks")


def test_an_unwritable_state_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    unwritable = tmp_path / "file" / "state"  # under a regular file: refused even as root
    with (
        pytest.raises(UserError, match="cannot write the job lock") as refused,
        hold_table_lock(unwritable, *TABLE),
    ):
        pytest.fail("a lock under a regular file")
    assert refused.value.exit_code == RUNTIME and "--state-dir" in refused.value.fix


def test_rillet_run_refuses_a_second_job_on_the_table(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """``rillet run`` as a user runs it, while another process holds the default table: one
    line naming the job, exit code 1, and its --no-resume did not delete the running job's
    recovery checkpoint."""
    card = {"version": "v1", **card_fields(MODEL_INPUTS)}
    (tmp_path / "models" / "v1").mkdir(parents=True)
    (tmp_path / "models" / "v1" / "model_card.json").write_text(json.dumps(card))
    checkpoint = tmp_path / "state" / "recovery" / "checkpoint.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("{}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.app.cli",
            "run",
            "--model_dir=models",
            "--state-dir",
            "state",
            "--no-resume",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
    )
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"rillet run: another rillet job (pid {holder.pid}, started ")
    assert RESOURCE in lines[0]
    assert "Traceback" not in done.stderr and len(lines) == 2
    assert checkpoint.exists()


def test_a_local_run_holds_its_jobs_table_until_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's job (LocalRun.start_job) holds its table as 'rillet run' does, so a 'rillet
    run' on the same state folder and table is refused while the demo runs."""
    from pipelines.app import local_run

    class FakeJob:
        def __init__(self, args: list[str], log_path: Path) -> None:
            self.args = args

        def start(self) -> FakeJob:
            return self

        def stop(self) -> None:
            pass

    monkeypatch.setattr(local_run, "StreamingJob", FakeJob)
    run = local_run.LocalRun(tmp_path, private=False)
    monkeypatch.setattr(run, "watch", lambda: None)
    monkeypatch.setattr(run, "stop_monitors", lambda: None)
    run.start_job(["--model_dir=m"])
    with (
        pytest.raises(UserError, match=f"pid {os.getpid()}.*{RESOURCE}"),
        hold_table_lock(tmp_path, *TABLE),
    ):
        pytest.fail("the demo's table was taken")
    run.stop()
    with hold_table_lock(tmp_path, *TABLE):
        pass
    # A job on a table of its own (--bigtable_table in its arguments) holds that one.
    run.start_job(["--bigtable_table=mine"])
    with hold_table_lock(tmp_path, *TABLE):
        pass
    with pytest.raises(UserError), hold_table_lock(tmp_path, "rillet-local", "rillet", "mine"):
        pytest.fail("the job's own table was taken")
    run.stop()
