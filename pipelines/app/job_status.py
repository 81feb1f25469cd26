"""What ``rillet run`` prints: a ready line once the job runs, then a status line every few seconds
from the job's own Beam counters (so the same figures Dataflow shows as custom counters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = ["JobStatus", "read_status", "ready_lines", "status_line"]

_LATENCY = "event_to_prediction_ms"  # the Datastore sink's distribution


@dataclass(frozen=True)
class JobStatus:
    """The job's counters at one moment (cumulative since it started)."""

    transactions: int = 0
    labels: int = 0
    rejected: int = 0  # dead-lettered at parsing
    predictions: int = 0  # written to Datastore (corrections included)
    dead_letters: int = 0  # published on the dead-letter topic (every stage)
    latency_sum_ms: int = 0
    latency_count: int = 0


def read_status(result: Any) -> JobStatus:
    """The job's counters from a running PipelineResult (the DirectRunner's are in-process)."""
    from apache_beam.metrics.metric import MetricsFilter

    metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
    latency = next(
        (m.committed for m in metrics["distributions"] if m.key.metric.name == _LATENCY), None
    )
    return status_from(counters, latency)


def status_from(counters: dict[str, int], latency: Any = None) -> JobStatus:
    """JobStatus from counter values by name (summed over steps) and the latency distribution."""
    return JobStatus(
        transactions=counters.get("transactions_valid", 0),
        labels=counters.get("labels_valid", 0),
        rejected=counters.get("transactions_dead_lettered", 0)
        + counters.get("labels_dead_lettered", 0),
        predictions=counters.get("predictions_written", 0),
        dead_letters=counters.get("dead_letters_published", 0),
        latency_sum_ms=int(getattr(latency, "sum", 0) or 0),
        latency_count=int(getattr(latency, "count", 0) or 0),
    )


def status_line(now: JobStatus, before: JobStatus, seconds: float) -> str:
    """One line: totals, the rate over the last ``seconds`` and the mean event-to-prediction
    latency of the predictions written meanwhile."""
    events = now.transactions + now.labels
    rate = (events - before.transactions - before.labels) / max(seconds, 1e-9)
    count = now.latency_count - before.latency_count
    latency = (
        f"{(now.latency_sum_ms - before.latency_sum_ms) / count:,.0f} ms" if count > 0 else "-"
    )
    return (
        f"events in {events:,} ({now.transactions:,} transactions, {now.labels:,} labels; "
        f"{rate:,.0f}/s) | predictions {now.predictions:,} | dead letters {now.dead_letters:,} "
        f"| latency {latency}"
    )


def ready_lines(options: Any, model_version: str) -> list[str]:
    """Where the job reads, what it serves, where its outputs go, how to stop it."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from pipelines.options import RilletOptions

    project = options.view_as(GoogleCloudOptions).project
    opts = options.view_as(RilletOptions)

    def path(name: str, kind: str) -> str:
        return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"

    kind = opts.datastore_kind + (
        f" (namespace {opts.datastore_namespace})" if opts.datastore_namespace else ""
    )
    return [
        f"ready: reading {path(opts.transactions_subscription, 'subscriptions')} and "
        f"{path(opts.labels_subscription, 'subscriptions')}",
        f"  model {model_version} from {opts.model_dir}"
        + (
            f" (the registry's champion; promotions are picked up within {opts.model_poll_s:g} s"
            f" plus a load, the challenger shadows it)"
            if opts.model_version == "champion"
            else " (pinned)"
        ),
        f"  online evaluation -> Datastore kind {opts.evaluation_kind} ('rillet models compare')",
        f"  predictions -> {path(opts.predictions_topic, 'topics')} and Datastore kind {kind}",
        f"  dead letters -> {path(opts.dead_letter_topic, 'topics')}",
        "  Ctrl-C stops the job",
    ]
