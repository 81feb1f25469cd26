"""IndexIds: the stage keyed by transaction id (redeliveries, duplicates, the label rule).

Per batch of transactions and labels (many transaction ids), it:

  1. reads the batch's ids from the store's id index (one read): a message seen before (same
     Pub/Sub message id: a redelivery, a resumed job) is passed on again (the entity stages are
     idempotent); a second message reusing a transaction id is dead-lettered as a duplicate (the
     first *published* copy counts), and its message id is kept on the id's record, so that the
     same message again (a replay after a restart) is dead-lettered again marked
     ``redelivered``: published (at least once), in no data-quality rate;
  2. applies the label rule (pipelines/core/label_slots.py) to every id with label messages
     in the batch or waiting for a transaction in it: the label to record goes on to its
     terminal's stage, contradictions and duplicates to dead letters, and a label whose
     transaction is unknown waits durably (its slot, and a ``wait#`` row with its deadline);
  3. writes the id-index rows of the batch (one write) and emits the accepted transactions (to
     the customer stage) and labels (to the terminal stage).

What it emits is a function of the store *after* the batch, never of whether a message was new
to it: a transaction of the batch goes on (a redelivery is computed again from the same state by
the idempotent entity stages), and so does the label recorded in its slot. So a retried work item
whose failed attempt already recorded a waiting label (and deleted its wait) emits that label
again instead of losing it.

Waiting labels are kept per transaction id (``wait#<transaction id>``; no runner setting in the
row key). The first label a stage key receives arms the key's processing-time timer
``label_wait_s`` ahead (a state counter, the timer's round, says it is armed). When it fires,
the key's waiting labels are read: a label whose transaction has arrived meanwhile is settled by
the label rule (a stale wait left by an attempt that lost its key); one past its deadline is
marked expired with the round and dead-lettered as ``unknown_transaction``; marked ones are
deleted by a later round (the round that marked them committed) or dead-lettered again by the
same round (a retry of the firing: its dead letters were not committed). The timer is re-armed
while anything waits. At start the job reads every ``wait#`` row once (``RestoreWaits``) and arms
their keys, so a restarted local job keeps every wait (Dataflow keeps its timers).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from pipelines.core.batches import Routed
from pipelines.core.completion import Receipt, completion
from pipelines.core.declarations import EventStream
from pipelines.core.label_slots import (
    LabelSlot,
    duplicate_detail,
    expire,
    label_digest,
    label_of,
    label_record,
    message_key,
    resolve,
)
from pipelines.core.messages import DeadLetter
from pipelines.core.routing import route
from pipelines.core.schema import Label, StageRecord, Transaction
from pipelines.stores.bigtable import FAMILY_LABEL, FAMILY_TX, StoreConfig, transaction_record
from pipelines.stores.shared import SharedResource
from pipelines.stores.window_store import IdRecord, WindowStore, Writes
from pipelines.transforms.coders import WakeUp
from pipelines.transforms.keyed_stage import FENCE_PARAM, KeyedStageFn
from pipelines.transforms.parse import DEAD_LETTER_TAG, METRICS_NAMESPACE

__all__ = ["ACCEPTED_LABELS", "IndexIdsFn", "WakeUp", "record_of"]

_LOGGER = logging.getLogger(__name__)

ACCEPTED_LABELS = "labels"  # the output of labels to record (the main output: transactions)

_LABEL_TIMER = TimerSpec("waiting_labels", TimeDomain.REAL_TIME)
_LABEL_TIMER_PARAM = beam.DoFn.TimerParam(_LABEL_TIMER)
# The round of the key's label timer (absent: not armed): only the first label of a quiet key
# arms it; expired waits are marked with the round that expired them.
_ROUND = ReadModifyWriteStateSpec("label_timer_round", VarIntCoder())
_ROUND_PARAM = beam.DoFn.StateParam(_ROUND)
_EXPIRED_ROUND = "expired_round"  # on a waiting label's record: the round that expired it
# On a transaction's record: [message key, fence] of each message dead-lettered against it, so
# that the same message again is known as a redelivery; the fence tells a committed work item's
# rejection (older fence) from one a failed attempt of this work item wrote (its own fence).
# Bounded: a row stays small whatever a publisher does.
_REJECTED = "x"
MAX_REJECTED_IDS = 100


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
        *,
        streams: tuple[EventStream, EventStream | None],
    ) -> None:
        super().__init__(max_batch_size)
        self._config = store
        # The job's transaction and label streams: dead letters re-serialise events with them.
        self._streams = streams
        self._sources = sources
        self._label_wait_s = label_wait_s
        self._buckets = key_buckets
        self._shared: SharedResource[WindowStore] = SharedResource()
        self._store: WindowStore | None = None
        self._armed: set[str] = set()  # keys whose timer this bundle knows to be set
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_redeliveries")
        self._redeliveries = Metrics.counter(METRICS_NAMESPACE, "redelivered_messages")
        self._early_labels = Metrics.counter(METRICS_NAMESPACE, "labels_before_transaction")

    def setup(self) -> None:
        self._store = self._shared.acquire(lambda: open_store(self._config), tag=self._run_token)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._armed = set()

    def process(
        self,
        element: tuple[str, Transaction | Label | WakeUp],
        timestamp: Any = beam.DoFn.TimestampParam,
        round_: Any = _ROUND_PARAM,
        timer: Any = _LABEL_TIMER_PARAM,
        fence: Any = FENCE_PARAM,
    ) -> Iterator[Any]:
        key, event = element
        if not isinstance(event, Transaction) and key not in self._armed:
            # A label may have to wait for its transaction: make sure the key's timer is set.
            self._armed.add(key)
            if not round_.read():
                round_.write(1)
                timer.set(Timestamp.now() + self._label_wait_s + 1)
        if isinstance(event, WakeUp):
            return
        yield from self.accept(key, event, fence, timestamp)

    @on_timer(_LABEL_TIMER)
    def on_label_timer(
        self,
        key: Any = beam.DoFn.KeyParam,
        round_: Any = _ROUND_PARAM,
        timer: Any = _LABEL_TIMER_PARAM,
    ) -> Iterator[Any]:
        """Settles or dead-letters the key's labels whose wait is over; re-arms while any
        waits (or was marked expired by this round, to delete it in the next one)."""
        current = round_.read() or 1
        now = time.time()
        outputs, next_deadline, marked = self._expire(key, current, now)
        if next_deadline is None and not marked:
            round_.clear()
        else:
            round_.write(current + 1)
            wake = now + 1.0 if marked else float(next_deadline or now)
            timer.set(Timestamp.of(min(wake, float(next_deadline or wake)) + 1))
        yield from outputs

    # -- dead letters --------------------------------------------------------------------------

    def _dead_letter(
        self, event: Transaction | Label, detail: str, reason: str = "duplicate_transaction_id"
    ) -> DeadLetter:
        is_tx = isinstance(event, Transaction)
        stream = self._streams[0 if is_tx else 1]
        assert stream is not None, "a label without a declared labels stream"
        return DeadLetter(
            event.to_json(stream),
            reason,
            detail,
            "transactions" if is_tx else "labels",
            "features",
            message_id=event.message_id,
        )

    def _duplicate(self, tx: Transaction, first_message: str, same_content: bool) -> DeadLetter:
        detail = duplicate_detail("transaction", first_message, same_content)
        return dataclasses.replace(self._dead_letter(tx, detail), exact_copy=same_content)

    def _unknown_transaction(self, lb: Label) -> DeadLetter:
        detail = f"no transaction with this id within {self._label_wait_s:g} s"
        return self._dead_letter(lb, detail, "unknown_transaction")

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
        duplicates: list[tuple[str, DeadLetter]] = []  # checked against the index below
        # This attempt's fence per transaction id (its key's): what the rejections it records
        # carry, so a retry of this work item tells its failed attempt's from earlier ones.
        fences = {event.transaction_id: self.fence_of(k)[1] for k, event in batch}
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
            duplicates.append(
                (event.transaction_id, self._duplicate(event, first.message_id, same))
            )
        index = self._store.read_ids([*txs, *labels])
        writes = Writes()
        accepted: list[Transaction] = []
        new_txs: dict[str, Transaction] = {}
        records: dict[str, dict[str, Any]] = {}  # the tx records after the batch
        for tx in txs.values():
            known = index.get(tx.transaction_id, IdRecord()).tx
            if known is None:
                new_txs[tx.transaction_id] = tx
                accepted.append(tx)
                records[tx.transaction_id] = record_of(tx)
                continue
            records[tx.transaction_id] = known
            digest = record_of(tx)["d"]
            if _seen_before(known, tx.message_id, digest):
                self._redeliveries.inc()
                accepted.append(tx)  # computed again from the same state: the same features
            elif known["d"] == digest and 0 < tx.publish_time_us < known.get("p", 0):
                # An exact copy reached the stage first (the runner reorders bundles, e.g. after
                # a restart): this message, published earlier, is the original. The state is
                # the same; the index now names it, and the copy is the one dead-lettered.
                records[tx.transaction_id] = {
                    **known,
                    "m": tx.message_id,
                    "p": tx.publish_time_us,
                }
                copy = dataclasses.replace(tx, message_id=known["m"], publish_time_us=known["p"])
                duplicates.append((tx.transaction_id, self._duplicate(copy, tx.message_id, True)))
            else:
                duplicate = self._duplicate(tx, known["m"], known["d"] == digest)
                duplicates.append((tx.transaction_id, duplicate))
        for tx_id, dl in duplicates:
            outputs.append(self._once(dl, tx_id, dl.message_id, records, fences[tx_id]))
        recorded = self._settle_labels(
            labels, index, new_txs, accepted, outputs, writes, records, fences
        )
        for tx_id, record in records.items():
            if record is not index.get(tx_id, IdRecord()).tx:  # new, renamed or more rejects
                writes.ids.append((tx_id, FAMILY_TX, record, int(record["t"])))
        self._store.apply(writes)
        outputs = [beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dl) for dl in outputs]
        outputs += [Routed(tx) for tx in accepted]
        outputs += [beam.pvalue.TaggedOutput(ACCEPTED_LABELS, Routed(lb)) for lb in recorded]
        return outputs

    def _once(
        self,
        dl: DeadLetter,
        tx_id: str,
        key: str,
        records: dict[str, dict[str, Any]],
        mine: int,
    ) -> DeadLetter:
        """A rejection of a message that an earlier work item rejected (the record's ``x`` lists
        it with an older fence: a replay after a restart) is marked ``redelivered``: published
        again (at least once) but in no data-quality rate. One listed with this attempt's fence
        was written by a failed attempt of this same work item, whose outputs were never
        committed: a first rejection again, so a retry emits what the first attempt did. Any
        other is added to the record (``records`` is updated; ``key``: the message id,
        ``l:``-prefixed for a label; ``mine``: this attempt's fence for the id)."""
        if not dl.message_id:
            return dl
        record = records[tx_id]
        rejected = {k: f for k, f in record.get(_REJECTED, ())}
        if key in rejected:
            if rejected[key] >= mine:
                return dl
            self._redeliveries.inc()
            return dataclasses.replace(dl, redelivered=True)
        if len(rejected) < MAX_REJECTED_IDS:
            records[tx_id] = {**record, _REJECTED: [*record.get(_REJECTED, ()), [key, mine]]}
        return dl

    def _settle_labels(
        self,
        labels: dict[str, list[Label]],
        index: dict[str, IdRecord],
        new_txs: dict[str, Transaction],
        accepted: list[Transaction],
        outputs: list[Any],
        writes: Writes,
        records: dict[str, dict[str, Any]],
        fences: dict[str, int],
    ) -> list[Label]:
        """Applies the label rule to every transaction id with label messages in this batch and
        to every transaction of the batch with a label slot (waiting labels, or one recorded).
        Returns the labels to record: those the rule records now, and the label recorded for
        each transaction of the batch (emitted again: the outputs are a function of the store
        after the batch, so a retry whose failed attempt recorded it emits it too). Rejections go
        to ``outputs``, the id-index rows (label slots, waiting labels) to ``writes``.

        A label that starts waiting is durable once these rows are written (the slot, and a
        ``wait#`` row with its deadline), so its message finishes with this batch."""
        ready: dict[str, Label] = {}
        in_batch = {tx.transaction_id for tx in accepted}
        slotted = [i for i in in_batch if i not in labels and index.get(i, IdRecord()).label]
        wait_detail = f"no transaction with this id within {self._label_wait_s:g} s"
        deadline = time.time() + self._label_wait_s
        for tx_id in [*labels, *slotted]:
            record = index.get(tx_id, IdRecord())
            known_tx = record.tx or (record_of(new_txs[tx_id]) if tx_id in new_txs else None)
            slot = LabelSlot.from_record(tx_id, record.label)
            verdict = resolve(known_tx, slot, labels.get(tx_id, ()), wait_detail)
            self._duplicates.inc(verdict.repeats)
            self._redeliveries.inc(verdict.redeliveries)
            winner = verdict.slot.recorded
            for lb, reason, detail in verdict.rejected:
                dl = self._dead_letter(lb, detail, reason)
                if reason == "unknown_transaction":
                    # Its slot lists it as expired: it was dead-lettered before.
                    dl = dataclasses.replace(dl, redelivered=message_key(lb) in slot.expired)
                else:  # judged against the transaction, whose record keeps the rejected ids
                    if reason == "duplicate_label" and winner is not None:
                        same = label_digest(lb) == label_digest(winner)
                        dl = dataclasses.replace(dl, exact_copy=same)
                    if known_tx is not None:
                        records.setdefault(tx_id, known_tx)
                        dl = self._once(dl, tx_id, f"l:{lb.message_id}", records, fences[tx_id])
                outputs.append(dl)
            if verdict.record is not None:
                ready[tx_id] = verdict.record
            elif tx_id in in_batch and verdict.slot.recorded is not None:
                ready[tx_id] = verdict.slot.recorded
            if verdict.changed:
                time_us = known_tx["t"] if known_tx else labels[tx_id][0].event_time_us
                writes.ids.append((tx_id, FAMILY_LABEL, verdict.slot.to_record(), time_us))
            if known_tx is not None:
                # Decided now (every waiting label is in the verdict): nothing waits any more.
                if slot.waiting:
                    writes.waits_remove.append((tx_id, None))
                continue
            for lb in verdict.wait:
                self._early_labels.inc()
                writes.waits_add.append(
                    (
                        tx_id,
                        message_key(lb),
                        {**label_record(lb), "deadline": deadline},
                        lb.event_time_us,
                    )
                )
        return list(ready.values())

    def _waiting_under(self, key: str) -> dict[str, dict[str, dict[str, Any]]]:
        """The labels waiting under stage key ``key``: its own row on Dataflow (the key is the
        transaction id), those of its bucket on the DirectRunner (a scan of the few waits)."""
        assert self._store is not None, "setup() not called"
        if self._buckets <= 0:
            return self._store.read_waiting([key])
        return {
            tx_id: entries
            for tx_id, entries in self._store.read_waiting().items()
            if route(tx_id, self._buckets) == key
        }

    def _expire(self, key: str, round_: int, now: float) -> tuple[list[Any], float | None, bool]:
        """One round of the key's label timer (see the module docstring). Returns the outputs,
        the earliest deadline still ahead (None: none) and whether it marked labels expired.

        An expired label's message finished when it started waiting; it is reopened until its
        dead letter is published, so a crash before that replays it (and the slot, which lists
        it as expired, dead-letters it again)."""
        assert self._store is not None, "setup() not called"
        waiting = self._waiting_under(key)
        due: dict[str, list[str]] = {}  # tx id -> message keys to settle or expire
        again: dict[str, list[str]] = {}  # marked by this round in an attempt not committed
        gone: dict[str, list[str]] = {}  # marked by a committed round: deleted
        ahead: list[float] = []
        for tx_id, entries in waiting.items():
            for message, record in entries.items():
                mark = record.get(_EXPIRED_ROUND)
                if mark is not None:
                    (gone if int(mark) < round_ else again).setdefault(tx_id, []).append(message)
                elif float(record.get("deadline", 0.0)) <= now:
                    due.setdefault(tx_id, []).append(message)
                else:
                    ahead.append(float(record["deadline"]))
        next_deadline = min(ahead) if ahead else None
        writes = Writes()
        for tx_id, keys in gone.items():
            writes.waits_remove.append((tx_id, sorted(keys)))
        if not due and not again:
            self._store.apply(writes)
            return [], next_deadline, False
        index = self._store.read_ids([*due, *again])
        outputs: list[Any] = []
        receipts: list[Receipt] = []
        expired_now: list[Label] = []
        for tx_id in sorted({*due, *again}):
            found = index.get(tx_id, IdRecord())
            slot = LabelSlot.from_record(tx_id, found.label)
            settled = {*due.get(tx_id, ()), *again.get(tx_id, ())}
            if found.tx is not None:
                # The transaction came after all (a wait an earlier attempt left behind): the
                # rule settles its labels.
                verdict = resolve(found.tx, slot, ())
                for lb, reason, detail in verdict.rejected:
                    dead = self._dead_letter(lb, detail, reason)
                    outputs.append(beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead))
                recorded = verdict.record or verdict.slot.recorded
                if recorded is not None:
                    outputs.append(beam.pvalue.TaggedOutput(ACCEPTED_LABELS, Routed(recorded)))
                if verdict.changed:
                    writes.ids.append(
                        (tx_id, FAMILY_LABEL, verdict.slot.to_record(), found.tx["t"])
                    )
                writes.waits_remove.append((tx_id, None))
                continue
            entries = waiting[tx_id]
            labels = {message_key(w): w for w in slot.waiting}
            for k in sorted(settled):
                lb = labels.get(k) or label_of(tx_id, entries[k])
                expired_now.append(lb)
                writes.waits_add.append(
                    (tx_id, k, {**entries[k], _EXPIRED_ROUND: round_}, lb.event_time_us)
                )
            time_us = min(int(entries[k].get("t", 0)) for k in settled)
            writes.ids.append((tx_id, FAMILY_LABEL, expire(slot, settled).to_record(), time_us))
        self._store.apply(writes)
        for lb in expired_now:
            outputs.append(self._unknown_transaction(lb))
            receipt = self._receipt(lb)
            if receipt is not None:
                completion().reopen(receipt, lb.publish_time_us)
                receipts.append(receipt)
        if expired_now:
            _LOGGER.info("dead-lettered %d labels whose transaction never came", len(expired_now))
        token = completion().hold(receipts, len(outputs))
        tagged = []
        for o in outputs:
            if isinstance(o, beam.pvalue.TaggedOutput):
                tagged.append(
                    beam.pvalue.TaggedOutput(o.tag, dataclasses.replace(o.value, token=token))
                )
            else:
                tagged.append(
                    beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dataclasses.replace(o, token=token))
                )
        return tagged, next_deadline, bool(expired_now)


class _ScanWaitsFn(beam.DoFn):
    """Reads every ``wait#`` row once (at start) and wakes each transaction id's key."""

    def __init__(self, store: StoreConfig | WindowStore, key_buckets: int) -> None:
        self._config = store
        self._buckets = key_buckets

    def process(self, _: Any) -> Iterator[tuple[str, WakeUp]]:
        waiting = open_store(self._config).read_waiting()
        keys = sorted({route(tx_id, self._buckets) for tx_id in waiting})
        if keys:
            _LOGGER.info("labels wait under %d stage keys: their timers are armed", len(keys))
        for key in keys:
            yield key, WakeUp(key)


class RestoreWaits(beam.PTransform):
    """(stage key, WakeUp) for every key with labels waiting in the store, once at start."""

    def __init__(self, store: StoreConfig | WindowStore, key_buckets: int = 0) -> None:
        super().__init__()
        self._store = store
        self._buckets = key_buckets

    def expand(self, p: beam.pvalue.PBegin) -> beam.PCollection:
        scan = _ScanWaitsFn(self._store, self._buckets)
        keyed = tuple[str, StageRecord]
        return p | "Start" >> beam.Impulse() | "Scan" >> beam.ParDo(scan).with_output_types(keyed)


def open_store(config: StoreConfig | WindowStore) -> WindowStore:
    """The store a stage was given: a Bigtable table (a new client: a stage holds it through
    its SharedResource, one per process), or a store object itself (the in-memory store of the
    unit tests)."""
    if isinstance(config, StoreConfig):
        from pipelines.stores.bigtable import FeatureStore

        return FeatureStore(config)
    return config


def _same_event(a: Transaction, b: Transaction) -> bool:
    return a.event_time_us == b.event_time_us and a.fields == b.fields


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
    return transaction_record(tx.message_id, tx.event_time_us, tx.fields, tx.publish_time_us)
