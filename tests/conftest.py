"""Shared fixtures. The emulator fixture starts the real Pub/Sub, Bigtable and Datastore
emulators (Google Cloud SDK) on free loopback ports for the test session and stops them after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipelines.app.local_run import LocalRun

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    """The session's LocalRun: a private stack with the default resources, no job."""
    from pipelines.app.local import StackError
    from pipelines.app.local_run import LocalRun

    try:
        with LocalRun(tmp_path_factory.mktemp("rillet-state")) as run:
            yield run
    except StackError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"emulators could not start: {exc}")


@pytest.fixture(scope="session")
def emulators(local_run: LocalRun) -> dict[str, str]:
    """The *_EMULATOR_HOST variables of the session's stack (set for the session)."""
    return local_run.env


@pytest.fixture(scope="session")
def tiny_frame():  # type: ignore[no-untyped-def]
    from pipelines.app.simulator import PRESETS, simulate

    return simulate(PRESETS["tiny"])


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_frame) -> Path:  # type: ignore[no-untyped-def]
    """A real (small, quickly trained) SavedModel version."""
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.core.training_data import training_features

    directory = tmp_path_factory.mktemp("models")
    model, _ = train_model(training_features(tiny_frame), None, TrainConfig(num_trees=10))
    export_model(model, directory, {"purpose": "tests"})
    return directory
