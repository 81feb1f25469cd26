"""The label rule (pipelines.core.label_slots): the verdict on a transaction's label messages
does not depend on the order or the batches they reach the stage in, nor on where the transaction
falls among them."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.label_slots import (
    LabelSlot,
    expire,
    label_digest,
    message_key,
    resolve,
)
from pipelines.core.schema import Label
from tests.events import handbook_label

TX_ID = "42"
TX = {"m": "tx-1", "d": "x", "t": 1_000, "c": "c1", "k": "t1", "p": 10}


def label(message: str, published: int, *, fraud: int = 1, terminal: str = "t1") -> Label:
    return handbook_label(TX_ID, 1_000, "c1", terminal, fraud, published, message)


GENUINE = label("g", 500)
CONTRADICTION = label("m", 300, fraud=0, terminal="t1-elsewhere")  # published first
CONFLICT = label("c", 900, fraud=0)  # a later label with the other verdict
COPY = label("e", 700)  # an exact copy, published later


def run(batches: list[list[Label]], tx_after: int) -> tuple[LabelSlot, list, dict[str, str]]:
    """Feeds batches to ``resolve``; the transaction is known from batch ``tx_after`` on (with
    an empty batch standing for its arrival). Returns the final slot, the labels recorded in
    order, and the verdict (reason) per rejected message."""
    slot = LabelSlot()
    recorded: list[Label] = []
    rejected: dict[str, str] = {}
    steps = [*batches[:tx_after], [], *batches[tx_after:]]
    for i, batch in enumerate(steps):
        tx = TX if i >= tx_after else None
        verdict = resolve(tx, slot, batch)
        slot = verdict.slot
        if verdict.record is not None:
            recorded.append(verdict.record)
        for lb, reason, _ in verdict.rejected:
            rejected[lb.message_id] = reason
    return slot, recorded, rejected


def test_a_contradiction_that_comes_first_does_not_block_the_genuine_label() -> None:
    # The case seen under a startup backlog: both labels before the transaction, in one batch.
    slot, recorded, rejected = run([[CONTRADICTION, GENUINE]], tx_after=1)
    assert slot.recorded == GENUINE and recorded == [GENUINE]
    assert rejected == {"m": "label_mismatch"}
    # ... and in separate batches, before and after the transaction.
    for tx_after in (0, 1, 2):
        slot, recorded, rejected = run([[CONTRADICTION], [GENUINE]], tx_after)
        assert slot.recorded == GENUINE, tx_after
        assert rejected == {"m": "label_mismatch"}, tx_after


def test_the_first_published_label_wins_and_replaces_a_later_one_recorded_first() -> None:
    slot, recorded, rejected = run([[CONFLICT], [GENUINE]], tx_after=0)
    assert recorded == [CONFLICT, GENUINE]  # recorded, then replaced (corrections redone)
    assert slot.recorded == GENUINE
    assert rejected == {"c": "duplicate_label"}


def test_an_exact_copy_published_earlier_only_renames_the_recorded_label() -> None:
    slot, recorded, rejected = run([[COPY], [GENUINE]], tx_after=0)
    assert recorded == [COPY]  # the same content: nothing to record again
    assert slot.recorded == GENUINE and rejected == {"e": "duplicate_label"}


def test_redeliveries_record_again_wait_again_or_are_rejected_again() -> None:
    first = resolve(TX, LabelSlot(), [GENUINE])
    again = resolve(TX, first.slot, [GENUINE, GENUINE])
    assert again.record == GENUINE and again.redeliveries == 1 and again.repeats == 1
    assert not again.changed and not again.rejected

    waiting = resolve(None, LabelSlot(), [GENUINE])
    assert waiting.wait == [GENUINE] and waiting.slot.waiting == (GENUINE,)
    resumed = resolve(None, waiting.slot, [GENUINE])  # a restart: the message comes again
    assert resumed.wait == [GENUINE] and not resumed.changed

    gone = expire(waiting.slot, {message_key(GENUINE)})
    assert gone.waiting == () and gone.expired == ("g",)
    late = resolve(TX, gone, [GENUINE])
    assert [r for _, r, _ in late.rejected] == ["unknown_transaction"] and late.record is None
    fresh = resolve(TX, gone, [CONFLICT])  # a new message after the expiry is judged afresh
    assert fresh.record == CONFLICT


def test_labels_without_message_ids_are_told_apart_by_content() -> None:
    a, b = label("", 0), label("", 0, fraud=0)
    verdict = resolve(TX, LabelSlot(), [a, a, b])
    assert verdict.repeats == 1  # the same content twice: one message
    assert verdict.record == a  # no publish times: the first one seen
    assert [lb for lb, *_ in verdict.rejected] == [b]


def test_the_slot_round_trips_through_its_record() -> None:
    slot = LabelSlot(GENUINE, (CONFLICT, COPY), ("x1", "x2"))
    assert LabelSlot.from_record(TX_ID, slot.to_record()) == slot
    assert slot.to_record()["s"] == "recorded" and slot.to_record()["d"] == label_digest(GENUINE)
    assert LabelSlot.from_record(TX_ID, LabelSlot().to_record()) == LabelSlot()


MESSAGES = [GENUINE, CONTRADICTION, CONFLICT, COPY, label("m2", 100, terminal="t9")]


@settings(max_examples=300, deadline=None)
@given(
    order=st.permutations(list(range(len(MESSAGES)))),
    cuts=st.lists(st.integers(0, len(MESSAGES)), max_size=4),
    tx_after=st.integers(0, 5),
    redeliver=st.lists(st.integers(0, len(MESSAGES) - 1), max_size=3),
)
def test_the_verdict_does_not_depend_on_arrival_order(order, cuts, tx_after, redeliver) -> None:  # type: ignore[no-untyped-def]
    stream = [MESSAGES[i] for i in order] + [MESSAGES[i] for i in redeliver]
    bounds = sorted({0, len(stream), *(min(c, len(stream)) for c in cuts)})
    batches = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    slot, recorded, rejected = run(batches, min(tx_after, len(batches)))
    assert slot.recorded == GENUINE and slot.waiting == ()
    assert recorded and recorded[-1].is_fraud == GENUINE.is_fraud
    assert rejected == {
        "m": "label_mismatch",
        "m2": "label_mismatch",
        "c": "duplicate_label",
        "e": "duplicate_label",
    }
