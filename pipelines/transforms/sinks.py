"""Sinks: predictions to Datastore and to the prediction topic, rejects to the dead-letter topic.

Prediction message contract (topic ``predictions``), see README "Prediction messages":
  data        JSON: schema_version, transaction_id, the entities' key fields (the handbook's
              customer_id, terminal_id), event_time,
              score, risk_band, model_version, challenger_score, challenger_version (null
              without a challenger; never in risk_band), features {name: value}, publish_time,
              processing_time (RFC 3339 UTC)
  attributes  transaction_id, risk_band (low|medium|high), model_version, schema_version,
              revision, correction: filterable by subscriptions, e.g.
              ``attributes.risk_band = "high"``. A transaction may be published more than once
              (a redelivery, or a correction after an out-of-order event): keep, per
              transaction_id, the message with the highest revision.

Both sinks write a whole PredictionBatch per call. Beam's WriteToDatastore is not used because
its ramp-up throttle starts near one entity per second and a commit holding two mutations of one
key fails; this writer upserts by key (idempotent), dedupes keys per commit and retries with
backoff.

Keeping the highest revision in Datastore: a correction can reach the sink before the original
it replaces (the two travel in different bundles), and on Dataflow an attempt of a work item
that lost its key (a zombie) may write after a later work item did. Every write is conditional:
one lookup reads the stored revision and entity version of the batch's keys, and one
non-transactional commit writes the records whose revision is higher, each mutation with the
version it saw as its precondition (``base_version``; 0: the entity must not exist). A mutation
that meets a concurrent write conflicts and is decided again from a fresh lookup. Whatever the
order and whoever writes, the highest revision stays; two round trips per batch, no
transactions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics

from pipelines.core.completion import completion
from pipelines.core.declarations import Definitions
from pipelines.core.messages import DeadLetter
from pipelines.core.schema import SCHEMA_VERSION, format_rfc3339
from pipelines.stores.retry import datastore_call_options, with_backoff
from pipelines.stores.shared import SharedResource
from pipelines.transforms.inference import PredictionBatch
from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = [
    "PredictionRecord",
    "RiskBands",
    "WriteDeadLetters",
    "WritePredictions",
    "latest_per_transaction",
    "prediction_records",
    "publisher_client",
]

_LOGGER = logging.getLogger(__name__)
DATASTORE_COMMIT_LIMIT = 500  # mutations per Datastore commit

PredictionRecord = dict[str, Any]


class RiskBands:
    """Score thresholds for the ``risk_band`` attribute: [0, medium) low, [medium, high) medium,
    [high, 1] high."""

    def __init__(self, medium: float = 0.2, high: float = 0.5) -> None:
        if not 0.0 <= medium <= high <= 1.0:
            raise ValueError(f"risk thresholds need 0 <= medium <= high <= 1, got {medium}, {high}")
        self.medium = medium
        self.high = high

    def band(self, score: float) -> str:
        return "high" if score >= self.high else "medium" if score >= self.medium else "low"


def key_fields(definitions: Definitions) -> tuple[str, ...]:
    """The fields a prediction names its transaction's entities by: every entity's key fields,
    in the definitions file's order (the handbook's: customer_id, terminal_id)."""
    out: list[str] = []
    for entity in definitions.entities:
        out += [k for k in entity.keys if k not in out]
    return tuple(out)


def prediction_records(
    pb: PredictionBatch, bands: RiskBands, keys: Sequence[str]
) -> list[PredictionRecord]:
    """One record per transaction: everything a consumer needs to audit the prediction.
    ``keys``: the entities' key fields it carries (``key_fields`` of the job's definitions)."""
    records = []
    shadow = pb.challenger_scores
    names = pb.batch.names
    for i, tx in enumerate(pb.batch.transactions):
        score = float(pb.scores[i])
        records.append(
            {
                "schema_version": SCHEMA_VERSION,
                "transaction_id": tx.transaction_id,
                "entity_keys": {k: str(tx.fields[k]) for k in keys},
                "event_time_us": tx.event_time_us,
                "publish_time_us": tx.publish_time_us,
                "processing_time_us": pb.predicted_at_us,
                "revision": pb.batch.row_revision(i),
                "correction": pb.batch.correction,
                "score": score,
                "risk_band": bands.band(score),
                "model_version": pb.model_version,
                "challenger_score": None if shadow is None else float(shadow[i]),
                "challenger_version": pb.challenger_version,
                "features": dict(zip(names, map(float, pb.batch.features[i]), strict=True)),
            }
        )
    return records


def latest_per_transaction(bodies: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the message contract tells a subscriber to keep: per transaction_id, the prediction
    with the highest revision (bodies without a transaction_id are skipped)."""
    latest: dict[str, dict[str, Any]] = {}
    for body in bodies:
        tx_id = body.get("transaction_id")
        if tx_id is None:
            continue
        seen = latest.get(tx_id)
        if seen is None or body.get("revision", 0) > seen.get("revision", 0):
            latest[tx_id] = body
    return latest


def _to_message(record: PredictionRecord) -> tuple[bytes, dict[str, str]]:
    body = {
        "schema_version": record["schema_version"],
        "transaction_id": record["transaction_id"],
        **record["entity_keys"],
        "event_time": format_rfc3339(record["event_time_us"]),
        "score": record["score"],
        "risk_band": record["risk_band"],
        "model_version": record["model_version"],
        "challenger_score": record["challenger_score"],
        "challenger_version": record["challenger_version"],
        "features": record["features"],
        "publish_time": format_rfc3339(record["publish_time_us"]),
        "processing_time": format_rfc3339(record["processing_time_us"]),
        "revision": record["revision"],
        "correction": record["correction"],
    }
    attributes = {
        "transaction_id": record["transaction_id"],
        "risk_band": record["risk_band"],
        "model_version": record["model_version"],
        "schema_version": str(SCHEMA_VERSION),
        "revision": str(record["revision"]),
        "correction": "true" if record["correction"] else "false",
    }
    return json.dumps(body, separators=(",", ":")).encode(), attributes


class _DatastoreWriteDoFn(beam.DoFn):
    def __init__(
        self,
        project: str,
        kind: str,
        namespace: str | None,
        bands: RiskBands,
        keys: Sequence[str],
    ) -> None:
        self._keys = tuple(keys)
        self._project = project
        self._kind = kind
        self._namespace = namespace or None
        self._bands = bands
        self._client: Any = None
        self._shared: SharedResource[Any] = SharedResource()
        self._written = Metrics.counter(METRICS_NAMESPACE, "predictions_written")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "event_to_prediction_ms")

    def setup(self) -> None:
        project, namespace = self._project, self._namespace
        self._client = self._shared.acquire(
            lambda: datastore_client(project, namespace), tag=(project, namespace)
        )

    def process(self, pb: PredictionBatch) -> Iterator[tuple[int, list[PredictionRecord]]]:
        records = prediction_records(pb, self._bands, self._keys)
        # One mutation per key per commit: the highest revision of a key in the batch wins.
        latest: dict[str, PredictionRecord] = {}
        for r in records:
            seen = latest.get(r["transaction_id"])
            if seen is None or r["revision"] > seen["revision"]:
                latest[r["transaction_id"]] = r
        self._put_newest(list(latest.values()))
        self._written.inc(len(latest))
        for r in records:
            if r["publish_time_us"]:
                self._latency.update(int((r["processing_time_us"] - r["publish_time_us"]) / 1000))
        yield pb.batch.token, records

    # The hot path builds the Datastore protobufs itself: the client's Entity -> protobuf
    # conversion was a sixth of the whole job's time (py-spy).

    def _key_pb(self, key: Any, kind: str, name: str) -> None:
        key.partition_id.project_id = self._project
        if self._namespace:
            key.partition_id.namespace_id = self._namespace
        element = key.path.add()
        element.kind = kind
        element.name = name

    def _entity_pb(self, entity: Any, record: PredictionRecord, kind: str) -> None:
        """``record`` as the Prediction entity (docs/specs/datastore.md), into the raw protobuf
        ``entity``. The features are one unindexed JSON text: 4x cheaper to commit on the
        emulator than an embedded entity of 15 properties (0.10 s vs 0.43 s per 500, measured)."""
        self._key_pb(entity.key, kind, record["transaction_id"])
        props = entity.properties
        for name, value in record["entity_keys"].items():
            props[name].string_value = value
        props["event_time"].timestamp_value.FromMicroseconds(record["event_time_us"])
        props["publish_time"].timestamp_value.FromMicroseconds(record["publish_time_us"])
        props["processing_time"].timestamp_value.FromMicroseconds(record["processing_time_us"])
        props["score"].double_value = record["score"]
        props["risk_band"].string_value = record["risk_band"]
        props["model_version"].string_value = record["model_version"]
        # The shadow score is stored beside the champion's, never in the risk band.
        if record["challenger_version"] is None:
            props["challenger_score"].null_value = 0
            props["challenger_version"].null_value = 0
        else:
            props["challenger_score"].double_value = record["challenger_score"]
            props["challenger_version"].string_value = record["challenger_version"]
        props["revision"].integer_value = record["revision"]
        props["correction"].boolean_value = record["correction"]
        features = props["features"]
        features.string_value = json.dumps(record["features"], separators=(",", ":"))
        features.exclude_from_indexes = True

    def _put_newest(self, records: list[PredictionRecord]) -> None:
        """Writes each record unless Datastore holds the same or a higher revision of its key
        (see the module docstring): a lookup, then one conditional commit per
        ``DATASTORE_COMMIT_LIMIT`` records; conflicting ones are decided again."""
        pending = records
        for _ in range(_MAX_CONFLICT_ROUNDS):
            if not pending:
                return
            pending = self._commit_newer(pending, self._stored(pending))
        raise RuntimeError(
            f"Datastore: {len(pending)} predictions conflicted {_MAX_CONFLICT_ROUNDS} times in a "
            "row with concurrent writers"
        )

    def _stored(self, records: list[PredictionRecord]) -> dict[str, tuple[int, int]]:
        """(revision, entity version) stored for each record's key (absent: no entity)."""
        names = [r["transaction_id"] for r in records]
        return lookup_versions(self._client, self._project, self._namespace, self._kind, names)

    def _commit_newer(
        self, records: list[PredictionRecord], stored: dict[str, tuple[int, int]]
    ) -> list[PredictionRecord]:
        """Commits the records newer than ``stored``, each conditional on the entity version it
        saw there; returns those that conflicted (a write came in between). Retrying a commit
        whose answer was lost is safe: what it applied has moved the versions, so its mutations
        conflict and are decided again."""
        from google.cloud.datastore_v1.types import datastore as ds

        newer = [r for r in records if r["revision"] > stored.get(r["transaction_id"], (-1, 0))[0]]
        conflicted: list[PredictionRecord] = []
        api = self._client._datastore_api
        for start in range(0, len(newer), DATASTORE_COMMIT_LIMIT):
            chunk = newer[start : start + DATASTORE_COMMIT_LIMIT]
            request = ds.CommitRequest.pb()(
                project_id=self._project, mode=ds.CommitRequest.Mode.NON_TRANSACTIONAL
            )
            for record in chunk:
                mutation = request.mutations.add()
                self._entity_pb(mutation.upsert, record, self._kind)
                mutation.base_version = stored.get(record["transaction_id"], (-1, 0))[1]
            response = with_backoff(
                partial(
                    api.commit, request=ds.CommitRequest.wrap(request), **datastore_call_options()
                ),
                "Datastore commit",
            )
            conflicted += [
                record
                for record, result in zip(chunk, response.mutation_results, strict=True)
                if result.conflict_detected
            ]
        return conflicted


_MAX_CONFLICT_ROUNDS = 20


def datastore_client(project: str, namespace: str | None) -> Any:
    from google.cloud import datastore

    return datastore.Client(project=project, namespace=namespace)


def lookup_raw(
    client: Any, project: str, namespace: str | None, kind: str, names: list[str]
) -> dict[str, Any]:
    """The stored entities of these key names, as raw protobufs by name (missing ones absent):
    ``DATASTORE_COMMIT_LIMIT`` keys per call, deferred keys asked again, each call with a
    deadline and retried with backoff. Raw, because the client's protobuf -> Entity conversion
    is most of a lookup's cost (py-spy)."""
    return {
        name: entity
        for name, (entity, _) in _lookup(client, project, namespace, kind, names).items()
    }


def lookup_versions(
    client: Any, project: str, namespace: str | None, kind: str, names: list[str]
) -> dict[str, tuple[int, int]]:
    """(stored revision, entity version) of these key names (missing ones absent: a write's
    precondition is then version 0, "must not exist")."""
    return {
        name: (entity.properties["revision"].integer_value, version)
        for name, (entity, version) in _lookup(client, project, namespace, kind, names).items()
    }


def _lookup(
    client: Any, project: str, namespace: str | None, kind: str, names: list[str]
) -> dict[str, tuple[Any, int]]:
    from google.cloud.datastore_v1.types import datastore as ds

    api = client._datastore_api
    found: dict[str, tuple[Any, int]] = {}
    for start in range(0, len(names), DATASTORE_COMMIT_LIMIT):
        request = ds.LookupRequest.pb()(project_id=project)
        for name in names[start : start + DATASTORE_COMMIT_LIMIT]:
            key = request.keys.add()
            key.partition_id.project_id = project
            if namespace:
                key.partition_id.namespace_id = namespace
            element = key.path.add()
            element.kind = kind
            element.name = name
        while len(request.keys):  # the service may defer some keys to another call
            response = with_backoff(
                partial(
                    api.lookup, request=ds.LookupRequest.wrap(request), **datastore_call_options()
                ),
                "Datastore lookup",
            )
            raw = ds.LookupResponse.pb(response)
            for result in raw.found:
                found[result.entity.key.path[-1].name] = (result.entity, result.version)
            del request.keys[:]
            request.keys.extend(raw.deferred)
    return found


def publisher_client() -> Any:
    """A Pub/Sub publisher client (hold one per process: a DoFn's SharedResource)."""
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01)
    )


class _PublishingDoFn(beam.DoFn):
    """Publishes to one topic, waits for Pub/Sub's acks (at-least-once), then releases the
    recovery tokens of what was published: the messages behind it are finished
    (local_runner.recovery). The publisher client retries transient failures within its deadline."""

    def __init__(self, topic: str, metric: str) -> None:
        self._topic = topic
        self._publisher: Any = None
        self._published = Metrics.counter(METRICS_NAMESPACE, metric)
        self._shared: SharedResource[Any] = SharedResource()

    def setup(self) -> None:
        self._publisher = self._shared.acquire(publisher_client)

    def _publish(self, futures: list[Any], tokens: Iterable[int]) -> int:
        for future in futures:
            future.result(timeout=300)
        self._published.inc(len(futures))
        for token in tokens:
            completion().release(token)
        return len(futures)


class _PublishDoFn(_PublishingDoFn):
    def __init__(self, topic: str) -> None:
        super().__init__(topic, "predictions_published")

    def process(self, stored: tuple[int, list[PredictionRecord]]) -> Iterator[int]:
        token, records = stored
        futures = []
        for record in records:
            data, attributes = _to_message(record)
            futures.append(self._publisher.publish(self._topic, data, **attributes))
        # Stored and published: the messages behind this batch are finished.
        yield self._publish(futures, [token])


class WritePredictions(beam.PTransform):
    """Writes every prediction to Datastore (one entity per transaction_id, upsert) and publishes
    it on the prediction topic with filterable attributes.

    Args:
      datastore_project: project of the Datastore database.
      kind: Datastore kind of the prediction entities.
      namespace: Datastore namespace (None for the default).
      topic: full path of the prediction topic.
      bands: risk band thresholds.
      keys: the entities' key fields a prediction carries (``key_fields`` of the job's
        definitions; keyword only, required).
    """

    def __init__(
        self,
        datastore_project: str,
        kind: str,
        namespace: str | None,
        topic: str,
        bands: RiskBands | None = None,
        *,
        keys: Sequence[str],
    ) -> None:
        super().__init__()
        self._keys = keys
        self._project = datastore_project
        self._kind = kind
        self._namespace = namespace
        self._topic = topic
        self._bands = bands or RiskBands()

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        stored = predictions | "ToDatastore" >> beam.ParDo(
            _DatastoreWriteDoFn(self._project, self._kind, self._namespace, self._bands, self._keys)
        )
        # Publish after the entity is stored, so a subscriber can always read it back.
        return stored | "ToPredictionTopic" >> beam.ParDo(_PublishDoFn(self._topic))


def _dead_letter_message(dl: DeadLetter) -> PubsubMessage:
    attributes = {
        "reason": dl.reason,
        "detail": dl.detail[:1000],
        "source": dl.source,
        "stage": dl.stage,
    }
    if dl.message_id:
        attributes["original_message_id"] = dl.message_id
    for key, value in dl.attributes.items():
        attributes.setdefault(f"original_{key}"[:256], str(value)[:1024])
    return PubsubMessage(dl.payload, attributes)


class _PublishDeadLettersDoFn(_PublishingDoFn):
    """Publishes a bundle's dead letters, waits for every ack, then finishes their messages."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic, "dead_letters_published")
        self._pending: list[tuple[Any, int]] = []
        # Of those published: messages dead-lettered before (a replay after a restart).
        self._again = Metrics.counter(METRICS_NAMESPACE, "dead_letters_redelivered")

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, dl: DeadLetter) -> None:
        if dl.redelivered:
            self._again.inc()
        message = _dead_letter_message(dl)
        future = self._publisher.publish(self._topic, message.data, **message.attributes)
        self._pending.append((future, dl.token))

    def finish_bundle(self) -> None:
        pending, self._pending = self._pending, []
        self._publish([f for f, _ in pending], [t for _, t in pending])


class WriteDeadLetters(beam.PTransform):
    """Publishes DeadLetters on the dead-letter topic: original bytes as data, the reason,
    detail, source, stage and original message id as attributes. The publisher client waits for
    Pub/Sub's acks before the bundle completes (at-least-once)."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self._topic = topic

    def expand(self, dead_letters: beam.PCollection) -> Any:
        return dead_letters | "Publish" >> beam.ParDo(_PublishDeadLettersDoFn(self._topic))
