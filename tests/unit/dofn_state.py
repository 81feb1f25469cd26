"""In-memory stand-ins for a stateful DoFn's state cells and timers, for tests that drive a DoFn
directly (process, on_timer) and then look at what it keeps. Values go through the cell's declared
coder on every write, as a runner stores them: a value the coder cannot encode fails here."""

from __future__ import annotations

import inspect
from typing import Any

from apache_beam import DoFn
from apache_beam.transforms.core import _StateDoFnParam, _TimerDoFnParam
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    get_dofn_specs,
)


def _name(spec: TimerSpec) -> str:
    """A timer's name as declared (Beam prefixes it)."""
    return spec.name.removeprefix(TimerSpec.prefix)


class Cell:
    """A ReadModifyWrite or bag state cell, encoded with the spec's coder."""

    def __init__(self, spec: ReadModifyWriteStateSpec | BagStateSpec) -> None:
        self.spec = spec
        self.bag = isinstance(spec, BagStateSpec)
        self.encoded: list[bytes] = []

    def read(self) -> Any:
        values = [self.spec.coder.decode(b) for b in self.encoded]
        if self.bag:
            return values
        return values[0] if values else None

    def write(self, value: Any) -> None:
        self.encoded = [self.spec.coder.encode(value)]

    def add(self, value: Any) -> None:
        self.encoded.append(self.spec.coder.encode(value))

    def clear(self) -> None:
        self.encoded = []

    @property
    def empty(self) -> bool:
        return not self.encoded


class Timer:
    """A processing-time timer: the time it is set for, or None."""

    def __init__(self) -> None:
        self.at: float | None = None

    def set(self, at: float) -> None:
        self.at = float(at)

    def clear(self) -> None:
        self.at = None


class Harness:
    """Drives one key of a stateful DoFn as a runner does (``setup``, ``process``, timer
    callbacks), with its state in :class:`Cell` s and its timers in :class:`Timer` s."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.cells: dict[str, Cell] = {}
        self.timers: dict[str, Timer] = {}
        state_specs, timer_specs = get_dofn_specs(fn)
        for spec in state_specs:
            self.cells[spec.name] = Cell(spec)
        self._callbacks = {}
        for spec in timer_specs:
            self.timers[_name(spec)] = Timer()
            self._callbacks[_name(spec)] = getattr(fn, spec._attached_callback.__name__)

    def _kwargs(self, method: Any, key: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name, param in inspect.signature(method).parameters.items():
            default = param.default
            if isinstance(default, _StateDoFnParam):
                kwargs[name] = self.cells[default.state_spec.name]
            elif isinstance(default, _TimerDoFnParam):
                kwargs[name] = self.timers[_name(default.timer_spec)]
            elif default is DoFn.KeyParam:
                kwargs[name] = key
        return kwargs

    def process(self, key: Any, value: Any) -> list[Any]:
        return list(self.fn.process((key, value), **self._kwargs(self.fn.process, key)) or ())

    def due(self, now: float) -> list[str]:
        """The timers due at ``now``, earliest first."""
        due = [(t.at, name) for name, t in self.timers.items() if t.at is not None and t.at <= now]
        return [name for _, name in sorted(due)]

    def fire(self, name: str, key: Any) -> list[Any]:
        """Fires one timer (cleared first, as a runner does)."""
        self.timers[name].clear()
        callback = self._callbacks[name]
        return list(callback(**self._kwargs(callback, key)) or ())

    def fire_due(self, now: float, key: Any) -> list[Any]:
        """Fires every timer due at ``now`` (a timer set again for a due time fires again)."""
        out: list[Any] = []
        while due := self.due(now):
            out += self.fire(due[0], key)
        return out

    @property
    def empty(self) -> bool:
        """No state held (timers aside: a runner drops a timer with nothing to act on)."""
        return all(cell.empty for cell in self.cells.values())
