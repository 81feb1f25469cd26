"""Command-line values checked as soon as the line is read.

These functions import nothing heavy (no Beam, TensorFlow or pandas), so a malformed value is
answered at once, before a command imports what it runs; each raises
pipelines.app.errors.UserError naming the option, the value as typed and what is expected.
"""

from __future__ import annotations

import datetime as dt

from pipelines.app.errors import UserError

__all__ = ["parse_when"]

_WHEN_EXPECTED = "an ISO 8601 date or date and time, e.g. 2018-05-26 or 2018-05-26T12:00:00Z"


def parse_when(text: str, option: str) -> dt.datetime:
    """``text`` as a UTC datetime: an ISO 8601 date (its midnight, UTC) or date and time (without
    an offset: UTC). Anything else (``26/05/2018``, ``2018-5-26``, ``2018-13-01``) is a
    UserError saying what ``option`` expects."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        # fromisoformat's reason helps for a well-formed but impossible date ("month must be in
        # 1..12"); for a malformed one it only repeats the value.
        reason = str(exc)
        why = f" ({reason})" if not reason.startswith("Invalid isoformat") else ""
        raise UserError(f"{option} {text}: not a date{why}; expected {_WHEN_EXPECTED}") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)
