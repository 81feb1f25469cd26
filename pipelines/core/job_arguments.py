"""The streaming job's own arguments, declared once and Beam-free.

``pipelines.options.RilletOptions`` declares them to Beam; ``rillet run`` parses them with
``job_parser()`` before Beam or TensorFlow are imported, so a malformed value is answered at once.
Every value has a kind (pipelines/core/values.py) that refuses it with what was expected.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from pipelines.core.values import (
    Choice,
    InputDir,
    InputFile,
    Name,
    Number,
    OutputDir,
    OutputFile,
    Project,
    Version,
    Whole,
)

__all__ = [
    "DIRECT_KEY_BUCKETS",
    "BadArguments",
    "add_job_arguments",
    "job_parser",
    "stray_positionals",
]

# The DirectRunner's default --key_buckets (pipelines/core/routing.py).
DIRECT_KEY_BUCKETS = 64

PUBSUB_NAME = Name(
    r"projects/[^/\s]+/(topics|subscriptions)/[^/\s]+|[A-Za-z][-A-Za-z0-9_.~+%]{2,254}",
    "a Pub/Sub topic or subscription: a short name (letters, digits, - _ . ~ + %; 3-255) "
    "or projects/P/topics/NAME",
)
INSTANCE = Name(r"[a-z][-a-z0-9]{4,31}[a-z0-9]", "a Bigtable instance id (6-33 lowercase)")
TABLE = Name(r"[-_.a-zA-Z0-9]{1,50}", "a Bigtable table id (letters, digits, - _ .)")
KIND = Name(r"(?!__)[^/]{1,1500}", "a Datastore kind (not starting with __)")
NAMESPACE = Name(
    r"[0-9A-Za-z._-]{0,100}", "a Datastore namespace (letters, digits, . _ -)", empty_ok=True
)
MODEL_DIR = InputDir(
    "models",
    "the model directory (<version>/saved_model and registry.json), local or gs://",
    remote_ok=True,
    fix="'make demo' makes .rillet/models; or train one with 'rillet train --model-dir DIR'",
)


class JobParser(argparse.ArgumentParser):
    """An argparse parser that raises instead of printing and exiting."""

    def error(self, message: str) -> Any:
        # argparse says "argument --x: 'v': expected ..."; rillet's messages start "--x 'v'".
        flag = re.match(r"argument (\S+): ", message)
        action = next((a for a in self._actions if flag and flag[1] in a.option_strings), None)
        fix = getattr(getattr(action, "type", None), "fix", "")
        raise BadArguments(re.sub(r"^argument (\S+): ", r"\1 ", message), fix)


class BadArguments(ValueError):
    """A job argument argparse refused; the message names it and what was expected, ``fix``
    (maybe empty) what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def job_parser(prog: str | None = None, check_paths: bool = True) -> JobParser:
    """A parser of the job's own arguments alone (other Beam options are left over)."""
    parser = JobParser(prog=prog, add_help=False, usage=argparse.SUPPRESS, allow_abbrev=False)
    add_job_arguments(parser, check_paths)
    return parser


def add_job_arguments(parser: Any, check_paths: bool = True) -> None:
    """Declares the job's arguments on ``parser``. ``check_paths=False`` (Beam's parser, which
    parses again on every ``view_as`` and on each worker) takes paths as plain text: they are
    checked once, where the job is launched."""

    def path(kind: Any) -> Any:
        return kind if check_paths else str

    parser.add_argument(
        "--transactions_subscription",
        type=PUBSUB_NAME,
        default="transactions-rillet",
        help="Subscription to the transaction topic (short name or full path).",
    )
    parser.add_argument(
        "--labels_subscription",
        type=PUBSUB_NAME,
        default="labels-rillet",
        help="Subscription to the fraud-label topic (short name or full path).",
    )
    parser.add_argument(
        "--predictions_topic",
        type=PUBSUB_NAME,
        default="predictions",
        help="Topic every prediction is published on (short name or full path).",
    )
    parser.add_argument(
        "--dead_letter_topic",
        type=PUBSUB_NAME,
        default="dead-letter",
        help="Topic for rejected messages, with the reason as attributes.",
    )
    parser.add_argument(
        "--bigtable_instance", type=INSTANCE, default="rillet", help="Bigtable instance id."
    )
    parser.add_argument(
        "--bigtable_table", type=TABLE, default="features", help="Feature table id."
    )
    parser.add_argument("--datastore_kind", type=KIND, default="Prediction", help="Datastore kind.")
    parser.add_argument(
        "--datastore_namespace",
        type=NAMESPACE,
        default="",
        help="Datastore namespace (empty: default).",
    )
    parser.add_argument(
        "--model_dir",
        type=path(MODEL_DIR),
        default=".rillet/models",
        help="Directory (local or gs://) holding model versions: <version>/saved_model.",
    )
    parser.add_argument(
        "--model_version",
        type=Version(),
        default="champion",
        help="Model version to serve: 'champion' follows the registry (hot swap), or a "
        "pinned version",
    )
    parser.add_argument(
        "--max_batch_size",
        type=Whole(minimum=1),
        default=500,
        help="Most transactions per feature-store round trip and inference call.",
    )
    parser.add_argument(
        "--risk_medium_threshold",
        type=Number(0, 1),
        default=0.2,
        help="Score from which risk is medium.",
    )
    parser.add_argument(
        "--risk_high_threshold",
        type=Number(0, 1),
        default=0.5,
        help="Score from which risk is high.",
    )
    parser.add_argument(
        "--label_wait_s",
        type=Number(minimum=0),
        default=300.0,
        help="Seconds a label waits for its transaction before it is dead-lettered.",
    )
    parser.add_argument(
        "--correction_horizon_s",
        type=Number(minimum=0),
        default=None,
        help="Lateness horizon, in seconds of event time (default: none): an event whose "
        "affected transactions start further behind its entity's newest one updates the "
        "feature store but emits no corrections (counted: corrections_beyond_horizon).",
    )
    parser.add_argument(
        "--max_corrections_per_event",
        type=Whole(minimum=0),
        default=10_000,
        help="An event that would correct more of its entity's later transactions than this "
        "updates the feature store but emits no corrections (counted: "
        "corrections_beyond_horizon): one late event on a hot entity costs bounded work.",
    )
    parser.add_argument(
        "--window_cache_mb",
        type=Number(above=0),
        default=512.0,
        help="Memory budget of each keyed entity stage's window cache, per worker process "
        "(least recently used entities are evicted beyond it and read again when needed).",
    )
    parser.add_argument(
        "--key_buckets",
        type=Whole(minimum=0),
        default=None,
        help="Keys of each keyed feature stage: 0 = one key per entity (transaction id, "
        "customer, terminal), N = entities hashed into N keys. Default: 0, except on the "
        f"DirectRunner: {DIRECT_KEY_BUCKETS} (it scans every key it ever saw on each step).",
    )
    parser.add_argument(
        "--model_poll_s",
        type=Number(above=0),
        default=10.0,
        help="Seconds between two reads of the model registry's pointer: a promotion or "
        "rollback serves within this plus the new version's load time.",
    )
    parser.add_argument(
        "--inference_backend",
        default="saved_model",
        type=Choice(("saved_model", "tfx_bsl", "vertex")),
        help="How versions are loaded and scored: saved_model (TF2 loader, float-matrix "
        "signature; fastest), tfx_bsl (tfx-bsl's RunInference handler on tf.Example, the "
        "TF Serving signature), vertex (remote AI Platform / Vertex AI model versions).",
    )
    parser.add_argument(
        "--vertex_project",
        type=Project(empty_ok=True),
        default="",
        help="vertex backend: the model's Google Cloud project.",
    )
    parser.add_argument(
        "--vertex_model",
        type=Name(r"[A-Za-z][A-Za-z0-9_]{0,127}", "an AI Platform model name", empty_ok=True),
        default="",
        help="vertex backend: the AI Platform model whose versions are the registry's.",
    )
    parser.add_argument(
        "--evaluation_kind",
        type=KIND,
        default="ModelEvaluation",
        help="Datastore kind of the online evaluation (per model version and day).",
    )
    parser.add_argument(
        "--eval_every_s",
        type=Number(above=0),
        default=30.0,
        help="Seconds between two recomputations of the online evaluation (per model "
        "version and day of labelled transactions).",
    )
    parser.add_argument(
        "--alerts_topic",
        type=PUBSUB_NAME,
        default="alerts",
        help="Topic of the monitoring alerts (docs/specs/monitoring.md; short name or path).",
    )
    parser.add_argument(
        "--definitions",
        type=path(
            InputFile(
                "a definitions file (docs/specs/definitions.md)", remote_ok=True, empty_ok=True
            )
        ),
        default="",
        help="The features' definitions file (YAML, local or gs://) the job computes and serves "
        "(empty: the handbook's, pipelines/workloads/handbook.yaml).",
    )
    parser.add_argument(
        "--alert_thresholds",
        type=path(InputFile("a JSON file of alert thresholds", remote_ok=True, empty_ok=True)),
        default="",
        help="JSON file of the alert thresholds (empty: the packaged "
        "pipelines/core/alert_thresholds.json, which Terraform's alert policies also read).",
    )
    parser.add_argument(
        "--monitor_every_s",
        type=Number(above=0),
        default=10.0,
        help="Seconds between two monitoring figures (latency, throughput, data-quality "
        "rates, drift updates) and, with --monitor_dir, two local snapshots.",
    )
    parser.add_argument(
        "--monitor_dir",
        type=path(OutputDir("a directory for the monitoring snapshot", empty_ok=True)),
        default="",
        help="DirectRunner only: directory of the local monitoring snapshot that 'rillet "
        "monitor' and 'rillet report' read (docs/specs/monitoring.md). Empty: off.",
    )
    parser.add_argument(
        "--recovery_checkpoint",
        type=path(OutputFile("a checkpoint file path", empty_ok=True)),
        default="",
        help="DirectRunner only: checkpoint file for crash recovery; when it exists the job "
        "first seeks its subscriptions back to it (see pipelines/local_runner/recovery.py). "
        "Empty: off.",
    )
    parser.add_argument(
        "--max_in_flight",
        type=Whole(minimum=0),
        default=20000,
        help="DirectRunner only, with --recovery_checkpoint: stop pulling while this many "
        "messages are unfinished (backpressure; 0: unbounded).",
    )
    parser.add_argument(
        "--direct_pull_max_messages",
        type=Whole(minimum=1),
        default=500,
        help="DirectRunner only: messages per Pub/Sub pull (Beam's local reader pulls 10).",
    )


def stray_positionals(argv: Sequence[str]) -> list[str]:
    """Words that are neither an option nor the value of the option before them (Beam logs and
    drops them): ``--flag=value word`` or a first bare word."""
    stray = []
    previous = ""
    for arg in argv:
        takes_value = previous.startswith("--") and "=" not in previous
        if not arg.startswith("-") and not takes_value:
            stray.append(arg)
        previous = arg
    return stray
