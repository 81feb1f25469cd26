"""The Dataflow Flex Template agrees with the code: parameters, Beam version, entry point; the
backfill constructs for Dataflow offline."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.backfill.backfill import BACKFILL_LABELS, build_backfill
from pipelines.options import RilletOptions

ROOT = Path(__file__).resolve().parents[2]
# Options that only mean something on the DirectRunner, so the template does not offer them.
DIRECT_RUNNER_ONLY = {
    "direct_pull_max_messages",
    "recovery_checkpoint",
    "max_in_flight",
    "monitor_dir",
}


def _options() -> dict[str, str]:
    parser = argparse.ArgumentParser()
    RilletOptions._add_argparse_args(parser)
    return {
        a.option_strings[0].lstrip("-"): a.help
        for a in parser._actions
        if a.option_strings and a.dest != "help"
    }


def test_metadata_parameters_are_the_pipeline_options() -> None:
    metadata = json.loads((ROOT / "dataflow" / "metadata.json").read_text())
    declared = {p["name"]: p["helpText"] for p in metadata["parameters"]}
    expected = {k: v for k, v in _options().items() if k not in DIRECT_RUNNER_ONLY}
    assert declared == expected
    assert metadata["streaming"] is True


def test_image_pins_the_installed_beam_version_and_points_at_the_pipeline() -> None:
    dockerfile = (ROOT / "dataflow" / "Dockerfile").read_text()
    assert f"apache/beam_python3.11_sdk:{beam.__version__}" in dockerfile
    entry = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/template/(\S+)", dockerfile)
    assert entry and (ROOT / entry.group(1)).is_file()


def test_backfill_constructs_for_dataflow_offline() -> None:
    options = PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--project=my-project",
            "--region=europe-west1",
            "--temp_location=gs://my-bucket/temp",
            "--input=gs://my-bucket/history",
            "--output=gs://my-bucket/backfill",
            "--to_bigtable",
            "--setup_file=./setup.py",
            "--no_auth",
            "--dry_run=True",
        ]
    )
    p = beam.Pipeline(options=options)
    build_backfill(p, options)
    proto = p.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert set(BACKFILL_LABELS) <= names
    assert "TerminalFeatures/Group" in names and "CustomerFeatures/Compute" in names
