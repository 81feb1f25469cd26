"""EvaluateOnline: the quality of every served model version, from the labels as they arrive.

    labels ─ LookupServed (Datastore: the stored prediction of each labelled transaction)
           ─ key (version, day of the labelled transactions) ─ DayQuality (AUC, AP, CP@100)
           ─ WriteEvaluation (kind ModelEvaluation, Beam metrics)

A label meets what was served for its transaction in the prediction store: the champion's score
and, when one shadowed it, the challenger's; each counts for its version. Keys are (version, day):
a day's labels of one version are combined on one worker, the days and versions spread over
workers (no global key). Beam's combiner lifting pre-aggregates on each worker.

The figures are exact (every labelled score of the day is kept, deduplicated by transaction id:
a redelivered label counts once) and recomputed every ``every_s`` seconds of processing time, in
the global window with accumulating firings: the local runner's watermark is its wall clock, so
event-time windows over replayed days would drop everything as late. On Dataflow the combine
state survives worker failures and ``--update``; on the local runner a restart starts the
accumulation over, and each day's entity is rewritten from the labels that arrive after it.

A label whose prediction is not stored yet (it raced its transaction in a burst or a backlog)
waits in AwaitPredictions, keyed by a hash bucket of its transaction id, and is looked up again
every ``retry_s`` seconds, ``attempts`` times (5 minutes by default); labels of transactions this
deployment never scored (backfilled history, another job) are then counted
(``labels_without_prediction``) and left out.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)

from pipelines.core.quality import quality
from pipelines.core.schema import Label
from pipelines.stores.model_registry import EVALUATION_KIND
from pipelines.stores.retry import datastore_call_options, with_backoff
from pipelines.transforms.parse import METRICS_NAMESPACE
from pipelines.transforms.sinks import lookup_raw, shared_datastore_client

__all__ = [
    "EVALUATION_KIND",
    "DayQuality",
    "EvaluateOnline",
    "Scored",
    "evaluation_properties",
    "label_day",
    "scored_from",
    "served_scores",
]

EVAL_NAMESPACE = "rillet_online_eval"
WAITING = "waiting"
WAIT_BUCKETS = 64
LOOKUP_BATCH = 500


class Scored(NamedTuple):
    """One labelled transaction as one version scored it."""

    version: str
    day: str
    transaction_id: str
    card: str
    label: int
    score: float


def label_day(event_time_us: int) -> str:
    """The calendar day (UTC) of a labelled transaction."""
    return dt.datetime.fromtimestamp(event_time_us / 1e6, tz=dt.UTC).strftime("%Y-%m-%d")


def scored_from(label: Label, prediction: dict[str, Any]) -> list[Scored]:
    """What a stored prediction contributes for one label: the champion's score, and the
    challenger's when one shadowed it."""
    day = label_day(label.event_time_us)
    out = [
        Scored(
            prediction["model_version"],
            day,
            label.transaction_id,
            label.customer_id,
            int(label.is_fraud),
            float(prediction["score"]),
        )
    ]
    if prediction.get("challenger_version"):
        out.append(
            out[0]._replace(
                version=prediction["challenger_version"],
                score=float(prediction["challenger_score"]),
            )
        )
    return out


class _ServedLookup(beam.DoFn):
    """What both lookups of stored predictions share: the client, and lookup_and_group."""

    def __init__(self, project: str, kind: str, namespace: str | None) -> None:
        self._project = project
        self._kind = kind
        self._namespace = namespace or None
        self._client: Any = None
        self._matched = Metrics.counter(METRICS_NAMESPACE, "labels_evaluated")

    def setup(self) -> None:
        self._client = shared_datastore_client(self._project, self._namespace)

    def lookup_and_group(self, labels: list[tuple[Label, int]]) -> Iterator[Any]:
        """Looks up the stored predictions of ``labels`` (each with the lookups it already
        had); yields ((version, day), [Scored]) per key, and the labels without a stored
        prediction yet, tagged ``WAITING`` with one more attempt (their prediction may not be
        written yet: a label racing its transaction in a burst or a backlog)."""
        stored = lookup_raw(
            self._client,
            self._project,
            self._namespace,
            self._kind,
            [label.transaction_id for label, _ in labels],
        )
        # Grouped per key here: one element per (version, day) and lookup, not one per label,
        # goes through the runner's trigger machinery (a sixth of the local job, per label,
        # measured).
        groups: dict[tuple[str, str], list[Scored]] = {}
        for label, attempts in labels:
            entity = stored.get(label.transaction_id)
            if entity is None:
                yield beam.pvalue.TaggedOutput(WAITING, (_bucket(label), (label, attempts + 1)))
                continue
            self._matched.inc()
            for row in scored_from(label, served_scores(entity)):
                groups.setdefault((row.version, row.day), []).append(row)
        yield from groups.items()


class _LookupServed(_ServedLookup):
    """Labels (in lists) to Scored rows, from the prediction store."""

    def process(self, labels: list[Label]) -> Iterator[Any]:
        yield from self.lookup_and_group([(label, 0) for label in labels])


def _bucket(label: Label) -> int:
    return zlib.crc32(label.transaction_id.encode()) % WAIT_BUCKETS


_WAITING_LABELS = BagStateSpec("waiting_labels", PickleCoder())
_ARMED = ReadModifyWriteStateSpec("armed", BooleanCoder())
_RETRY = TimerSpec("retry", TimeDomain.REAL_TIME)
_WAITING_PARAM = beam.DoFn.StateParam(_WAITING_LABELS)
_ARMED_PARAM = beam.DoFn.StateParam(_ARMED)
_RETRY_PARAM = beam.DoFn.TimerParam(_RETRY)


class _AwaitPredictions(_ServedLookup):
    """Labels whose prediction was not stored yet, looked up again every ``retry_s`` until
    ``attempts`` lookups found nothing: then they are counted (``labels_without_prediction``)
    and dropped (a transaction this deployment never scored). Keyed by a hash bucket of the
    transaction id; one processing-time timer per bucket."""

    def __init__(
        self, project: str, kind: str, namespace: str | None, retry_s: float, attempts: int
    ) -> None:
        super().__init__(project, kind, namespace)
        self._retry_s = retry_s
        self._attempts = attempts
        self._missing = Metrics.counter(METRICS_NAMESPACE, "labels_without_prediction")

    def process(
        self,
        element: tuple[int, tuple[Label, int]],
        waiting: Any = _WAITING_PARAM,
        armed: Any = _ARMED_PARAM,
        retry: Any = _RETRY_PARAM,
    ) -> None:
        waiting.add(element[1])
        if not armed.read():
            retry.set(time.time() + self._retry_s)
            armed.write(True)

    @on_timer(_RETRY)
    def on_retry(
        self,
        waiting: Any = _WAITING_PARAM,
        armed: Any = _ARMED_PARAM,
        retry: Any = _RETRY_PARAM,
    ) -> Iterator[Any]:
        labels = list(waiting.read())
        waiting.clear()
        again = []
        for output in self.lookup_and_group(labels):
            if isinstance(output, beam.pvalue.TaggedOutput):
                label, attempts = output.value[1]
                if attempts < self._attempts:
                    again.append((label, attempts))
                else:
                    self._missing.inc()
            else:
                yield output
        for item in again:
            waiting.add(item)
        if again:
            retry.set(time.time() + self._retry_s)
        else:
            armed.write(False)


def served_scores(entity: Any) -> dict[str, Any]:
    """The scores a stored Prediction entity (raw protobuf) holds."""
    props = entity.properties
    challenger = props.get("challenger_version")
    shadowed = challenger is not None and challenger.WhichOneof("value_type") == "string_value"
    return {
        "model_version": props["model_version"].string_value,
        "score": props["score"].double_value,
        "challenger_version": challenger.string_value if shadowed else None,
        "challenger_score": props["challenger_score"].double_value if shadowed else None,
    }


class DayQuality(beam.CombineFn):
    """Exact AUC, AP and Card Precision@100 of one (version, day), from lists of its Scored
    rows: the accumulator keeps each labelled transaction once (transaction id -> card, label,
    score; the first label wins, as in the id index)."""

    def create_accumulator(self) -> dict[str, tuple[str, int, float]]:
        return {}

    def add_input(
        self, acc: dict[str, tuple[str, int, float]], rows: list[Scored]
    ) -> dict[str, tuple[str, int, float]]:
        for row in rows:
            acc.setdefault(row.transaction_id, (row.card, row.label, row.score))
        return acc

    def merge_accumulators(
        self, accumulators: Iterable[dict[str, tuple[str, int, float]]]
    ) -> dict[str, tuple[str, int, float]]:
        merged: dict[str, tuple[str, int, float]] = {}
        for acc in accumulators:
            for tx_id, row in acc.items():
                merged.setdefault(tx_id, row)
        return merged

    def extract_output(self, acc: dict[str, tuple[str, int, float]]) -> dict[str, Any]:
        rows = list(acc.values())
        return quality([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def evaluation_properties(version: str, day: str, figures: dict[str, Any]) -> dict[str, Any]:
    """The ModelEvaluation entity of one (version, day) (docs/specs/datastore.md)."""
    return {"version": version, "day": day, **figures, "updated_at": dt.datetime.now(tz=dt.UTC)}


class _WriteEvaluation(beam.DoFn):
    """Upserts one ModelEvaluation entity per (version, day) and sets its Beam gauges."""

    def __init__(self, project: str, namespace: str | None, kind: str) -> None:
        self._project = project
        self._namespace = namespace or None
        self._kind = kind
        self._client: Any = None

    def setup(self) -> None:
        self._client = shared_datastore_client(self._project, self._namespace)

    def process(self, element: tuple[tuple[str, str], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from google.cloud import datastore

        (version, day), figures = element
        row = evaluation_properties(version, day, figures)
        entity = datastore.Entity(self._client.key(self._kind, f"{version}|{day}"))
        entity.update(row)
        with_backoff(lambda: self._client.put(entity, **datastore_call_options()), "Datastore put")
        # Beam metrics are integers: the figures in parts per million.
        for name in ("auc", "ap", "cp100"):
            if figures[name] is not None:
                gauge = Metrics.gauge(EVAL_NAMESPACE, f"{name}_ppm/{version}/{day}")
                gauge.set(round(figures[name] * 1_000_000))
        Metrics.gauge(EVAL_NAMESPACE, f"n/{version}/{day}").set(figures["n"])
        yield row


class EvaluateOnline(beam.PTransform):
    """Labels to per-version, per-day AUC / AP / Card Precision@100 (module docstring).

    Example Usage::

        rows = labels | "EvaluateOnline" >> EvaluateOnline("my-project", "Prediction", None, 30)
    """

    def __init__(
        self,
        project: str,
        prediction_kind: str,
        namespace: str | None,
        every_s: float,
        evaluation_kind: str = EVALUATION_KIND,
        retry_s: float = 10.0,
        attempts: int = 30,
    ) -> None:
        super().__init__()
        self._retry_s = retry_s
        self._attempts = attempts
        self._evaluation_kind = evaluation_kind
        self._project = project
        self._kind = prediction_kind
        self._namespace = namespace
        self._every_s = every_s

    def expand(self, labels: beam.PCollection) -> beam.PCollection:
        looked_up = (
            labels
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=LOOKUP_BATCH)
            | "LookupServed"
            >> beam.ParDo(_LookupServed(self._project, self._kind, self._namespace)).with_outputs(
                WAITING, main="found"
            )
        )
        retried = looked_up[WAITING] | "AwaitPredictions" >> beam.ParDo(
            _AwaitPredictions(
                self._project, self._kind, self._namespace, self._retry_s, self._attempts
            )
        )
        return (
            (looked_up.found, retried)
            | "Scored" >> beam.Flatten()
            | "EveryFewSeconds"
            >> beam.WindowInto(
                window.GlobalWindows(),
                trigger=trigger.Repeatedly(
                    trigger.AfterProcessingTime(max(1, round(self._every_s)))
                ),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            )
            | "DayQuality" >> beam.CombinePerKey(DayQuality())
            | "WriteEvaluation"
            >> beam.ParDo(_WriteEvaluation(self._project, self._namespace, self._evaluation_kind))
        )
