"""Handbook events for tests, positionally as the handbook's streams declare their fields."""

from __future__ import annotations

from pipelines.core.schema import Label, Transaction


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
