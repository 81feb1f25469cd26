"""One object per process and key: clients and caches that outlive a DoFn instance.

Runners may deserialize a fresh DoFn, and call its setup, for every bundle (the DirectRunner
does): a client created in setup would open a channel per bundle, and a cache held by the DoFn
would start empty every bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["process_shared"]

T = TypeVar("T")

_OBJECTS: dict[Hashable, Any] = {}
_LOCK = threading.RLock()  # a factory may itself ask for a shared object


def process_shared(key: Hashable, factory: Callable[[], T]) -> T:
    """The object stored under ``key`` in this process, made by ``factory`` the first time."""
    with _LOCK:
        if key not in _OBJECTS:
            _OBJECTS[key] = factory()
        return _OBJECTS[key]
