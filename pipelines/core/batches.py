"""What flows between the keyed stages (README "Ordering", docs/specs/messages.md).

    IndexIds (key: transaction id) ── Routed(Transaction) ─> the first entity stage
                                   └─ Routed(Label) ──────> each stage with label features
    an entity stage ─ Part ─> the next entity stage (pipelines/transforms/features.py)
    the last entity stage ─ FeatureBatch ─> Predict ─> WritePredictions

``token`` is the DirectRunner's recovery group the element belongs to (local_runner.recovery; 0
elsewhere): a message finishes once every element it led to has reached a sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from pipelines.core.schema import Label, StageRecord, Transaction

__all__ = ["FeatureBatch", "Part", "Routed", "StageRecord"]

E = TypeVar("E", Transaction, Label)


@dataclass
class Routed(StageRecord, Generic[E]):
    """An event the id index accepted, on its way to an entity stage."""

    event: E
    token: int = 0


@dataclass
class Part(StageRecord):
    """A transaction on its way from one entity stage to the next, with the window features of
    the stages before it (``values``: each stage's ``Definitions.window_features(entity)`` in
    turn, in the file's entity order). ``revision`` orders the computations of this part for one
    transaction (a correction has a higher one); ``correction`` marks a recomputation after an
    out-of-order event of an earlier stage's entity."""

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
    # The columns' feature names (the job's definitions' order): keyword only and required, so
    # that no batch is labelled with another file's names by default.
    names: tuple[str, ...] = field(kw_only=True)

    def __len__(self) -> int:
        return len(self.transactions)

    def row_revision(self, i: int) -> int:
        """The revision of row ``i``."""
        return self.revision if self.revisions is None else int(self.revisions[i])
