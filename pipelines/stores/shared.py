"""One object per process and key: clients and caches that outlive a DoFn instance.

Runners may deserialize a fresh DoFn, and call its setup, for every bundle (the DirectRunner
does): a client created in setup would open a channel per bundle, and a cache held by the DoFn
would start empty every bundle.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["process_shared"]

T = TypeVar("T")

_OBJECTS: dict[Hashable, Any] = {}
# A client is bound to the endpoint it was created for: with the emulators, the *_EMULATOR_HOST
# variables at that moment. One process may talk to several stacks in turn (the test suite, the
# replay-eval chain run in-process), so the endpoints are part of every key.
_ENDPOINT_VARIABLES = ("PUBSUB_EMULATOR_HOST", "BIGTABLE_EMULATOR_HOST", "DATASTORE_EMULATOR_HOST")
_LOCK = threading.RLock()  # a factory may itself ask for a shared object


def process_shared(key: Hashable, factory: Callable[[], T]) -> T:
    """The object stored under ``key`` in this process, made by ``factory`` the first time."""
    full_key = (key, tuple(os.environ.get(name) for name in _ENDPOINT_VARIABLES))
    with _LOCK:
        if full_key not in _OBJECTS:
            _OBJECTS[full_key] = factory()
        return _OBJECTS[full_key]
