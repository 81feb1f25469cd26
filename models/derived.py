"""Derived model inputs, computed from the raw MODEL_INPUTS by one TensorFlow function.

The same function runs for training (on the feature table, eagerly) and inside the exported
SavedModel (in its signatures), so batch and stream cannot compute them differently: serving feeds
only the raw inputs.

The handbook's compromised-card fraud multiplies a card's amounts for a while; a tree splits on
one input at a time and cannot form a ratio, so the ratios are given:

* ``AMOUNT_OVER_AVG_{n}DAY``: TX_AMOUNT / the card's mean amount over n days;
* ``AVG_{n}DAY_OVER_AVG_30DAY``: the card's recent mean amount / its 30-day mean.

Denominators are floored at 1.0 (amounts are currency units) so a zero mean cannot divide by 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.definitions import MODEL_INPUTS

__all__ = ["DERIVED_INPUTS", "TREE_INPUTS", "derive", "derive_frame"]

_AVG = "CUSTOMER_ID_AVG_AMOUNT_{}DAY_WINDOW"
_FLOOR = 1.0

DERIVED_INPUTS: tuple[str, ...] = (
    *(f"AMOUNT_OVER_AVG_{n}DAY" for n in (1, 7, 30)),
    *(f"AVG_{n}DAY_OVER_AVG_30DAY" for n in (1, 7)),
)
TREE_INPUTS: tuple[str, ...] = (*MODEL_INPUTS, *DERIVED_INPUTS)
"""The model's inputs after derivation: the raw inputs, then the derived ones."""


def derive(x: Any) -> Any:
    """float32 [batch, len(MODEL_INPUTS)] -> float32 [batch, len(TREE_INPUTS)] (a tf.Tensor):
    the raw columns followed by the DERIVED_INPUTS."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, dtype=tf.float32)

    def column(name: str) -> Any:
        return x[:, MODEL_INPUTS.index(name)]

    def floored(name: str) -> Any:
        return tf.maximum(column(name), tf.constant(_FLOOR, tf.float32))

    amount = column("TX_AMOUNT")
    derived = [amount / floored(_AVG.format(n)) for n in (1, 7, 30)]
    derived += [floored(_AVG.format(n)) / floored(_AVG.format(30)) for n in (1, 7)]
    return tf.concat([x, tf.stack(derived, axis=1)], axis=1)


def derive_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """TREE_INPUTS columns (float32) of a frame with MODEL_INPUTS columns, by :func:`derive`."""
    values = derive(frame[list(MODEL_INPUTS)].to_numpy(np.float32)).numpy()
    return pd.DataFrame(values, columns=list(TREE_INPUTS), index=frame.index)
