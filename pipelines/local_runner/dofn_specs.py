"""The DirectRunner introspects every DoFn's methods on every bundle; do it once per function.

Beam's local runner calls ``userstate.get_dofn_specs`` (which wraps every method of the DoFn in
a ``MethodWrapper``, i.e. ``inspect.signature``) when it schedules a step's bundle, when it starts
it and when it builds its DoFnRunner (which reads the signatures of process, start_bundle, ...
again). Profiled (py-spy, ``make bench-e2e``): a quarter of the executor thread's time with three
keyed stages. A signature depends on the function alone, and a DoFn's specs on its methods' default
arguments, so both are computed once per function (per DoFn class and wrapped callable).
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

__all__ = ["memoize_dofn_specs"]

_LOCK = threading.Lock()
_INSTALLED = [False]


def memoize_dofn_specs() -> None:
    """Replaces ``get_dofn_specs`` (where the DirectRunner looks it up) by a per-class memo."""
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import core, userstate

    with _LOCK:
        if _INSTALLED[0]:
            return
        original = userstate.get_dofn_specs
        memo: dict[Any, Any] = {}

        def get_dofn_specs(dofn: Any) -> Any:
            # A Map/FlatMap DoFn takes its parameters from the callable it wraps.
            key = (type(dofn), getattr(dofn, "_fn", None))
            try:
                found = memo.get(key)
            except TypeError:  # an unhashable callable
                return original(dofn)
            if found is None:
                found = memo[key] = original(dofn)
            return found

        original_signature = core.get_signature
        signatures: dict[Any, Any] = {}

        def get_signature(func: Any) -> Any:
            # A bound method's signature (without self) is the same for every instance.
            key = (func.__func__, True) if inspect.ismethod(func) else (func, False)
            try:
                found = signatures.get(key)
            except TypeError:
                return original_signature(func)
            if found is None:
                found = signatures[key] = original_signature(func)
            return found

        userstate.get_dofn_specs = get_dofn_specs
        transform_evaluator.get_dofn_specs = get_dofn_specs  # imported by name there
        core.get_signature = get_signature  # imported by name there
        _INSTALLED[0] = True
