"""A demo (LocalRun on the recorded ports) stops only the emulators it started: those a user
started with 'rillet local up' in the same state folder keep running after it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_run_on_the_users_emulators_leaves_them_running(tmp_path: Path) -> None:
    from pipelines.app.local import LocalStack, free_port
    from pipelines.app.local_run import LocalRun

    stack = LocalStack(tmp_path)
    ports = {name: free_port() for name in ("pubsub", "bigtable", "datastore")}
    assert set(stack.up(ports).values()) == {"started"}  # as 'rillet local up' does
    try:
        with LocalRun(tmp_path, private=False) as run:
            assert set(run.started.values()) == {"running"}
        assert run.stopped == {}
        status = stack.status()
        assert all(s["answering"] and s["started_by_us"] for s in status.values()), status
    finally:
        assert set(stack.down().values()) == {"stopped"}
