"""pipelines.app.parsing.parse_when: ISO 8601 dates and times only, answered without importing
anything heavy."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.app.errors import USAGE, UserError
from pipelines.app.parsing import parse_when

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-05-26", dt.datetime(2018, 5, 26, tzinfo=UTC)),
        ("2018-05-26T12:30", dt.datetime(2018, 5, 26, 12, 30, tzinfo=UTC)),  # naive means UTC
        ("2018-05-26 12:30:00Z", dt.datetime(2018, 5, 26, 12, 30, tzinfo=UTC)),
        ("2018-05-26T02:00:00+02:00", dt.datetime(2018, 5, 26, 0, 0, tzinfo=UTC)),
        (" 2018-05-26T12:30:00.5 ", dt.datetime(2018, 5, 26, 12, 30, 0, 500000, tzinfo=UTC)),
    ],
)
def test_iso_dates_and_times_are_utc(text: str, expected: dt.datetime) -> None:
    when = parse_when(text, "--now")
    assert when == expected
    assert when.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("26/05/2018", ""),
        ("2018-5-26", ""),
        ("05/26/2018", ""),
        ("yesterday", ""),
        ("", ""),
        ("2018-13-01", " (month must be in 1..12)"),
        ("2018-02-30", " (day is out of range for month)"),
        ("2018-05-26T25:00", " (hour must be in 0..23)"),
    ],
)
def test_anything_else_is_refused_with_what_is_expected(text: str, why: str) -> None:
    with pytest.raises(UserError) as raised:
        parse_when(text, "--now")
    assert raised.value.message == (
        f"--now {text}: not a date{why}; expected an ISO 8601 date or date and time, e.g. "
        "2018-05-26 or 2018-05-26T12:00:00Z"
    )
    assert raised.value.exit_code == USAGE


def test_parsing_imports_nothing_heavy() -> None:
    """typer is the command line's own (loaded first anyway); what is heavy is not loaded."""
    code = (
        "import sys; from pipelines.app.parsing import parse_when; parse_when('2018-05-26', 'x'); "
        "print(sorted(m for m in ('apache_beam', 'tensorflow', 'pandas', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
