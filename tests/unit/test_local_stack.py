"""What ``rillet local up`` hands the clients (no emulator needed: the variables alone)."""

from __future__ import annotations

import pytest

from pipelines.app.local import DEFAULT_PORTS, emulator_env, environment
from pipelines.options import LOCAL_PROJECT


def test_the_emulator_environment_points_every_client_at_loopback() -> None:
    env = emulator_env(DEFAULT_PORTS)
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:8085"
    assert env["BIGTABLE_EMULATOR_HOST"] == "127.0.0.1:8086"
    assert env["DATASTORE_EMULATOR_HOST"] == "127.0.0.1:8081"
    assert env["DATASTORE_PROJECT_ID"] == env["DATASTORE_DATASET"] == LOCAL_PROJECT
    assert "DATASTORE_PROJECT_ID" not in emulator_env({"pubsub": 8085})


def test_a_datastore_client_without_a_project_takes_the_local_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a user's own lookup does after exporting what 'local up' prints: no project, no
    credentials, and the client is on the local project (creating it makes no call)."""
    from google.cloud import datastore

    for name in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATASTORE_DATASET", raising=False)
    with environment(emulator_env(DEFAULT_PORTS)):
        assert datastore.Client().project == LOCAL_PROJECT
