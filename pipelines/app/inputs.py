"""``--inputs A,B,...`` of ``rillet train`` and ``rillet retrain``: which declared features a new
model uses, in its input order (default: every feature of the definitions file, file order).

The model card records them with their fingerprints (pipelines/core/model_inputs.py); the job
serves the model as long as each is declared the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from pipelines.app.errors import UserError
from pipelines.app.parsing import parse
from pipelines.core.declarations import Definitions
from pipelines.core.model_inputs import unknown_inputs
from pipelines.core.values import Name

__all__ = ["InputsOption", "chosen_inputs", "require_columns"]

_FEATURE = r"[A-Za-z_][A-Za-z0-9_]{0,99}"
FEATURE_NAMES = Name(
    rf"{_FEATURE}(,{_FEATURE})*",
    "declared feature names separated by commas (TX_AMOUNT,CUSTOMER_ID_NB_TX_1DAY_WINDOW)",
)

InputsOption = Annotated[
    str | None,
    typer.Option(
        help="The model's inputs: declared feature names, in order, separated by commas. "
        "Default: every feature of the definitions file, in its order.",
        parser=parse(FEATURE_NAMES),
    ),
]


def chosen_inputs(text: str | None, definitions: Definitions) -> tuple[str, ...]:
    """The inputs ``--inputs`` names (each once, in its order), or every declared feature; a
    UserError names those not declared."""
    names = definitions.names if text is None else tuple(dict.fromkeys(text.split(",")))
    unknown = unknown_inputs(definitions, names)
    if unknown:
        raise UserError(
            f"--inputs: {', '.join(unknown)} not declared in the definitions "
            f"{definitions.name!r} ({definitions.source})",
            "name features the definitions file declares: " + ",".join(definitions.names),
        )
    return names


def require_columns(inputs: Iterable[str], columns: Iterable[str]) -> None:
    """A UserError naming the inputs the feature table (its ``columns``) does not hold."""
    held = set(columns)
    absent = [n for n in inputs if n not in held]
    if absent:
        raise UserError(
            f"the feature table has no column {', '.join(absent)}",
            "backfill it with the definitions that declare them ('rillet backfill')",
        )
