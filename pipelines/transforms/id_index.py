"""IndexIds: the stage keyed by transaction id (redeliveries, duplicates, the label rule).

Per batch of transactions and labels (many transaction ids), it:

  1. reads the batch's ids from the store's id index (one read): a message seen before (same
     Pub/Sub message id: a redelivery, a resumed job) is passed on again (the entity stages are
     idempotent); a second message reusing a transaction id is dead-lettered as a duplicate (the
     first *published* copy counts);
  2. applies the label rule (pipelines/core/label_slots.py) to every id with label messages
     in the batch or waiting for a transaction in it: the label to record goes on to its
     terminal's stage, contradictions and duplicates to dead letters, and a label whose
     transaction is unknown waits durably (its slot, and a ``wait#`` row with its deadline);
  3. writes the id-index rows of the batch (one write) and emits the accepted transactions (to
     the customer stage) and labels (to the terminal stage).

Waiting labels are kept under their stage key (``wait#<key>#<transaction id>``). The first label
a key receives arms the key's processing-time timer ``label_wait_s`` ahead (a state flag says it
is armed). When it fires, the key's waiting labels are read (one prefix scan): those past their
deadline are dead-lettered as ``unknown_transaction``, and the timer is re-armed for the earliest
deadline left, if any. At start the job reads every ``wait#`` row once (``RestoreWaits``) and
arms those keys, so a restarted local job keeps every wait (Dataflow keeps its timers).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from pipelines.core.batches import Routed
from pipelines.core.completion import Receipt, completion
from pipelines.core.label_slots import (
    LabelSlot,
    duplicate_detail,
    expire,
    label_record,
    message_key,
    resolve,
)
from pipelines.core.messages import DeadLetter
from pipelines.core.routing import route
from pipelines.core.schema import Label, Transaction
from pipelines.stores.bigtable import FAMILY_LABEL, FAMILY_TX, StoreConfig, transaction_record
from pipelines.stores.window_store import IdRecord, WindowStore, Writes
from pipelines.transforms.keyed_stage import KeyedStageFn
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE

__all__ = ["ACCEPTED_LABELS", "IndexIdsFn", "WakeUp", "record_of"]

_LOGGER = logging.getLogger(__name__)

ACCEPTED_LABELS = "labels"  # the output of labels to record (the main output: transactions)

_LABEL_TIMER = TimerSpec("waiting_labels", TimeDomain.REAL_TIME)
_LABEL_TIMER_PARAM = beam.DoFn.TimerParam(_LABEL_TIMER)
# Whether the key's timer is set: only the first label of a quiet key arms it.
_ARMED = ReadModifyWriteStateSpec("timer_armed", BooleanCoder())
_ARMED_PARAM = beam.DoFn.StateParam(_ARMED)


@dataclass(frozen=True)
class WakeUp:
    """Arms a stage key's timer: labels wait under it (read from the store at start)."""

    key: str


class IndexIdsFn(KeyedStageFn):
    """The id-index stage: (transaction id, Transaction | Label | WakeUp) pairs.

    Outputs: Routed[Transaction] (main), Routed[Label] (``ACCEPTED_LABELS``), DeadLetter
    (``DEAD_LETTER_TAG``).
    """

    step = "IndexIds"

    def __init__(
        self,
        store: StoreConfig | WindowStore,
        max_batch_size: int,
        sources: tuple[str, str] = ("transactions", "labels"),
        label_wait_s: float = 300.0,
        key_buckets: int = 0,
    ) -> None:
        super().__init__(max_batch_size)
        self._config = store
        self._sources = sources
        self._label_wait_s = label_wait_s
        self._buckets = key_buckets
        self._store: WindowStore | None = None
        self._armed: set[str] = set()  # keys whose timer this bundle knows to be set
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_redeliveries")
        self._redeliveries = Metrics.counter(METRICS_NAMESPACE, "redelivered_messages")
        self._early_labels = Metrics.counter(METRICS_NAMESPACE, "labels_before_transaction")

    def setup(self) -> None:
        self._store = open_store(self._config)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._armed = set()

    def entity_of(self, element: Any) -> str:
        return str(element.transaction_id)

    def process(
        self,
        element: tuple[str, Transaction | Label | WakeUp],
        timestamp: Any = beam.DoFn.TimestampParam,
        armed: Any = _ARMED_PARAM,
        timer: Any = _LABEL_TIMER_PARAM,
    ) -> Iterator[Any]:
        key, event = element
        if not isinstance(event, Transaction) and key not in self._armed:
            # A label may have to wait for its transaction: make sure the key's timer is set.
            self._armed.add(key)
            if not armed.read():
                armed.write(True)
                timer.set(Timestamp.now() + self._label_wait_s + 1)
        if isinstance(event, WakeUp):
            return
        yield from self.accept(key, event, None, timestamp)

    @on_timer(_LABEL_TIMER)
    def on_label_timer(
        self,
        key: Any = beam.DoFn.KeyParam,
        armed: Any = _ARMED_PARAM,
        timer: Any = _LABEL_TIMER_PARAM,
    ) -> Iterator[Any]:
        """Dead-letters the key's labels whose wait is over; re-arms for the others."""
        outputs, next_deadline = self._expire(key, time.time())
        if next_deadline is None:
            armed.clear()
        else:
            timer.set(Timestamp.of(next_deadline + 1))
        yield from outputs

    # -- one batch -----------------------------------------------------------------------------

    def _receipt(self, event: Transaction | Label) -> Receipt | None:
        if not event.message_id:
            return None
        return (self._sources[0 if isinstance(event, Transaction) else 1], event.message_id)

    def token(self, batch: Sequence[tuple[str, Any]], outputs: int) -> int:
        receipts = [r for _, e in batch if (r := self._receipt(e)) is not None]
        return completion().hold(receipts, outputs)

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        assert self._store is not None, "setup() not called"
        outputs: list[Any] = []
        txs: dict[str, Transaction] = {}
        labels: dict[str, list[Label]] = {}  # judged together (label_slots)
        for _, event in batch:
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
        index = self._store.read_ids([*txs, *labels])
        writes = Writes()
        accepted: list[Transaction] = []
        new_txs: dict[str, Transaction] = {}
        for tx in txs.values():
            known = index.get(tx.transaction_id, IdRecord()).tx
            if known is None:
                new_txs[tx.transaction_id] = tx
                accepted.append(tx)
                writes.ids.append((tx.transaction_id, FAMILY_TX, record_of(tx), tx.event_time_us))
                continue
            digest = record_of(tx)["d"]
            if _seen_before(known, tx.message_id, digest):
                self._redeliveries.inc()
                accepted.append(tx)  # computed again from the same state: the same features
            elif known["d"] == digest and 0 < tx.publish_time_us < known.get("p", 0):
                # An exact copy reached the stage first (the runner reorders bundles, e.g. after
                # a restart): this message, published earlier, is the original. The state is
                # the same; the index now names it, and the copy is the one dead-lettered.
                swapped = {**known, "m": tx.message_id, "p": tx.publish_time_us}
                writes.ids.append((tx.transaction_id, FAMILY_TX, swapped, tx.event_time_us))
                copy = dataclasses.replace(tx, message_id=known["m"], publish_time_us=known["p"])
                outputs.append(_duplicate(copy, tx.message_id, True))
            else:
                outputs.append(_duplicate(tx, known["m"], known["d"] == digest))
        recorded = self._settle_labels(labels, index, new_txs, outputs, writes)
        self._store.apply(writes)
        outputs = [beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dl) for dl in outputs]
        outputs += [Routed(tx) for tx in accepted]
        outputs += [beam.pvalue.TaggedOutput(ACCEPTED_LABELS, Routed(lb)) for lb in recorded]
        return outputs

    def _settle_labels(
        self,
        labels: dict[str, list[Label]],
        index: dict[str, IdRecord],
        new_txs: dict[str, Transaction],
        outputs: list[Any],
        writes: Writes,
    ) -> list[Label]:
        """Applies the label rule to every transaction id with label messages in this batch or
        waiting for a transaction in it. Returns the labels to record; rejections go to
        ``outputs``, the id-index rows (label slots, waiting labels) to ``writes``.

        A label that starts waiting is durable once these rows are written (the slot, and a
        ``wait#`` row with its deadline), so its message finishes with this batch."""
        ready: list[Label] = []
        waiting_ids = [
            i
            for i in new_txs
            if i not in labels and LabelSlot.from_record(i, index.get(i, IdRecord()).label).waiting
        ]
        wait_detail = f"no transaction with this id within {self._label_wait_s:g} s"
        deadline = time.time() + self._label_wait_s
        for tx_id in [*labels, *waiting_ids]:
            record = index.get(tx_id, IdRecord())
            known_tx = record.tx or (record_of(new_txs[tx_id]) if tx_id in new_txs else None)
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
                writes.ids.append((tx_id, FAMILY_LABEL, verdict.slot.to_record(), time_us))
            if known_tx is not None:
                # Decided now (every waiting label is in the verdict): nothing waits any more.
                if slot.waiting:
                    writes.waits_remove.append((route(tx_id, self._buckets), tx_id, None))
                continue
            for lb in verdict.wait:
                self._early_labels.inc()
                writes.waits_add.append(
                    (
                        route(tx_id, self._buckets),
                        tx_id,
                        message_key(lb),
                        {**label_record(lb), "deadline": deadline},
                        lb.event_time_us,
                    )
                )
        return ready

    def _expire(self, key: str, now: float) -> tuple[list[Any], float | None]:
        """Dead-letters the labels waiting under ``key`` whose deadline has passed; returns the
        outputs and the earliest deadline still ahead (None: nothing waits any more).

        Their messages finished when they started waiting; each is reopened until its dead
        letter is published, so a crash before that replays it (and the slot, which lists it
        as expired, dead-letters it again)."""
        assert self._store is not None, "setup() not called"
        waiting = self._store.read_waiting([key])
        due: dict[str, set[str]] = {}
        ahead: list[float] = []
        for (_, tx_id), entries in waiting.items():
            for message, record in entries.items():
                if float(record.get("deadline", 0.0)) <= now:
                    due.setdefault(tx_id, set()).add(message)
                else:
                    ahead.append(float(record["deadline"]))
        next_deadline = min(ahead) if ahead else None
        if not due:
            return [], next_deadline
        index = self._store.read_ids(list(due))
        writes = Writes()
        outputs: list[Any] = []
        receipts: list[Receipt] = []
        for tx_id, keys in due.items():
            slot = LabelSlot.from_record(tx_id, index.get(tx_id, IdRecord()).label)
            expired = [w for w in slot.waiting if message_key(w) in keys]
            time_us = min(int(waiting[(key, tx_id)][k].get("t", 0)) for k in keys)
            writes.ids.append((tx_id, FAMILY_LABEL, expire(slot, keys).to_record(), time_us))
            writes.waits_remove.append((key, tx_id, sorted(keys)))
            for lb in expired:
                outputs.append(_unknown_transaction(lb, self._label_wait_s))
                receipt = self._receipt(lb)
                if receipt is not None:
                    completion().reopen(receipt, lb.publish_time_us)
                    receipts.append(receipt)
        self._store.apply(writes)
        if outputs:
            _LOGGER.info("dead-lettered %d labels whose transaction never came", len(outputs))
        token = completion().hold(receipts, len(outputs))
        tagged = [
            beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dataclasses.replace(o, token=token))
            for o in outputs
        ]
        return tagged, next_deadline


class _ScanWaitsFn(beam.DoFn):
    """Reads every ``wait#`` row once (at start) and wakes each transaction id's key."""

    def __init__(self, store: StoreConfig | WindowStore) -> None:
        self._config = store

    def process(self, _: Any) -> Iterator[tuple[str, WakeUp]]:
        keys = sorted({key for key, _ in open_store(self._config).read_waiting()})
        if keys:
            _LOGGER.info("labels wait under %d stage keys: their timers are armed", len(keys))
        for key in keys:
            yield key, WakeUp(key)


class RestoreWaits(beam.PTransform):
    """(stage key, WakeUp) for every key with labels waiting in the store, once at start."""

    def __init__(self, store: StoreConfig | WindowStore) -> None:
        super().__init__()
        self._store = store

    def expand(self, p: beam.pvalue.PBegin) -> beam.PCollection:
        return p | "Start" >> beam.Impulse() | "Scan" >> beam.ParDo(_ScanWaitsFn(self._store))


def open_store(config: StoreConfig | WindowStore) -> WindowStore:
    """The store a stage was given: a Bigtable table (one client per process), or a store
    object itself (the in-memory store of the unit tests)."""
    if isinstance(config, StoreConfig):
        from pipelines.stores.bigtable import shared_store

        return shared_store(config)
    return config


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


def _seen_before(record: dict[str, Any], message_id: str, digest: str) -> bool:
    """Whether an id-index record is this very message (a redelivery), not a second message."""
    if record.get("m") and message_id:
        return bool(record["m"] == message_id)
    return bool(record.get("d") == digest)


def record_of(tx: Transaction) -> dict[str, Any]:
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
