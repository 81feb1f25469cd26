"""What ``rillet run`` prints: a ready line once the job runs, then a status line every few seconds
from the job's own Beam counters (so the same figures Dataflow shows as custom counters), a line
when the models it serves change (its ``serving_models`` metric: what the scoring step actually
used, on any runner), and after a restart, what it resumed from."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.transforms.model_serving import SERVING_METRIC, Served, parse_served
from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = [
    "JobStatus",
    "change_lines",
    "read_status",
    "ready_lines",
    "resumed_line",
    "resuming_line",
    "serving_now",
    "status_line",
]

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
    dead_letters_again: int = 0  # of the dead letters, messages dead-lettered before (replayed)
    served: tuple[Served, ...] = ()  # every pair the scoring step used, oldest first


def read_status(result: Any) -> JobStatus:
    """The job's counters from a running PipelineResult (the DirectRunner's are in-process)."""
    from apache_beam.metrics.metric import MetricsFilter

    metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
    latency = next(
        (m.committed for m in metrics["distributions"] if m.key.metric.name == _LATENCY), None
    )
    served = [
        record
        for m in metrics.get("string_sets", [])
        if m.key.metric.name == SERVING_METRIC
        for record in (m.committed or ())
    ]
    return status_from(counters, latency, served)


def served_pairs(records: Iterable[str]) -> tuple[Served, ...]:
    """The pairs of the ``serving_models`` metric, one per registry generation (several
    workers report the same pair: the earliest ``since`` is kept), oldest first."""
    pairs: dict[tuple[int, str, str | None], Served] = {}
    for record in records:
        served = parse_served(record)
        if served is None:
            continue
        key = (served.generation, served.champion, served.challenger)
        if key not in pairs or served.since < pairs[key].since:
            pairs[key] = served
    return tuple(sorted(pairs.values(), key=lambda s: (s.generation, s.since)))


def serving_now(status: JobStatus) -> Served | None:
    """The pair the job serves now (the newest it reported); None before it scored anything."""
    return status.served[-1] if status.served else None


def status_from(
    counters: dict[str, int], latency: Any = None, served: Iterable[str] = ()
) -> JobStatus:
    """JobStatus from counter values by name (summed over steps), the latency distribution and
    the ``serving_models`` metric's strings."""
    return JobStatus(
        transactions=counters.get("transactions_valid", 0),
        labels=counters.get("labels_valid", 0),
        rejected=counters.get("transactions_dead_lettered", 0)
        + counters.get("labels_dead_lettered", 0),
        predictions=counters.get("predictions_written", 0),
        dead_letters=counters.get("dead_letters_published", 0),
        dead_letters_again=counters.get("dead_letters_redelivered", 0),
        latency_sum_ms=int(getattr(latency, "sum", 0) or 0),
        latency_count=int(getattr(latency, "count", 0) or 0),
        served=served_pairs(served),
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
    serving = serving_now(now)
    model = (
        f"model {serving.champion} (challenger {serving.challenger or 'none'})"
        if serving
        else "model - (nothing scored yet)"
    )
    return (
        f"events in {events:,} ({now.transactions:,} transactions, {now.labels:,} labels; "
        f"{rate:,.0f}/s) | predictions {now.predictions:,} | dead letters {now.dead_letters:,}"
        + (f" ({now.dead_letters_again:,} replayed)" if now.dead_letters_again else "")
        + f" | latency {latency} | {model}"
    )


def clock(epoch_s: float) -> str:
    """A time of day as the user's terminal shows it (local time, to the second)."""
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


def change_lines(previous: Served, served: Sequence[Served]) -> tuple[list[str], Served]:
    """One line per change of the served pair after ``previous`` (newer generations whose
    versions differ), and the pair served last. A champion that was the challenger is marked
    promoted."""
    lines = []
    for pair in served:
        if pair.generation < previous.generation:
            continue
        if pair[2:] == previous[2:]:
            previous = pair
            continue
        if pair.champion != previous.champion:
            champion = f"champion {previous.champion} -> {pair.champion}"
            if pair.champion == previous.challenger:
                champion += " (promoted)"
        else:
            champion = f"champion {pair.champion} (unchanged)"
        before, after = previous.challenger or "none", pair.challenger or "none"
        challenger = f"challenger {before} -> {after}" if before != after else f"challenger {after}"
        lines.append(f"{clock(pair.since)} {champion}, {challenger}")
        previous = pair
    return lines, previous


def resumed_line(checkpoint_written_s: float, replayed: dict[str, int]) -> str:
    """After a restart's replay: when the checkpoint it resumed from was written, and how many
    messages the previous job had already pulled came again (per input)."""
    total = sum(replayed.values())
    parts = ", ".join(f"{n:,} {name}" for name, n in replayed.items())
    return (
        f"resumed from checkpoint at {clock(checkpoint_written_s)} "
        f"({total:,} messages replayed{': ' + parts if total else ''})"
    )


def resuming_line(replay: Any, checkpoint: str) -> str:
    """Under the ready line of a restarted job: the checkpoint and how far back the input was
    sought (``replay``: pipelines.local_runner.recovery.Replay)."""
    return (
        f"  resumed from the checkpoint written at {clock(replay.checkpoint_written_us / 1e6)} "
        f"({checkpoint}): input replayed from publish time "
        f"{clock(min(replay.sought.values()) / 1e6)}"
    )


def ready_lines(options: Any, model_version: str, challenger: str | None = None) -> list[str]:
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
            " (the registry's champion; "
            + (
                f"challenger {challenger} shadows it"
                if challenger
                else "no challenger ('rillet models challenge VERSION' sets one)"
            )
            + f"; promotions are picked up within {opts.model_poll_s:g} s plus a load)"
            if opts.model_version == "champion"
            else " (pinned)"
        ),
        f"  online evaluation -> Datastore kind {opts.evaluation_kind} ('rillet models compare')",
        f"  predictions -> {path(opts.predictions_topic, 'topics')} and Datastore kind {kind}",
        f"  dead letters -> {path(opts.dead_letter_topic, 'topics')}",
        "  Ctrl-C stops the job",
    ]
