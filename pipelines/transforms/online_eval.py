"""EvaluateOnline: the quality of every served model version, from the labels as they arrive.

    labels ─ LookupServed (Datastore: the stored prediction of each labelled transaction)
           ─ key "<version>|<day of the labelled transactions>" ─ DayQuality (AUC, AP, CP@100)
           ─ WriteEvaluation (kind ModelEvaluation; Beam gauges of each complete day)

A label meets what was served for its transaction in the prediction store: the champion's score
and, when one shadowed it, the challenger's; each counts for its version. Keys are
``<version>|<day>``: a day's labels of one version are evaluated on one worker, the days and
versions spread over workers (no global key).

**DayQuality** keeps a day's labelled scores in Beam state (a bag of :class:`DayRow`) and writes
its figures every ``every_s`` seconds of processing time while labels come in. The figures are
exact (every labelled score of the day, deduplicated by transaction id: a redelivered label
counts once). **A day's state is released once its labels are complete**: labels of day D's
transactions are due by the end of D + 7 days (the label delay); the day is complete when the
label stream's own clock (the latest due time among the labels seen, i.e. event time + 7 days)
passes that by ``margin_s``, then after ``grace_s`` of processing time for labels still in
flight (AwaitPredictions' retries). The data's clock, not Beam's watermark: a replay runs days
of event time in minutes, and the local runner's Pub/Sub watermark is the wall clock. A key that
gets no label for ``idle_s`` of processing time (a stalled label stream) is released too. The
release writes the day's final figures (``complete``) first, in the same work item (state and
outputs are committed together), then keeps a marker (one integer) for ``KEEP_RELEASED_S`` (30
days) so that a label of the released day is counted (``labels_after_day_complete``) and left
out rather than starting the day over with its late labels only. A day's key learns the clock
from its own labels (each element carries the clock its sender had before it) and from the
labels of later days: LookupServed sends each day it sees complete a tick (no rows, the clock)
for the versions it saw.

A label whose prediction is not stored yet (it raced its transaction in a burst or a backlog)
waits in AwaitPredictions, keyed like the keyed stages (its transaction id on Dataflow, a hash
bucket of it on the DirectRunner: pipelines/core/routing.py), and is looked up again every
``retry_s`` seconds, ``attempts`` times (5 minutes by default); labels of transactions this
deployment never scored (backfilled history, another job) are then counted
(``labels_without_prediction``) and left out.

The gauges (namespace ``rillet_online_eval``) are named by role, not by version or day, so that
their number stays bounded: ``auc_ppm/<role>``, ``ap_ppm/<role>``, ``cp100_ppm/<role>``,
``n/<role>`` and ``day_start_s/<role>`` hold the figures of the latest complete day of the
champion and of the challenger. Version and day are in the ModelEvaluation entities and the
alerts. Everything kept in state or shuffled is a schema'd row (pipelines/transforms/coders.py).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import BooleanCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)

from pipelines.core.declarations import Definitions, Entity
from pipelines.core.definitions import DAY_US, LABEL_DELAY_DAYS
from pipelines.core.quality import quality
from pipelines.core.routing import route
from pipelines.core.schema import Label
from pipelines.stores.model_registry import EVALUATION_KIND
from pipelines.stores.retry import datastore_call_options, with_backoff
from pipelines.stores.shared import SharedResource
from pipelines.transforms.coders import row_coder
from pipelines.transforms.parse import METRICS_NAMESPACE
from pipelines.transforms.sinks import datastore_client, lookup_raw

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EVALUATION_KIND",
    "DayFigures",
    "DayQuality",
    "DayRow",
    "DayRows",
    "EvaluateOnline",
    "PendingLabel",
    "Scored",
    "complete_at_us",
    "day_figures",
    "evaluation_properties",
    "label_day",
    "scored_from",
    "served_scores",
    "set_day_gauges",
]

EVAL_NAMESPACE = "rillet_online_eval"
WAITING = "waiting"
LOOKUP_BATCH = 500
CHAMPION, CHALLENGER = "champion", "challenger"
LABEL_DELAY_US = LABEL_DELAY_DAYS * DAY_US
KEEP_RELEASED_S = 30 * 86_400.0  # how long a released day's marker stays (DayQuality)


class Scored(NamedTuple):
    """One labelled transaction as one version scored it, in the role it had then."""

    version: str
    day: str
    transaction_id: str
    card: str
    label: int
    score: float
    role: str


class PendingLabel(NamedTuple):
    """A label on its way to its stored prediction, and the lookups it already had."""

    transaction_id: str
    event_time_us: int
    customer_id: str
    is_fraud: int
    attempts: int


class DayRow(NamedTuple):
    """One labelled score of a (version, day), as its key keeps it."""

    transaction_id: str
    card: str
    label: int
    score: float
    champion: bool


class DayRows(NamedTuple):
    """What a ``<version>|<day>`` key receives: labelled scores (none: a tick), and the label
    clock of the sender (the latest due time it had seen, event time + label delay, in µs)."""

    rows: Sequence[DayRow]
    clock_us: int


class DayFigures(NamedTuple):
    """The figures of one (version, day); ``complete``: its labels are complete, final."""

    version: str
    day: str
    role: str
    n: int
    frauds: int
    auc: float | None
    ap: float | None
    cp100: float | None
    complete: bool


for _row in (PendingLabel, DayRow, DayRows, DayFigures):
    row_coder(_row)

_KEYED_PENDING = beam.typehints.Tuple[str, PendingLabel]
_KEYED_ROWS = beam.typehints.Tuple[str, DayRows]


def label_day(event_time_us: int) -> str:
    """The calendar day (UTC) of a labelled transaction."""
    return dt.datetime.fromtimestamp(event_time_us / 1e6, tz=dt.UTC).strftime("%Y-%m-%d")


def _day_start_us(day: str) -> int:
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return int(start.timestamp()) * 1_000_000


def complete_at_us(day: str, margin_us: int) -> int:
    """The label clock (event time + label delay) at which ``day``'s labels are complete: its
    last transaction's label is due at its end + the label delay; ``margin_us`` after that."""
    return _day_start_us(day) + DAY_US + LABEL_DELAY_US + margin_us


def _key(version: str, day: str) -> str:
    return f"{version}|{day}"


def scored_from(label: PendingLabel, prediction: dict[str, Any]) -> list[Scored]:
    """What a stored prediction contributes for one label: the champion's score, and the
    challenger's when one shadowed it (``customer_id``: the card entity's id)."""
    day = label_day(label.event_time_us)
    out = [
        Scored(
            prediction["model_version"],
            day,
            label.transaction_id,
            label.customer_id,
            int(label.is_fraud),
            float(prediction["score"]),
            CHAMPION,
        )
    ]
    if prediction.get("challenger_version"):
        out.append(
            out[0]._replace(
                version=prediction["challenger_version"],
                score=float(prediction["challenger_score"]),
                role=CHALLENGER,
            )
        )
    return out


def card_entity(definitions: Definitions) -> Entity:
    """What Card Precision@k counts alerts per: the definitions file's first entity (the
    handbook's customer, i.e. the card)."""
    return definitions.entities[0]


def _pending(label: Label, card: Entity) -> PendingLabel:
    """``customer_id`` holds the card entity's id (the row's stored name, kept for --update)."""
    return PendingLabel(
        label.transaction_id, label.event_time_us, card.id_of(label.fields), label.is_fraud, 0
    )


class _ServedLookup(beam.DoFn):
    """What both lookups of stored predictions share: the client, the label clock this
    instance saw, and lookup_and_group."""

    def __init__(self, project: str, kind: str, namespace: str | None, key_buckets: int) -> None:
        self._project = project
        self._kind = kind
        self._namespace = namespace or None
        self._buckets = key_buckets
        self._client: Any = None
        self._shared: SharedResource[Any] = SharedResource()
        self._clock_us = 0
        self._matched = Metrics.counter(METRICS_NAMESPACE, "labels_evaluated")

    def setup(self) -> None:
        project, namespace = self._project, self._namespace
        self._client = self._shared.acquire(
            lambda: datastore_client(project, namespace), tag=(project, namespace)
        )

    def lookup_and_group(self, labels: list[PendingLabel]) -> Iterator[Any]:
        """Looks up the stored predictions of ``labels``; yields ("<version>|<day>", DayRows)
        per key, and the labels without a stored prediction yet, tagged ``WAITING`` with one
        more attempt (their prediction may not be written yet: a label racing its transaction
        in a burst or a backlog)."""
        stored = lookup_raw(
            self._client,
            self._project,
            self._namespace,
            self._kind,
            [label.transaction_id for label in labels],
        )
        # The rows carry the clock as it was when they came: a batch that spans days (a
        # backlog) must not make its own earliest rows look late. The ticks carry it after.
        clock_us = self._clock_us
        for label in labels:
            self._clock_us = max(self._clock_us, label.event_time_us + LABEL_DELAY_US)
        # Grouped per key here: one element per (version, day) and lookup, not one per label,
        # goes through the shuffle and the state (a sixth of the local job, per label, measured).
        groups: dict[str, list[DayRow]] = {}
        for label in labels:
            entity = stored.get(label.transaction_id)
            if entity is None:
                yield beam.pvalue.TaggedOutput(
                    WAITING,
                    (
                        route(label.transaction_id, self._buckets),
                        label._replace(attempts=label.attempts + 1),
                    ),
                )
                self.saw(None, label_day(label.event_time_us))
                continue
            self._matched.inc()
            for row in scored_from(label, served_scores(entity)):
                groups.setdefault(_key(row.version, row.day), []).append(
                    DayRow(row.transaction_id, row.card, row.label, row.score, row.role == CHAMPION)
                )
                self.saw(row.version, row.day)
        for key, rows in groups.items():
            yield key, DayRows(rows, clock_us)

    def saw(self, version: str | None, day: str) -> None:
        """A hook for the days of the labels looked up, and the versions that had rows of them
        (``None``: a label whose prediction is not stored yet); _LookupServed's ticks."""


class _LookupServed(_ServedLookup):
    """Labels (in lists) to DayRows per key, from the prediction store; and a tick (DayRows
    without rows) to every ``<version>|<day>`` key whose day the label clock shows complete,
    once per instance, for the days of the labels this instance looked up (those waiting for
    their prediction included) and the versions it saw rows of (module docstring)."""

    def __init__(
        self,
        project: str,
        kind: str,
        namespace: str | None,
        key_buckets: int,
        margin_s: float,
        card: Entity,
    ) -> None:
        super().__init__(project, kind, namespace, key_buckets)
        self._card = card
        self._margin_us = int(margin_s * 1_000_000)
        self._latest_day: dict[str, str] = {}  # version -> the latest day it had rows of
        self._first_day: str | None = None
        self._ticked: str | None = None  # the latest day ticked complete

    def saw(self, version: str | None, day: str) -> None:
        if version is not None and day > self._latest_day.get(version, ""):
            self._latest_day[version] = day
        if self._first_day is None or day < self._first_day:
            self._first_day = day

    def process(self, labels: list[Label]) -> Iterator[Any]:
        yield from self.lookup_and_group([_pending(label, self._card) for label in labels])
        yield from self._ticks()

    def _ticks(self) -> Iterator[tuple[str, DayRows]]:
        if self._first_day is None:
            return
        # The latest day whose labels the clock shows complete.
        complete = label_day(self._clock_us - LABEL_DELAY_US - self._margin_us - DAY_US)
        start = self._first_day if self._ticked is None else _next_day(self._ticked)
        day = start
        while day <= complete:
            for version, latest in self._latest_day.items():
                if latest >= day:  # else it had no rows of this day or later here
                    yield _key(version, day), DayRows([], self._clock_us)
            day = _next_day(day)
        if complete >= start:
            self._ticked = complete
            # A version without rows after the ticked days holds nothing this instance sees.
            self._latest_day = {v: d for v, d in self._latest_day.items() if d > complete}


def _next_day(day: str) -> str:
    return label_day(_day_start_us(day) + DAY_US)


_WAITING_LABELS = BagStateSpec("waiting_labels", row_coder(PendingLabel))
_ARMED = ReadModifyWriteStateSpec("armed", BooleanCoder())
_RETRY = TimerSpec("retry", TimeDomain.REAL_TIME)
_WAITING_PARAM = beam.DoFn.StateParam(_WAITING_LABELS)
_ARMED_PARAM = beam.DoFn.StateParam(_ARMED)
_RETRY_PARAM = beam.DoFn.TimerParam(_RETRY)


class _AwaitPredictions(_ServedLookup):
    """Labels whose prediction was not stored yet, looked up again every ``retry_s`` until
    ``attempts`` lookups found nothing: then they are counted (``labels_without_prediction``)
    and dropped (a transaction this deployment never scored). Keyed like the keyed stages
    (pipelines/core/routing.py); one processing-time timer per key."""

    def __init__(
        self,
        project: str,
        kind: str,
        namespace: str | None,
        key_buckets: int,
        retry_s: float,
        attempts: int,
    ) -> None:
        super().__init__(project, kind, namespace, key_buckets)
        self._retry_s = retry_s
        self._attempts = attempts
        self._missing = Metrics.counter(METRICS_NAMESPACE, "labels_without_prediction")

    def default_label(self) -> str:
        return "AwaitPredictions"

    def process(
        self,
        element: tuple[str, PendingLabel],
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
                label = output.value[1]
                if label.attempts < self._attempts:
                    again.append(label)
                else:
                    self._missing.inc()
            else:
                yield output
        for label in again:
            waiting.add(label)
        if again:
            retry.set(time.time() + self._retry_s)
        else:
            armed.clear()


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


def day_figures(version: str, day: str, rows: Iterable[DayRow], complete: bool) -> DayFigures:
    """Exact AUC, AP and Card Precision@100 of one (version, day): each labelled transaction
    once (the first row of a transaction id wins, as in the id index); the role is the
    champion's when the version served as champion for any of them."""
    unique: dict[str, DayRow] = {}
    for row in rows:
        unique.setdefault(row.transaction_id, row)
    kept = list(unique.values())
    figures = quality([r.card for r in kept], [r.label for r in kept], [r.score for r in kept])
    return DayFigures(
        version=version,
        day=day,
        role=CHAMPION if any(r.champion for r in kept) else CHALLENGER,
        n=int(figures["n"] or 0),
        frauds=int(figures["frauds"] or 0),
        auc=figures["auc"],
        ap=figures["ap"],
        cp100=figures["cp100"],
        complete=complete,
    )


# A day key's phase: open (no marker), closing (the clock passed its completion: released when
# the grace is over), released (a marker, so that a late label does not start the day over).
_CLOSING, _RELEASED = 1, 2

_ROWS = BagStateSpec("rows", row_coder(DayRow))
_CLOCK = ReadModifyWriteStateSpec("clock_us", VarIntCoder())
_PHASE = ReadModifyWriteStateSpec("phase", VarIntCoder())
_DIRTY = ReadModifyWriteStateSpec("dirty", BooleanCoder())  # rows since the last figures
_EMIT = TimerSpec("emit", TimeDomain.REAL_TIME)  # the next figures (rows came)
_CLOSE = TimerSpec("close", TimeDomain.REAL_TIME)  # the end of the grace: final, released
_IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)  # no rows for idle_s; a marker's end
_ROWS_PARAM = beam.DoFn.StateParam(_ROWS)
_CLOCK_PARAM = beam.DoFn.StateParam(_CLOCK)
_PHASE_PARAM = beam.DoFn.StateParam(_PHASE)
_DIRTY_PARAM = beam.DoFn.StateParam(_DIRTY)
_EMIT_PARAM = beam.DoFn.TimerParam(_EMIT)
_CLOSE_PARAM = beam.DoFn.TimerParam(_CLOSE)
_IDLE_PARAM = beam.DoFn.TimerParam(_IDLE)


class DayQuality(beam.DoFn):
    """The figures of one ``<version>|<day>`` key, from its labelled scores in state: written
    at most every ``every_s`` while rows come in; once the day is complete (the label clock
    past :func:`complete_at_us`, then ``grace_s``; or no row for ``idle_s``), its final figures,
    and its rows are released; a marker stays ``KEEP_RELEASED_S`` (module docstring).

    Args:
      every_s: seconds of processing time between two figures of a day that got rows.
      margin_s: event time past a day's last label due time before it is complete.
      grace_s: processing time after that, for labels still in flight.
      idle_s: processing time without a row after which a day is released anyway.
    """

    def __init__(self, every_s: float, margin_s: float, grace_s: float, idle_s: float) -> None:
        self._every_s = every_s
        self._margin_us = int(margin_s * 1_000_000)
        self._grace_s = grace_s
        self._idle_s = idle_s
        self._late = Metrics.counter(METRICS_NAMESPACE, "labels_after_day_complete")
        self._released = Metrics.counter(METRICS_NAMESPACE, "evaluation_days_complete")

    def default_label(self) -> str:
        return "DayQuality"

    def process(
        self,
        element: tuple[str, DayRows],
        rows_state: Any = _ROWS_PARAM,
        clock_state: Any = _CLOCK_PARAM,
        phase_state: Any = _PHASE_PARAM,
        dirty_state: Any = _DIRTY_PARAM,
        emit: Any = _EMIT_PARAM,
        close: Any = _CLOSE_PARAM,
        idle: Any = _IDLE_PARAM,
    ) -> None:
        key, value = element
        rows = list(value.rows)
        phase = phase_state.read()
        if phase == _RELEASED:
            self._late.inc(len(rows))
            return
        held = clock_state.read()
        if held is None and not rows:
            return  # a tick for a day this key holds nothing of: no state is created
        clock = max(held or 0, value.clock_us)
        now = time.time()
        if rows:
            # The first rows of a day the clock shows complete already (its labels all waited
            # for their predictions, or came in one backlog) start it all the same: the grace
            # below gathers the rest before its figures are final.
            for row in rows:
                rows_state.add(row)
            idle.set(now + self._idle_s)
            if not dirty_state.read():
                dirty_state.write(True)
                emit.set(now + self._every_s)
        clock_state.write(clock)
        if phase is None and clock >= complete_at_us(key.rsplit("|", 1)[1], self._margin_us):
            phase_state.write(_CLOSING)
            close.set(now + self._grace_s)

    @on_timer(_EMIT)
    def on_emit(
        self,
        key: Any = beam.DoFn.KeyParam,
        rows_state: Any = _ROWS_PARAM,
        dirty_state: Any = _DIRTY_PARAM,
    ) -> Iterator[DayFigures]:
        if dirty_state.read():  # cleared by a release in between
            dirty_state.clear()
            yield self._figures(key, rows_state, complete=False)

    @on_timer(_CLOSE)
    def on_close(
        self,
        key: Any = beam.DoFn.KeyParam,
        rows_state: Any = _ROWS_PARAM,
        clock_state: Any = _CLOCK_PARAM,
        phase_state: Any = _PHASE_PARAM,
        dirty_state: Any = _DIRTY_PARAM,
        idle: Any = _IDLE_PARAM,
    ) -> Iterator[DayFigures]:
        if phase_state.read() == _CLOSING:
            yield from self._release(key, rows_state, clock_state, phase_state, dirty_state, idle)

    @on_timer(_IDLE)
    def on_idle(
        self,
        key: Any = beam.DoFn.KeyParam,
        rows_state: Any = _ROWS_PARAM,
        clock_state: Any = _CLOCK_PARAM,
        phase_state: Any = _PHASE_PARAM,
        dirty_state: Any = _DIRTY_PARAM,
        idle: Any = _IDLE_PARAM,
    ) -> Iterator[DayFigures]:
        if phase_state.read() == _RELEASED:
            phase_state.clear()  # the marker's time is over: the key holds nothing any more
            return
        yield from self._release(key, rows_state, clock_state, phase_state, dirty_state, idle)

    def _figures(self, key: str, rows_state: Any, complete: bool) -> DayFigures:
        version, day = key.rsplit("|", 1)
        return day_figures(version, day, rows_state.read(), complete)

    def _release(
        self,
        key: str,
        rows_state: Any,
        clock_state: Any,
        phase_state: Any,
        dirty_state: Any,
        idle: Any,
    ) -> Iterator[DayFigures]:
        """The final figures, then the rows released; a marker stays ``KEEP_RELEASED_S``."""
        yield self._figures(key, rows_state, complete=True)
        self._released.inc()
        rows_state.clear()
        clock_state.clear()
        dirty_state.clear()
        phase_state.write(_RELEASED)
        idle.set(time.time() + KEEP_RELEASED_S)


def evaluation_properties(figures: DayFigures) -> dict[str, Any]:
    """The ModelEvaluation entity of one (version, day) (docs/specs/datastore.md)."""
    return {**figures._asdict(), "updated_at": dt.datetime.now(tz=dt.UTC)}


class _WriteEvaluation(beam.DoFn):
    """Upserts one ModelEvaluation entity per (version, day); the figures of a complete day
    also go to the role's gauges (module docstring)."""

    def __init__(self, project: str, namespace: str | None, kind: str) -> None:
        self._project = project
        self._namespace = namespace or None
        self._kind = kind
        self._client: Any = None
        self._shared: SharedResource[Any] = SharedResource()

    def setup(self) -> None:
        project, namespace = self._project, self._namespace
        self._client = self._shared.acquire(
            lambda: datastore_client(project, namespace), tag=(project, namespace)
        )

    def process(self, figures: DayFigures) -> Iterator[DayFigures]:
        from google.cloud import datastore

        entity = datastore.Entity(self._client.key(self._kind, _key(figures.version, figures.day)))
        entity.update(evaluation_properties(figures))
        with_backoff(lambda: self._client.put(entity, **datastore_call_options()), "Datastore put")
        if figures.complete:
            set_day_gauges(figures)
        yield figures


def set_day_gauges(figures: DayFigures) -> None:
    """The gauges of a complete day, by role (Beam metrics are integers: figures in parts per
    million, the day as its start in epoch seconds)."""
    role = figures.role
    for name in ("auc", "ap", "cp100"):
        value = getattr(figures, name)
        if value is not None:
            Metrics.gauge(EVAL_NAMESPACE, f"{name}_ppm/{role}").set(round(value * 1_000_000))
    Metrics.gauge(EVAL_NAMESPACE, f"n/{role}").set(figures.n)
    Metrics.gauge(EVAL_NAMESPACE, f"day_start_s/{role}").set(
        _day_start_us(figures.day) // 1_000_000
    )


class EvaluateOnline(beam.PTransform):
    """Labels to per-version, per-day AUC / AP / Card Precision@100 (module docstring); the
    output is the DayFigures written.

    Example Usage::

        figures = labels | "EvaluateOnline" >> EvaluateOnline(
            "my-project", "Prediction", None, 30, card=card_entity(defs)
        )

    Args:
      project, prediction_kind, namespace: where the stored predictions are (and the
        evaluation entities: ``evaluation_kind``).
      every_s: seconds between two figures of a day that got labels.
      key_buckets: AwaitPredictions' keys: 0 (Dataflow) one per transaction id, else hashed
        into that many (pipelines.streaming.key_buckets).
      retry_s, attempts: how often and how many times a label without a stored prediction is
        looked up again.
      margin_s: event time past a day's last label due time before the day is complete (1 day).
      idle_s: processing time without labels after which a day is released anyway (2 days).
      card: the entity Card Precision@k counts per (``card_entity`` of the job's definitions;
        keyword only, required).
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
        key_buckets: int = 0,
        margin_s: float = 86_400.0,
        idle_s: float = 2 * 86_400.0,
        *,
        card: Entity,
    ) -> None:
        super().__init__()
        self._card = card
        self._retry_s = retry_s
        self._attempts = attempts
        self._evaluation_kind = evaluation_kind
        self._project = project
        self._kind = prediction_kind
        self._namespace = namespace
        self._every_s = every_s
        self._buckets = key_buckets
        self._margin_s = margin_s
        self._idle_s = idle_s

    def expand(self, labels: beam.PCollection) -> beam.PCollection:
        looked_up = (
            labels
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=LOOKUP_BATCH)
            | "LookupServed"
            >> beam.ParDo(
                _LookupServed(
                    self._project,
                    self._kind,
                    self._namespace,
                    self._buckets,
                    self._margin_s,
                    self._card,
                )
            ).with_outputs(WAITING, main="found")
        )
        # Beam has no type hints per tagged output: set here, so that both shuffles get the
        # rows' coders (an untyped PCollection would be pickled).
        looked_up.found.element_type = _KEYED_ROWS
        looked_up[WAITING].element_type = _KEYED_PENDING
        retried = looked_up[WAITING] | "AwaitPredictions" >> beam.ParDo(
            _AwaitPredictions(
                self._project,
                self._kind,
                self._namespace,
                self._buckets,
                self._retry_s,
                self._attempts,
            )
        ).with_output_types(_KEYED_ROWS)
        # A label looked up again is in flight until its attempts are over: the grace covers it.
        grace_s = self._retry_s * self._attempts + self._every_s
        return (
            (looked_up.found, retried)
            | "Scored" >> beam.Flatten().with_output_types(_KEYED_ROWS)
            | "DayQuality"
            >> beam.ParDo(
                DayQuality(self._every_s, self._margin_s, grace_s, self._idle_s)
            ).with_output_types(DayFigures)
            | "WriteEvaluation"
            >> beam.ParDo(
                _WriteEvaluation(self._project, self._namespace, self._evaluation_kind)
            ).with_output_types(DayFigures)
        )
