"""Which label message is a transaction's label: one rule, applied whenever something changes.

Every transaction id has one label slot in the id index (row ``txid#<id>``, family ``label``). It
holds the label in force (``recorded``), the label messages waiting for a transaction that has not
reached the stage yet (``waiting``), and the messages already dead-lettered as
``unknown_transaction`` (``expired``, so a redelivery of one gets the same verdict).

Label messages reach the stage in whatever order the runner delivers them: before their
transaction, in one batch with a contradicting label, again after a restart. ``resolve`` decides
from the slot and the messages that just arrived, and its verdict does not depend on that order:

1. While the transaction is unknown, every distinct label message waits (nothing can be judged
   yet: a label that differs from another may be the genuine one, the other a contradiction).
2. Once the transaction is known, a label whose event time, or any field it shares with the
   transaction (the entity keys that route it: the handbook's customer and terminal), differs
   from the transaction's is rejected (``label_mismatch``).
3. Of the remaining label messages and the recorded label, the one published first is the label
   (without publish times: the first one seen). Every other one is a ``duplicate_label``, of the
   same or of different content.
4. A redelivery (the same Pub/Sub message again; without message ids, the same content) of the
   recorded label records it again (its corrections are redone, idempotently); of a waiting
   label, it keeps waiting; of an expired one, it is dead-lettered again.

The module is pure (no I/O): pipelines.transforms.features reads the slots, applies the verdicts
and writes the slots back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.core.schema import Label

__all__ = [
    "LabelSlot",
    "Resolution",
    "content_digest",
    "duplicate_detail",
    "label_digest",
    "label_mismatch",
    "label_of",
    "label_record",
    "message_key",
    "record_fields",
    "resolve",
]

RECORDED, WAITING, EMPTY = "recorded", "waiting", "empty"  # the slot's "s", for readers


def content_digest(*fields: Any) -> str:
    """A short digest of an event's content (plain str/int/float fields), stored in the id index
    so a second message with the same id can be told apart from a redelivery without ids."""
    return hashlib.sha1(repr(fields).encode()).hexdigest()[:16]


def label_digest(lb: Label) -> str:
    return content_digest(int(lb.event_time_us), *lb.fields.values(), int(lb.is_fraud))


def message_key(lb: Label) -> str:
    """What identifies one label message: its Pub/Sub message id, else its content."""
    return lb.message_id or f"d:{label_digest(lb)}"


def label_record(lb: Label) -> dict[str, Any]:
    return {
        "m": lb.message_id,
        "d": label_digest(lb),
        "t": lb.event_time_us,
        "v": dict(lb.fields),
        "f": lb.is_fraud,
        "p": lb.publish_time_us,
    }


def record_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The declared fields an id-index record holds (``v``; a record written before fields were
    declared holds the handbook's customer ``c`` and terminal ``k``)."""
    if "v" in record:
        return dict(record["v"])
    return {"customer_id": str(record["c"]), "terminal_id": str(record["k"])}


def label_of(tx_id: str, record: dict[str, Any]) -> Label:
    return Label(
        tx_id,
        int(record["t"]),
        record_fields(record),
        int(record["f"]),
        int(record.get("p", 0)),
        str(record.get("m", "")),
    )


@dataclass(frozen=True)
class LabelSlot:
    """The id index's label state of one transaction id (see the module docstring)."""

    recorded: Label | None = None
    waiting: tuple[Label, ...] = ()
    expired: tuple[str, ...] = ()  # message keys

    @classmethod
    def from_record(cls, tx_id: str, record: dict[str, Any] | None) -> LabelSlot:
        if not record:
            return cls()
        return cls(
            label_of(tx_id, record) if record.get("s") == RECORDED else None,
            tuple(label_of(tx_id, w) for w in record.get("w", ())),
            tuple(str(x) for x in record.get("x", ())),
        )

    def to_record(self) -> dict[str, Any]:
        state = RECORDED if self.recorded else WAITING if self.waiting else EMPTY
        out: dict[str, Any] = {"s": state}
        if self.recorded is not None:
            out.update(label_record(self.recorded))
        if self.waiting:
            out["w"] = [label_record(w) for w in self.waiting]
        if self.expired:
            out["x"] = list(self.expired)
        return out


@dataclass
class Resolution:
    """What ``resolve`` decided for one transaction id."""

    slot: LabelSlot
    changed: bool = False  # the slot must be written back
    record: Label | None = None  # to write to the label cell (its corrections are redone)
    rejected: list[tuple[Label, str, str]] = field(default_factory=list)  # label, reason, detail
    wait: list[Label] = field(default_factory=list)  # arrived now, waiting for the transaction
    redeliveries: int = 0
    repeats: int = 0  # the same message twice among the arrivals


def duplicate_detail(kind: str, first_message: str, same_content: bool) -> str:
    content = "the same content" if same_content else "different content"
    first = f"message {first_message}" if first_message else "an earlier event"
    return f"a {kind} with this transaction_id came first in {first} ({content})"


def label_mismatch(tx: dict[str, Any], lb: Label) -> str:
    """Why a label contradicts its transaction's id-index record ("" when it does not): its
    event time or a field both carry differs."""
    if tx["t"] != lb.event_time_us:
        return "the event time differs from the transaction's"
    known = record_fields(tx)
    for name, value in lb.fields.items():
        if name in known and known[name] != value:
            return f"{name} differs from the transaction's"
    return ""


def _earlier(a: Label, b: Label) -> bool:
    """Whether ``a`` was published before ``b`` (both publish times known)."""
    return 0 < a.publish_time_us < b.publish_time_us


def resolve(
    tx: dict[str, Any] | None,
    slot: LabelSlot,
    arrivals: Sequence[Label],
    unknown_detail: str = "no transaction with this id in time",
) -> Resolution:
    """Applies the rule of the module docstring to one transaction id.

    ``tx`` is the transaction's id-index record (None while it is unknown), ``slot`` the stored
    label slot, ``arrivals`` the label messages of this batch for the id, in delivery order."""
    out = Resolution(slot)
    recorded_key = message_key(slot.recorded) if slot.recorded else None
    waiting_keys = {message_key(w) for w in slot.waiting}
    seen: set[str] = set()
    resumed: list[Label] = []  # redeliveries of waiting labels (after a restart)
    new: list[Label] = []
    for lb in arrivals:
        key = message_key(lb)
        if key in seen:
            out.repeats += 1
            continue
        seen.add(key)
        if key == recorded_key:
            out.redeliveries += 1
        elif key in slot.expired:
            out.rejected.append((lb, "unknown_transaction", unknown_detail))
        elif key in waiting_keys:
            resumed.append(lb)
        else:
            new.append(lb)

    if tx is None:
        out.wait = [*resumed, *new]
        if new:
            out.slot = LabelSlot(slot.recorded, (*slot.waiting, *new), slot.expired)
            out.changed = True
        return out

    pool: list[Label] = []
    for lb in (*slot.waiting, *new):
        reason = label_mismatch(tx, lb)
        if reason:
            out.rejected.append((lb, "label_mismatch", reason))
        else:
            pool.append(lb)
    incumbent = slot.recorded
    winner = incumbent if incumbent is not None else (pool[0] if pool else None)
    for lb in pool:
        if winner is None or _earlier(lb, winner):
            winner = lb
    losers = [lb for lb in pool if lb is not winner]
    if incumbent is not None and winner is not incumbent:
        losers.insert(0, incumbent)
    if winner is not None:
        for lb in losers:
            same = label_digest(lb) == label_digest(winner)
            out.rejected.append(
                (lb, "duplicate_label", duplicate_detail("label", winner.message_id, same))
            )
    if winner is incumbent:
        if out.redeliveries:
            out.record = incumbent  # recorded again: its corrections are redone
    elif incumbent is None or label_digest(incumbent) != label_digest(winner):  # type: ignore[arg-type]
        out.record = winner
    # else: an exact copy of the recorded label, published earlier: only the slot names it now.
    out.slot = LabelSlot(winner, (), slot.expired)
    out.changed = out.slot != slot
    return out


def expire(slot: LabelSlot, keys: set[str]) -> LabelSlot:
    """The slot once the waiting label messages ``keys`` were dead-lettered."""
    return LabelSlot(
        slot.recorded,
        tuple(w for w in slot.waiting if message_key(w) not in keys),
        (*slot.expired, *sorted(keys - set(slot.expired))),
    )
