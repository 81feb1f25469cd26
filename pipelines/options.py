"""RilletOptions: the one configuration surface of the streaming pipeline."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

__all__ = [
    "DIRECT_KEY_BUCKETS",
    "LOCAL_PROJECT",
    "RilletOptions",
    "resource_path",
    "unknown_arguments",
]

LOCAL_PROJECT = "rillet-local"
# The DirectRunner's default --key_buckets (pipelines/core/routing.py).
DIRECT_KEY_BUCKETS = 64


def resource_path(project: str, kind: str, name: str) -> str:
    """Full Pub/Sub path for a short name (full paths pass through)."""
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


class RilletOptions(PipelineOptions):
    """Options of the rillet streaming pipeline (plus Beam's standard and Google Cloud options).

    The Google Cloud project is Beam's ``--project``; every resource below lives in it.
    """

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--transactions_subscription",
            default="transactions-rillet",
            help="Subscription to the transaction topic (short name or full path).",
        )
        parser.add_argument(
            "--labels_subscription",
            default="labels-rillet",
            help="Subscription to the fraud-label topic (short name or full path).",
        )
        parser.add_argument(
            "--predictions_topic",
            default="predictions",
            help="Topic every prediction is published on (short name or full path).",
        )
        parser.add_argument(
            "--dead_letter_topic",
            default="dead-letter",
            help="Topic for rejected messages, with the reason as attributes.",
        )
        parser.add_argument("--bigtable_instance", default="rillet", help="Bigtable instance id.")
        parser.add_argument("--bigtable_table", default="features", help="Feature table id.")
        parser.add_argument("--datastore_kind", default="Prediction", help="Datastore kind.")
        parser.add_argument(
            "--datastore_namespace", default="", help="Datastore namespace (empty: default)."
        )
        parser.add_argument(
            "--model_dir",
            default="artifacts/models",
            help="Directory (local or gs://) holding model versions: <version>/saved_model.",
        )
        parser.add_argument(
            "--model_version",
            default="champion",
            help="Model version to serve: 'champion' follows the registry (hot swap), or a "
            "pinned version",
        )
        parser.add_argument(
            "--max_batch_size",
            type=int,
            default=500,
            help="Most transactions per feature-store round trip and inference call.",
        )
        parser.add_argument(
            "--risk_medium_threshold",
            type=float,
            default=0.2,
            help="Score from which risk is medium.",
        )
        parser.add_argument(
            "--risk_high_threshold", type=float, default=0.5, help="Score from which risk is high."
        )
        parser.add_argument(
            "--label_wait_s",
            type=float,
            default=300.0,
            help="Seconds a label waits for its transaction before it is dead-lettered.",
        )
        parser.add_argument(
            "--correction_horizon_s",
            type=float,
            default=86_400.0,
            help="Lateness horizon, in seconds of event time: an event whose affected "
            "transactions start further behind its entity's newest one (or that would correct "
            "more than 10,000 of them) updates the feature store but emits no corrections "
            "(counted: corrections_beyond_horizon).",
        )
        parser.add_argument(
            "--window_cache_mb",
            type=float,
            default=512.0,
            help="Memory budget of each keyed entity stage's window cache, per worker process "
            "(least recently used entities are evicted beyond it and read again when needed).",
        )
        parser.add_argument(
            "--key_buckets",
            type=int,
            default=None,
            help="Keys of each keyed feature stage: 0 = one key per entity (transaction id, "
            "customer, terminal), N = entities hashed into N keys. Default: 0, except on the "
            f"DirectRunner: {DIRECT_KEY_BUCKETS} (it scans every key it ever saw on each step).",
        )
        parser.add_argument(
            "--model_poll_s",
            type=float,
            default=10.0,
            help="Seconds between two reads of the model registry's pointer: a promotion or "
            "rollback serves within this plus the new version's load time.",
        )
        parser.add_argument(
            "--inference_backend",
            default="saved_model",
            choices=("saved_model", "tfx_bsl", "vertex"),
            help="How versions are loaded and scored: saved_model (TF2 loader, float-matrix "
            "signature; fastest), tfx_bsl (tfx-bsl's RunInference handler on tf.Example, the "
            "TF Serving signature), vertex (remote AI Platform / Vertex AI model versions).",
        )
        parser.add_argument(
            "--vertex_project", default="", help="vertex backend: the model's Google Cloud project."
        )
        parser.add_argument(
            "--vertex_model",
            default="",
            help="vertex backend: the AI Platform model whose versions are the registry's.",
        )
        parser.add_argument(
            "--evaluation_kind",
            default="ModelEvaluation",
            help="Datastore kind of the online evaluation (per model version and day).",
        )
        parser.add_argument(
            "--eval_every_s",
            type=float,
            default=30.0,
            help="Seconds between two recomputations of the online evaluation (per model "
            "version and day of labelled transactions).",
        )
        parser.add_argument(
            "--alerts_topic",
            default="alerts",
            help="Topic of the monitoring alerts (docs/specs/monitoring.md; short name or path).",
        )
        parser.add_argument(
            "--alert_thresholds",
            default="",
            help="JSON file of the alert thresholds (empty: the packaged "
            "pipelines/core/alert_thresholds.json, which Terraform's alert policies also read).",
        )
        parser.add_argument(
            "--monitor_every_s",
            type=float,
            default=10.0,
            help="Seconds between two monitoring figures (latency, throughput, data-quality "
            "rates, drift updates) and, with --monitor_dir, two local snapshots.",
        )
        parser.add_argument(
            "--monitor_dir",
            default="",
            help="DirectRunner only: directory of the local monitoring snapshot that 'rillet "
            "monitor' and 'rillet report' read (docs/specs/monitoring.md). Empty: off.",
        )
        parser.add_argument(
            "--recovery_checkpoint",
            default="",
            help="DirectRunner only: checkpoint file for crash recovery; when it exists the job "
            "first seeks its subscriptions back to it (see pipelines/local_runner/recovery.py). "
            "Empty: off.",
        )
        parser.add_argument(
            "--max_in_flight",
            type=int,
            default=20000,
            help="DirectRunner only, with --recovery_checkpoint: stop pulling while this many "
            "messages are unfinished (backpressure; 0: unbounded).",
        )
        parser.add_argument(
            "--direct_pull_max_messages",
            type=int,
            default=500,
            help="DirectRunner only: messages per Pub/Sub pull (Beam's local reader pulls 10).",
        )

    @classmethod
    def argument_parser(cls, prog: str | None = None) -> argparse.ArgumentParser:
        """A parser of rillet's options alone (for their help and names)."""
        parser = argparse.ArgumentParser(prog=prog, add_help=False, usage=argparse.SUPPRESS)
        cls._add_argparse_args(parser)
        return parser

    @classmethod
    def option_names(cls) -> list[str]:
        """The flags rillet's options declare."""
        return [o for action in cls.argument_parser()._actions for o in action.option_strings]

    def thresholds(self) -> Any:
        """The alert thresholds (pipelines.core.thresholds.Thresholds) of --alert_thresholds,
        read with Beam's FileSystems (a local path or gs://), or the packaged ones."""
        from pipelines.core.thresholds import load_thresholds, parse_thresholds

        path = self.alert_thresholds
        if not path:
            return load_thresholds()
        from apache_beam.io.filesystems import FileSystems

        try:
            with FileSystems.open(path) as f:
                text = f.read().decode()
        except Exception as exc:  # any filesystem's "cannot read": one message
            raise ValueError(f"cannot read {path}: {exc}") from exc
        return parse_thresholds(text, path)

    def validate_local(self) -> list[str]:
        """Problems a user can fix before the job starts, as messages."""
        errors = []
        if self.max_batch_size < 1:
            errors.append("--max_batch_size must be at least 1")
        if self.model_poll_s <= 0:
            errors.append("--model_poll_s must be above 0 (seconds between registry reads)")
        if self.monitor_every_s <= 0:
            errors.append("--monitor_every_s must be above 0 (seconds)")
        try:
            self.thresholds()
        except ValueError as exc:
            errors.append(f"--alert_thresholds: {exc}")
        if self.eval_every_s <= 0:
            errors.append("--eval_every_s must be above 0 (seconds)")
        if self.inference_backend == "vertex" and not (self.vertex_project and self.vertex_model):
            errors.append("--inference_backend vertex needs --vertex_project and --vertex_model")
        if not 0 <= self.risk_medium_threshold <= self.risk_high_threshold <= 1:
            errors.append("need 0 <= --risk_medium_threshold <= --risk_high_threshold <= 1")
        if self.label_wait_s < 0:
            errors.append("--label_wait_s must be >= 0")
        if self.correction_horizon_s < 0:
            errors.append("--correction_horizon_s must be >= 0")
        if self.window_cache_mb <= 0:
            errors.append("--window_cache_mb must be > 0")
        if self.key_buckets is not None and self.key_buckets < 0:
            errors.append("--key_buckets must be >= 0 (0: one key per entity)")
        if self.max_in_flight < 0:
            errors.append("--max_in_flight must be >= 0")
        if self.direct_pull_max_messages < 1:
            errors.append("--direct_pull_max_messages must be at least 1")
        if not self.view_as(GoogleCloudOptions).project:
            errors.append("--project is required (the emulators use 'rillet-local')")
        return errors


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
