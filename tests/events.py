"""Handbook events for tests, positionally as the handbook's streams declare their fields."""

from __future__ import annotations

from pipelines.core.declarations import load_definitions
from pipelines.core.schema import Label, Transaction
from pipelines.core.window_cells import Aggregates, Cell, LabelCell, Layout
from pipelines.core.window_state import Bucket


def handbook_tx(
    transaction_id: str,
    event_time_us: int,
    customer_id: str,
    terminal_id: str,
    amount: float,
    publish_time_us: int = 0,
    message_id: str = "",
) -> Transaction:
    """A transaction of the handbook's stream (pipelines/workloads/handbook.yaml)."""
    fields = {"customer_id": customer_id, "terminal_id": terminal_id, "amount": amount}
    return Transaction(transaction_id, event_time_us, fields, publish_time_us, message_id)


def handbook_label(
    transaction_id: str,
    event_time_us: int,
    customer_id: str,
    terminal_id: str,
    is_fraud: int,
    publish_time_us: int = 0,
    message_id: str = "",
) -> Label:
    """A label of the handbook's stream."""
    fields = {"customer_id": customer_id, "terminal_id": terminal_id}
    return Label(transaction_id, event_time_us, fields, is_fraud, publish_time_us, message_id)


# The handbook's entity key fields, as a prediction carries them (sinks.key_fields).
HANDBOOK_KEYS = ("customer_id", "terminal_id")


def handbook_json(event: Transaction | Label) -> bytes:
    """The event as a message of the handbook's stream (``to_json`` has no default stream)."""
    defs = load_definitions()
    stream = defs.labels if isinstance(event, Label) else defs.events
    assert stream is not None
    return event.to_json(stream)


def handbook_layout(entity: str) -> Layout:
    """What the handbook's ``entity`` stage stores per cell (pipelines/core/window_cells.py)."""
    defs = load_definitions()
    return Layout.of(defs, defs.entity(entity))


def handbook_cell(
    layout: Layout,
    time_us: int,
    amount: float,
    other_id: str,
    revision: int = 0,
    carried: tuple[float, ...] = (),
    carried_revision: int = 0,
) -> Cell:
    """A handbook transaction's cell on ``layout``'s rows (``other_id``: the other entity's)."""
    other = "terminal_id" if layout.entity.name == "customer" else "customer_id"
    event = {"tx_datetime": time_us, other: other_id, "amount": amount}
    return layout.cell(event, revision, carried, carried_revision)


def summary_of(layout: Layout, tx: dict[str, Cell], labels: dict[str, LabelCell]) -> Aggregates:
    """What a bucket of these cells sums to (its stored summary)."""
    return Bucket(layout, dict(tx), dict(labels)).summary()
