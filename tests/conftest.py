"""Shared fixtures. The emulator fixture starts the real Pub/Sub, Bigtable and Datastore
emulators (Google Cloud SDK) on free loopback ports for the test session and stops them after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from pipelines.app.local import LocalStack, StackError, create_resources, environment, free_port

    stack = LocalStack(tmp_path_factory.mktemp("rillet-state"))
    ports = {"pubsub": free_port(), "bigtable": free_port(), "datastore": free_port()}
    try:
        stack.up(ports)
    except StackError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"emulators could not start: {exc}")
    env = stack.env()
    try:
        with environment(env):
            create_resources()
            yield env
    finally:
        stack.down()


@pytest.fixture(scope="session")
def tiny_frame():  # type: ignore[no-untyped-def]
    from pipelines.app.simulator import PRESETS, simulate

    return simulate(PRESETS["tiny"])


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_frame) -> Path:  # type: ignore[no-untyped-def]
    """A real (small, quickly trained) SavedModel version."""
    from models.train import TrainConfig, export_model, train_model
    from pipelines.core.training_data import training_features

    directory = tmp_path_factory.mktemp("models")
    model, _ = train_model(training_features(tiny_frame), None, TrainConfig(epochs=1, hidden=(8,)))
    export_model(model, directory, {"purpose": "tests"})
    return directory
