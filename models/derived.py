"""Derived model inputs, computed from a model's raw inputs by one TensorFlow function.

The same function runs for training (on the feature table, eagerly) and inside the exported
SavedModel (in its signatures), so batch and stream cannot compute them differently: serving feeds
only the raw inputs.

The handbook's compromised-card fraud multiplies a card's amounts for a while; a tree splits on
one input at a time and cannot form a ratio, so the ratios are given:

* ``AMOUNT_OVER_AVG_{n}DAY``: TX_AMOUNT / the card's mean amount over n days;
* ``AVG_{n}DAY_OVER_AVG_30DAY``: the card's recent mean amount / its 30-day mean.

A ratio is derived only when both of its features are among the model's inputs (a model may use
a subset of the declared features). Denominators are floored at 1.0 (amounts are currency units)
so a zero mean cannot divide by 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.definitions import MODEL_INPUTS

__all__ = ["derive", "derive_frame", "derived_inputs"]

_AVG = "CUSTOMER_ID_AVG_AMOUNT_{}DAY_WINDOW"
_FLOOR = 1.0

# Each derived input: (name, numerator, denominator); the amount is not floored, means are.
_RATIOS: tuple[tuple[str, str, str], ...] = (
    *((f"AMOUNT_OVER_AVG_{n}DAY", "TX_AMOUNT", _AVG.format(n)) for n in (1, 7, 30)),
    *((f"AVG_{n}DAY_OVER_AVG_30DAY", _AVG.format(n), _AVG.format(30)) for n in (1, 7)),
)


def _ratios(inputs: Sequence[str]) -> tuple[tuple[str, str, str], ...]:
    return tuple(r for r in _RATIOS if r[1] in inputs and r[2] in inputs)


def derived_inputs(inputs: Sequence[str] = MODEL_INPUTS) -> tuple[str, ...]:
    """The derived inputs of a model whose raw inputs are ``inputs``."""
    return tuple(name for name, _, _ in _ratios(inputs))


def derive(x: Any, inputs: Sequence[str] = MODEL_INPUTS) -> Any:
    """float32 [batch, len(inputs)] (columns: ``inputs``) -> float32 [batch, len(inputs) +
    len(derived_inputs(inputs))] (a tf.Tensor): the raw columns followed by the derived ones."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, dtype=tf.float32)
    ratios = _ratios(inputs)
    if not ratios:
        return x
    names = list(inputs)

    def column(name: str) -> Any:
        return x[:, names.index(name)]

    def floored(name: str) -> Any:
        return tf.maximum(column(name), tf.constant(_FLOOR, tf.float32))

    derived = [(column(a) if a == "TX_AMOUNT" else floored(a)) / floored(b) for _, a, b in ratios]
    return tf.concat([x, tf.stack(derived, axis=1)], axis=1)


def derive_frame(frame: pd.DataFrame, inputs: Sequence[str] = MODEL_INPUTS) -> pd.DataFrame:
    """The raw ``inputs`` and their derived inputs (float32) of a frame with ``inputs``
    columns, by :func:`derive`."""
    values = derive(frame[list(inputs)].to_numpy(np.float32), inputs).numpy()
    columns = [*inputs, *derived_inputs(inputs)]
    return pd.DataFrame(values, columns=columns, index=frame.index)
