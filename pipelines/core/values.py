"""The kinds of value a command line takes, each one parser that says what it expected.

Every option of ``rillet`` (pipelines/app/parsing.py wraps these for typer) and every option of
the streaming job (pipelines/core/job_arguments.py, for argparse and Beam) declares its value as
one of these kinds, so a malformed date, number, name or path is refused when the command line is
read, in one line, before Beam or TensorFlow are imported. A value that is well formed but names
something that does not exist (a topic, a model version, a project) is the environment's to
answer, not these parsers'.

A parser raises ``BadValue`` (a ValueError) with the message that follows the option's name:
``--first-day 04/03/2018: expected a day as YYYY-MM-DD (e.g. 2018-04-03)``. Its ``kind`` names
the class of value (tests/unit/test_cli_values.py derives its malformed values from it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BadValue",
    "Bucket",
    "Choice",
    "Day",
    "Email",
    "InputDir",
    "InputFile",
    "Name",
    "Number",
    "OutputDir",
    "OutputFile",
    "Project",
    "Text",
    "Value",
    "Version",
    "When",
    "Whole",
]


class BadValue(ValueError, argparse.ArgumentTypeError):
    """A command-line value that is not of its kind: the message says what was expected
    (argparse, and so Beam's option parser, shows it as is)."""


class Value:
    """One kind of command-line value: ``parse(text)`` returns it or raises BadValue."""

    kind = "value"
    expected = "a value"
    fix = ""  # what to do instead, when more than the option's --help

    def __call__(self, text: Any) -> Any:
        if not isinstance(text, str):  # a default, already parsed
            return text
        return self.parse(text)

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def bad(self, text: str, expected: str | None = None) -> BadValue:
        return BadValue(f"{text!r}: expected {expected or self.expected}")

    @property
    def __name__(self) -> str:  # argparse names a type by it in its own messages
        return self.kind


class Whole(Value):
    """A whole number, optionally bounded."""

    kind = "whole"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        bounds = _bounds(minimum, maximum)
        self.expected = "a whole number" + bounds

    def parse(self, text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise self.bad(text) from None
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise self.bad(text)
        return value


class Number(Value):
    """A finite number, optionally bounded (``above``: strictly greater)."""

    kind = "number"

    def __init__(
        self,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> None:
        self.minimum, self.maximum, self.above = minimum, maximum, above
        bounds = f" above {above:g}" if above is not None else _bounds(minimum, maximum)
        self.expected = "a number" + bounds

    def parse(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.bad(text) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.bad(text)
        if (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.above is not None and value <= self.above)
        ):
            raise self.bad(text)
        return value


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" >= {minimum:g}"
    if maximum is not None:
        return f" <= {maximum:g}"
    return ""


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:\d{2})?")


class Day(Value):
    """A calendar day, ``YYYY-MM-DD`` (returned as that text)."""

    kind = "day"
    expected = "a day as YYYY-MM-DD (e.g. 2018-04-03)"

    def parse(self, text: str) -> str:
        if not _DAY.fullmatch(text):
            raise self.bad(text)
        try:
            dt.date.fromisoformat(text)
        except ValueError:
            raise self.bad(text, f"a real day as YYYY-MM-DD ({text} does not exist)") from None
        return text


class When(Value):
    """A day or a time, ISO 8601 (``2018-05-26``, ``2018-05-26T12:00``, ``...Z``); UTC unless
    it says otherwise. Returned as the text."""

    kind = "when"
    expected = "an ISO 8601 day or time, e.g. 2018-05-26 or 2018-05-26T12:00:00Z"

    def parse(self, text: str) -> str:
        if not _TIME.fullmatch(text):
            raise self.bad(text)
        try:
            dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise self.bad(text, f"a real day or time ({text} does not exist)") from None
        return text


class Name(Value):
    """An identifier of a resource (a topic, a table, a region ...), by its pattern."""

    kind = "name"

    def __init__(self, pattern: str, expected: str, empty_ok: bool = False) -> None:
        self.pattern = re.compile(pattern)
        self.expected = expected
        self.empty_ok = empty_ok

    def parse(self, text: str) -> str:
        if text == "" and self.empty_ok:
            return text
        if not self.pattern.fullmatch(text):
            raise self.bad(text)
        return text


class Project(Name):
    """A Google Cloud project id (``rillet-local``: the local emulators)."""

    kind = "project"

    def __init__(self, empty_ok: bool = False) -> None:
        super().__init__(
            r"[a-z][-a-z0-9]{4,28}[a-z0-9]",
            "a Google Cloud project id (6-30 lowercase letters, digits, hyphens; "
            "rillet-local for the emulators)",
            empty_ok,
        )


class Bucket(Name):
    """A Cloud Storage bucket name, without ``gs://``."""

    kind = "bucket"

    def __init__(self) -> None:
        super().__init__(
            r"[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9]",
            "a bucket name (3-63 lowercase letters, digits, - _ .), without gs://",
        )

    def parse(self, text: str) -> str:
        if text.startswith("gs://"):
            name = text[len("gs://") :].rstrip("/")
            raise self.bad(text, f"a bucket name without gs:// (--bucket {name})")
        return super().parse(text)


class Email(Name):
    """A service account's e-mail address."""

    kind = "email"

    def __init__(self) -> None:
        super().__init__(
            r"[a-z0-9][-a-z0-9._]*@[a-z0-9][-a-z0-9.]*\.[a-z]+",
            "a service account e-mail (name@project.iam.gserviceaccount.com)",
        )


class Version(Name):
    """A model version name, or a role: ``champion``, ``challenger``, ``latest``."""

    kind = "version"

    def __init__(self) -> None:
        super().__init__(
            r"[A-Za-z0-9][-A-Za-z0-9_.]{0,127}",
            "a model version (see 'rillet models list'), or champion, challenger, latest",
        )


class Choice(Value):
    """One of a fixed set of words."""

    kind = "choice"

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        self.expected = "one of " + ", ".join(self.choices)

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise self.bad(text)
        return text


class Text(Value):
    """Free text, checked by its command (a filter expression, a label)."""

    kind = "text"
    expected = "text"

    def __init__(self, expected: str = "text") -> None:
        self.expected = expected

    def parse(self, text: str) -> str:
        return text


def _remote(text: str) -> bool:
    return text.startswith("gs://")


class InputDir(Value):
    """An existing directory, which ``holds`` names (a dataset, a feature table, models ...);
    ``remote_ok``: a gs:// path passes unchecked (returned as text, a local one as a Path
    unless ``as_text``)."""

    kind = "input_dir"

    def __init__(
        self,
        holds: str,
        expected: str,
        remote_ok: bool = False,
        empty_ok: bool = False,
        fix: str = "",
    ) -> None:
        self.fix = fix
        self.holds = holds
        self.expected = expected
        self.remote_ok = remote_ok
        self.empty_ok = empty_ok

    def parse(self, text: str) -> Any:
        if (self.remote_ok and _remote(text)) or (self.empty_ok and text == ""):
            return text
        path = Path(text)
        if not path.exists():
            blocked = _under_a_file(path)
            why = f"{blocked} is a file" if blocked else "no such directory"
            raise BadValue(f"{text}: {why}; expected {self.expected}")
        if not path.is_dir():
            raise BadValue(f"{text} is a file; expected a directory with {self.expected}")
        return text if self.remote_ok else path


class InputFile(Value):
    """An existing file (gs:// passes unchecked with ``remote_ok``); the empty text with
    ``empty_ok`` (the option's default: none)."""

    kind = "input_file"

    def __init__(self, expected: str, remote_ok: bool = False, empty_ok: bool = False) -> None:
        self.expected = expected
        self.remote_ok = remote_ok
        self.empty_ok = empty_ok

    def parse(self, text: str) -> Any:
        if (self.remote_ok and _remote(text)) or (self.empty_ok and text == ""):
            return text
        path = Path(text)
        if not path.exists():
            blocked = _under_a_file(path)
            why = f"{blocked} is a file" if blocked else "no such file"
            raise BadValue(f"{text}: {why}; expected {self.expected}")
        if path.is_dir():
            raise BadValue(f"{text} is a directory; expected {self.expected}")
        return text if self.remote_ok else path


class OutputDir(Value):
    """A directory to write in: created if missing; refused if it cannot be (a file in the
    way, a read-only place). gs:// passes unchecked with ``remote_ok``."""

    kind = "output_dir"

    def __init__(self, expected: str, remote_ok: bool = False, empty_ok: bool = False) -> None:
        self.expected = expected
        self.remote_ok = remote_ok
        self.empty_ok = empty_ok

    def parse(self, text: str) -> Any:
        if (self.remote_ok and _remote(text)) or (self.empty_ok and text == ""):
            return text
        path = Path(text)
        _writable_dir(text, path, self.expected)
        return text if self.remote_ok else path


class OutputFile(Value):
    """A file to write: its directory is created if missing; refused if it cannot be."""

    kind = "output_file"

    def __init__(self, expected: str, remote_ok: bool = False, empty_ok: bool = False) -> None:
        self.expected = expected
        self.remote_ok = remote_ok
        self.empty_ok = empty_ok

    def parse(self, text: str) -> Any:
        if (self.remote_ok and _remote(text)) or (self.empty_ok and text == ""):
            return text
        path = Path(text)
        if path.is_dir():
            raise BadValue(f"{text} is a directory; expected {self.expected}")
        _writable_dir(text, path.parent, self.expected)
        return text if self.remote_ok else path


def _under_a_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists as a regular file (nothing can be under it)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _writable_dir(text: str, path: Path, expected: str) -> None:
    """Creates ``path`` if missing and proves it takes a file; a BadValue saying why not."""
    blocked = _under_a_file(path)
    if blocked is not None:
        raise BadValue(f"{text}: {blocked} is a file, not a directory; expected {expected}")
    if path.exists() and not path.is_dir():
        raise BadValue(f"{text} is a file, not a directory; expected {expected}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Permission bits do not stop root (CI) and /proc-like places refuse at write time.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BadValue(f"{text}: cannot write there ({reason}); expected {expected}") from None
