"""ComputeFeatures: the exact window features, with Bigtable as the window state.

Transactions and labels go through one sequenced stage (a stateful DoFn on a single key: Beam
runs a key's work one bundle at a time on every runner, so no two batches read and write the
store concurrently). Per batch it:

  1. looks the batch's transaction ids up in the store's id index (one ReadRows): a message seen
     before (same Pub/Sub message id: a redelivery, a resumed job) is processed again
     idempotently; a second message reusing a transaction id is dead-lettered as a duplicate; a
     label whose transaction is not known yet waits (durably, in the id index) for up to
     ``label_wait_s`` and is then dead-lettered as ``unknown_transaction``,
  2. records labels, and finds the stored transactions whose risk windows they fall into,
  3. reads back, in two batched ReadRows calls, every event the batch's windows can need and the
     stored transactions the batch's own events fall into (the look-ahead),
  4. computes the features with the shared engine (pipelines.engine.features_for) and writes
     the batch's transactions and features in one MutateRows call,
  5. emits one FeatureBatch, and, if steps 2-3 found transactions scored before an earlier
     event reached the stage (out-of-order delivery, a label racing its consumers), recomputes
     them and emits a correction batch. Corrections carry a higher revision; the sinks keep the
     highest revision per transaction, so the stored prediction is always the exact one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.engine import EventColumns, features_for
from pipelines.feature_store import (
    FAMILY_LABEL,
    FAMILY_TX,
    EntityHistory,
    FeatureStore,
    IdRecord,
    StoreConfig,
    shared_store,
    transaction_record,
)
from pipelines.features import (
    CUSTOMER,
    FEATURES,
    MODEL_INPUTS,
    TERMINAL,
    Entity,
    WindowFeature,
    influence_span_us,
)
from pipelines.recovery import Receipt, tracker
from pipelines.schema import Label, Transaction
from pipelines.shared import process_shared
from pipelines.transforms.label_slots import (
    LabelSlot,
    duplicate_detail,
    expire,
    label_of,
    label_record,
    message_key,
    resolve,
)
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE, DeadLetter
from pipelines.window_cache import WindowCache

_LOGGER = logging.getLogger(__name__)

__all__ = ["ComputeFeatures", "ComputedFeatures", "FeatureBatch", "features_for_batch"]

# The one key of the sequenced stage (see the module docstring and README "Ordering").
SEQUENCE_KEY = "rillet"


@dataclass
class FeatureBatch:
    """A batch of transactions with their feature rows (MODEL_INPUTS order).

    ``revision`` orders computations of the same transaction (a correction has a higher one);
    ``correction`` marks a batch recomputed after an out-of-order event.
    """

    transactions: list[Transaction]
    features: np.ndarray
    revision: int
    correction: bool = False
    token: int = 0  # the recovery group it finishes (pipelines.recovery)

    def __len__(self) -> int:
        return len(self.transactions)


class ComputedFeatures(NamedTuple):
    batches: beam.PCollection
    dead_letters: beam.PCollection


def _columns(txs: Sequence[Transaction]) -> EventColumns:
    return EventColumns(
        np.array([t.transaction_id for t in txs], dtype=object).astype(str),
        np.array([t.customer_id for t in txs], dtype=object).astype(str),
        np.array([t.terminal_id for t in txs], dtype=object).astype(str),
        np.array([t.event_time_us for t in txs], dtype=np.int64),
        np.array([t.amount for t in txs], dtype=np.float64),
    )


def _history_columns(h: EntityHistory, key: str, exclude: set[str]) -> EventColumns:
    keep = [i for i, tx_id in enumerate(h.transaction_id) if tx_id not in exclude]
    ids = np.array([h.entity_id[i] for i in keep], dtype=object).astype(str)
    none = np.full(len(keep), "", dtype=object).astype(str)
    return EventColumns(
        np.array([h.transaction_id[i] for i in keep], dtype=object).astype(str),
        ids if key == "customer_id" else none,
        ids if key == "terminal_id" else none,
        np.array([h.time_us[i] for i in keep], dtype=np.int64),
        np.array([h.value[i] for i in keep], dtype=np.float64),
    )


def _features(history: Any, txs: Sequence[Transaction]) -> np.ndarray:
    # A transaction already in the store (redelivery, resumed job) must not count twice.
    own = {t.transaction_id for t in txs}
    return features_for(
        _columns(txs),
        labels=_history_columns(history.terminal_labels, "terminal_id", set()),
        customer_history=_history_columns(history.customer_tx, "customer_id", own),
        terminal_history=_history_columns(history.terminal_tx, "terminal_id", own),
    )


def features_for_batch(store: WindowCache, txs: Sequence[Transaction]) -> np.ndarray:
    """Reads the history the batch needs and returns its feature matrix."""
    times = [t.event_time_us for t in txs]
    history = store.read_history(
        (t.customer_id for t in txs), (t.terminal_id for t in txs), min(times), max(times)
    )
    return _features(history, txs)


def _stored_transaction(h: EntityHistory, i: int, entity: Entity) -> Transaction:
    """A transaction rebuilt from one of its cells (the cell holds the other entity's id)."""
    customer, terminal = (
        (h.entity_id[i], h.other_id[i]) if entity == CUSTOMER else (h.other_id[i], h.entity_id[i])
    )
    return Transaction(h.transaction_id[i], h.time_us[i], customer, terminal, h.value[i])


def _influenced(
    h: EntityHistory,
    entity: Entity,
    events: dict[str, list[int]],
    span: tuple[int, int],
    exclude: set[str],
    into: dict[str, Transaction],
) -> None:
    """Adds to ``into`` the stored transactions (cells of ``h``) whose windows contain one of
    ``events`` (entity id -> event times)."""
    lo, hi = span
    for i, entity_id in enumerate(h.entity_id):
        times = events.get(entity_id)
        if not times or h.transaction_id[i] in exclude:
            continue
        t = h.time_us[i]
        if any(t - hi < te <= t - lo for te in times):
            into.setdefault(h.transaction_id[i], _stored_transaction(h, i, entity))


_WINDOW_COLUMNS = [
    (i, f.name, f.entity) for i, f in enumerate(FEATURES) if isinstance(f, WindowFeature)
]


# The stage's Beam state: a generation number, advanced by every bundle. Declaring state also
# makes _SequencedDoFn a stateful DoFn, so Beam processes the key one bundle at a time (the
# DirectRunner runs the whole step serially). The in-memory WindowCache records the run and
# generation it mirrors (its owner); when the runner moved the key (another worker, a retried
# bundle) or another run used the cache, the owner differs and the cache is dropped.
_GENERATION = ReadModifyWriteStateSpec("generation", VarIntCoder())
_GENERATION_PARAM = beam.DoFn.StateParam(_GENERATION)
# Fires when the stream has been idle for label_wait_s, to dead-letter labels still waiting.
_LABEL_TIMER = TimerSpec("pending_labels", TimeDomain.REAL_TIME)
_LABEL_TIMER_PARAM = beam.DoFn.TimerParam(_LABEL_TIMER)


# States of a label in the id index. A dead-lettered or contradicting label does not block
# another label message for the same transaction; a pending or recorded one does.
class _SequencedDoFn(beam.DoFn):
    """Buffers a bundle of (key, event) pairs and processes it in batches of at most max."""

    def __init__(
        self,
        store: StoreConfig,
        max_batch_size: int,
        sources: tuple[str, str] = ("transactions", "labels"),
        label_wait_s: float = 300.0,
    ) -> None:
        self._config = store
        self._max = max_batch_size
        self._sources = sources
        self._label_wait_s = label_wait_s
        self._cache: WindowCache | None = None
        self._run_token = uuid.uuid4().hex  # fixed when the pipeline is built
        self._generation: int | None = None
        self._buffer: list[Transaction | Label] = []
        self._last_timestamp: Any = None
        self._batches = Metrics.counter(METRICS_NAMESPACE, "feature_batches")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "feature_batch_size")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_redeliveries")
        self._labels = Metrics.counter(METRICS_NAMESPACE, "labels_written")
        self._corrections = Metrics.counter(METRICS_NAMESPACE, "feature_corrections")
        self._early_labels = Metrics.counter(METRICS_NAMESPACE, "labels_before_transaction")
        self._redeliveries = Metrics.counter(METRICS_NAMESPACE, "redelivered_messages")

    def setup(self) -> None:
        self._cache = process_shared(
            ("window_cache", self._config), lambda: WindowCache(shared_store(self._config))
        )

    def _waiting(self) -> dict[str, dict[str, tuple[Label, float]]]:
        # Labels waiting for their transaction (tx id -> message key -> (label, wall-clock
        # deadline)), kept with the cache: the runner may process bundles and timers on different
        # DoFn instances. The id index holds them too (a restart forgets this).
        assert self._cache is not None, "setup() not called"
        return self._cache.waiting_labels

    def _restore_waiting(self) -> None:
        memory = self._waiting()
        for tx_id, entries in self._store().read_waiting().items():
            for key, record in entries.items():
                memory.setdefault(tx_id, {})[key] = (
                    label_of(tx_id, record),
                    float(record.get("deadline", 0.0)),
                )

    def _store(self) -> FeatureStore:
        # A method, not a property: Beam reads every attribute of a DoFn when it validates it.
        assert self._cache is not None, "setup() not called"
        return self._cache.store

    def start_bundle(self) -> None:
        self._buffer = []
        self._generation = None

    def process(
        self,
        element: tuple[str, Transaction | Label],
        timestamp: Any = beam.DoFn.TimestampParam,
        generation: Any = _GENERATION_PARAM,
        label_timer: Any = _LABEL_TIMER_PARAM,
    ) -> Iterator[Any]:
        assert self._cache is not None
        if self._generation is None:
            current = generation.read() or 0
            if self._cache.owner != (self._run_token, current):
                # A new worker, a restart or a failed bundle: the cache may be stale. The labels
                # waiting for their transaction are reloaded with their deadlines (their
                # messages finished when they started waiting: they will not come again).
                self._cache.clear()
                self._restore_waiting()
            self._generation = current + 1
            generation.write(self._generation)
            label_timer.set(Timestamp.now() + self._label_wait_s + 1)
        self._buffer.append(element[1])
        self._last_timestamp = timestamp
        if len(self._buffer) >= self._max:
            batch, self._buffer = self._buffer, []
            yield from self.flush(batch)

    def finish_bundle(self) -> Iterator[Any]:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            ts = self._last_timestamp if self._last_timestamp is not None else Timestamp.now()
            for out in self.flush(batch):
                # finish_bundle has no current element: outputs carry their window explicitly.
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        out.tag, WindowedValue(out.value, ts, (GlobalWindow(),))
                    )
                else:
                    yield WindowedValue(out, ts, (GlobalWindow(),))
        if self._cache is not None and self._generation is not None:
            self._cache.owner = (self._run_token, self._generation)  # the bundle completed

    @on_timer(_LABEL_TIMER)
    def on_label_timer(self) -> Iterator[Any]:
        """The stream went idle: dead-letter the labels whose wait is over."""
        outputs: list[Any] = []
        receipts: list[Receipt] = []
        self._expire(time.time(), outputs, receipts)
        if outputs:
            _LOGGER.info(
                "dead-lettered %d labels still waiting for their transaction", len(outputs)
            )
        yield from self._emit(outputs, receipts)

    # -- one batch -----------------------------------------------------------------------------

    def _receipt(self, event: Transaction | Label) -> Receipt | None:
        if not event.message_id:
            return None
        return (self._sources[0 if isinstance(event, Transaction) else 1], event.message_id)

    def _emit(self, outputs: list[Any], receipts: list[Receipt]) -> Iterator[Any]:
        """Yields the outputs of one flush, each carrying the token that finishes ``receipts``
        once every one of them has reached its sink (pipelines.recovery)."""
        token = tracker().hold(receipts, len(outputs))
        for out in outputs:
            if isinstance(out, FeatureBatch):
                out.token = token
                yield out
            else:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER_TAG, dataclasses.replace(out, token=token)
                )

    def flush(self, batch: list[Transaction | Label]) -> Iterator[Any]:
        outputs: list[Any] = []  # FeatureBatches and DeadLetters
        receipts = [r for r in map(self._receipt, batch) if r is not None]
        txs: dict[str, Transaction] = {}
        labels: dict[str, list[Label]] = {}  # judged together (pipelines.transforms.label_slots)
        for event in batch:
            if isinstance(event, Label):
                labels.setdefault(event.transaction_id, []).append(event)
                continue
            first = txs.setdefault(event.transaction_id, event)
            if first is event:
                continue
            if _same_message(first, event):
                self._duplicates.inc()  # the same message twice: once is enough
                continue
            same = _same_event(first, event)
            if _published_first(event, first, same):
                txs[event.transaction_id], event, first = event, first, event
            outputs.append(_duplicate(event, first.message_id, same))
        store = self._store()
        index = store.read_ids([*txs, *labels])
        score: list[Transaction] = []
        new_txs: dict[str, Transaction] = {}
        swaps: list[tuple[str, str, dict[str, Any], int]] = []
        for tx in txs.values():
            known = index.get(tx.transaction_id, IdRecord()).tx
            if known is None:
                new_txs[tx.transaction_id] = tx
                score.append(tx)
                continue
            digest = _tx_digest(tx)
            if _seen_before(known, tx.message_id, digest):
                self._redeliveries.inc()
                score.append(tx)  # scored again from the same state: the same features
            elif known["d"] == digest and 0 < tx.publish_time_us < known.get("p", 0):
                # An exact copy reached the stage first (the runner reorders bundles, e.g. after
                # a restart): this message, published earlier, is the original. The state is
                # the same; the index now names it, and the copy is the one dead-lettered.
                swaps.append(
                    (
                        tx.transaction_id,
                        FAMILY_TX,
                        {**known, "m": tx.message_id, "p": tx.publish_time_us},
                        tx.event_time_us,
                    )
                )
                copy = dataclasses.replace(tx, message_id=known["m"], publish_time_us=known["p"])
                outputs.append(_duplicate(copy, tx.message_id, True))
            else:
                outputs.append(_duplicate(tx, known["m"], known["d"] == digest))
        if swaps:
            store.write(store.id_rows(swaps))
        ready, label_rows = self._settle_labels(labels, index, new_txs, outputs)
        affected: dict[str, Transaction] = {}
        if ready:
            self._record_labels(ready, affected, label_rows)
        elif label_rows:
            store.write(label_rows)
        self._expire(time.time(), outputs, receipts)
        if score:
            outputs.append(self._score(score, affected, new_txs))
        for tx_id in txs:
            affected.pop(tx_id, None)
        if affected:
            outputs.append(self._correct(list(affected.values())))
        yield from self._emit(outputs, receipts)

    def _settle_labels(
        self,
        labels: dict[str, list[Label]],
        index: dict[str, IdRecord],
        new_txs: dict[str, Transaction],
        outputs: list[Any],
    ) -> tuple[list[Label], list[Any]]:
        """Applies the label rule (pipelines.transforms.label_slots) to every transaction id with
        label messages in this batch or waiting for a transaction in it. Returns the labels to
        record and the row mutations of the id index (label slots, waiting labels); rejections
        go to ``outputs``.

        A label that starts waiting is durable once these rows are written (the slot, and a
        ``wait#`` row with its deadline), so its message finishes with this batch: a restart
        reloads the waits instead of replaying ``label_wait_s`` of input to get them back."""
        ready: list[Label] = []
        slots: list[tuple[str, str, dict[str, Any], int]] = []
        add: list[tuple[str, str, dict[str, Any], int]] = []
        remove: list[tuple[str, Sequence[str] | None]] = []
        memory = self._waiting()
        # Transactions arriving now that labels wait for (in memory, or only in the id index).
        waiting_ids = [
            i
            for i in new_txs
            if i not in labels
            and (i in memory or LabelSlot.from_record(i, index.get(i, IdRecord()).label).waiting)
        ]
        wait_detail = f"no transaction with this id within {self._label_wait_s:g} s"
        now = time.time()
        for tx_id in [*labels, *waiting_ids]:
            record = index.get(tx_id, IdRecord())
            known_tx = record.tx or (_record_of(new_txs[tx_id]) if tx_id in new_txs else None)
            slot = LabelSlot.from_record(tx_id, record.label)
            verdict = resolve(known_tx, slot, labels.get(tx_id, ()), wait_detail)
            self._duplicates.inc(verdict.repeats)
            self._redeliveries.inc(verdict.redeliveries)
            for lb, reason, detail in verdict.rejected:
                outputs.append(_dead_letter(lb, detail, reason))
            if verdict.record is not None:
                ready.append(verdict.record)
            if verdict.changed:
                time_us = known_tx["t"] if known_tx else labels[tx_id][0].event_time_us
                slots.append((tx_id, FAMILY_LABEL, verdict.slot.to_record(), time_us))
            if known_tx is not None:
                # Decided now (every waiting label is in the verdict): nothing waits any more.
                if memory.pop(tx_id, None) is not None or slot.waiting:
                    remove.append((tx_id, None))
                continue
            for lb in verdict.wait:
                self._early_labels.inc()
                key = message_key(lb)
                _, deadline = memory.setdefault(tx_id, {}).setdefault(
                    key, (lb, now + self._label_wait_s)
                )
                add.append(
                    (tx_id, key, {**label_record(lb), "deadline": deadline}, lb.event_time_us)
                )
        store = self._store()
        return ready, store.id_rows(slots) + store.waiting_rows(add, remove)

    def _expire(self, now: float, outputs: list[Any], receipts: list[Receipt]) -> None:
        """Dead-letters the waiting labels whose transaction did not come in time.

        Their messages finished when they started waiting; each is reopened until its dead
        letter is published, so a crash before that replays it (and the slot, which lists it
        as expired, dead-letters it again)."""
        memory = self._waiting()
        due: dict[str, list[Label]] = {}
        for tx_id, entries in memory.items():
            for lb, deadline in entries.values():
                if deadline <= now:
                    due.setdefault(tx_id, []).append(lb)
        if not due:
            return
        store = self._store()
        index = store.read_ids(list(due))
        slots: list[tuple[str, str, dict[str, Any], int]] = []
        remove: list[tuple[str, Sequence[str] | None]] = []
        for tx_id, expired in due.items():
            keys = {message_key(lb) for lb in expired}
            slot = LabelSlot.from_record(tx_id, index.get(tx_id, IdRecord()).label)
            slots.append(
                (tx_id, FAMILY_LABEL, expire(slot, keys).to_record(), expired[0].event_time_us)
            )
            remove.append((tx_id, sorted(keys)))
            entries = memory[tx_id]
            for key in keys:
                del entries[key]
            if not entries:
                del memory[tx_id]
            for lb in expired:
                outputs.append(_unknown_transaction(lb, self._label_wait_s))
                receipt = self._receipt(lb)
                if receipt is not None:
                    tracker().reopen(receipt, lb.publish_time_us)
                    receipts.append(receipt)
        store.write(store.id_rows(slots) + store.waiting_rows((), remove))

    def _record_labels(
        self,
        labels: list[Label],
        affected: dict[str, Transaction],
        index_rows: list[Any],
    ) -> None:
        """Writes labels whose transaction is known, with the batch's id-index rows, and
        collects the stored transactions whose risk windows they fall into (a redelivered label
        redoes its corrections)."""
        span = influence_span_us(TERMINAL, labels=True)
        times = [lb.event_time_us for lb in labels]
        assert self._cache is not None
        stored = self._cache.read_terminals(
            (lb.terminal_id for lb in labels), min(times), max(times) + span[1] + 1
        )
        store = self._store()
        store.write(
            store.label_rows(
                [lb.transaction_id for lb in labels],
                [lb.terminal_id for lb in labels],
                [lb.event_time_us for lb in labels],
                [lb.is_fraud for lb in labels],
            )
            + index_rows
        )
        for lb in labels:
            self._cache.add_label(lb.transaction_id, lb.terminal_id, lb.event_time_us, lb.is_fraud)
        self._labels.inc(len(labels))
        events: dict[str, list[int]] = {}
        for lb in labels:
            events.setdefault(lb.terminal_id, []).append(lb.event_time_us)
        _influenced(stored.terminal_tx, TERMINAL, events, span, set(), affected)

    def _score(
        self,
        txs: list[Transaction],
        affected: dict[str, Transaction],
        new_txs: dict[str, Transaction],
    ) -> FeatureBatch:
        assert self._cache is not None
        times = [t.event_time_us for t in txs]
        history = self._cache.read_history(
            (t.customer_id for t in txs),
            (t.terminal_id for t in txs),
            min(times),
            max(times),
            lookahead=True,
        )
        matrix = _features(history, txs)
        stored_ids = set(history.customer_tx.transaction_id)
        new = [t for t in txs if t.transaction_id not in stored_ids]
        own = {t.transaction_id for t in txs}
        for entity, cells in ((CUSTOMER, history.customer_tx), (TERMINAL, history.terminal_tx)):
            events: dict[str, list[int]] = {}
            for t in new:
                events.setdefault(getattr(t, entity.key_field), []).append(t.event_time_us)
            _influenced(cells, entity, events, influence_span_us(entity), own, affected)
        self._write(txs, matrix, new_txs)
        self._batches.inc()
        self._batch_size.update(len(txs))
        return FeatureBatch(txs, matrix, _now_us())

    def _correct(self, txs: list[Transaction]) -> FeatureBatch:
        assert self._cache is not None
        matrix = features_for_batch(self._cache, txs)
        self._write(txs, matrix)
        self._corrections.inc(len(txs))
        return FeatureBatch(txs, matrix, _now_us(), correction=True)

    def _write(
        self,
        txs: list[Transaction],
        matrix: np.ndarray,
        new_txs: dict[str, Transaction] | None = None,
    ) -> None:
        cols = [c for c, _, _ in _WINDOW_COLUMNS]
        store = self._store()
        # The id index entries of first-seen transactions, in the same MutateRows call.
        ids = [
            (t.transaction_id, FAMILY_TX, _record_of(t), t.event_time_us)
            for t in (new_txs or {}).values()
        ]
        store.write(
            store.id_rows(ids)
            + store.transaction_rows(
                [t.transaction_id for t in txs],
                [t.customer_id for t in txs],
                [t.terminal_id for t in txs],
                [t.event_time_us for t in txs],
                [t.amount for t in txs],
                features=matrix[:, cols],
                feature_names=[n for _, n, _ in _WINDOW_COLUMNS],
                feature_entities=[e for _, _, e in _WINDOW_COLUMNS],
            )
        )
        assert self._cache is not None
        for t in txs:
            self._cache.add_transaction(
                t.transaction_id, t.customer_id, t.terminal_id, t.event_time_us, t.amount
            )
        self._cache.evict()


_LAST_REVISION = [0]


def _now_us() -> int:
    # Strictly increasing within the process, even if the wall clock steps back.
    now = max(time.time_ns() // 1000, _LAST_REVISION[0] + 1)
    _LAST_REVISION[0] = now
    return now


def _same_event(a: Transaction, b: Transaction) -> bool:
    fields = ("event_time_us", "customer_id", "terminal_id", "amount")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _same_message(a: Transaction, b: Transaction) -> bool:
    """Two deliveries of one Pub/Sub message (or, without message ids, of equal content)."""
    if a.message_id and b.message_id:
        return a.message_id == b.message_id
    return _same_event(a, b)


def _published_first(a: Transaction, b: Transaction, same: bool) -> bool:
    """Whether ``a``, an exact copy of ``b``, was published before it (then ``a`` is the
    original, whatever order the runner delivered them in)."""
    return same and 0 < a.publish_time_us < b.publish_time_us


def _tx_digest(tx: Transaction) -> str:
    return str(_record_of(tx)["d"])


def _seen_before(record: dict[str, Any], message_id: str, digest: str) -> bool:
    """Whether an id-index record is this very message (a redelivery), not a second message."""
    if record.get("m") and message_id:
        return bool(record["m"] == message_id)
    return bool(record.get("d") == digest)


def _record_of(tx: Transaction) -> dict[str, Any]:
    """The transaction's id-index record (family ``tx``)."""
    return transaction_record(
        tx.message_id,
        tx.event_time_us,
        tx.customer_id,
        tx.terminal_id,
        tx.amount,
        tx.publish_time_us,
    )


def _dead_letter(
    event: Transaction | Label, detail: str, reason: str = "duplicate_transaction_id"
) -> DeadLetter:
    source = "transactions" if isinstance(event, Transaction) else "labels"
    return DeadLetter(
        event.to_json(), reason, detail, source, "features", message_id=event.message_id
    )


def _duplicate(tx: Transaction, first_message: str, same_content: bool) -> DeadLetter:
    return _dead_letter(tx, duplicate_detail("transaction", first_message, same_content))


def _unknown_transaction(lb: Label, waited_s: float) -> DeadLetter:
    return _dead_letter(
        lb, f"no transaction with this id within {waited_s:g} s", "unknown_transaction"
    )


# A deterministic key coder (str) for the stateful step; the values are pickled events.
_KEYED = tuple[str, Any]


def _keyed(event: Transaction | Label) -> tuple[str, Transaction | Label]:
    return (SEQUENCE_KEY, event)


class ComputeFeatures(beam.PTransform):
    """(transactions, labels) to FeatureBatches with the exact window features of MODEL_INPUTS.

    Labels are recorded in the same sequenced stage as the transactions, so a label and the
    transactions whose risk windows need it are never processed concurrently.

    Args:
      store: the Bigtable feature store (window state and feature values).
      max_batch_size: the most events handled in one store round trip.
      sources: the transaction and label subscriptions (they name messages for recovery).
      label_wait_s: how long a label waits for its transaction before it is dead-lettered.

    Returns:
      ComputedFeatures(batches, dead_letters).

    Example Usage::

        computed = (transactions, labels) | "ComputeFeatures" >> ComputeFeatures(store_config)
    """

    def __init__(
        self,
        store: StoreConfig,
        max_batch_size: int = 500,
        sources: tuple[str, str] = ("transactions", "labels"),
        label_wait_s: float = 300.0,
    ) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if label_wait_s < 0:
            raise ValueError("label_wait_s must be >= 0")
        self._store = store
        self._max = max_batch_size
        self._sources = sources
        self._label_wait_s = label_wait_s

    def expand(self, events: tuple[beam.PCollection, beam.PCollection]) -> ComputedFeatures:
        transactions, labels = events
        keyed = (
            transactions | "KeyTransactions" >> beam.Map(_keyed).with_output_types(_KEYED),
            labels | "KeyLabels" >> beam.Map(_keyed).with_output_types(_KEYED),
        ) | "Merge" >> beam.Flatten()
        out = keyed | "Sequenced" >> beam.ParDo(
            _SequencedDoFn(self._store, self._max, self._sources, self._label_wait_s)
        ).with_outputs(DEAD_LETTER_TAG, main="batches")
        return ComputedFeatures(out.batches, out[DEAD_LETTER_TAG])


assert len(MODEL_INPUTS) == len(FEATURES)
