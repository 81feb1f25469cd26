"""Process-wide objects of a DoFn (clients, caches) through Beam's ``Shared``.

Beam runs one DoFn instance per thread, and many threads of one SDK process run the same step
at once (Dataflow); a runner may also make a fresh instance, and call its setup, for every
bundle (the DirectRunner does). A client made in setup would open a channel per instance, and a
cache held by the instance would start empty. ``SharedResource`` is a DoFn's handle on one
object per process: Beam's ``apache_beam.utils.shared.Shared`` (what RunInference uses for its
models) builds it once, under its lock, and every instance that acquires it gets the same object,
which must be safe to use from several threads (WindowCache locks, the Google Cloud clients are
thread-safe).

Beam's Shared keeps an object alive while an instance holds it, plus the last one acquired in the
process. Dataflow keeps its DoFn instances across bundles; the DirectRunner does not, so its
tuning pins every shared object for the process (pipelines/local_runner/shared_pins.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from apache_beam.utils.shared import Shared

__all__ = ["SharedResource", "endpoints"]

T = TypeVar("T")

# A client is bound to the endpoint it was created for: with the emulators, the *_EMULATOR_HOST
# variables at that moment. One process may talk to several stacks in turn (the test suite, the
# replay-eval chain run in-process), so the endpoints tag every shared object: another endpoint
# builds another object.
_ENDPOINT_VARIABLES = ("PUBSUB_EMULATOR_HOST", "BIGTABLE_EMULATOR_HOST", "DATASTORE_EMULATOR_HOST")


def endpoints() -> tuple[str | None, ...]:
    """The emulator endpoints of this process now (None: Google Cloud)."""
    return tuple(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


class _Held(Generic[T]):
    """A weakly referenceable holder (Shared keeps weak references; a client or a dict may not
    support them)."""

    __slots__ = ("__weakref__", "value")

    def __init__(self, value: T) -> None:
        self.value = value


class SharedResource(Generic[T]):
    """A DoFn's handle on one object per process (see the module docstring).

    Create it in the DoFn's ``__init__`` (it is pickled with the DoFn, so every copy of the DoFn
    names the same object) and call ``acquire`` in ``setup``; keep what it returns on the
    instance.

    Example Usage::

        class WriteFn(beam.DoFn):
            def __init__(self, project):
                self._project = project
                self._client_handle = SharedResource()

            def setup(self):
                self._client = self._client_handle.acquire(lambda: make_client(self._project))
    """

    def __init__(self) -> None:
        self._handle = Shared()
        self._held: _Held[T] | None = None  # what this copy acquired (keeps it alive)

    def acquire(self, factory: Callable[[], T], tag: object = None) -> T:
        """The process's object (made by ``factory`` the first time, and again when ``tag`` or
        the emulator endpoints change)."""
        held = self._handle.acquire(lambda: _Held(factory()), tag=(tag, endpoints()))
        self._held = held
        return held.value

    def __getstate__(self) -> dict[str, object]:
        return {"_handle": self._handle, "_held": None}
