"""What flows between the keyed stages (README "Ordering", docs/specs/messages.md).

    IndexIds (key: transaction id) ── Routed(Transaction) ─> CustomerWindows (key: customer)
                                   └─ Routed(Label) ──────┐
    CustomerWindows ─ CustomerPart ───────────────────────┴─> TerminalWindows (key: terminal)
    TerminalWindows ─ FeatureBatch ─> Predict ─> WritePredictions

``token`` is the DirectRunner's recovery group the element belongs to (local_runner.recovery; 0
elsewhere): a message finishes once every element it led to has reached a sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.schema import Label, StageRecord, Transaction

__all__ = ["CustomerPart", "FeatureBatch", "Routed", "StageRecord"]

E = TypeVar("E", Transaction, Label)


@dataclass
class Routed(StageRecord, Generic[E]):
    """An event the id index accepted, on its way to an entity stage."""

    event: E
    token: int = 0


@dataclass
class CustomerPart(StageRecord):
    """A transaction with the features its customer's stage computed (``values``, in the order
    of ``window_features(CUSTOMER)``). ``revision`` orders the computations of this part for one
    transaction (a correction has a higher one); ``correction`` marks a recomputation after an
    out-of-order event of the customer."""

    tx: Transaction
    values: tuple[float, ...]
    revision: int
    correction: bool = False
    token: int = 0


@dataclass
class FeatureBatch:
    """A batch of transactions with their feature rows, columns named by ``names`` (the
    definitions file's features the job computes, in the file's order).

    A row's revision orders computations of the same transaction: it is above every earlier
    revision of that transaction. ``revisions`` gives one per row (the rows of one batch may come
    from several stage keys, each with its own fence); without it every row has ``revision``.
    ``correction`` marks a batch recomputed after an out-of-order event.
    """

    transactions: list[Transaction]
    features: np.ndarray
    revision: int
    correction: bool = False
    token: int = 0  # the recovery group it finishes (pipelines.local_runner.recovery)
    revisions: np.ndarray | None = None
    names: tuple[str, ...] = MODEL_INPUTS

    def __len__(self) -> int:
        return len(self.transactions)

    def row_revision(self, i: int) -> int:
        """The revision of row ``i``."""
        return self.revision if self.revisions is None else int(self.revisions[i])
