"""Row predicates of the definitions file: ``amount > 100 and channel == "online"``.

A predicate is a small expression over an event's declared fields and the UTC parts of its
event time (``hour``, ``minute``, ``weekday`` with Monday = 0). It is parsed with Python's own
``ast`` and only this subset is accepted:

    comparisons   ==  !=  <  <=  >  >=  (chained: 0 <= hour < 6), in / not in a list of constants
    logic         and, or, not, parentheses
    operands      field names, numbers, strings, true/false

Nothing is ever ``eval``-ed: the tree is checked, then compiled into closures. The same tree
evaluates one event (the stream) and whole columns (the batch): both apply IEEE comparisons to the
same values, so the stream and the batch select the same events.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["TIME_PARTS", "Predicate", "PredicateError", "time_parts"]

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000

# The parts of the event time a predicate may name, computed in UTC.
TIME_PARTS = ("hour", "minute", "weekday")

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_SYMBOL = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}


class PredicateError(ValueError):
    """A predicate that is not in the accepted subset, or names an unknown field."""


def time_parts(time_us: Any) -> dict[str, Any]:
    """``hour``, ``minute`` and ``weekday`` (Monday = 0) of event times in UTC, for one time
    (ints) or an array of them (int64 arrays). 1970-01-01 was a Thursday."""
    t = np.asarray(time_us, dtype=np.int64)
    days = np.floor_divide(t, DAY_US)
    within = t - days * DAY_US
    parts = {
        "hour": np.floor_divide(within, HOUR_US),
        "minute": np.floor_divide(within % HOUR_US, MINUTE_US),
        "weekday": (days + 3) % 7,
    }
    if t.ndim == 0:
        return {k: int(v) for k, v in parts.items()}
    return parts


_Evaluator = Callable[[Mapping[str, Any]], Any]


class Predicate:
    """A parsed predicate; equal (and hashed) by its normalised text."""

    def __init__(self, source: str, field_types: Mapping[str, str]) -> None:
        """``field_types``: the names it may use -> "number" or "string" (time parts are
        numbers and are added here)."""
        if not isinstance(source, str) or not source.strip():
            raise PredicateError("expected a predicate such as: amount > 100 and hour < 6")
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as error:
            raise PredicateError(f"not a predicate ({error.msg})") from None
        types = {**{p: "number" for p in TIME_PARTS}, **field_types}
        self._types = types
        self.fields: frozenset[str] = frozenset()
        self._names: set[str] = set()
        self._fn = self._boolean(tree.body)
        self.fields = frozenset(self._names)
        self.source = ast.unparse(tree.body)

    def __repr__(self) -> str:
        return f"Predicate({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Predicate) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Predicate, (self.source, self._types))

    @property
    def time_parts(self) -> frozenset[str]:
        """The time parts it names (the event time must be at hand to evaluate it)."""
        return self.fields & frozenset(TIME_PARTS)

    def holds(self, values: Mapping[str, Any], time_us: int) -> bool:
        """Whether one event satisfies it (``values``: its fields by name)."""
        if self.time_parts:
            values = {**values, **time_parts(int(time_us))}
        return bool(self._fn(values))

    def mask(self, columns: Mapping[str, np.ndarray], time_us: np.ndarray) -> np.ndarray:
        """Which events of the columns satisfy it, as a boolean array."""
        if self.time_parts:
            columns = {**columns, **time_parts(np.asarray(time_us, dtype=np.int64))}
        n = len(time_us)
        out = np.asarray(self._fn(columns), dtype=bool)
        return np.broadcast_to(out, (n,)).copy() if out.ndim == 0 else out

    # -- compiling ----------------------------------------------------------------------------

    def _boolean(self, node: ast.expr) -> _Evaluator:
        if isinstance(node, ast.BoolOp):
            parts = [self._boolean(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda row: _all(parts, row)
            return lambda row: _any(parts, row)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self._boolean(node.operand)
            return lambda row: _not(inner(row))
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            value = node.value
            return lambda row: value
        raise PredicateError(
            f"{ast.unparse(node)!r} is not a condition: compare a field "
            "(amount > 100, channel == 'online', category in ['a', 'b'])"
        )

    def _compare(self, node: ast.Compare) -> _Evaluator:
        links: list[_Evaluator] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            links.append(self._link(left, op, right))
            left = right
        if len(links) == 1:
            return links[0]
        return lambda row: _all(links, row)

    def _link(self, left: ast.expr, op: ast.cmpop, right: ast.expr) -> _Evaluator:
        if isinstance(op, ast.In | ast.NotIn):
            name = self._name(left)
            options = self._options(right, self._types[name])
            negate = isinstance(op, ast.NotIn)

            def member(row: Mapping[str, Any]) -> Any:
                value = row[name]
                if isinstance(value, np.ndarray):
                    hit: Any = np.isin(value, np.asarray(options, dtype=value.dtype))
                else:
                    hit = value in options
                return _not(hit) if negate else hit

            return member
        compare = _COMPARE.get(type(op))
        if compare is None:
            raise PredicateError(f"operator {type(op).__name__} is not allowed")
        lhs, lhs_type = self._operand(left)
        rhs, rhs_type = self._operand(right)
        if lhs_type != rhs_type:
            raise PredicateError(
                f"{ast.unparse(left)} {_SYMBOL[type(op)]} {ast.unparse(right)} compares a "
                f"{lhs_type} with a {rhs_type}"
            )
        if lhs_type == "string" and type(op) not in (ast.Eq, ast.NotEq):
            raise PredicateError(f"text is compared with == or != only: {ast.unparse(left)}")
        return lambda row: compare(lhs(row), rhs(row))

    def _name(self, node: ast.expr) -> str:
        if not isinstance(node, ast.Name):
            raise PredicateError(f"expected a field name, got {ast.unparse(node)!r}")
        if node.id not in self._types:
            known = ", ".join(sorted(self._types))
            raise PredicateError(f"unknown field {node.id!r} (known: {known})")
        self._names.add(node.id)
        return node.id

    def _operand(self, node: ast.expr) -> tuple[_Evaluator, str]:
        if isinstance(node, ast.Name):
            if node.id in ("true", "false"):
                value = node.id == "true"
                return (lambda row: value), "number"
            name = self._name(node)
            return (lambda row: row[name]), self._types[name]
        value, kind = _constant(node)
        return (lambda row: value), kind

    def _options(self, node: ast.expr, kind: str) -> tuple[Any, ...]:
        if not isinstance(node, ast.List | ast.Tuple | ast.Set) or not node.elts:
            raise PredicateError(f"'in' needs a list of values, got {ast.unparse(node)!r}")
        values = []
        for element in node.elts:
            value, element_kind = _constant(element)
            if element_kind != kind:
                raise PredicateError(f"{ast.unparse(element)} is not a {kind}")
            values.append(value)
        return tuple(values)


def _constant(node: ast.expr) -> tuple[Any, str]:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value, kind = _constant(node.operand)
        if kind == "number":
            return -value, kind
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return node.value, "number"
        if isinstance(node.value, int | float):
            return node.value, "number"
        if isinstance(node.value, str):
            return node.value, "string"
    raise PredicateError(f"expected a field, a number or a quoted text, got {ast.unparse(node)!r}")


def _all(parts: list[_Evaluator], row: Mapping[str, Any]) -> Any:
    result: Any = True
    for part in parts:
        value = part(row)
        if isinstance(value, np.ndarray) or isinstance(result, np.ndarray):
            result = np.logical_and(result, value)
        elif not value:
            return False
    return result


def _any(parts: list[_Evaluator], row: Mapping[str, Any]) -> Any:
    result: Any = False
    for part in parts:
        value = part(row)
        if isinstance(value, np.ndarray) or isinstance(result, np.ndarray):
            result = np.logical_or(result, value)
        elif value:
            return True
    return result


def _not(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.logical_not(value)
    return not value
