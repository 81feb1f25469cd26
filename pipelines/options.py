"""RilletOptions: the one configuration surface of the streaming pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipelines.core.job_arguments import DIRECT_KEY_BUCKETS, add_job_arguments, job_parser

__all__ = [
    "DIRECT_KEY_BUCKETS",
    "LOCAL_PROJECT",
    "RilletOptions",
    "resource_path",
    "unknown_arguments",
]

LOCAL_PROJECT = "rillet-local"


def resource_path(project: str, kind: str, name: str) -> str:
    """Full Pub/Sub path for a short name (full paths pass through)."""
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


class RilletOptions(PipelineOptions):
    """Options of the rillet streaming pipeline (plus Beam's standard and Google Cloud options).

    The Google Cloud project is Beam's ``--project``; every resource below lives in it.
    """

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        add_job_arguments(parser, check_paths=False)

    @classmethod
    def option_names(cls) -> list[str]:
        """The flags rillet's options declare."""
        return [o for action in job_parser()._actions for o in action.option_strings]

    def thresholds(self) -> Any:
        """The alert thresholds (pipelines.core.thresholds.Thresholds) of --alert_thresholds,
        read with Beam's FileSystems (a local path or gs://), or the packaged ones."""
        from pipelines.core.thresholds import load_thresholds, parse_thresholds

        path = self.alert_thresholds
        if not path:
            return load_thresholds()
        return parse_thresholds(_read_text(path), path)

    def job_definitions(self) -> Any:
        """The definitions (pipelines.core.declarations.Definitions) of --definitions, read with
        Beam's FileSystems (a local path or gs://), or the handbook's packaged file."""
        from pipelines.core.declarations import (
            DefinitionsError,
            load_definitions,
            parse_definitions,
        )

        path = self.definitions
        if not path:
            return load_definitions()
        import yaml

        text = _read_text(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not YAML: {exc}") from exc
        try:
            return parse_definitions(data, path)
        except DefinitionsError as exc:
            raise ValueError(str(exc)) from exc

    def validate_local(self) -> list[str]:
        """Problems a user can fix before the job starts that no single value shows (each
        value's own kind is checked when the options are parsed), as messages."""
        errors = []
        try:
            self.thresholds()
        except ValueError as exc:
            errors.append(f"--alert_thresholds: {exc}")
        try:
            self.job_definitions()
        except ValueError as exc:
            errors.append(f"--definitions: {exc}")
        if self.inference_backend == "vertex" and not (self.vertex_project and self.vertex_model):
            errors.append("--inference_backend vertex needs --vertex_project and --vertex_model")
        if not 0 <= self.risk_medium_threshold <= self.risk_high_threshold <= 1:
            errors.append("need 0 <= --risk_medium_threshold <= --risk_high_threshold <= 1")
        if not self.view_as(GoogleCloudOptions).project:
            errors.append("--project is required (the emulators use 'rillet-local')")
        return errors


def _read_text(path: str) -> str:
    """A file's text read with Beam's FileSystems (a local path or gs://); ValueError if it
    cannot be read."""
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as f:
            return str(f.read().decode())
    except Exception as exc:  # any filesystem's "cannot read": one message
        raise ValueError(f"cannot read {path}: {exc}") from exc


def unknown_arguments(argv: Sequence[str]) -> list[str]:
    """Flags no PipelineOptions subclass declares (Beam itself only logs and drops them)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: set[type] = set()
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(argv))
    return [a for a in unknown if a.startswith("-")]
